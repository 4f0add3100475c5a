"""One Accelerate training loop for every method (CPU, one GPU, or `accelerate launch`).

The loop knows nothing about the method: it encodes the method's views, gets the frozen
reference (cached), and minimises ``method.loss``. Every epoch leaves a Hugging Face model
folder; a resumable state (model, optimizer, scheduler, RNG, data position) is written
atomically so a killed run restarted with the same command continues where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from prod_unlearn.data.batching import collate, encode, epoch_order
from prod_unlearn.data.examples import Example, examples_hash
from prod_unlearn.io import atomic_write_json
from prod_unlearn.methods.base import Method, make_params, method_views
from prod_unlearn.models.loading import model_fingerprint, save_model
from prod_unlearn.progress import console, progress
from prod_unlearn.tracking import Tracker
from prod_unlearn.training.reference import load_or_compute_reference
from prod_unlearn.training.retain import retain_loss, retain_reference
from prod_unlearn.training.sam import sharpness_aware_step
from prod_unlearn.training.state import full_state, read_progress, seal


@dataclass
class TrainConfig:
    """Optimisation settings; the field defaults are the paper's settings (where the paper states
    one). Entry points build it with ``training.defaults.resolve_train_config`` (caller > the model
    folder's unlearn_defaults.json > these)."""

    epochs: int = 10  # paper: 10
    lr: float = 5e-6  # paper: 5e-6 (AdamW)
    batch_size: int = 1  # per device
    grad_accum: int = 1  # effective batch = batch_size * grad_accum * processes (paper: 32)
    max_length: int = 1024  # tokens per sequence (paper: 1024)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    scheduler: str = "constant"  # constant | linear (decay to 0) | cosine
    max_grad_norm: float = 1.0
    seed: int = 0
    save_steps: int = 0  # also write a resumable state every N optimiser steps (0: per epoch only)
    max_steps: int = 500  # budget of optimiser steps when training until forgotten (training/until.py)
    until_forgotten: bool = False  # per run: train up to max_steps, stopped early by step_evaluate; epochs unused
    eval_steps: list[int] = field(default_factory=list)  # global optimiser steps (1-based) for step_evaluate
    reference_batch_size: int = 4
    retain_weight: float = 1.0  # weight of the retain term when a retain set is given
    retain_loss: str = "nll"  # nll | kl (KL to the original model's top-k distribution)
    sam_rho: float = 0.0  # sharpness-aware unlearning: the gradient is taken at w + rho * g / ||g|| (0: off)
    method_params: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)  # field -> where its value came from (resolve_train_config)


def _schedule(cfg: TrainConfig, total_steps: int):
    def f(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        frac = min(1.0, step / max(1, total_steps))
        if cfg.scheduler == "linear":
            return warm * (1 - frac)
        if cfg.scheduler == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * frac))
        return warm

    if cfg.scheduler not in ("constant", "linear", "cosine"):
        raise ValueError(f"--scheduler {cfg.scheduler}: expected constant, linear or cosine")
    return f


