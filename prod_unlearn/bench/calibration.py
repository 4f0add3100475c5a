"""`prod-unlearn bench --calibrate`: one documented rule picks each method's lr per task
(``CALIBRATION_RULE``), and the table (``assets/calibration.json``) that `bench` reads."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prod_unlearn.bench.config import TOLERANCE, method_variant, upgrade_utility_items
from prod_unlearn.io import atomic_write_json, read_json
from prod_unlearn.progress import console

if TYPE_CHECKING:
    from prod_unlearn.bench.config import BenchConfig

CALIBRATION_RULE = (
    "for each task and method, the largest learning rate of the grid whose utility after the "
    "bench's full training budget is at least (1 - tolerance) x the utility of the model the "
    "method starts from (tolerance 0.10: within 10 %); if no lr of the grid qualifies, the "
    "smallest. The grid is tried from the largest lr down and stops at the first that qualifies "
    "(so it is exactly the largest qualifying one)."
)

FORGET_RULE = (
    "for each task and method, the smallest learning rate of the grid whose final forget quality closes "
    "at least `target` (0.90) of the gap from the start model's to the retain model's (a model never "
    "trained on the set): matched forgetting; if none does, the largest. The grid is tried from the "
    "smallest lr up and stops at the first that qualifies."
)


def calibration_path():
    from prod_unlearn.models.loading import ASSETS

    return ASSETS / "calibration.json"


# ---------------------------------------------------------------- calibrated learning rates


def qualifies(utility: float, original_utility: float, tolerance: float = TOLERANCE) -> bool:
    """utility >= (1 - tolerance) * original (up to float rounding: 0.27 vs 0.9 * 0.3 counts)."""
    return utility >= (1 - tolerance) * original_utility - 1e-9


def calibration_rule(
    original_utility: float, utilities: dict[float, float], tolerance: float = TOLERANCE
) -> tuple[float, bool]:
    """(lr, qualified): the largest lr whose utility >= (1 - tolerance) * original; else the smallest."""
    if not utilities:
        raise ValueError("calibration: no learning rate evaluated")
    ok = [lr for lr, u in utilities.items() if qualifies(u, original_utility, tolerance)]
    return (max(ok), True) if ok else (min(utilities), False)


def calibration_profile(cfg: BenchConfig, fingerprint: str, tok_hash: str) -> dict:
    """What a calibrated lr depends on (the bench uses a table entry only for an equal profile)."""
    key: dict[str, Any]
    key = {
        "model_fingerprint": fingerprint,
        "tokenizer": tok_hash,
        "utility": cfg.utility,
        "epochs": cfg.epochs,
        "max_items": cfg.max_items or 0,
        "max_length": cfg.max_length,
        "ppl_tokens": cfg.ppl_tokens,
    }
    if cfg.rule == "forget":  # (the utility rule's profiles predate the rule field: they stay valid)
        assert cfg.retain_model is not None  # filled by resolve_bench_defaults, which every caller runs first
        key.update(rule="forget", target=cfg.target, retain_model=Path(cfg.retain_model).name)
    return key


def gap_share(fq: float, original: float, floor: float) -> float:
    """Share of the original -> floor gap in forget quality that ``fq`` closed (1 = as if never trained)."""
    return (fq - original) / (floor - original) if abs(floor - original) > 1e-9 else float("nan")


def load_calibration(path: str | Path | None = None) -> dict:
    path = Path(path) if path else calibration_path()
    if not path.exists():
        if path == calibration_path():
            return {"format": 1, "profiles": []}
        raise FileNotFoundError(f"{path}: no such calibration table")
    table = read_json(path)  # bad JSON: one line naming the file, line and column
    if not isinstance(table, dict) or not isinstance(table.get("profiles"), list):
        raise ValueError(f"{path}: not a calibration table (expected an object with a 'profiles' list)")
    return table


def lookup_lr(table: dict, profile: dict, task: str, data_hash: str, method: str) -> float | None:
    for p in table.get("profiles", []):
        if p.get("key") == profile:
            t = p.get("tasks", {}).get(task)
            if t and t.get("data") == data_hash and method in t.get("lr", {}):
                return float(t["lr"][method])
    return None


def merge_profile(table: dict, profile: dict) -> dict:
    """Table with ``profile`` added; a profile with the same key is updated task by task."""
    profiles = [dict(p) for p in table.get("profiles", [])]
    for p in profiles:
        if p.get("key") == profile["key"]:
            p["tasks"] = {**p.get("tasks", {}), **profile["tasks"]}
            p.update({k: v for k, v in profile.items() if k not in ("key", "tasks")})
            break
    else:
        profiles.append(profile)
    return {
        **{k: v for k, v in table.items() if k not in ("profiles", "note")},
        "format": 1,
        "rule": CALIBRATION_RULE,
        "profiles": profiles,
    }


# ---------------------------------------------------------------- calibration


def run_calibration(
    cfg: BenchConfig, out: str | Path, table_out: str | Path | None = None, overwrite: bool = False
) -> dict:
    """`bench --calibrate`: per task and method, train at the grid's lrs (largest first) until one
    keeps the utility within ``tolerance`` of the start model's (``CALIBRATION_RULE``).

    Resumable: every finished (task, method, lr) is saved in ``calibration_state.json`` at once and
    a training run resumes from its epoch state. Writes ``OUT/calibration.json`` (a table with one
    profile) and, with ``table_out``, merges the profile into that table (e.g. the shipped one).
    """
    from prod_unlearn.bench.config import resolve_bench_defaults, retain_tasks
    from prod_unlearn.bench.scoring import evaluate_forget, evaluate_utility
    from prod_unlearn.bench.setup import check_keys, clear, setup, task_data
    from prod_unlearn.data.examples import examples_hash
    from prod_unlearn.methods import get_method
    from prod_unlearn.methods.refusals import load_refusals
    from prod_unlearn.models.loading import load_model
    from prod_unlearn.training.defaults import resolve_train_config
    from prod_unlearn.training.loop import unlearn

    out = Path(out)
    if overwrite:
        clear(out)
    cfg = resolve_bench_defaults(cfg)
    model_name, fingerprint, tok_hash = setup(cfg)
    profile = calibration_profile(cfg, fingerprint, tok_hash)
    grid = sorted({float(x) for x in cfg.lr_grid}, reverse=True)
    if not grid:
        raise ValueError("--calibrate: the lr grid is empty")
    if cfg.rule not in ("utility", "forget"):
        raise ValueError(f"--rule {cfg.rule}: expected utility or forget")
    for m in cfg.methods:
        if method_variant(m).distill_noise is not None:
            raise ValueError(
                f"--calibrate {m}: a +distill variant trains at its method's calibrated lr; calibrate "
                f"{m.split('+')[0]} (distilling at every grid point would cost one distillation each)"
            )
    floor_tasks = retain_tasks(cfg)
    if cfg.rule == "forget" and set(cfg.tasks) - set(floor_tasks):
        raise ValueError(
            f"--rule forget: no retain model for task {sorted(set(cfg.tasks) - set(floor_tasks))[0]} "
            f"(matched forgetting needs a model never trained on its set: --retain-model)"
        )
    state_path = out / "calibration_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    for cell in (state.get("original") or {}).values():  # written by an earlier version: its items as now
        upgrade_utility_items(cell, cfg.utility)
    keys = {
        "calibration": {
            **{k: v for k, v in profile.items() if k not in ("rule", "target", "retain_model")},
            "seed": cfg.seed,
            "tolerance": cfg.tolerance,
        }
    }  # the rules share the runs
    if floor_tasks:
        keys["retain"] = {"model": cfg.retain_model}
    data = {}
    for task in cfg.tasks:
        spec, forget, evalset = task_data(task, cfg)
        data[task] = (spec, forget, evalset)
        keys[task] = {"forget": examples_hash(forget), "n_forget": len(forget)}
    check_keys(state.get("keys", {}), keys, str(out))
    state["keys"] = {**state.get("keys", {}), **keys}
    state.setdefault("original", {})
    state.setdefault("retain", {})
    runs: dict = state.setdefault("runs", {})

    def save() -> None:
        atomic_write_json(state_path, state)

    prof: dict[str, Any]
    prof = {
        "key": profile,
        "grid": sorted(grid),
        "tolerance": cfg.tolerance,
        "seed": cfg.seed,
        "rule": cfg.rule,
        "tasks": {},
    }
    for task in cfg.tasks:
        spec, forget, evalset = data[task]
        base = model_name
        floor = task in floor_tasks  # then every run's forget quality is measured too
        if task not in state["original"] or floor and "forget_quality" not in state["original"][task]:
            model, tok = load_model(base, cfg.device, "auto")
            u, u_items, _ = evaluate_utility(cfg.utility, model, tok, cfg, None)
            state["original"][task] = {"utility": u["utility"], "items": {"utility": u_items}}
            if floor:
                state["original"][task]["forget_quality"] = evaluate_forget(task, model, tok, evalset, cfg)[0][
                    "forget_quality"
                ]
            save()
        if floor and task not in state["retain"]:
            from prod_unlearn.models.loading import load_companion, load_tokenizer

            tok = load_tokenizer(base)
            assert cfg.retain_model is not None  # retain_tasks: no floor without a retain model
            ret = load_companion("--retain-model", cfg.retain_model, tok, cfg.device)
            floor = evaluate_forget(task, ret, tok, evalset, cfg)[0]["forget_quality"]
            state["retain"][task] = {"forget_quality": floor}
            save()
        orig = state["original"][task]
        entry: dict[str, Any] = {
            "data": examples_hash(forget),
            "original_utility": orig["utility"],
            "lr": {},
            "qualified": {},
            "utility": {},
        }
        if floor:
            entry.update(
                original_forget_quality=orig["forget_quality"],
                retain_forget_quality=state["retain"][task]["forget_quality"],
                forget_quality={},
                gap_closed={},
            )
        for method in cfg.methods:
            tried, closed = {}, {}
            for lr in grid if cfg.rule == "utility" else sorted(grid):
                key = f"{task}/{method}/{lr!r}"
                if key not in runs:
                    run_dir = out / "calibration" / task / method / f"lr-{lr:g}"
                    model, tok = load_model(base, cfg.device, "auto")
                    t0 = time.time()
                    variant = method_variant(method)
                    tcfg = resolve_train_config(
                        base,
                        given_by="bench",
                        epochs=cfg.epochs,
                        lr=lr,
                        max_length=cfg.max_length,
                        seed=cfg.seed,
                        batch_size=1,
                        grad_accum=1,
                        sam_rho=variant.sam or None,
                    )
                    try:
                        unlearn(
                            model,
                            tok,
                            forget,
                            get_method(variant.method),
                            tcfg,
                            run_dir,
                            refusals=load_refusals(),
                            model_name=base,
                        )
                        u, _, _ = evaluate_utility(cfg.utility, model, tok, cfg, orig)
                        runs[key] = {"lr": lr, "utility": u["utility"], "seconds": round(time.time() - t0, 1)}
                        if floor:
                            runs[key]["forget_quality"] = evaluate_forget(task, model, tok, evalset, cfg)[0][
                                "forget_quality"
                            ]
                    except FloatingPointError as e:  # diverged: counts as broken
                        runs[key] = {"lr": lr, "utility": 0.0, "forget_quality": None, "error": str(e).splitlines()[0]}
                    save()
                    shutil.rmtree(run_dir, ignore_errors=True)
                    console.print(
                        f"[bold]calibrate[/bold] {key}: utility {runs[key]['utility']:.4f} "
                        f"(start {orig['utility']:.4f})"
                    )
                tried[lr] = runs[key]["utility"]
                if floor:
                    fq = runs[key].get("forget_quality")
                    closed[lr] = (
                        gap_share(fq, orig["forget_quality"], state["retain"][task]["forget_quality"])
                        if fq is not None
                        else float("nan")
                    )
                if cfg.rule == "utility" and qualifies(tried[lr], orig["utility"], cfg.tolerance):
                    break
                if cfg.rule == "forget" and closed[lr] >= cfg.target:  # (nan: diverged, never qualifies)
                    break
            if cfg.rule == "utility":
                lr, ok = calibration_rule(orig["utility"], tried, cfg.tolerance)
            else:
                ok_lrs = [x for x, g in closed.items() if g >= cfg.target]
                lr, ok = (min(ok_lrs), True) if ok_lrs else (max(closed), False)
            entry["lr"][method], entry["qualified"][method] = lr, ok
            entry["utility"][method] = {f"{k:g}": v for k, v in sorted(tried.items())}
            if floor:
                entry["forget_quality"][method] = {
                    f"{k:g}": runs[f"{task}/{method}/{k!r}"].get("forget_quality") for k in sorted(tried)
                }
                entry["gap_closed"][method] = {f"{k:g}": round(v, 4) for k, v in sorted(closed.items())}
        prof["tasks"][task] = entry
    own = out / "calibration.json"  # one profile per rule: calibrating both rules here keeps both
    table = merge_profile(load_calibration(own) if own.exists() else {"format": 1}, prof)
    atomic_write_json(own, table)
    from prod_unlearn.io import atomic_write_text

    atomic_write_text(out / "calibration.md", calibration_markdown(state, cfg))
    if table_out:
        table_out = Path(table_out)
        merged = merge_profile(load_calibration(table_out) if table_out.exists() else {"format": 1}, prof)
        atomic_write_json(table_out, merged)
    return table


def calibration_markdown(state: dict, cfg: BenchConfig) -> str:
    """Both rules side by side from every run the folder holds (runs are shared between the rules):
    each method's forgetting at matched utility and its utility at matched forgetting."""
    lines = ["# Calibration", "", f"Matched utility: {CALIBRATION_RULE}", "", f"Matched forgetting: {FORGET_RULE}", ""]
    for task in cfg.tasks:
        orig, ret = state["original"].get(task, {}), state["retain"].get(task)
        lines += [
            f"## {task}",
            "",
            f"Start model: utility {orig.get('utility', float('nan')):.4f}"
            + (
                f", forget quality {orig['forget_quality']:.3f}; retain model: forget quality "
                f"{ret['forget_quality']:.3f}"
                if ret
                else " (no retain model: no matched-forgetting column)"
            ),
            "",
            "| method | lr | utility | forget quality | gap closed | matched utility | matched forgetting |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        for method in cfg.methods:
            runs = sorted(
                (r for k, r in state["runs"].items() if k.startswith(f"{task}/{method}/")), key=lambda r: r["lr"]
            )
            ok_u = [r["lr"] for r in runs if qualifies(r["utility"], orig.get("utility", 0), cfg.tolerance)]
            ok_f = [
                r["lr"]
                for r in runs
                if ret
                and r.get("forget_quality") is not None
                and gap_share(r["forget_quality"], orig["forget_quality"], ret["forget_quality"]) >= cfg.target
            ]
            for r in runs:
                fq = r.get("forget_quality")
                g = gap_share(fq, orig["forget_quality"], ret["forget_quality"]) if ret and fq is not None else None
                fq_text = f"{fq:.3f}" if fq is not None else "-"
                lines.append(
                    f"| {method} | {r['lr']:g} | {r['utility']:.4f} | "
                    + fq_text
                    + f" | {'-' if g is None else f'{g:.2f}'} | "
                    + ("**chosen**" if ok_u and r["lr"] == max(ok_u) else "")
                    + " | "
                    + ("**chosen**" if ok_f and r["lr"] == min(ok_f) else "")
                    + " |"
                )
        lines.append("")
    lines += [
        "A rule's lr is exact only over the lrs it tried: matched utility searches from the largest lr down, "
        "matched forgetting from the smallest up (`bench --calibrate --rule forget`); runs are shared."
    ]
    return "\n".join(lines) + "\n"
