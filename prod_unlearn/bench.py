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

Attacks. On the copyright task the kinds in ``attacks`` (default prefix, mia, quantize; ``--attacks
all`` for every kind) run on every method's final model (first seed; its folder stays, only its
checkpoints/ are deleted) and on the original, one cell each: ``prod_unlearn/attacks/bench.py``.

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

from prod_unlearn.io import atomic_write_json, atomic_write_text, read_json
from prod_unlearn.progress import console

FORMAT = 2                      # results.json layout (1: the old per-epoch protocol without items)
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
    # damaged, measured in evaluation/health.py) | ppl (original / current held-out perplexity:
    # cheaper, but mild damage can *lower* perplexity) | humaneval (pass@1; 0 for tiny models).
    utility: str = "health"
    attack_ks: list[int] = field(default_factory=lambda: [0, 8, 16, 32, 64])
    # attack kinds run on the copyright task's final models (prod_unlearn/attacks/bench.py: budgets and
    # cost; about 10 min on 2 cores for these 7 models; every kind: prod_unlearn.attacks.KINDS)
    attacks: list[str] = field(default_factory=lambda: ["prefix", "mia", "quantize"])
    max_items: int | None = None     # first N items of each task's forget/eval set (0 or None: all)
    max_new_tokens: int = 256
    ppl_tokens: int = 30_000
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

    @classmethod
    def quick(cls, **kw) -> "BenchConfig":
        """Meant for ~10 minutes on 2 cores: 3 methods, 16 items a task, 4 points, short generations."""
        base = dict(methods=["prod", "ga", "npo"], epochs=1, eval_points=4, max_items=16, max_new_tokens=96,
                    ppl_tokens=8_000, attack_ks=[0, 16, 64], utility="ppl", memorise_epochs=6,
                    attacks=["prefix", "mia"])
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)


def resolve_bench_defaults(cfg: BenchConfig) -> BenchConfig:
    """``cfg`` with the settings left None filled from ``training/defaults.py`` (the model folder's
    unlearn_defaults.json, else the paper's; the memorisation recipe), as every entry point does."""
    from dataclasses import replace
    from prod_unlearn.training.defaults import MEMORISE, resolve_train_config
    t = resolve_train_config(cfg.model)
    pick = lambda mine, default: default if mine is None else mine  # noqa: E731
    return replace(cfg, epochs=pick(cfg.epochs, t.epochs), max_length=pick(cfg.max_length, t.max_length),
                   default_lr=pick(cfg.default_lr, t.lr), memorise_lr=pick(cfg.memorise_lr, MEMORISE["lr"]))


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


# ---------------------------------------------------------------- evaluation with per-item scores

def evaluate_forget(task: str, model, tok, examples, cfg: BenchConfig) -> tuple[dict, dict | None]:
    """(figures, {item id: forget quality} or None)."""
    from prod_unlearn.evaluation.suite import FORGET_TASKS
    r = FORGET_TASKS[task].evaluate(model, tok, examples, max_new_tokens=cfg.max_new_tokens, token_half=False)
    return r, r.pop("per_item", None)


def heldout_windows(tok, context: int, max_tokens: int | None) -> tuple[list[str], list[list[int]]]:
    """The held-out perplexity windows (as ``metrics.perplexity`` cuts them) with ids."""
    from prod_unlearn.data.examples import load_examples
    from prod_unlearn.evaluation.metrics import first_windows, windows_of
    from prod_unlearn.evaluation.suite import HELDOUT
    named = [(f"{e.id}#{k}", w) for e in load_examples(HELDOUT)
             for k, w in enumerate(windows_of(tok, [e.completion], context))]
    named = named[:first_windows([w for _, w in named], max_tokens)]
    return [n for n, _ in named], [w for _, w in named]


