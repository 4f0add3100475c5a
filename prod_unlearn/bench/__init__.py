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
Settings left None (``epochs``, ``max_length``, ``default_lr``, ``memorise_lr``) come from the one
source every entry point reads (``training/defaults.py``, ``resolve_bench_defaults``): the model
folder's unlearn_defaults.json, else the paper's settings; the memorisation recipe for memorise_lr.

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

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prod_unlearn.attacks.bench import DEFAULT_KINDS, QUICK_KINDS
from prod_unlearn.bench.calibration import (LR_GRID, TARGET, TOLERANCE, calibration_profile, load_calibration,
                                            lookup_lr)
from prod_unlearn.io import atomic_write_json
from prod_unlearn.tasks.copyright import POINT_CUTS
from prod_unlearn.progress import console

FORMAT = 2                      # results.json layout (1: the old per-epoch protocol without items)


@dataclass
class BenchConfig:
    methods: list[str] = field(default_factory=lambda: ["prod", "ga", "npo", "dpo", "flat", "undial"])
    tasks: list[str] = field(default_factory=lambda: ["copyright", "insecure", "deprecated"])
    epochs: int | None = None        # None: the model's recommended epochs (training/defaults.py), else the paper's
    eval_points: int = 5             # evaluations per run, evenly spaced over its optimiser steps
    lr: float | None = None          # None: calibrated table (else default_lr); a number: shared by every method
    default_lr: float | None = None  # (task, method) pairs the calibrated table has no entry for [None: the
                                     # model's recommended lr (training/defaults.py), else the paper's]
    calibration: str | None = None   # calibrated table [default: prod_unlearn/assets/calibration.json]
    seeds: int = 1                   # runs per (task, method), data orders seed, seed + 1, ...
    # Utility axis for PDR: health (default; code-health score, falls monotonically as a model is
    # damaged, measured in tasks/health.py) | ppl (original / current held-out perplexity:
    # cheaper, but mild damage can *lower* perplexity) | humaneval (pass@1; 0 for tiny models).
    utility: str = "health"
    attack_ks: list[int] = field(default_factory=lambda: [0, 16, 64])
    # attack kinds run on the copyright task's final models (prod_unlearn/attacks/bench.py: budgets and
    # cost; about 6 min on 2 cores for these 7 models; every kind: prod_unlearn.attacks.KINDS)
    attacks: list[str] = field(default_factory=lambda: list(DEFAULT_KINDS))
    max_items: int | None = None     # first N items of each task's forget/eval set (0 or None: all)
    max_new_tokens: int = 256
    copyright_cuts: list[float] = field(default_factory=lambda: list(POINT_CUTS))   # line cuts scored per file
    ppl_tokens: int = 10_000
    max_length: int | None = None    # None: the model's recommended max length, else the paper's
    model: str | None = None         # default: the embedded model
    device: str = "auto"
    seed: int = 0
    memorise_epochs: int = 8         # for tasks the model must first learn (ForgetTask.memorise_first)
    memorise_lr: float | None = None  # None: the memorisation recipe's (training/defaults.py MEMORISE)
    bootstrap: int = 1000            # bootstrap resamples of the items (report only)
    level: float = 0.95              # interval level (report only)
    lr_grid: list[float] = field(default_factory=lambda: list(LR_GRID))   # --calibrate
    tolerance: float = TOLERANCE                                          # --calibrate
    rule: str = "utility"            # --calibrate: utility (largest lr within tolerance) | forget (matched forgetting)
    target: float = TARGET           # --rule forget: share of the gap to the retain model to close
    # the floor: a model never trained on the tasks' sets [None: the shipped retain model for the embedded
    # model (the tasks it never saw); "none": no floor]
    retain_model: str | None = None

    @classmethod
    def quick(cls, **kw) -> "BenchConfig":
        """Meant for ~10 minutes on 2 cores: 3 methods, 16 items a task, 4 points, short generations."""
        base = dict(methods=["prod", "ga", "npo"], epochs=1, eval_points=4, max_items=16, max_new_tokens=96,
                    ppl_tokens=8_000, attack_ks=[0, 16, 64], utility="ppl", memorise_epochs=6,
                    attacks=list(QUICK_KINDS))
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)


