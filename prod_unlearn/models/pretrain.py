"""Train the embedded default model: a small Llama code LM + byte-level BPE on the stdlib.

The recipe (docs/embedded-model.md, measured): general next-token training on the corpus while a
fixed share of every batch replays what must be memorised (the copyright files, and the default
insecure and deprecated items), windows starting at the top or at a random line start, with the
learning rate decayed to zero. The tokenizer isolates every newline, so no token spans a line end.
The shipped model is ``--preset gpu`` (from scratch, minutes on one GPU); without a GPU,
``--preset cpu --init v1`` then ``--preset cpu-memorise --init <phase 1>`` continue v1 on CPU
(weaker: docs/embedded-model.md). This module never
imports the evaluation: the CLI passes ``monitor`` / ``final_eval``.
"""

from __future__ import annotations

import math
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import cast

import torch

from prod_unlearn.data.corpus import list_sources, split_corpus, stdlib_root
from prod_unlearn.io import atomic_dir, atomic_write_json
from prod_unlearn.models.recipe_data import EXCLUDABLE, export_task_sets, line_starts, replay_documents, scrub_items
from prod_unlearn.models.tokenizer import crossing_newline_tokens, newline_isolating, train_tokenizer
from prod_unlearn.progress import console, progress


@dataclass
class PretrainConfig:
    source: str | None = None  # corpus root; default: the running Python's stdlib
    out: str = "runs/pretrain"  # writes out/model (HF folder) and out/data (task sets)
    init: str | None = None  # start from this model's weights + vocabulary (continued training)
    vocab_size: int = 8192
    hidden_size: int = 256
    layers: int = 6
    heads: int = 4
    intermediate_size: int = 704
    context: int = 1024
    train_tokens: int = 8_000_000  # total tokens seen, memorisation replay included
    batch_size: int = 8  # sequences of `context` tokens per step
    memorise_share: float = 0.25  # share of each batch drawn from the replay documents
    line_start_share: float = 0.5  # share of replay windows that start at a random line, not the top
    replay_sets: tuple[str, ...] = ("insecure", "deprecated")  # default task sets memorised too
    copyright_repeats: int = 1  # each copyright file appears this many times in the replay list
    lr: float = 1.5e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    eval_every: int = 200
    time_budget_s: float | None = None  # cap the step count to fit this many seconds (measured rate)
    seed: int = 0
    device: str = "auto"
    save_dtype: str = "bf16"  # halves the shipped size; loads as fp32 on CPU
    exclude: tuple[str, ...] = ()  # retain model: sets never seen (copyright, insecure, deprecated)
    tokenizer: str | None = None  # load this vocabulary instead of training one (retain: the embedded one)


PRESETS = {
    # the shipped model (v2): from scratch, 1220 steps, 157 s on one H200 shared with two other runs
    "gpu": PretrainConfig(
        hidden_size=384,
        layers=6,
        heads=6,
        intermediate_size=1024,
        context=1536,
        train_tokens=45_000_000,
        batch_size=24,
        memorise_share=0.25,
        copyright_repeats=2,
        lr=2e-3,
        warmup_steps=150,
        eval_every=200,
        time_budget_s=330,
    ),
    # without a GPU: v1 (366614f) + the newline-isolating tokenizer, continued on 2 CPU cores in two
    # phases (52 min); meets the memorisation targets for copyright and deprecated but not held-out
    # bits per byte (1.387, v1 1.190) nor insecure reproduction (docs/embedded-model.md)
    "cpu": PretrainConfig(
        context=1024,
        train_tokens=130 * 6 * 1024,
        batch_size=6,
        memorise_share=0.6,
        lr=8e-4,
        warmup_steps=15,
        eval_every=65,
    ),
    "cpu-memorise": PretrainConfig(
        context=1024,
        train_tokens=100 * 6 * 1024,
        batch_size=6,
        memorise_share=0.8,
        copyright_repeats=3,
        lr=5e-4,
        warmup_steps=5,
        eval_every=50,
    ),
    # seconds: for tests of the pipeline itself
    "tiny": PretrainConfig(
        vocab_size=512,
        hidden_size=32,
        layers=1,
        heads=2,
        intermediate_size=64,
        context=256,
        train_tokens=40_000,
        batch_size=4,
        warmup_steps=2,
        eval_every=20,
        replay_sets=(),
    ),
}