def window_nll(model, tok, windows: list[list[int]], batch_size: int = 8) -> tuple[list[float], list[int]]:
    """Summed next-token NLL and scored-token count per window."""
    import torch
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    from prod_unlearn.data.tokenize import pad_id, right_pad
    pad = pad_id(tok)
    nll, count = [0.0] * len(windows), [0] * len(windows)
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            rows = order[s:s + batch_size]
            ids, mask = (t.to(device) for t in right_pad([windows[i] for i in rows], pad))
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            tgt = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt, ignore_index=-100, reduction="none")
            for r, i in enumerate(rows):
                nll[i] = float(loss[r].sum())
                count[i] = int((tgt[r] != -100).sum())
    model.train(was_training)
    return nll, count


def evaluate_utility(axis: str, model, tok, cfg: BenchConfig, original: dict | None
                     ) -> tuple[dict, dict | None, list[str] | None]:
    """(figures incl. ``utility`` (higher is better), utility items for the bootstrap, item ids)."""
    from prod_unlearn.evaluation.suite import UTILITY_TASKS
    if axis not in UTILITY_TASKS:
        raise ValueError(f"--utility {axis}: expected one of {', '.join(UTILITY_TASKS)}")
    if axis == "ppl":  # original / current perplexity on the same windows: 1 = unchanged, -> 0 as the model breaks
        ctx = min(1024, int(getattr(model.config, "max_position_embeddings", 1024) or 1024))
        ids, windows = heldout_windows(tok, ctx, cfg.ppl_tokens)
        nll, count = window_nll(model, tok, windows)
        mean = sum(nll) / max(1, sum(count))
        items = {"kind": "ppl", "nll": nll, "tokens": count}
        o = (original or {}).get("items", {}).get("utility") if original else None
        o_mean = sum(o["nll"]) / max(1, sum(o["tokens"])) if o else mean
        ppl = math.exp(mean) if mean < 700 else float("inf")
        return {"heldout_ppl": round(ppl, 3), "utility": round(math.exp(o_mean - mean), 4) if mean < 700 else 0.0}, \
            items, ids
    if axis in ("health", "humaneval"):
        res = UTILITY_TASKS[axis].evaluate(model, tok, ppl_tokens=cfg.ppl_tokens, details=True)
        if axis == "health":
            per = res.pop("per_prompt", None)
            items = {"kind": "health", "healthy": [float(bool(p["healthy"])) for p in per],
                     "heldout_ppl": res["heldout_ppl"]} if per else None
        else:
            per = res.pop("per_problem", None)
            res["utility"] = res.get("pass_at_1", 0.0)
            items = {"kind": "mean", "values": [float(bool(p["passed"])) for p in per]} if per else None
        ids = [str(p.get("id", p.get("task_id", i))) for i, p in enumerate(per)] if per else None
        return res, items, ids
    res = UTILITY_TASKS[axis].evaluate(model, tok, ppl_tokens=cfg.ppl_tokens)
    res.setdefault("utility", res.get("pass_at_1", 0.0))
    return res, None, None


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
    from prod_unlearn.evaluation.suite import FORGET_TASKS
    spec = FORGET_TASKS[task]
    forget, evalset = spec.load(spec.default_data)
    if cfg.max_items:  # deprecated.jsonl interleaves its APIs, so a prefix still covers them
        forget, evalset = forget[:cfg.max_items], evalset[:cfg.max_items]
    return spec, forget, evalset


def _setup(cfg: BenchConfig):
    """Validate names; (model name, fingerprint, tokenizer hash)."""
    from prod_unlearn.evaluation.suite import FORGET_TASKS, UTILITY_TASKS
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