def resolve_bench_defaults(cfg: BenchConfig) -> BenchConfig:
    """``cfg`` with the settings left None filled from ``training/defaults.py`` (the model folder's
    unlearn_defaults.json, else the paper's; the memorisation recipe), as every entry point does."""
    from dataclasses import replace
    from prod_unlearn.training.defaults import MEMORISE, resolve_train_config
    from prod_unlearn.models.loading import RETAIN_MODEL
    t = resolve_train_config(cfg.model)
    pick = lambda mine, default: default if mine is None else mine  # noqa: E731
    return replace(cfg, epochs=pick(cfg.epochs, t.epochs), max_length=pick(cfg.max_length, t.max_length),
                   default_lr=pick(cfg.default_lr, t.lr), memorise_lr=pick(cfg.memorise_lr, MEMORISE["lr"]),
                   retain_model=pick(cfg.retain_model, "none" if cfg.model else str(RETAIN_MODEL)))


def retain_tasks(cfg: BenchConfig) -> list[str]:
    """The tasks the retain model is a floor for: those it never saw (the shipped one records its
    excluded sets; a user's retain model is taken at its word for every task)."""
    from prod_unlearn.models.loading import RETAIN_MODEL
    if not cfg.retain_model or cfg.retain_model == "none":
        return []
    if Path(cfg.retain_model).resolve() == RETAIN_MODEL.resolve():
        excluded = json.loads((RETAIN_MODEL / "pretrain.json").read_text())["excluded"]["sets"]
        return [t for t in cfg.tasks if t in excluded]
    return list(cfg.tasks)


def eval_steps(total_steps: int, points: int) -> list[int]:
    """``points`` evenly spaced optimiser steps in 1..total_steps, the last one = the end."""
    if total_steps <= 0 or points <= 0:
        return []
    return sorted({max(1, math.ceil(total_steps * k / points)) for k in range(1, points + 1)})


# ---------------------------------------------------------------- keys (what shapes the results)

def tokenizer_hash(tok) -> str:
    h = hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode())
    h.update(json.dumps([tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]).encode())
    return h.hexdigest()[:16]


def key_differences(old: dict, new: dict, scope: str = "") -> list[str]:
    """Readable differences between two keys (nested dicts)."""
    out = []
    for k in sorted(set(old) | set(new)):
        name = f"{scope}{k}"
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += key_differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name} was {a!r}, now {b!r}")
    return out


def check_keys(stored: dict, new: dict, where: str) -> None:
    """Refuse to reuse cells whose key differs (keys present on one side only are fine)."""
    diffs = []
    for name in new:
        if name in stored:
            diffs += [f"{name}: {d}" for d in key_differences(stored[name], new[name])]
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise ValueError(f"{where}: its cells were made with another setup: {'; '.join(diffs[:3])}{more}; "
                         f"rerun with --overwrite to start afresh, or use another --out")


def _clear(out: Path, names=("results.json", "report.md", "report.json", "attack.png", "runs", "base",
                             "calibration_state.json", "calibration.json", "calibration")) -> None:
    for n in names:
        p = out / n
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for p in [*out.glob("pareto_*.png"), *out.glob("attack_*.png")]:
        p.unlink()

# ---------------------------------------------------------------- the bench

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


def _task_data(task: str, cfg: BenchConfig):
    from prod_unlearn.tasks import FORGET_TASKS
    spec = FORGET_TASKS[task]
    forget, evalset = spec.load(spec.default_data)
    if cfg.max_items:  # deprecated.jsonl interleaves its APIs, so a prefix still covers them
        forget, evalset = forget[:cfg.max_items], evalset[:cfg.max_items]
    return spec, forget, evalset


