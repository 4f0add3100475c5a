"""Distillation after unlearning (UNDO, "Distillation Robustifies Unlearning", Lee et al. 2025).

Unlearning suppresses: the weights that stored the forget set are still close to where they were,
so a few relearning steps bring it back. UNDO moves the weights away first, then restores the
behaviour without the data:

1. the student is a copy of the unlearned model pushed toward a fresh initialisation,
   theta_s = (1 - noise) * theta_unlearned + noise * theta_init (shrink and perturb);
2. it is trained to match the unlearned teacher's next-token distributions (KL(teacher || student)
   per token) on general code that holds no forget item, for ``tokens`` tokens.

The student inherits the teacher's outputs, which never reproduce the forget set, but not the
latent weights that made relearning easy. ``noise`` trades robustness against distillation compute
(noise 1 = distil into a fresh model). Compute is reported next to the retain model's training.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from prod_unlearn.data.examples import Example
from prod_unlearn.io import atomic_write_json
from prod_unlearn.progress import console, progress


@dataclass
class DistillConfig:
    noise: float = 0.5  # share of a fresh initialisation mixed into the student (0 = a copy, 1 = fresh)
    tokens: int = 2_000_000  # distillation budget in tokens (steps = tokens / (batch_size * context))
    lr: float = 3e-4  # AdamW, cosine to 0 after 2 % warm-up
    batch_size: int = 8
    context: int = 256
    temperature: float = 1.0
    seed: int = 0
    exclude: tuple[str, ...] = ("copyright", "insecure", "deprecated")  # default data: these sets cut out

    def validate(self) -> None:
        if not 0 <= self.noise <= 1:
            raise ValueError(f"--noise {self.noise}: expected a share between 0 and 1")
        if self.tokens < self.batch_size * self.context:
            raise ValueError(f"--tokens {self.tokens}: fewer than one batch ({self.batch_size} x {self.context})")


def default_data(exclude: tuple[str, ...]) -> tuple[list[str], dict]:
    """This Python's standard library, training split (the embedded model's corpus) with the listed
    default sets' items cut out (as for the retain model)."""
    from prod_unlearn.data.corpus import list_sources, split_corpus, stdlib_root
    from prod_unlearn.models.recipe_data import scrub_items

    train = split_corpus(list_sources(stdlib_root()))["train"]
    if exclude:
        train, scrubbed = scrub_items(train, tuple(s for s in exclude if s != "copyright"))
    else:
        scrubbed = None
    return [f.text for f in train], {
        "source": "stdlib train split",
        "excluded": list(exclude),
        "files": len(train),
        "scrubbed": scrubbed,
    }


def perturbed_copy(teacher, noise: float, seed: int):
    """(1 - noise) * teacher + noise * a fresh initialisation of the same architecture."""
    import copy

    from transformers import AutoModelForCausalLM

    student = copy.deepcopy(teacher)
    if noise > 0:
        torch.manual_seed(seed)
        fresh = AutoModelForCausalLM.from_config(teacher.config).to(next(teacher.parameters()).device)
        with torch.no_grad():
            for p, q in zip(student.parameters(), fresh.parameters()):
                p.mul_(1 - noise).add_(q.to(p.dtype), alpha=noise)
        del fresh
    return student


def retain_compute(tokens: int, config) -> dict | None:
    """This distillation's tokens next to what retraining costs: the shipped retain model's
    training tokens (the embedded model retrained without the default sets, ``pretrain.json``).
    None for a teacher of another shape (``config``), whose retraining that figure does not price."""
    from prod_unlearn.models.loading import RETAIN_MODEL

    shape = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size")
    mine = json.loads((RETAIN_MODEL / "config.json").read_text())
    if any(getattr(config, k, None) != mine.get(k) for k in shape):
        return None
    record = json.loads((RETAIN_MODEL / "pretrain.json").read_text())
    retrain = int(record["steps"] * record["config"]["batch_size"] * record["config"]["context"])
    return {
        "distill_tokens": tokens,
        "retain_model_tokens": retrain,
        "share_of_retraining": round(tokens / retrain, 4),
        "retain_model_train_seconds": record.get("train_time_s"),
        "retain_model_hardware": record.get("hardware"),
    }