def run_bench(cfg: BenchConfig, out: str | Path, overwrite: bool = False) -> dict:
    from prod_unlearn import __version__
    from prod_unlearn.attacks import bench as attacks
    from prod_unlearn.data.examples import examples_hash
    from prod_unlearn.methods import get_method
    from prod_unlearn.methods.refusals import load_refusals
    from prod_unlearn.models.loading import load_model
    from prod_unlearn.training.defaults import resolve_train_config
    from prod_unlearn.training.loop import unlearn

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
                      "ppl_tokens": cfg.ppl_tokens, "max_length": cfg.max_length, "max_items": cfg.max_items or 0,
                      "memorise_epochs": cfg.memorise_epochs, "memorise_lr": cfg.memorise_lr,
                      "memorise_seed": cfg.seed, "attack_ks": sorted(set(cfg.attack_ks) | {0})}}
    if "copyright" in cfg.tasks:
        keys.update(attacks.keys(cfg))  # one entry per attack kind: its budget
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
    check_keys(results.get("keys", {}), keys, str(out))
    results["keys"] = {**results.get("keys", {}), **keys}
    results["config"] = asdict(cfg)
    results["runs"] = {**results.get("runs", {}), **plan}
    results.setdefault("items", {})
    cells: dict = results.setdefault("cells", {})

    def save() -> None:
        atomic_write_json(res_path, results)

    save()
    todo = [f"{t}/original" for t in cfg.tasks] + [f"{rid}/{s}" for rid, p in plan.items() for s in p["eval_steps"]]
    if "copyright" in cfg.tasks:
        todo += attacks.todo(cfg)
        extra = attacks.estimate_seconds(cfg.attacks, len(cfg.methods) + 1) / 60
        console.print(f"[bold]bench[/bold] attacks {', '.join(cfg.attacks) or 'prefix only'} on "
                      f"{len(cfg.methods) + 1} models: about {extra:.0f} min beyond the prefix attack "
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

    def evaluate_cell(task: str, model, tok, examples) -> dict:
        r, per_item = evaluate_forget(task, model, tok, examples, cfg)
        u, u_items, u_ids = evaluate_utility(cfg.utility, model, tok, cfg, cells.get(f"{task}/original"))
        r.update({k: v for k, v in u.items() if k not in ("n", "task")})  # the task's n stays
        r["items"] = {"fq": list(per_item.values()) if per_item else None, "utility": u_items}
        record_ids(task, "forget", list(per_item) if per_item else None)
        record_ids(task, "utility", u_ids)
        return r

    for task in cfg.tasks:
        spec, forget, evalset = data[task]
        base = _task_base_model(task, spec, forget, cfg, model_name, out)
        key0 = f"{task}/original"
        if key0 not in cells:
            model, tok = load_model(base, cfg.device, "auto")
            cells[key0] = evaluate_cell(task, model, tok, evalset)
            save()
            tick(key0)
        for rid, p in plan.items():
            if p["task"] != task:
                continue
            keys_ = [f"{rid}/{s}" for s in p["eval_steps"]]
            if all(k in cells for k in keys_):
                continue
            run_dir = out / "runs" / task / p["method"] / f"s{p['seed']}"
            for attempt in range(2):
                rec = run_dir / "run.json"
                if attempt or rec.exists() and "total_seconds" in json.loads(rec.read_text()):
                    # trained to the end but some points never recorded: retrain (same data order);
                    # only the missing points are evaluated
                    shutil.rmtree(run_dir, ignore_errors=True)
                model, tok = load_model(base, cfg.device, "auto")

                def on_step(mm, step, rid=rid, p=p, tok=tok, task=task, evalset=evalset):
                    key = f"{rid}/{step}"
                    if key in cells:
                        return
                    r = evaluate_cell(task, mm, tok, evalset)
                    r["step"], r["epoch"] = step, round(step / max(1, p["steps_per_epoch"]), 3)
                    cells[key] = r
                    save()
                    tick(key)

                tcfg = resolve_train_config(base, given_by="bench", epochs=cfg.epochs, lr=p["lr"],
                                            max_length=cfg.max_length, seed=p["seed"], eval_steps=p["eval_steps"],
                                            batch_size=1, grad_accum=1)
                unlearn(model, tok, forget, get_method(p["method"]), tcfg, run_dir,
                        refusals=load_refusals(), model_name=base, step_evaluate=on_step)
                missing = [k for k in keys_ if k not in cells]
                if not missing:
                    break
            else:
                raise RuntimeError(f"{run_dir}: training ended without evaluating {', '.join(missing)}")
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # states and epoch folders: GBs in all
    if "copyright" in cfg.tasks:  # the final model folder stays (only checkpoints/ is deleted)
        spec, forget, evalset = data["copyright"]
        base = _task_base_model("copyright", spec, forget, cfg, model_name, out)

        def load_final(method: str):
            if method == "original":
                return load_model(base, cfg.device, "auto")
            path = out / "runs" / "copyright" / method / f"s{seeds[0]}"
            if not (path / "config.json").exists():
                raise FileNotFoundError(f"{path}: the final model of {method} is gone (the attacks need it); "
                                        f"rerun with --overwrite")
            return load_model(str(path), cfg.device, "auto")

        def attack_done(key: str) -> None:
            save()
            tick(key)

        attacks.run_cells(cells, cfg, evalset, load_final, attack_done)
    report = write_report(results, out)
    results["pdr"] = report["pdr"]
    save()
    return results


# ---------------------------------------------------------------- calibration

def run_calibration(cfg: BenchConfig, out: str | Path, table_out: str | Path | None = None,
                    overwrite: bool = False) -> dict:
    """`bench --calibrate`: per task and method, train at the grid's lrs (largest first) until one
    keeps the utility within ``tolerance`` of the start model's (``CALIBRATION_RULE``).

    Resumable: every finished (task, method, lr) is saved in ``calibration_state.json`` at once and
    a training run resumes from its epoch state. Writes ``OUT/calibration.json`` (a table with one
    profile) and, with ``table_out``, merges the profile into that table (e.g. the shipped one).
    """
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


# ---------------------------------------------------------------- the report

def _ci(s: dict | None, scale: float = 1.0, digits: int = 3, signed: bool = False) -> str:
    if not s:
        return "-"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(s['point'] * scale)} [{f.format(s['lo'] * scale)}, {f.format(s['hi'] * scale)}]"