def _setup(cfg: BenchConfig):
    """Validate names; (model name, fingerprint, tokenizer hash)."""
    from prod_unlearn.tasks import FORGET_TASKS, UTILITY_TASKS
    from prod_unlearn.methods import get_method
    from prod_unlearn.models.loading import DEFAULT_MODEL, load_model, model_fingerprint
    for t in cfg.tasks:
        if t not in FORGET_TASKS:
            raise ValueError(f"--tasks {t}: expected some of {', '.join(FORGET_TASKS)}")
    for m in cfg.methods:
        get_method(m)
    if cfg.attacks:
        from prod_unlearn.attacks.bench import parse_kinds
        parse_kinds(",".join(cfg.attacks))
    if cfg.utility not in UTILITY_TASKS:
        raise ValueError(f"--utility {cfg.utility}: expected one of {', '.join(UTILITY_TASKS)}")
    if cfg.seeds < 1 or cfg.eval_points < 1 or cfg.epochs < 1:
        raise ValueError("--seeds, --eval-points and --epochs must be at least 1")
    model_name = cfg.model or str(DEFAULT_MODEL)
    model, tok = load_model(model_name, cfg.device, "auto")  # as trained: the dtype is part of the fingerprint
    return model_name, model_fingerprint(model), tokenizer_hash(tok)


