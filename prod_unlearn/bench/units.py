"""The bench's units of work and where they run.

A unit computes some cells and hands each to ``emit(key, cell)`` as soon as it exists: the start
model's and the retain model's evaluation of a task, one training run with all its evaluation
points, the attacks on one final model. Units are plain functions of picklable arguments, so the
same code runs here one after another (``local``) or on a Ray cluster (``ray``: one unit per task,
one GPU each where there are GPUs). The driver (``bench.run_bench``) saves every cell it receives
into the keyed, resumable ``results.json``; a unit lost with its worker is run again and skips the
cells already saved (a training run resumes from its saved state), a finished cell never reruns.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prod_unlearn.bench.config import BenchConfig

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Unit:
    kind: str  # original | retain | run | attacks
    task: str
    rid: str = ""  # run: "<task>/<method>/s<seed>"
    method: str = ""  # attacks: the attacked model ("original", "retain" or a method)

    @property
    def name(self) -> str:
        return {
            "original": f"{self.task}/original",
            "retain": f"{self.task}/retain",
            "run": self.rid,
            "attacks": f"attacks on {self.method}",
        }[self.kind]


@dataclass
class Context:
    """What every unit reads (picklable: it travels to the workers)."""

    cfg: BenchConfig  # resolved
    out: Path
    base: dict  # task -> the model the task starts from (name or folder)
    plan: dict  # rid -> run plan (task, method, seed, lr, eval_steps, steps_per_epoch)
    original: dict  # task -> its original cell (the ppl utility axis is relative to it)
    have: frozenset  # cell keys already saved


def evaluate_cell(ctx: Context, task: str, model, tok, examples) -> dict:
    """Forget quality and utility with per-item scores; item ids under ``_ids`` (checked by the driver)."""
    from prod_unlearn.bench.scoring import evaluate_forget, evaluate_utility

    r, per_item = evaluate_forget(task, model, tok, examples, ctx.cfg)
    u, u_items, u_ids = evaluate_utility(ctx.cfg.utility, model, tok, ctx.cfg, ctx.original.get(task))
    r.update({k: v for k, v in u.items() if k not in ("n", "task")})  # the task's n stays
    r["items"] = {"fq": list(per_item.values()) if per_item else None, "utility": u_items}
    r["_ids"] = {"forget": list(per_item) if per_item else None, "utility": u_ids}
    return r


def _retain(ctx: Context):
    from prod_unlearn.models.loading import load_companion, load_tokenizer

    tok = load_tokenizer(ctx.base[ctx.cfg.tasks[0]])
    assert ctx.cfg.retain_model is not None  # retain units exist only for the floor's tasks (retain_tasks)
    return load_companion("--retain-model", ctx.cfg.retain_model, tok, ctx.cfg.device), tok


def run_unit(unit: Unit, ctx: Context, emit: Callable[[str, dict], None]) -> None:
    from prod_unlearn.bench.setup import task_data
    from prod_unlearn.models.loading import load_model

    cfg = ctx.cfg
    _, forget, evalset = task_data(unit.task, cfg)
    if unit.kind in ("original", "retain"):
        model, tok = load_model(ctx.base[unit.task], cfg.device, "auto") if unit.kind == "original" else _retain(ctx)
        emit(unit.name, evaluate_cell(ctx, unit.task, model, tok, evalset))
    elif unit.kind == "run":
        _train(unit, ctx, forget, evalset, emit)
    else:
        from prod_unlearn.attacks import bench as attacks

        if unit.method == "original":
            loaded = load_model(ctx.base[unit.task], cfg.device, "auto")
        elif unit.method == "retain":
            loaded = _retain(ctx)
        else:
            path = ctx.out / "runs" / unit.task / unit.method / f"s{cfg.seed}"
            if not (path / "config.json").exists():
                raise FileNotFoundError(
                    f"{path}: the final model of {unit.method} is gone (the attacks need it); rerun with --overwrite"
                )
            loaded = load_model(str(path), cfg.device, "auto")
        attacks.model_cells(dict.fromkeys(ctx.have), cfg, evalset, unit.method, loaded, emit)


def _train(unit: Unit, ctx: Context, forget, evalset, emit) -> None:
    """One training run, evaluated at its points (those not saved yet)."""
    from prod_unlearn.bench.config import method_variant
    from prod_unlearn.methods import get_method
    from prod_unlearn.methods.refusals import load_refusals
    from prod_unlearn.models.loading import load_model
    from prod_unlearn.training.defaults import resolve_train_config
    from prod_unlearn.training.loop import unlearn

    cfg, p = ctx.cfg, ctx.plan[unit.rid]
    base = ctx.base[unit.task]
    done = set(ctx.have)
    keys = [f"{unit.rid}/{s}" for s in p["eval_steps"]]
    run_dir = ctx.out / "runs" / unit.task / p["method"] / f"s{p['seed']}"
    variant = method_variant(p["method"])
    distill_cfg = variant.distill_config()  # then the last point is the distilled student's
    for attempt in range(2):
        rec = run_dir / "run.json"
        if attempt or rec.exists() and "total_seconds" in json.loads(rec.read_text()):
            # trained to the end but some points never recorded: retrain (same data order); only the
            # missing points are evaluated
            shutil.rmtree(run_dir, ignore_errors=True)
        model, tok = load_model(base, cfg.device, "auto")

        def on_step(mm, step, tok=tok, final=False):
            key = f"{unit.rid}/{step}"
            if key in done or distill_cfg and step == p["eval_steps"][-1] and not final:
                return
            r = evaluate_cell(ctx, unit.task, mm, tok, evalset)
            r["step"], r["epoch"] = step, round(step / max(1, p["steps_per_epoch"]), 3)
            done.add(key)
            emit(key, r)

        tcfg = resolve_train_config(
            base,
            given_by="bench",
            epochs=cfg.epochs,
            lr=p["lr"],
            max_length=cfg.max_length,
            seed=p["seed"],
            eval_steps=p["eval_steps"],
            batch_size=1,
            grad_accum=1,
            sam_rho=variant.sam or None,
        )
        unlearn(
            model,
            tok,
            forget,
            get_method(variant.method),
            tcfg,
            run_dir,
            refusals=load_refusals(),
            model_name=base,
            step_evaluate=on_step,
        )
        if distill_cfg and p["eval_steps"]:  # the trained model is the teacher; the student replaces it
            from prod_unlearn.training.distill import distill

            student, _ = distill(model, tok, run_dir, distill_cfg, teacher_name=p["method"], forget=forget)
            on_step(student, p["eval_steps"][-1], final=True)
        missing = [k for k in keys if k not in done]
        if not missing:
            break
    else:
        raise RuntimeError(f"{run_dir}: training ended without evaluating {', '.join(missing)}")
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # states and epoch folders: GBs in all


def _collect(unit: Unit, ctx: Context) -> dict:
    """A unit on a worker: its cells, returned at the end."""
    cells: dict = {}
    run_unit(unit, ctx, lambda k, c: cells.__setitem__(k, c))
    return cells


def execute(units: list[Unit], ctx: Context, executor: str, emit: Callable[[str, dict], None]) -> None:
    """Run ``units`` (independent of one another) and hand every cell to ``emit`` (in this process)."""
    if executor == "local" or not units:
        for u in units:
            run_unit(u, ctx, emit)
        return
    if executor != "ray":
        raise ValueError(f"--executor {executor}: expected one of {', '.join(EXECUTORS)}")
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray: Ray is not installed (pip install 'prod-unlearn[ray]')") from None
    import torch

    if not ray.is_initialized():  # RAY_ADDRESS joins a running cluster; else a local one on this machine
        ray.init(
            ignore_reinit_error=True,
            log_to_driver=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}},
        )
    gpus = 1 if torch.cuda.is_available() or ray.cluster_resources().get("GPU") else 0
    remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=2)(_collect)
    pending = {remote.remote(u, ctx): u for u in units}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        unit = pending.pop(ready[0])
        try:
            cells = ray.get(ready[0])
        except ray.exceptions.RayError as e:
            raise RuntimeError(
                f"bench: unit {unit.name} failed on its worker ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); rerun to redo it"
            ) from None
        for k, c in cells.items():
            emit(k, c)