def _diff(d: dict, a: str, b: str, scale: float = 1.0, digits: int = 3) -> str:
    f = f"{{:+.{digits}f}}"
    txt = f"{f.format(d['diff'] * scale)} [{f.format(d['lo'] * scale)}, {f.format(d['hi'] * scale)}]"
    if not d["separated"]:
        return f"tie: {txt}"
    return f"**{a if d['diff'] > 0 else b}**: {txt}"


def _ordered(pairs: dict) -> list[str]:
    """'a > b' for each separated pair."""
    out = []
    for name, d in pairs.items():
        if d["separated"]:
            a, b = name.split(" vs ")
            out.append(f"{a} > {b}" if d["diff"] > 0 else f"{b} > {a}")
    return out


def _seeds(cfg: dict) -> list[int]:
    return [cfg["seed"] + i for i in range(cfg.get("seeds", 1))]


def write_report(results: dict, out: Path) -> dict:
    """Bootstrap statistics, PDR table, Pareto PNG per task, attack PNGs, report.md / report.json."""
    from prod_unlearn.attacks.bench import report_sections
    from prod_unlearn.evaluation.pareto import plot_attack, plot_pareto
    from prod_unlearn.evaluation.stats import bootstrap_task, combine_mean
    if results.get("format") != FORMAT:
        raise ValueError(f"{out}: results.json is from the old bench protocol (no per-item scores); "
                         f"rerun `prod-unlearn bench` to re-measure")
    out = Path(out)
    cfg, cells, runs_info = results["config"], results["cells"], results.get("runs", {})
    seeds, level = _seeds(cfg), cfg.get("level", 0.95)
    pct = f"{round(100 * level)} %"
    stats, pdr_reps, pdr_table = {}, {}, {}
    for ti, task in enumerate(cfg["tasks"]):
        runs = {}
        for m in cfg["methods"]:
            by_seed = {}
            for s in seeds:
                info = runs_info.get(f"{task}/{m}/s{s}")
                cs = [cells[k] for st in (info or {}).get("eval_steps", []) if (k := f"{task}/{m}/s{s}/{st}") in cells]
                if cs:
                    by_seed[s] = cs
            if by_seed:
                runs[m] = by_seed
        st = bootstrap_task(cells.get(f"{task}/original"), runs, cfg.get("bootstrap", 1000), seed=[cfg["seed"], ti],
                            level=level)
        pdr_reps[task] = st.pop("_replicates")["pdr"]
        stats[task] = st
        pdr_table[task] = {m: e["pdr"]["point"] for m, e in st["methods"].items()}
    overall = combine_mean(pdr_reps, level) if len(pdr_reps) > 1 else None

    lines = ["# prod-unlearn benchmark report", "",
             f"Model `{cfg['model'] or 'embedded'}`; methods {', '.join(cfg['methods'])}; {cfg['epochs']} epoch(s), "
             f"evaluated after {cfg['eval_points']} evenly spaced optimiser steps (batch 1) and before training; "
             f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}: data orders); utility axis `{cfg['utility']}`; "
             + (f"first {cfg['max_items']} items a task" if cfg.get("max_items") else "every item of every task") + ".",
             "",
             f"Intervals: {pct} percentile bootstrap over the evaluation items ({cfg.get('bootstrap', 1000)} "
             "resamples, seeded): each resample draws the forget items and the utility items with replacement and "
             "recomputes every evaluation point of every method and the PDR from them. Differences between two "
             "methods are paired (the same resample for both): **bold** names the better method when the interval "
             "of the difference excludes 0; `tie` otherwise." + (" With several seeds a figure is the mean over "
                                                               "seeds; `seeds` gives its spread across them."
                                                               if len(seeds) > 1 else ""), "",
             "## Learning rates", "",
             "| method | " + " | ".join(cfg["tasks"]) + " |", "|---|" + "---|" * len(cfg["tasks"])]
    for m in cfg["methods"]:
        row = []
        for t in cfg["tasks"]:
            info = runs_info.get(f"{t}/{m}/s{seeds[0]}")
            row.append(f"{info['lr']:g} ({info['lr_source']})" if info else "-")
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    lines += ["", f"Calibration rule (`bench --calibrate`): {CALIBRATION_RULE}", ""]

    for task in cfg["tasks"]:
        st = stats[task]
        orig = st.get("original")
        curves, errors = {}, {}
        for m, by_seed in st["points"].items():
            pts = by_seed.get(str(seeds[0])) or next(iter(by_seed.values()))
            seq = ([orig] if orig else []) + pts
            curves[m] = [(p["forget_quality"]["point"], p["utility"]["point"]) for p in seq]
            errors[m] = [(p["forget_quality"]["lo"], p["forget_quality"]["hi"], p["utility"]["lo"], p["utility"]["hi"])
                         for p in seq]
        if curves:
            plot_pareto(curves, out / f"pareto_{task}.png",
                        f"{task}: forget quality vs utility ({pct} intervals"
                        + (f", seed {seeds[0]})" if len(seeds) > 1 else ")"),
                        f"utility ({cfg['utility']})",
                        (orig["forget_quality"]["point"], orig["utility"]["point"]) if orig else None, errors)
        n = st["n_items"]
        lines += [f"## {task}", "", f"![pareto](pareto_{task}.png)", "",
                  f"Items resampled: {n['forget']} forget items, {n['utility']} utility items "
                  "(0 = no per-item scores: no interval).", "",
                  f"| method | lr | PDR % | final forget quality | final utility |" +
                  (" PDR % by seed (sd) |" if len(seeds) > 1 else ""),
                  "|---|---|---|---|---|" + ("---|" if len(seeds) > 1 else "")]
        if orig:
            lines.append(f"| original | - | - | {_ci(orig['forget_quality'])} | {_ci(orig['utility'])} |" +
                         (" - |" if len(seeds) > 1 else ""))
        for m, e in st["methods"].items():
            info = runs_info.get(f"{task}/{m}/s{seeds[0]}", {})
            row = f"| {m} | {info.get('lr', 0):g} | {_ci(e['pdr'], 100, 1)} | {_ci(e['final_forget_quality'])} | " \
                  f"{_ci(e['final_utility'])} |"
            if len(seeds) > 1:
                sp = e["pdr"]
                row += " " + ", ".join(f"{100 * v:.1f}" for v in sp["seeds"].values()) + \
                    (f" ({100 * sp['seed_sd']:.1f})" if "seed_sd" in sp else "") + " |"
            lines.append(row)
        pairs = st["pairs"]
        if pairs.get("pdr"):
            lines += ["", f"Paired differences (row method minus column method, {pct} interval):", "",
                      "| pair | PDR (pp) | final forget quality | final utility |", "|---|---|---|---|"]
            for name in pairs["pdr"]:
                a, b = name.split(" vs ")
                lines.append(f"| {name} | {_diff(pairs['pdr'][name], a, b, 100, 1)} | "
                             f"{_diff(pairs['final_forget_quality'][name], a, b)} | "
                             f"{_diff(pairs['final_utility'][name], a, b)} |")
            sep = _ordered(pairs["pdr"])
            lines += ["", f"PDR differences larger than their intervals: {', '.join(sep) if sep else 'none'}; "
                          f"the other {len(pairs['pdr']) - len(sep)} pair(s) are ties."]
        extra = _extra_keys(cells, task)
        lines += ["", "Evaluation points:", "",
                  "| method | seed | step | epoch | forget quality | utility | " + " | ".join(extra) + " |",
                  "|---|---|---|---|---|---|" + "---|" * len(extra)]
        c0 = cells.get(f"{task}/original")
        if orig and c0:
            lines.append(f"| original | - | 0 | 0 | {_ci(orig['forget_quality'])} | {_ci(orig['utility'])} | " +
                         " | ".join(_fmt(c0.get(x)) for x in extra) + " |")
        for m, by_seed in st["points"].items():
            for s, pts in by_seed.items():
                for p in pts:
                    c = cells.get(f"{task}/{m}/s{s}/{p['step']}", {})
                    lines.append(f"| {m} | {s} | {p['step']} | {p['epoch']} | {_ci(p['forget_quality'])} | "
                                 f"{_ci(p['utility'])} | " + " | ".join(_fmt(c.get(x)) for x in extra) + " |")
        lines.append("")
    if overall:
        lines += ["## PDR averaged over the tasks", "", f"| method | mean PDR % [{pct}] |", "|---|---|"]
        for m, s in overall["methods"].items():
            lines.append(f"| {m} | {_ci(s, 100, 1)} |")
        sep = _ordered(overall["pairs"])
        lines += ["", f"Differences larger than their intervals: {', '.join(sep) if sep else 'none'}; "
                      f"the other {len(overall['pairs']) - len(sep)} pair(s) are ties.", ""]
    attacks = {m: cells[f"attack/{m}"] for m in ["original"] + cfg["methods"] if f"attack/{m}" in cells}
    if attacks:
        plot_attack({m: {int(k): v for k, v in a["gain"].items() if int(k) > 0} for m, a in attacks.items()},
                    out / "attack.png")
        ks = sorted(int(k) for k in next(iter(attacks.values()))["gain_mean"])
        lines += ["## Prefix-injection attack (copyright, final model of the first seed): BLEU gain over k=0, "
                  "mean [min, max]", "",
                  "![attack](attack.png)", "", "| method | BLEU k=0 | " + " | ".join(f"k={k}" for k in ks if k) + " |",
                  "|---|---|" + "---|" * len([k for k in ks if k])]
        for m, a in attacks.items():
            lines.append(f"| {m} | {a['bleu']['0']:.3f} | " + " | ".join(
                f"{a['gain_mean'][str(k)]:+.3f} [{a['gain_min'][str(k)]:+.2f}, {a['gain_max'][str(k)]:+.2f}]"
                for k in ks if k) + " |")
        lines.append("")
    attack_lines, attack_stats = report_sections(cells, cfg, out)
    lines += attack_lines
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    report = {"format": FORMAT, "pdr": pdr_table, "config": cfg, "stats": stats, "pdr_mean": overall,
              "attacks": attack_stats}
    atomic_write_json(out / "report.json", {**report, "runs": runs_info,
                                            "cells": {k: {kk: vv for kk, vv in v.items() if kk != "items"}
                                                      for k, v in cells.items()}})
    return report


def _extra_keys(cells: dict, task: str) -> list[str]:
    keys: list[str] = []
    skip = ("forget_quality", "utility", "utility_eval", "task", "seconds", "n", "step", "epoch", "items")
    for k, r in cells.items():
        if k.startswith(f"{task}/"):
            keys += [x for x in r if x not in keys and x not in skip and not isinstance(r[x], (dict, list))]
    return keys


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