def matched_rules(table: dict, cfg: BenchConfig, fingerprint: str, tok_hash: str, keys: dict) -> dict:
    """{task: {rule: the calibrated table's entry}} for both rules where the table has them (the report
    sets each method's forgetting at matched utility beside its utility at matched forgetting)."""
    from dataclasses import replace
    out = {}
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
    from prod_unlearn import __version__
    from prod_unlearn.attacks import bench as attacks
    from prod_unlearn.bench.units import Context, Unit, execute
    from prod_unlearn.data.examples import examples_hash
    from prod_unlearn.methods import get_method
    from prod_unlearn.training.defaults import resolve_train_config

    out = Path(out)
    if overwrite:
        _clear(out)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {"format": FORMAT}
    if results.get("format") != FORMAT:
        raise ValueError(f"{out}: holds a bench of the old protocol (no per-item scores); rerun with --overwrite "
                         f"to start afresh, or use another --out")
    cfg = resolve_bench_defaults(cfg)
    model_name, fingerprint, tok_hash = _setup(cfg)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    table = load_calibration(cfg.calibration)
    profile = calibration_profile(cfg, fingerprint, tok_hash)

    # ---- keys and the plan (checked before any work)
    keys = {"bench": {"format": FORMAT, "prod_unlearn": __version__, "model_fingerprint": fingerprint,
                      "tokenizer": tok_hash, "utility": cfg.utility, "max_new_tokens": cfg.max_new_tokens,
                      "ppl_tokens": cfg.ppl_tokens, "copyright_cuts": cfg.copyright_cuts,
                      "max_length": cfg.max_length, "max_items": cfg.max_items or 0,
                      "memorise_epochs": cfg.memorise_epochs, "memorise_lr": cfg.memorise_lr,
                      "memorise_seed": cfg.seed, "attack_ks": sorted(set(cfg.attack_ks) | {0})}}
    if "copyright" in cfg.tasks:
        keys.update(attacks.keys(cfg))  # one entry per attack kind: its budget
    floor_tasks = retain_tasks(cfg)
    if floor_tasks:  # the floor's weights shape its cells (same tokenizer: checked before its weights load)
        from prod_unlearn.models.loading import load_companion, load_tokenizer, model_fingerprint
        keys["bench"]["retain_fingerprint"] = model_fingerprint(
            load_companion("--retain-model", cfg.retain_model, load_tokenizer(model_name), cfg.device))
    plan, data = {}, {}
    for task in cfg.tasks:
        spec, forget, evalset = _task_data(task, cfg)
        data[task] = (spec, forget, evalset)
        fh = examples_hash(forget)
        keys[task] = {"forget": fh, "eval": examples_hash(evalset), "n_forget": len(forget), "n_eval": len(evalset)}
        steps = eval_steps(len(forget) * cfg.epochs, cfg.eval_points)
        for method in cfg.methods:
            if cfg.lr is not None:
                lr, source = cfg.lr, "shared (--lr)"
            else:
                found = lookup_lr(table, profile, task, fh, method)
                lr, source = (found, "calibrated") if found is not None else \
                    (cfg.default_lr, "shared default (no calibrated entry for this setup)")
            for s in seeds:
                rid = f"{task}/{method}/s{s}"
                # the rest of the optimiser settings (scheduler, warm-up, clipping...: the model
                # folder's recommended values, else the paper's) shape the results too
                rest = asdict(resolve_train_config(model_name, given_by="bench", epochs=cfg.epochs, lr=lr,
                                                   max_length=cfg.max_length, seed=s, batch_size=1, grad_accum=1))
                keys[rid] = {"method": method, "params": asdict(get_method(method).params()), "lr": lr,
                             "epochs": cfg.epochs, "seed": s, "batch_size": 1, "eval_steps": steps,
                             "train": {k: v for k, v in rest.items() if k not in (
                                 "sources", "lr", "epochs", "seed", "batch_size", "eval_steps", "method_params")}}
                plan[rid] = {"task": task, "method": method, "seed": s, "lr": lr, "lr_source": source,
                             "eval_steps": steps, "steps_per_epoch": len(forget)}
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
    todo = [f"{t}/original" for t in cfg.tasks] + [f"{t}/retain" for t in floor_tasks] + \
        [f"{rid}/{s}" for rid, p in plan.items() for s in p["eval_steps"]]
    if "copyright" in cfg.tasks:
        todo += attacks.todo(cfg, "copyright" in floor_tasks)
        n_models = len(attacks.attacked_models(cfg.methods, "copyright" in floor_tasks))
        extra = attacks.estimate_seconds(cfg.attacks, n_models) / 60
        console.print(f"[bold]bench[/bold] attacks {', '.join(cfg.attacks) or 'prefix only'} on "
                      f"{n_models} models: about {extra:.0f} min beyond the prefix attack "
                      f"(2 cores, embedded model)")
    total = len(todo)
    t_start, done_now = time.time(), 0

    def tick(key: str) -> None:
        nonlocal done_now
        done_now += 1
        finished = sum(k in cells for k in todo)
        rate = (time.time() - t_start) / done_now
        console.print(f"[bold]bench[/bold] {key} done ({finished}/{total}, eta {rate * (total - finished) / 60:.1f} min)")

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

    base = {t: _task_base_model(t, data[t][0], data[t][1], cfg, model_name, out) for t in cfg.tasks}

    def context() -> Context:
        return Context(cfg, out, base, plan, {t: cells[f"{t}/original"] for t in cfg.tasks if f"{t}/original" in cells},
                       frozenset(cells))
    # 1. the start models (every utility is relative to theirs); 2. training runs and the floor; 3. attacks
    execute([Unit("original", t) for t in cfg.tasks if f"{t}/original" not in cells], context(), executor, emit)
    execute([Unit("retain", t) for t in floor_tasks if f"{t}/retain" not in cells] +
            [Unit("run", p["task"], rid=rid) for rid, p in plan.items()
             if any(f"{rid}/{st}" not in cells for st in p["eval_steps"])], context(), executor, emit)
    if "copyright" in cfg.tasks:  # the final model folders stay (only checkpoints/ is deleted)
        execute([Unit("attacks", "copyright", method=m)
                 for m in attacks.attacked_models(cfg.methods, "copyright" in floor_tasks)
                 if attacks.missing(cells, cfg, m)], context(), executor, emit)
    from prod_unlearn.report.bench import write_report   # the report reads this module: import when used
    report = write_report(results, out)
    results["pdr"] = report["pdr"]
    save()
    return results
