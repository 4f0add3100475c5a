"""`prod-unlearn bench`: methods x tasks -> unlearn, evaluate every epoch's checkpoint, attack,
PDR, report (Markdown + JSON + PNGs) in one folder.

Every finished cell (task, method, epoch) is written to ``results.json`` at once (atomically);
a restarted bench skips finished cells and resumes an interrupted training run from its state.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prod_unlearn.io import atomic_write_json, atomic_write_text
from prod_unlearn.progress import console


@dataclass
class BenchConfig:
    methods: list[str] = field(default_factory=lambda: ["prod", "ga", "npo", "dpo", "flat", "undial"])
    tasks: list[str] = field(default_factory=lambda: ["copyright", "insecure", "deprecated"])
    epochs: int = 2                  # 2 epochs x 12 items: the full default fits an hour on 2 cores
    lr: float = 3e-5                 # one learning rate for every method (embedded model)
    # Utility axis for PDR: health (default; code-health score, falls monotonically as a model is
    # damaged, measured in evaluation/health.py) | ppl (original / current held-out perplexity:
    # cheaper, but mild damage can *lower* perplexity) | humaneval (pass@1; 0 for tiny models).
    utility: str = "health"
    attack_ks: list[int] = field(default_factory=lambda: [0, 8, 16, 32, 64])
    max_items: int | None = 12       # first N items of each task's forget/eval set (0 or None: all)
    max_new_tokens: int = 256
    ppl_tokens: int = 30_000
    max_length: int = 1536
    model: str | None = None         # default: the embedded model
    device: str = "auto"
    seed: int = 0
    memorise_epochs: int = 8         # for tasks the model must first learn (ForgetTask.memorise_first)
    memorise_lr: float = 1e-3

    @classmethod
    def quick(cls, **kw) -> "BenchConfig":
        """Under 10 minutes on 2 cores: 3 methods, 2 epochs, 12 items a task, short generations."""
        base = dict(methods=["prod", "ga", "npo"], epochs=2, max_items=12, max_new_tokens=96, ppl_tokens=8_000,
                    attack_ks=[0, 16, 64], utility="ppl", memorise_epochs=6)
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)


def _utility(axis: str, model, tok, cfg: BenchConfig, original: dict | None) -> dict:
    """Evaluate the utility axis; ``utility`` is a higher-is-better scalar."""
    from prod_unlearn.evaluation.suite import UTILITY_TASKS, _load_builtin_tasks
    _load_builtin_tasks()
    if axis not in UTILITY_TASKS:
        raise ValueError(f"--utility {axis}: expected one of {', '.join(UTILITY_TASKS)}")
    res = UTILITY_TASKS[axis].evaluate(model, tok, ppl_tokens=cfg.ppl_tokens)
    if axis == "ppl":  # original / current perplexity: 1 = unchanged, -> 0 as the model breaks
        res["utility"] = round((original or res)["heldout_ppl"] / res["heldout_ppl"], 4)
    elif "utility" not in res:
        res["utility"] = res.get("pass_at_1", 0.0)
    return res


def _task_base_model(task: str, spec, forget, cfg: BenchConfig, model_name: str, out: Path) -> str:
    """The model a task starts from: the given one, or a copy that memorised the forget set."""
    if not spec.memorise_first:
        return model_name
    from prod_unlearn.models.loading import load_model
    from prod_unlearn.training.memorise import memorise
    base = out / "base" / task
    run = base / "run.json"
    if not (run.exists() and "total_seconds" in json.loads(run.read_text())):
        console.print(f"[bold]bench[/bold] {task}: memorising the forget set first ({cfg.memorise_epochs} epochs)")
        model, tok = load_model(model_name, cfg.device, "auto")
        memorise(model, tok, forget, base, epochs=cfg.memorise_epochs, lr=cfg.memorise_lr,
                 max_length=cfg.max_length, seed=cfg.seed, model_name=model_name)
    return str(base)


def run_bench(cfg: BenchConfig, out: str | Path) -> dict:
    from prod_unlearn.evaluation.attack import prefix_attack
    from prod_unlearn.evaluation.suite import FORGET_TASKS, _load_builtin_tasks
    from prod_unlearn.methods import get_method
    from prod_unlearn.methods.refusals import load_refusals
    from prod_unlearn.models.loading import DEFAULT_MODEL, load_model
    from prod_unlearn.training.loop import TrainConfig, unlearn

    _load_builtin_tasks()
    out = Path(out)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    cells: dict = results.setdefault("cells", {})
    results["config"] = asdict(cfg)
    model_name = cfg.model or str(DEFAULT_MODEL)
    for t in cfg.tasks:
        if t not in FORGET_TASKS:
            raise ValueError(f"--tasks {t}: expected some of {', '.join(FORGET_TASKS)}")
    for m in cfg.methods:
        get_method(m)

    def save() -> None:
        atomic_write_json(res_path, results)

    total = len(cfg.tasks) * (1 + len(cfg.methods) * cfg.epochs) + ("copyright" in cfg.tasks) * (1 + len(cfg.methods))
    t_start, done_now = time.time(), 0

    def tick(key: str) -> None:
        nonlocal done_now
        done_now += 1
        finished = len(cells)
        rate = (time.time() - t_start) / done_now
        console.print(f"[bold]bench[/bold] {key} done ({finished}/{total}, eta {rate * (total - finished) / 60:.1f} min)")

    def evaluate_cell(key: str, model, tok, task: str, examples) -> dict:
        spec = FORGET_TASKS[task]
        r = spec.evaluate(model, tok, examples, max_new_tokens=cfg.max_new_tokens)
        u = _utility(cfg.utility, model, tok, cfg, cells.get(f"{task}/original/0", {}).get("utility_eval"))
        r.update({k: v for k, v in u.items() if k not in ("n", "task")})  # the task's n stays
        return r

    for task in cfg.tasks:
        spec = FORGET_TASKS[task]
        forget, evalset = spec.load(spec.default_data)
        if cfg.max_items:  # deprecated.jsonl interleaves its APIs, so a prefix still covers them
            forget, evalset = forget[:cfg.max_items], evalset[:cfg.max_items]
        base = _task_base_model(task, spec, forget, cfg, model_name, out)
        key0 = f"{task}/original/0"
        if key0 not in cells:
            model, tok = load_model(base, cfg.device, "auto")
            r = evaluate_cell(key0, model, tok, task, evalset)
            r["utility_eval"] = {k: v for k, v in r.items() if k in ("heldout_ppl", "utility")}
            cells[key0] = r
            save()
            tick(key0)
        for method in cfg.methods:
            keys = [f"{task}/{method}/{e}" for e in range(1, cfg.epochs + 1)]
            if all(k in cells for k in keys):
                continue
            model, tok = load_model(base, cfg.device, "auto")

            def on_epoch(mm, epoch, task=task, method=method, tok=tok, evalset=evalset):
                key = f"{task}/{method}/{epoch}"
                if epoch == 0 or key in cells:
                    return cells.get(key, {})
                cells[key] = evaluate_cell(key, mm, tok, task, evalset)
                save()
                tick(key)
                return cells[key]

            tcfg = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, max_length=cfg.max_length, seed=cfg.seed)
            run_dir = out / "runs" / task / method
            unlearn(model, tok, forget, get_method(method), tcfg, run_dir,
                    refusals=load_refusals(), model_name=base, evaluate=on_epoch)
            for e, key in enumerate(keys, 1):  # trained before a stop, never evaluated: use its checkpoint
                if key not in cells:
                    ckpt, ctok = load_model(str(run_dir / "checkpoints" / f"epoch-{e}"), cfg.device, "auto")
                    on_epoch(ckpt, e, tok=ctok)
    if "copyright" in cfg.tasks:
        spec = FORGET_TASKS["copyright"]
        _, evalset = spec.load(spec.default_data)
        evalset = evalset[:cfg.max_items] if cfg.max_items else evalset
        for method in ["original"] + cfg.methods:
            key = f"attack/{method}"
            if key in cells:
                continue
            path = model_name if method == "original" else out / "runs" / "copyright" / method
            model, tok = load_model(str(path), cfg.device, "auto")
            a = prefix_attack(model, tok, evalset, cfg.attack_ks, max_new_tokens=min(128, cfg.max_new_tokens))
            cells[key] = {k: {str(kk): vv for kk, vv in v.items()} for k, v in a.items()}
            save()
            tick(key)
    report = write_report(results, out)
    results["pdr"] = report["pdr"]
    save()
    return results


def write_report(results: dict, out: Path) -> dict:
    """PDR table, Pareto PNG per task, attack PNG, report.md / report.json."""
    from prod_unlearn.evaluation.pareto import pdr, plot_attack, plot_pareto
    cfg, cells = results["config"], results["cells"]
    pdr_table, lines = {}, []
    lines += ["# prod-unlearn benchmark report", "",
              f"Model `{cfg['model'] or 'embedded'}`, methods {', '.join(cfg['methods'])}, {cfg['epochs']} epochs at "
              f"lr {cfg['lr']}, utility axis `{cfg['utility']}`" + (f", first {cfg['max_items']} items a task" if
                                                                     cfg["max_items"] else "") + ".", ""]
    for task in cfg["tasks"]:
        curves, points = {}, {}
        orig = cells.get(f"{task}/original/0")
        for m in cfg["methods"]:
            pts = [(cells[k]["forget_quality"], cells[k]["utility"]) for e in range(1, cfg["epochs"] + 1)
                   if (k := f"{task}/{m}/{e}") in cells]
            if pts:
                points[m] = pts
                curves[m] = ([(orig["forget_quality"], orig["utility"])] if orig else []) + pts
        pdr_table[task] = pdr(points)
        if curves:
            plot_pareto(curves, out / f"pareto_{task}.png", f"{task}: forget quality vs utility",
                        f"utility ({cfg['utility']})", (orig["forget_quality"], orig["utility"]) if orig else None)
        lines += [f"## {task}", "", f"![pareto](pareto_{task}.png)", "",
                  "| method | epoch | forget quality | utility | " + " | ".join(_extra_keys(cells, task)) + " |",
                  "|---|---|---|---|" + "---|" * len(_extra_keys(cells, task))]
        rows = [(k.split("/"), r) for k, r in cells.items() if k.startswith(f"{task}/")]
        for (_, m, e), r in sorted(rows, key=lambda x: (x[0][1] != "original", x[0][1], int(x[0][2]))):
            lines.append(f"| {m} | {e} | {r['forget_quality']:.3f} | {r['utility']:.3f} | " +
                         " | ".join(_fmt(r.get(x)) for x in _extra_keys(cells, task)) + " |")
        lines.append("")
    lines += ["## PDR (%), pooled over each method's epoch checkpoints", "",
              "| method | " + " | ".join(cfg["tasks"]) + " |", "|---|" + "---|" * len(cfg["tasks"])]
    for m in cfg["methods"]:
        lines.append(f"| {m} | " + " | ".join(f"{100 * pdr_table[t].get(m, 0):.1f}" for t in cfg["tasks"]) + " |")
    attacks = {m: cells[f"attack/{m}"] for m in ["original"] + cfg["methods"] if f"attack/{m}" in cells}
    if attacks:
        plot_attack({m: {int(k): v for k, v in a["gain"].items() if int(k) > 0} for m, a in attacks.items()},
                    out / "attack.png")
        ks = sorted(int(k) for k in next(iter(attacks.values()))["gain_mean"])
        lines += ["", "## Prefix-injection attack (copyright, final checkpoint): BLEU gain over k=0, mean [min, max]", "",
                  "![attack](attack.png)", "", "| method | BLEU k=0 | " + " | ".join(f"k={k}" for k in ks if k) + " |",
                  "|---|---|" + "---|" * len([k for k in ks if k])]
        for m, a in attacks.items():
            lines.append(f"| {m} | {a['bleu']['0']:.3f} | " + " | ".join(
                f"{a['gain_mean'][str(k)]:+.3f} [{a['gain_min'][str(k)]:+.2f}, {a['gain_max'][str(k)]:+.2f}]"
                for k in ks if k) + " |")
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    report = {"pdr": pdr_table, "config": cfg}
    atomic_write_json(out / "report.json", {**report, "cells": cells})
    return report


def _extra_keys(cells: dict, task: str) -> list[str]:
    keys: list[str] = []
    for k, r in cells.items():
        if k.startswith(f"{task}/"):
            keys += [x for x in r if x not in keys and x not in ("forget_quality", "utility", "utility_eval", "task",
                                                                   "seconds", "n") and not isinstance(r[x], dict)]
    return keys


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
