"""What a bench and its calibration share before they train: the folder's key check and clearing,
each task's data and base model, the model's fingerprint."""

from __future__ import annotations

import shutil
from pathlib import Path

from prod_unlearn.bench.config import BenchConfig, method_variant, tokenizer_hash
from prod_unlearn.runs import key_differences


def check_keys(stored: dict, new: dict, where: str) -> None:
    """Refuse to reuse cells whose key differs (keys present on one side only are fine)."""
    diffs = []
    for name in new:
        if name in stored:
            diffs += [f"{name}: {d}" for d in key_differences(stored[name], new[name])]
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise ValueError(
            f"{where}: its cells were made with another setup: {'; '.join(diffs[:3])}{more}; "
            f"rerun with --overwrite to start afresh, or use another --out"
        )


def clear(
    out: Path,
    names=(
        "results.json",
        "report.md",
        "report.json",
        "attack.png",
        "runs",
        "base",
        "calibration_state.json",
        "calibration.json",
        "calibration",
    ),
) -> None:
    for n in names:
        p = out / n
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for p in [*out.glob("pareto_*.png"), *out.glob("attack_*.png")]:
        p.unlink()


def task_data(task: str, cfg: BenchConfig):
    from prod_unlearn.tasks import FORGET_TASKS

    spec = FORGET_TASKS[task]
    forget, evalset = spec.load(spec.default_data)
    if cfg.max_items:  # deprecated.jsonl interleaves its APIs, so a prefix still covers them
        forget, evalset = forget[: cfg.max_items], evalset[: cfg.max_items]
    return spec, forget, evalset


def setup(cfg: BenchConfig):
    """Validate names; (model name, fingerprint, tokenizer hash)."""
    from prod_unlearn.models.loading import DEFAULT_MODEL, load_model, model_fingerprint
    from prod_unlearn.tasks import FORGET_TASKS, UTILITY_TASKS

    for t in cfg.tasks:
        if t not in FORGET_TASKS:
            raise ValueError(f"--tasks {t}: expected some of {', '.join(FORGET_TASKS)}")
    for m in cfg.methods:
        method_variant(m)
    if cfg.attacks:
        from prod_unlearn.attacks.bench import parse_kinds

        parse_kinds(",".join(cfg.attacks))
    if cfg.utility not in UTILITY_TASKS:
        raise ValueError(f"--utility {cfg.utility}: expected one of {', '.join(UTILITY_TASKS)}")
    assert cfg.epochs is not None  # filled by resolve_bench_defaults, which every caller runs first
    if cfg.seeds < 1 or cfg.eval_points < 1 or cfg.epochs < 1:
        raise ValueError("--seeds, --eval-points and --epochs must be at least 1")
    model_name = cfg.model or str(DEFAULT_MODEL)
    model, tok = load_model(model_name, cfg.device, "auto")  # as trained: the dtype is part of the fingerprint
    return model_name, model_fingerprint(model), tokenizer_hash(tok)