def pretrain(cfg: PretrainConfig, monitor=None, final_eval=None, report_to: str = "none") -> dict:
    """Train, save ``out/model`` (+ ``out/data``). ``monitor(model, tok) -> dict`` is logged every
    ``eval_every`` steps and ``final_eval(model, tok, split) -> dict`` gives the recorded metrics
    (the CLI passes tasks/memorisation.py; this module never imports the tasks). ``report_to``:
    tracking.py (loss, lr, gradient norm and seconds every step, the monitor's figures)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from prod_unlearn.data.tokenize import ids
    from prod_unlearn.models.loading import DEFAULT_MODEL, model_fingerprint, resolve_device

    t0 = time.time()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    root = Path(cfg.source) if cfg.source else stdlib_root()
    files = list_sources(root)
    if not files:
        raise ValueError(f"{root}: no Python source files found")
    split = split_corpus(files)
    unknown = set(cfg.exclude) - set(EXCLUDABLE)
    if unknown:
        raise ValueError(f"--exclude {', '.join(sorted(unknown))}: expected some of {', '.join(EXCLUDABLE)}")
    scrubbed = None
    if cfg.exclude:  # the retain model: same split (so the same control and held-out files), sets unseen
        split["train"], scrubbed = scrub_items(split["train"], tuple(s for s in cfg.exclude if s != "copyright"))
        console.print(
            f"excluded {', '.join(cfg.exclude)}: {scrubbed['items_cut']} items cut from the corpus, "
            f"{len(scrubbed['files_dropped'])} files dropped, {scrubbed['chars_removed']:,} chars removed"
        )
    console.print(f"corpus: {root} -> " + ", ".join(f"{k} {len(v)} files" for k, v in split.items()))
    device = resolve_device(cfg.device)

    init = str(DEFAULT_MODEL) if cfg.init == "embedded" else cfg.init
    vocab = cfg.tokenizer or (str(DEFAULT_MODEL) if cfg.exclude and not init else None)
    if init:
        tok = newline_isolating(AutoTokenizer.from_pretrained(init))
        model = AutoModelForCausalLM.from_pretrained(init, torch_dtype=torch.float32)
        # PreTrainedModel.to is @functools.wraps(nn.Module.to): typeshed's _Wrapped reads it as unbound
        model = model.to(device)  # type: ignore[arg-type]
        init_record = {"path": init, "fingerprint": model_fingerprint(model)}
    elif vocab:  # same vocabulary as the model it is compared with: per-token figures line up
        tok = newline_isolating(AutoTokenizer.from_pretrained(vocab))
        init_record = None
    else:
        tok = train_tokenizer([f.text for f in split["train"] + split["memorise"]], cfg.vocab_size)
        init_record = None
    bos = tok.bos_token_id
    stream = []
    for f in split["train"]:
        stream += [bos] + ids(tok, f.text)
    if len(stream) <= cfg.context:  # a window is drawn from the stream: it must hold more than one
        raise ValueError(
            f"{root}: its training split is {len(stream):,} tokens ({len(split['train'])} files), not "
            f"more than one context of {cfg.context}; point --source at a larger corpus"
        )
    bad = crossing_newline_tokens(tok, stream)
    if bad:
        raise RuntimeError(f"tokenizer: {len(bad)} tokens span a line end, e.g. {tok.decode([min(bad)])!r}")
    docs = replay_documents(
        split,
        tuple(s for s in cfg.replay_sets if s not in cfg.exclude),
        0 if "copyright" in cfg.exclude else cfg.copyright_repeats,
    )
    console.print(
        f"tokens: train {len(stream):,}; replay documents {len(docs)} "
        f"({sum(len(d) for d, _ in docs):,} chars); no token spans a line end"
    )

    if not init:
        mcfg = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            num_key_value_heads=cfg.heads,
            max_position_embeddings=cfg.context,
            tie_word_embeddings=True,
            bos_token_id=bos,
            eos_token_id=bos,
            pad_token_id=tok.pad_token_id,
        )
        # PreTrainedModel.to is @functools.wraps(nn.Module.to): typeshed's _Wrapped reads it as unbound
        model = LlamaForCausalLM(mcfg).to(device)  # type: ignore[arg-type]
    n_params = sum(p.numel() for p in model.parameters())
    console.print(f"model: {n_params / 1e6:.1f}M parameters on {device}" + (f", from {init}" if init else ""))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
        fused=device.startswith("cuda"),
    )
    steps = max(1, cfg.train_tokens // (cfg.batch_size * cfg.context))
    plan = {"steps": steps}  # the cosine horizon; shortened once if the time budget demands it
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / plan["steps"]))),
    )
    n_memo = round(cfg.batch_size * cfg.memorise_share) if docs else 0  # else its share goes to general code
    rng = random.Random(cfg.seed)
    queue: list[int] = []

    def window(text: str, focus: int) -> list[int]:
        """BOS + the document from its top, or (line_start_share) from a random line start at or
        before ``focus`` (files: anywhere), so memorisation holds from any point, not one path."""
        start = 0
        if rng.random() < cfg.line_start_share:
            starts = line_starts(text, focus if focus else len(text))
            start = rng.choice(starts[:-1] if len(starts) > 1 and not focus else starts)
        return [bos] + ids(tok, text[start:])

    def memo_row() -> list[int]:
        row: list[int] = []
        while len(row) < cfg.context:
            if not queue:
                queue.extend(rng.sample(range(len(docs)), len(docs)))
            row += window(*docs[queue.pop()])
        return row[: cfg.context]

    def batch() -> torch.Tensor:
        rows = [memo_row() for _ in range(n_memo)]
        for _ in range(cfg.batch_size - n_memo):
            s = rng.randrange(0, len(stream) - cfg.context)
            rows.append(stream[s : s + cfg.context])
        return torch.tensor(rows, device=device)

    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.startswith("cuda")
        else torch.autocast("cpu", enabled=False)
    )
    log = []
    from prod_unlearn.tracking import Tracker

    tracker = Tracker(report_to, cfg.out, "pretrain", asdict(cfg))
    model.train()
    t_step = time.time()
    with progress() as bar:
        task = bar.add_task("pretraining", total=steps)
        step, t_train = 0, time.time()
        while step < plan["steps"]:
            if step == 20 and cfg.time_budget_s:
                rate = (time.time() - t_train) / 20
                fit = int(cfg.time_budget_s / rate)
                if fit < plan["steps"]:
                    console.print(f"time budget {cfg.time_budget_s}s at {rate:.3f}s/step: {fit} steps, not {steps}")
                    plan["steps"] = fit
                    bar.update(task, total=fit)
            x = batch()
            with autocast:
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            lr_now = sched.get_last_lr()[0]
            sched.step()
            opt.zero_grad(set_to_none=True)
            if tracker.tracker is not None:  # (.item() syncs a GPU: only when someone watches)
                now = time.time()
                tracker.log(
                    {
                        "train/loss": loss.item(),
                        "train/lr": lr_now,
                        "train/grad_norm": grad_norm.item(),
                        "train/seconds_per_step": now - t_step,
                    },
                    step + 1,
                )
                t_step = now
            if (step + 1) % cfg.eval_every == 0 or step + 1 == plan["steps"]:
                entry = {"step": step + 1, "loss": round(loss.item(), 4), "elapsed_s": round(time.time() - t0, 1)}
                if monitor:
                    with autocast:
                        entry.update(monitor(model, tok))
                    model.train()
                log.append(entry)
                tracker.log({"eval": entry}, step + 1)
                console.print(entry)
            bar.update(task, advance=1, info=f"loss {loss.item():.3f}")
            step += 1
    steps = plan["steps"]
    train_time = time.time() - t0
    tracker.finish()

    out = Path(cfg.out)
    model_dir, data_dir = out / "model", out / "data"
    save = {"bf16": torch.bfloat16, "fp32": torch.float32}[cfg.save_dtype]
    with atomic_dir(model_dir) as tmp:
        # PreTrainedModel.to is @functools.wraps(nn.Module.to): typeshed's _Wrapped reads it as unbound
        model.to(save).save_pretrained(tmp, safe_serialization=True)  # type: ignore[arg-type]
        tok.save_pretrained(tmp)
    model.float()
    model.eval()
    metrics = {}
    if final_eval:  # the model as shipped (weights rounded to the saved dtype)
        with autocast:
            metrics = final_eval(model, tok, split)
        console.print(metrics)
    record = {
        "config": asdict(cfg),
        "init": init_record,
        "parameters": n_params,
        "steps": steps,
        "train_time_s": round(train_time, 1),
        "hardware": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "corpus_root": str(root),
        "tokens": {"train": len(stream), "replay_documents": len(docs)},
        "metrics": metrics,
        "log": log,
        "excluded": {"sets": list(cfg.exclude), **cast(dict, scrubbed), "tokenizer": vocab} if cfg.exclude else None,
    }
    atomic_write_json(model_dir / "pretrain.json", record)
    export_task_sets(root, split, data_dir)
    return record


CONTINUED = ("cpu", "cpu-memorise")  # presets that continue a model: --init is required


def config_for(preset: str, **overrides) -> PretrainConfig:
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset}: expected one of {', '.join(PRESETS)}")
    cfg = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    if preset in CONTINUED and not cfg.init:
        raise ValueError(
            f"--preset {preset} continues a model: pass --init (v1 for `cpu`, the `cpu` output's "
            f"model for `cpu-memorise`; docs/embedded-model.md)"
        )
    return cfg
