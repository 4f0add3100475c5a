"""`prod-unlearn bench --calibrate`: one documented rule picks each method's lr per task
(``CALIBRATION_RULE``), and the table (``assets/calibration.json``) that `bench` reads."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from prod_unlearn.io import atomic_write_json, read_json
from prod_unlearn.progress import console

if TYPE_CHECKING:
    from prod_unlearn.bench import BenchConfig

LR_GRID = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4]
TOLERANCE = 0.10
CALIBRATION_RULE = ("for each task and method, the largest learning rate of the grid whose utility after the "
                    "bench's full training budget is at least (1 - tolerance) x the utility of the model the "
                    "method starts from (tolerance 0.10: within 10 %); if no lr of the grid qualifies, the "
                    "smallest. The grid is tried from the largest lr down and stops at the first that qualifies "
                    "(so it is exactly the largest qualifying one).")

def calibration_path():
    from prod_unlearn.models.loading import ASSETS
    return ASSETS / "calibration.json"


# ---------------------------------------------------------------- calibrated learning rates

def qualifies(utility: float, original_utility: float, tolerance: float = TOLERANCE) -> bool:
    """utility >= (1 - tolerance) * original (up to float rounding: 0.27 vs 0.9 * 0.3 counts)."""
    return utility >= (1 - tolerance) * original_utility - 1e-9


def calibration_rule(original_utility: float, utilities: dict[float, float], tolerance: float = TOLERANCE
                     ) -> tuple[float, bool]:
    """(lr, qualified): the largest lr whose utility >= (1 - tolerance) * original; else the smallest."""
    if not utilities:
        raise ValueError("calibration: no learning rate evaluated")
    ok = [lr for lr, u in utilities.items() if qualifies(u, original_utility, tolerance)]
    return (max(ok), True) if ok else (min(utilities), False)


def calibration_profile(cfg: BenchConfig, fingerprint: str, tok_hash: str) -> dict:
    """What a calibrated lr depends on (the bench uses a table entry only for an equal profile)."""
    return {"model_fingerprint": fingerprint, "tokenizer": tok_hash, "utility": cfg.utility, "epochs": cfg.epochs,
            "max_items": cfg.max_items or 0, "max_length": cfg.max_length, "ppl_tokens": cfg.ppl_tokens,
            "memorise_epochs": cfg.memorise_epochs, "memorise_lr": cfg.memorise_lr}


def load_calibration(path: str | Path | None = None) -> dict:
    path = Path(path) if path else calibration_path()
    if not path.exists():
        if path == calibration_path():
            return {"format": 1, "profiles": []}
        raise FileNotFoundError(f"{path}: no such calibration table")
    table = read_json(path)             # bad JSON: one line naming the file, line and column
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
    return {**{k: v for k, v in table.items() if k not in ("profiles", "note")}, "format": 1,
            "rule": CALIBRATION_RULE, "profiles": profiles}


# ---------------------------------------------------------------- calibration

def run_calibration(cfg: BenchConfig, out: str | Path, table_out: str | Path | None = None,
                    overwrite: bool = False) -> dict:
    """`bench --calibrate`: per task and method, train at the grid's lrs (largest first) until one
    keeps the utility within ``tolerance`` of the start model's (``CALIBRATION_RULE``).

    Resumable: every finished (task, method, lr) is saved in ``calibration_state.json`` at once and
    a training run resumes from its epoch state. Writes ``OUT/calibration.json`` (a table with one
    profile) and, with ``table_out``, merges the profile into that table (e.g. the shipped one).
    """
    from prod_unlearn.bench import (_clear, _setup, _task_base_model, _task_data, check_keys,
                                    resolve_bench_defaults)
    from prod_unlearn.bench.scoring import evaluate_utility
    from prod_unlearn.data.examples import examples_hash
    from prod_unlearn.methods import get_method
    from prod_unlearn.methods.refusals import load_refusals
    from prod_unlearn.models.loading import load_model
    from prod_unlearn.training.defaults import resolve_train_config
    from prod_unlearn.training.loop import unlearn

    out = Path(out)
    if overwrite:
        _clear(out)
    cfg = resolve_bench_defaults(cfg)
    model_name, fingerprint, tok_hash = _setup(cfg)
    profile = calibration_profile(cfg, fingerprint, tok_hash)
    grid = sorted({float(x) for x in cfg.lr_grid}, reverse=True)
    if not grid:
        raise ValueError("--calibrate: the lr grid is empty")
    state_path = out / "calibration_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    keys = {"calibration": {**profile, "seed": cfg.seed, "tolerance": cfg.tolerance}}
    data = {}
    for task in cfg.tasks:
        spec, forget, evalset = _task_data(task, cfg)
        data[task] = (spec, forget)
        keys[task] = {"forget": examples_hash(forget), "n_forget": len(forget)}
    check_keys(state.get("keys", {}), keys, str(out))
    state["keys"] = {**state.get("keys", {}), **keys}
    state.setdefault("original", {})
    runs: dict = state.setdefault("runs", {})

    def save() -> None:
        atomic_write_json(state_path, state)

    prof = {"key": profile, "grid": sorted(grid), "tolerance": cfg.tolerance, "seed": cfg.seed, "tasks": {}}
    for task in cfg.tasks:
        spec, forget = data[task]
        base = _task_base_model(task, spec, forget, cfg, model_name, out)
        if task not in state["original"]:
            model, tok = load_model(base, cfg.device, "auto")
            u, u_items, _ = evaluate_utility(cfg.utility, model, tok, cfg, None)
            state["original"][task] = {"utility": u["utility"], "items": {"utility": u_items}}
            save()
        orig = state["original"][task]
        entry = {"data": examples_hash(forget), "original_utility": orig["utility"], "lr": {}, "qualified": {},
                 "utility": {}}
        for method in cfg.methods:
            tried = {}
            for lr in grid:
                key = f"{task}/{method}/{lr!r}"
                if key not in runs:
                    run_dir = out / "calibration" / task / method / f"lr-{lr:g}"
                    model, tok = load_model(base, cfg.device, "auto")
                    t0 = time.time()
                    tcfg = resolve_train_config(base, given_by="bench", epochs=cfg.epochs, lr=lr,
                                                max_length=cfg.max_length, seed=cfg.seed, batch_size=1, grad_accum=1)
                    try:
                        unlearn(model, tok, forget, get_method(method), tcfg, run_dir, refusals=load_refusals(),
                                model_name=base)
                        u, _, _ = evaluate_utility(cfg.utility, model, tok, cfg, orig)
                        runs[key] = {"lr": lr, "utility": u["utility"], "seconds": round(time.time() - t0, 1)}
                    except FloatingPointError as e:  # diverged: counts as broken
                        runs[key] = {"lr": lr, "utility": 0.0, "error": str(e).splitlines()[0]}
                    save()
                    shutil.rmtree(run_dir, ignore_errors=True)
                    console.print(f"[bold]calibrate[/bold] {key}: utility {runs[key]['utility']:.4f} "
                                  f"(start {orig['utility']:.4f})")
                tried[lr] = runs[key]["utility"]
                if qualifies(tried[lr], orig["utility"], cfg.tolerance):
                    break
            lr, ok = calibration_rule(orig["utility"], tried, cfg.tolerance)
            entry["lr"][method], entry["qualified"][method] = lr, ok
            entry["utility"][method] = {f"{k:g}": v for k, v in sorted(tried.items())}
        prof["tasks"][task] = entry
    table = merge_profile({"format": 1}, prof)
    atomic_write_json(out / "calibration.json", table)
    if table_out:
        table_out = Path(table_out)
        merged = merge_profile(load_calibration(table_out) if table_out.exists() else {"format": 1}, prof)
        atomic_write_json(table_out, merged)
    return table
