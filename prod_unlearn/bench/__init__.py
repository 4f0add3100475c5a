"""`prod-unlearn bench`: methods x tasks -> unlearn, evaluate evenly spaced points along training,
attack, PDR with bootstrap intervals, report (Markdown + JSON + PNGs) in one folder.

Protocol (defaults). Every item of every default task; each method trains ``epochs`` epochs at
batch 1 and is evaluated after ``eval_points`` evenly spaced optimiser steps (the last one is the
end of training), plus the model it starts from. Every evaluation keeps its per-item scores
(forget quality per forget item, the utility's items), so ``evaluation/stats.py`` can put 95 %
bootstrap intervals on every point, on PDR and on every paired difference between methods, and
the report marks which differences are larger than their intervals. ``seeds`` > 1 repeats every
run with other data orders and reports the spread across seeds.

Learning rates. By default each (task, method) trains at the lr of the calibrated table
(``assets/calibration.json``, made by ``bench --calibrate``: ``CALIBRATION_RULE``) when the table
holds an entry for this setup (model, tokenizer, utility axis, epochs, items, data); otherwise at
the shared ``default_lr``. ``lr`` set (CLI ``--lr``) = one lr for every method (the paper's setting).
Settings left None (``epochs``, ``max_length``, ``default_lr``) come from the one
source every entry point reads (``training/defaults.py``, ``resolve_bench_defaults``): the model
folder's unlearn_defaults.json, else the paper's settings.

Cost. The default (6 methods x 3 tasks, every item, 5 points each) is sized for an hour on 2
cores: the evaluation at every point is what costs, not the training. So the copyright task
scores one prompt per file at the bench's points (its text cut at the line nearest 50 %, as the
paper prompts one half per file; ``copyright_cuts``, as ``unlearn``; ``eval`` adds 25 and 75 %),
the health utility's perplexity reads the first 10 k held-out tokens, and the prefix attack tries
k = 0, 16, 64 (figures: README "Benchmark", ``benchmarks/README.md``).

Attacks. On the copyright task the kinds in ``attacks`` (default prefix, mia; ``--attacks
all`` for every kind) run on every method's final model (first seed; its folder stays, only its
checkpoints/ are deleted) and on the original, one cell each: ``prod_unlearn/attacks/bench.py``.

The floor. ``retain_model`` (default: the shipped retain model, trained like the embedded model
without the three default sets) is scored on every task it never saw (``{task}/retain``) and put
through the same attacks as the methods; the report gives each method's share of the gap from the
original to it that it closed (1 = as if never trained), with intervals.

Resuming. Every finished cell is written to ``results.json`` at once (atomically); a restarted
bench skips finished cells and resumes an interrupted training run from its state (a state is
written after every evaluation point). ``results.json`` also holds a key of everything that
shapes the results (model fingerprint, tokenizer, data hashes, method parameters, lr, epochs,
seed, evaluation steps, evaluation settings): a bench whose key differs from the folder's is
refused, naming the difference (``overwrite`` starts afresh).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prod_unlearn.bench.calibration import calibration_profile, load_calibration, lookup_lr
from prod_unlearn.bench.config import (
    FORMAT,
    BenchConfig,
    eval_steps,
    method_variant,
    resolve_bench_defaults,
    retain_tasks,
    upgrade,
)
from prod_unlearn.bench.setup import check_keys, clear, setup, task_data
from prod_unlearn.io import atomic_write_json
from prod_unlearn.progress import console

__all__ = ["FORMAT", "BenchConfig", "check_keys", "eval_steps", "matched_rules", "run_bench"]


def matched_rules(table: dict, cfg: BenchConfig, fingerprint: str, tok_hash: str, keys: dict) -> dict:
    """{task: {rule: the calibrated table's entry}} for both rules where the table has them (the report
    sets each method's forgetting at matched utility beside its utility at matched forgetting)."""
    from dataclasses import replace

    out: dict[str, dict[str, Any]] = {}
    for rule in ("utility", "forget"):
        if rule == "forget" and cfg.retain_model in (None, "none"):
            continue
        key = calibration_profile(replace(cfg, rule=rule), fingerprint, tok_hash)
        for p in table.get("profiles", []):
            if p.get("key") == key:
                for task in cfg.tasks:
                    entry = p.get("tasks", {}).get(task)
                    if entry and entry.get("data") == keys[task]["forget"]:
                        out.setdefault(task, {})[rule] = entry
    return out


def run_bench(cfg: BenchConfig, out: str | Path, overwrite: bool = False, executor: str = "local") -> dict:
    """The bench (module docstring); ``executor``: where its units run (bench/units.py: local | ray)."""
    from prod_unlearn.attacks import bench as attacks
    from prod_unlearn.bench.units import Context, Unit, execute
    from prod_unlearn.data.examples import examples_hash
    from prod_unlearn.methods import get_method
    from prod_unlearn.training.defaults import resolve_train_config
    from prod_unlearn.version import __version__

    out = Path(out)
    if overwrite:
        clear(out)
    res_path = out / "results.json"
    results: dict[str, Any] = upgrade(json.loads(res_path.read_text())) if res_path.exists() else {"format": FORMAT}
    if results.get("format") != FORMAT:
        raise ValueError(
            f"{out}: holds a bench of the old protocol (no per-item scores); rerun with --overwrite "
            f"to start afresh, or use another --out"
        )
    cfg = resolve_bench_defaults(cfg)
    assert cfg.epochs is not None and cfg.default_lr is not None  # filled by resolve_bench_defaults
    model_name, fingerprint, tok_hash = setup(cfg)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    table = load_calibration(cfg.calibration)
    profile = calibration_profile(cfg, fingerprint, tok_hash)

    # ---- keys and the plan (checked before any work)
    keys: dict[str, dict[str, Any]]
    keys = {
        "bench": {
            "format": FORMAT,
            "prod_unlearn": __version__,
            "model_fingerprint": fingerprint,
            "tokenizer": tok_hash,
            "utility": cfg.utility,
            "max_new_tokens": cfg.max_new_tokens,
            "ppl_tokens": cfg.ppl_tokens,
            "copyright_cuts": cfg.copyright_cuts,
            "max_length": cfg.max_length,
            "max_items": cfg.max_items or 0,
            "attack_ks": sorted(set(cfg.attack_ks) | {0}),
        }
    }
    if "copyright" in cfg.tasks:
        keys.update(attacks.keys(cfg))  # one entry per attack kind: its budget
    floor_tasks = retain_tasks(cfg)
    if floor_tasks:  # the floor's weights shape its cells (same tokenizer: checked before its weights load)
        from prod_unlearn.models.loading import load_companion, load_tokenizer, model_fingerprint

        assert cfg.retain_model is not None  # retain_tasks: no floor without a retain model
        keys["bench"]["retain_fingerprint"] = model_fingerprint(
            load_companion("--retain-model", cfg.retain_model, load_tokenizer(model_name), cfg.device)
        )
    plan: dict[str, dict[str, Any]] = {}
    data = {}
    for task in cfg.tasks:
        spec, forget, evalset = task_data(task, cfg)
        data[task] = (spec, forget, evalset)
        fh = examples_hash(forget)
        keys[task] = {"forget": fh, "eval": examples_hash(evalset), "n_forget": len(forget), "n_eval": len(evalset)}
        steps = eval_steps(len(forget) * cfg.epochs, cfg.eval_points)
        for method in cfg.methods:
            variant = method_variant(method)  # a +sam / +distill variant trains at its method's lr
            registered = variant.method
            if cfg.lr is not None:
                lr, source = cfg.lr, "shared (--lr)"
            else:
                found = lookup_lr(table, profile, task, fh, method) or lookup_lr(table, profile, task, fh, registered)
                lr, source = (
                    (found, "calibrated")
                    if found is not None
                    else (cfg.default_lr, "shared default (no calibrated entry for this setup)")
                )
            for s in seeds:
                rid = f"{task}/{method}/s{s}"
                # the rest of the optimiser settings (scheduler, warm-up, clipping...: the model
                # folder's recommended values, else the paper's) shape the results too
                rest = asdict(
                    resolve_train_config(
                        model_name,
                        given_by="bench",
                        epochs=cfg.epochs,
                        lr=lr,
                        max_length=cfg.max_length,
                        seed=s,
                        batch_size=1,
                        grad_accum=1,
                        sam_rho=variant.sam or None,
                    )
                )
                keys[rid] = {
                    "method": method,
                    "params": asdict(get_method(registered).params()),
                    "lr": lr,
                    "epochs": cfg.epochs,
                    "seed": s,
                    "batch_size": 1,
                    "eval_steps": steps,
                    **({"distill": asdict(d)} if (d := variant.distill_config()) else {}),
                    "train": {
                        k: v
                        for k, v in rest.items()
                        if k not in ("sources", "lr", "epochs", "seed", "batch_size", "eval_steps", "method_params")
                    },
                }
                plan[rid] = {
                    "task": task,
                    "method": method,
                    "seed": s,
                    "lr": lr,
                    "lr_source": source,
                    "eval_steps": steps,
                    "steps_per_epoch": len(forget),
                }
    results["calibration"] = matched_rules(table, cfg, fingerprint, tok_hash, keys)
    check_keys(results.get("keys", {}), keys, str(out))
    results["keys"] = {**results.get("keys", {}), **keys}
    results["config"] = {**asdict(cfg), "floor_tasks": floor_tasks}
    results["runs"] = {**results.get("runs", {}), **plan}
    results.setdefault("items", {})
    cells: dict = results.setdefault("cells", {})

    def save() -> None:
        atomic_write_json(res_path, results)

    save()
    todo = (
        [f"{t}/original" for t in cfg.tasks]
        + [f"{t}/retain" for t in floor_tasks]
        + [f"{rid}/{s}" for rid, p in plan.items() for s in p["eval_steps"]]
    )
    if "copyright" in cfg.tasks:
        todo += attacks.todo(cfg, "copyright" in floor_tasks)
        n_models = len(attacks.attacked_models(cfg.methods, "copyright" in floor_tasks))
        extra = attacks.estimate_seconds(cfg.attacks, n_models) / 60
        console.print(
            f"[bold]bench[/bold] attacks {', '.join(cfg.attacks) or 'prefix only'} on "
            f"{n_models} models: about {extra:.0f} min beyond the prefix attack "
            f"(2 cores, embedded model)"
        )
    total = len(todo)
    t_start, done_now = time.time(), 0

    def tick(key: str) -> None:
        nonlocal done_now
        done_now += 1
        finished = sum(k in cells for k in todo)
        rate = (time.time() - t_start) / done_now
        eta = rate * (total - finished) / 60
        console.print(f"[bold]bench[/bold] {key} done ({finished}/{total}, eta {eta:.1f} min)")

    def record_ids(task: str, kind: str, ids) -> None:
        if ids is None:
            return
        have = results["items"].setdefault(task, {})
        if kind in have and have[kind] != list(ids):
            raise RuntimeError(f"{task}: the {kind} items changed between evaluations")
        have[kind] = list(ids)

    def emit(key: str, cell: dict) -> None:
        """A new cell from a unit (here or on a worker): checked, saved at once."""
        for kind, ids in (cell.pop("_ids", None) or {}).items():
            record_ids(key.split("/")[0], kind, ids)
        cells[key] = cell
        save()
        tick(key)

    base = {t: model_name for t in cfg.tasks}  # every task starts from the model as given

    def context() -> Context:
        return Context(
            cfg,
            out,
            base,
            plan,
            {t: cells[f"{t}/original"] for t in cfg.tasks if f"{t}/original" in cells},
            frozenset(cells),
        )

    # 1. the start models (every utility is relative to theirs); 2. training runs and the floor; 3. attacks
    execute([Unit("original", t) for t in cfg.tasks if f"{t}/original" not in cells], context(), executor, emit)
    execute(
        [Unit("retain", t) for t in floor_tasks if f"{t}/retain" not in cells]
        + [
            Unit("run", p["task"], rid=rid)
            for rid, p in plan.items()
            if any(f"{rid}/{st}" not in cells for st in p["eval_steps"])
        ],
        context(),
        executor,
        emit,
    )
    if "copyright" in cfg.tasks:  # the final model folders stay (only checkpoints/ is deleted)
        execute(
            [
                Unit("attacks", "copyright", method=m)
                for m in attacks.attacked_models(cfg.methods, "copyright" in floor_tasks)
                if attacks.missing(cells, cfg, m)
            ],
            context(),
            executor,
            emit,
        )
    from prod_unlearn.report.bench import write_report  # the report reads this module: import when used

    report = write_report(results, out)
    results["pdr"] = report["pdr"]
    save()
    return results