def distill(
    teacher,
    tokenizer,
    out: str | Path,
    cfg: DistillConfig | None = None,
    texts: list[str] | None = None,
    teacher_name: str = "",
    forget: list[Example] | None = None,
) -> tuple[object, dict]:
    """Distil ``teacher`` into a perturbed copy on ``texts`` (default: ``default_data``); save the
    student as a Hugging Face folder in ``out`` with ``distill.json``. Returns (student, record)."""
    from prod_unlearn.data.tokenize import ids
    from prod_unlearn.models.loading import model_fingerprint, save_model
    from prod_unlearn.tasks.ppl import heldout_ppl

    cfg = cfg or DistillConfig()
    cfg.validate()
    out = Path(out)
    t0 = time.time()
    data_record = {"source": "given", "files": len(texts)} if texts is not None else None
    if texts is None:
        texts, data_record = default_data(cfg.exclude)
    if forget:  # never distil on a document that holds a forget item
        needles = [e.completion.strip()[:200] for e in forget if e.completion.strip()]
        kept = [t for t in texts if not any(n in t for n in needles)]
        assert data_record is not None  # given texts or default_data's record
        data_record["dropped_holding_forget_items"] = len(texts) - len(kept)
        texts = kept
    stream: list[int] = []
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    for t in texts:
        stream += ([bos] if bos is not None else []) + ids(tokenizer, t)
    if len(stream) <= cfg.context:
        raise ValueError(f"distillation data: {len(stream):,} tokens, not more than one context of {cfg.context}")
    device = next(teacher.parameters()).device
    teacher.eval()
    before = heldout_ppl(teacher, tokenizer)
    student = perturbed_copy(teacher, cfg.noise, cfg.seed)
    start = heldout_ppl(student, tokenizer)
    steps = cfg.tokens // (cfg.batch_size * cfg.context)
    warm = max(1, steps // 50)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
    )
    rng = random.Random(cfg.seed)
    log, t_train = [], time.time()
    student.train()
    with progress() as bar:
        task = bar.add_task("distilling", total=steps)
        for step in range(1, steps + 1):
            rows = [
                stream[s : s + cfg.context]
                for s in (rng.randrange(0, len(stream) - cfg.context) for _ in range(cfg.batch_size))
            ]
            x = torch.tensor(rows, device=device)
            with torch.no_grad():
                t_logits = teacher(input_ids=x).logits.float() / cfg.temperature
            s_logits = student(input_ids=x).logits.float() / cfg.temperature
            loss = (
                F.kl_div(
                    F.log_softmax(s_logits, -1).flatten(0, 1),
                    F.log_softmax(t_logits, -1).flatten(0, 1),
                    log_target=True,
                    reduction="batchmean",
                )
                * cfg.temperature**2
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"distill: the loss became {loss.item()} at step {step}; lower --lr (now {cfg.lr:g})"
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if step % max(1, steps // 20) == 0 or step == steps:
                log.append({"step": step, "kl": round(loss.item(), 5)})
            bar.update(task, advance=1, description=f"distilling (KL {loss.item():.4f})")
    student.eval()
    seconds = round(time.time() - t_train, 1)
    after = heldout_ppl(student, tokenizer)
    save_model(student, tokenizer, out)
    compute = retain_compute(steps * cfg.batch_size * cfg.context, teacher.config)
    record = {
        "method": "distill (UNDO)",
        "teacher": teacher_name,
        "teacher_fingerprint": model_fingerprint(teacher),
        "config": {**asdict(cfg), "exclude": list(cfg.exclude)},
        "data": data_record,
        "steps": steps,
        "tokens": steps * cfg.batch_size * cfg.context,
        "train_seconds": seconds,
        "total_seconds": round(time.time() - t0, 1),
        "kl_curve": log,
        "heldout": {"teacher": before, "student_at_start": start, "student": after},
        "compute": compute,
    }
    atomic_write_json(out / "distill.json", record)
    console.print(
        f"distilled {record['tokens']:,} tokens in {seconds:.0f} s: held-out bits per byte teacher "
        f"{before['heldout_bpb']:.4f}, student at start {start['heldout_bpb']:.4f}, student "
        f"{after['heldout_bpb']:.4f}"
        + (
            f"; {100 * compute['share_of_retraining']:.1f} % of the "
            f"{compute['retain_model_tokens']:,} tokens that trained the shipped retain model"
            if compute
            else ""
        )
    )
    return student, record