def unlearn(
    model,
    tokenizer,
    forget: list[Example],
    method: Method,
    cfg: TrainConfig,
    out: str | Path,
    retain: list[Example] | None = None,
    refusals: list[str] | None = None,
    model_name: str = "",
    evaluate=None,
    accelerator=None,
    merge_lora: bool = True,
    step_evaluate=None,
    report_to: str = "none",
) -> dict:
    """Run ``method`` on ``forget``; write checkpoints and run.json under ``out``; return the run record.

    ``evaluate(model, epoch) -> dict`` (optional) is called on the main process after each epoch
    and before training (epoch 0); its figures land in run.json.
    ``step_evaluate(model, step)`` (optional) is called on the main process after each global
    optimiser step listed in ``cfg.eval_steps``; a resumable state is written right after it, so
    a run killed later resumes past that evaluation and one killed during it replays the step.
    With ``cfg.until_forgotten`` the run lasts at most ``cfg.max_steps`` optimiser steps and a
    truthy return of ``step_evaluate`` (the reason) ends it there (``run["stopped_by"]``).
    ``report_to`` (tracking.py) logs every optimiser step (loss, lr, gradient norm, seconds) and evaluation.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(out)
    params = make_params(method, cfg.method_params)
    if accelerator is None:
        cpu = next(model.parameters()).device.type == "cpu"
        accelerator = Accelerator(cpu=cpu)
    set_seed(cfg.seed)
    pad = tokenizer.pad_token_id
    encoded = {
        v: encode(items, tokenizer, cfg.max_length) for v, items in method_views(method, forget, refusals).items()
    }
    retain_enc = encode(retain, tokenizer, cfg.max_length) if retain and cfg.retain_weight else None

    # ---- the one frozen pass (main process computes and caches; the others read the cache)
    ref, ref_path, ref_seconds = None, None, 0.0
    fingerprint = model_fingerprint(model)
    if method.reference is not None:
        t = time.time()
        with accelerator.main_process_first():
            ref, ref_path, hit = load_or_compute_reference(
                model, encoded, method, params, pad, fingerprint, cfg.reference_batch_size
            )
        ref_seconds = 0.0 if hit else time.time() - t
        n_tokens = sum(len(e.input_ids) - e.prompt_len for e in encoded["forget"])
        console.print(
            f"reference: {ref_path} ({'cached' if hit else f'built in {ref_seconds:.1f}s'}, "
            f"{ref.nbytes() / max(1, n_tokens):.0f} bytes/token)"
        )
    retain_ref = None
    if retain_enc and cfg.retain_loss == "kl":
        retain_ref = retain_reference(model, retain_enc, pad, fingerprint, cfg.reference_batch_size, accelerator)

    n = len(forget)
    steps_per_epoch = math.ceil(math.ceil(n / (cfg.batch_size * accelerator.num_processes)) / cfg.grad_accum)
    if cfg.sam_rho and cfg.grad_accum != 1:
        raise ValueError(
            f"--sam {cfg.sam_rho:g}: needs --grad-accum 1 (the perturbation is taken from one batch's gradient)"
        )
    until = cfg.until_forgotten
    total_steps = cfg.max_steps if until else steps_per_epoch * cfg.epochs
    epochs = math.ceil(total_steps / steps_per_epoch) if until else cfg.epochs
    trainable = {p: p.requires_grad for p in model.parameters()}  # put back at the end (a method may narrow it)
    if method.prepare is not None:
        method.prepare(model, params)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg, total_steps))
    # The scheduler is not prepared: Accelerate's wrapper steps it num_processes times per
    # optimiser step (it assumes per-process data loaders), while total_steps above already
    # counts global steps. Registered so that save_state/load_state still carry it.
    model, opt = accelerator.prepare(model, opt)
    accelerator.register_for_checkpointing(sched)

    state_dir = out / "checkpoints" / "state"
    record_path = out / "run.json"
    run = {
        "method": method.name,
        "params": asdict(params),
        "config": asdict(cfg),
        "model": model_name,
        "model_fingerprint": fingerprint,
        "forget_examples": n,
        "forget_hash": examples_hash(forget),
        "retain_examples": len(retain or []),
        "processes": accelerator.num_processes,
        "reference": {
            "path": str(ref_path) if ref_path else None,
            "build_seconds": round(ref_seconds, 2),
            "bytes": ref.nbytes() if ref else 0,
        },
        "epochs": [],
    }
    start_epoch, start_batch, partial_losses = 0, 0, []
    if (state_dir / "progress.json").exists():
        prog = read_progress(state_dir)
        if prog.get("forget_hash") != run["forget_hash"] or prog.get("method") != method.name:
            raise ValueError(f"{out}: holds a run of another method or forget set; use a new --out")
        accelerator.load_state(str(state_dir / "accelerate"))
        start_epoch, start_batch = prog["epoch"], prog["batch"]
        partial_losses = prog.get("partial_losses", [])
        if prog.get("rule") is not None and hasattr(step_evaluate, "load_state_dict"):
            step_evaluate.load_state_dict(prog["rule"])
        run["epochs"] = prog["epochs"]
        if prog.get("stopped_by"):
            start_epoch, run["stopped_by"] = epochs, prog["stopped_by"]
        console.print(
            f"{out}: run already complete"
            if start_epoch >= epochs
            else f"resuming {out} at epoch {start_epoch + 1}, batch {start_batch}"
        )
    elif evaluate is not None and accelerator.is_main_process:
        run["before"] = evaluate(accelerator.unwrap_model(model), 0)
    tracker = Tracker(
        report_to,
        out,
        f"{method.name}-{out.name}",
        {
            "method": method.name,
            **run["params"],
            **{k: v for k, v in run["config"].items() if k not in ("sources", "method_params")},
        },
        accelerator.is_main_process,
    )
    if run.get("before"):
        tracker.log({"eval": run["before"]}, 0)

    def save_state(epoch: int, batch_idx: int, epochs_log: list, partial: list[float], stopped=None) -> None:
        accelerator.wait_for_everyone()
        tmp = state_dir.with_name("state.tmp")
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp / "accelerate"))
        accelerator.wait_for_everyone()  # every process has written its RNG state before the rename
        if accelerator.is_main_process:
            prog = {
                "epoch": epoch,
                "batch": batch_idx,
                "epochs": epochs_log,
                "partial_losses": partial,
                "method": method.name,
                "forget_hash": run["forget_hash"],
                "stopped_by": stopped,
                "rule": step_evaluate.state_dict() if hasattr(step_evaluate, "state_dict") else None,
            }
            atomic_write_json(tmp / "progress.json", {**prog, "seal": seal(tmp, prog)})
            old = state_dir.with_name("state.old")
            shutil.rmtree(old, ignore_errors=True)
            if state_dir.exists():
                os.replace(state_dir, old)
            os.replace(tmp, state_dir)
            shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    model.train()
    with progress() as bar:
        per_epoch = math.ceil(n / cfg.batch_size / accelerator.num_processes)
        task = bar.add_task(
            f"{method.name}",
            total=total_steps * cfg.grad_accum if until else epochs * per_epoch,
            completed=start_epoch * per_epoch + start_batch,
        )
        stopped = None
        retain_scale = getattr(step_evaluate, "retain_scale", 1.0)  # the rule's weight on the retain term
        params = getattr(step_evaluate, "params", None) or params  # the method's, after the rule's stall answers
        resting = set(getattr(step_evaluate, "resting", ()))  # forget items the rule no longer trains (until.py)
        t_step = time.time()
        for epoch in range(start_epoch, epochs):
            t0 = time.time()
            order = epoch_order(n, cfg.seed, epoch)
            batches = [
                order[i : i + cfg.batch_size * accelerator.num_processes]
                for i in range(0, n, cfg.batch_size * accelerator.num_processes)
            ]
            losses = list(partial_losses) if epoch == start_epoch else []
            for b in range(start_batch if epoch == start_epoch else 0, len(batches)):
                shard = batches[b][accelerator.process_index :: accelerator.num_processes]
                if not shard:  # uneven tail: this process sits the step out with a zero-weight batch
                    shard = batches[b][:1]
                    weight = 0.0
                else:
                    # DDP averages gradients over processes; weighting each shard by its share of the global batch
                    # makes an uneven tail batch count like one process's batch. Items the rule rests: weight 0.
                    weight = accelerator.num_processes * len(shard) / len(batches[b]) * (not resting >= set(shard))
                idx = torch.tensor(shard)
                batch: dict[str, Any] = {
                    v: {k: t.to(accelerator.device) for k, t in collate([items[i] for i in shard], pad).items()}
                    for v, items in encoded.items()
                }
                batch["index"] = idx
                # Accumulation by position in the epoch (not a hidden counter), so a resumed run
                # and an uninterrupted one step the optimiser at exactly the same batches.
                sync = (b + 1) % cfg.grad_accum == 0 or b + 1 == len(batches)

                def forget_objective(batch=batch, weight=weight, params=params):  # this step's method loss
                    return method.loss(model, batch, ref, params) * weight

                def retain_objective(epoch=epoch, b=b, scale=cfg.retain_weight * retain_scale):
                    return scale * retain_loss(model, retain_enc, retain_ref, cfg, epoch, b, accelerator, pad)

                retained = retain_objective if retain_enc is not None else None
                with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                    if cfg.sam_rho:  # (grad_accum is 1)
                        loss = sharpness_aware_step(model, forget_objective, retained, cfg.sam_rho, accelerator)
                    else:
                        loss = forget_objective() + (retained() if retained else 0)
                        accelerator.backward(loss / cfg.grad_accum)
                evaluated = False
                if sync:
                    grad_norm = None
                    if cfg.max_grad_norm or tracker.tracker is not None:  # the tracker logs the norm either way
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or math.inf)
                    opt.step()
                    lr_now = opt.param_groups[0]["lr"]  # as applied (the rule may have changed it)
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                    step = epoch * steps_per_epoch + math.ceil((b + 1) / cfg.grad_accum)
                    if step_evaluate is not None and step in cfg.eval_steps:
                        scale, restored = None, False
                        if accelerator.is_main_process:
                            verdict = step_evaluate(accelerator.unwrap_model(model), step)
                            stopped = verdict if until else None
                            scale = getattr(step_evaluate, "lr_scale", None)
                            restored = getattr(step_evaluate, "restored", False)
                            retain_scale = getattr(step_evaluate, "retain_scale", 1.0)
                            params = getattr(step_evaluate, "params", None) or params
                            resting = set(getattr(step_evaluate, "resting", ()))
                            model.train()
                            if getattr(step_evaluate, "curve", None):
                                tracker.log({"check": step_evaluate.curve[-1]}, step)
                        if accelerator.num_processes > 1:  # every process follows the main one's decision
                            from accelerate.utils import broadcast, broadcast_object_list

                            stopped, scale, restored, retain_scale, params, resting = broadcast_object_list(
                                [stopped, scale, restored, retain_scale, params, resting]
                            )
                            if restored:  # the main process put back earlier weights
                                for p in model.parameters():
                                    broadcast(p.data)
                        if scale is not None:  # the rule's learning rate (until.py), kept in the scheduler's state
                            sched.base_lrs = [cfg.lr * scale for _ in sched.base_lrs]
                            for g, f in zip(opt.param_groups, sched.lr_lambdas):  # from the next step on
                                g["lr"] = cfg.lr * scale * f(sched.last_epoch)
                        if restored:  # momentum from the discarded steps would push the same way again
                            getattr(opt, "optimizer", opt).state.clear()
                        evaluated = True
                    if until and step >= total_steps and not stopped:
                        stopped = "budget"
                losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
                if sync:
                    now = time.time()
                    tracker.log(
                        {
                            "train/loss": losses[-1],
                            "train/lr": lr_now,
                            "train/grad_norm": None if grad_norm is None else float(grad_norm),
                            "train/seconds_per_step": now - t_step,
                        },
                        step,
                    )
                    t_step = now
                bar.update(task, advance=1, info=f"epoch {epoch + 1} loss {losses[-1]:.4f}")
                if not math.isfinite(losses[-1]):
                    knobs = ", ".join(f"-p {k}={v}" for k, v in asdict(params).items())
                    raise FloatingPointError(
                        f"{method.name}: loss became {losses[-1]} at epoch {epoch + 1}, "
                        f"batch {b}; lower --lr (now {cfg.lr:g})"
                        + (f" or change the method's parameters ({knobs})" if knobs else "")
                    )
                if stopped:
                    break
                if (
                    evaluated or cfg.save_steps and sync and (b + 1) % (cfg.save_steps * cfg.grad_accum) == 0
                ) and b + 1 < len(batches):
                    save_state(epoch, b + 1, run["epochs"], losses)
            entry = dict(epoch=epoch + 1, loss=sum(losses) / max(1, len(losses)), seconds=round(time.time() - t0, 2))
            ckpt = out / "checkpoints" / f"epoch-{epoch + 1}"
            accelerator.wait_for_everyone()
            state = full_state(accelerator, model)
            if accelerator.is_main_process:
                tmp = ckpt.with_name(ckpt.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                save_model(accelerator.unwrap_model(model), tokenizer, tmp, merge_lora=False, state_dict=state)
                shutil.rmtree(ckpt, ignore_errors=True)
                os.replace(tmp, ckpt)
                if evaluate is not None:
                    entry["eval"] = evaluate(accelerator.unwrap_model(model), epoch + 1)
                    at = epoch * steps_per_epoch + math.ceil(len(batches) / cfg.grad_accum)
                    tracker.log({"eval": entry["eval"]}, at)
            run["epochs"].append(entry)
            console.print(f"epoch {epoch + 1}: " + json.dumps(entry))
            if stopped:
                run["stopped_by"] = stopped
            save_state(epoch + 1, 0, run["epochs"], [], stopped)
            if accelerator.is_main_process:
                atomic_write_json(record_path, run)
            if stopped:
                break
    accelerator.wait_for_everyone()
    state = full_state(accelerator, model)
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        # a LoRA adapter is folded in unless asked
        save_model(final, tokenizer, out, merge_lora=merge_lora, state_dict=state)
        run["total_seconds"] = round(sum(e["seconds"] for e in run["epochs"]), 2)
        atomic_write_json(record_path, run)
    tracker.finish()
    for p, flag in trainable.items():
        p.requires_grad_(flag)
    return run
