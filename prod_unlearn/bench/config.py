"""The bench's settings (``BenchConfig``, with the defaults of the protocol in bench/__init__.py)
and what derives from them alone: the defaults filled from training/defaults.py, the tasks the
retain model is a floor for, the evaluation steps, the tokenizer's hash in the key."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prod_unlearn.attacks.bench import DEFAULT_KINDS, QUICK_KINDS
from prod_unlearn.tasks.copyright import POINT_CUTS

LR_GRID = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4]
TOLERANCE = 0.10
TARGET = 0.90  # --rule forget: share of the original -> retain-model gap to close

FORMAT = 3  # results.json layout (1: per-epoch, no items; 2: utility items by kind, not by task)


@dataclass(frozen=True)
class Variant:
    """A bench method: a registered method, optionally with sharpness-aware steps (``+sam=RHO``, as
    ``unlearn --sam RHO``) and/or followed by distillation (``+distill=NOISE`` or
    ``+distill=NOISE:TOKENS``, as ``prod-unlearn distill --noise NOISE --tokens TOKENS`` on the
    trained model; its last evaluation point and its attacks read the distilled student)."""

    method: str
    sam: float = 0.0  # 0: plain steps
    distill_noise: float | None = None  # None: no distillation
    distill_tokens: int | None = None  # None: the distillation's default budget

    def distill_config(self):
        from prod_unlearn.training.distill import DistillConfig

        if self.distill_noise is None:
            return None
        tokens = {} if self.distill_tokens is None else {"tokens": self.distill_tokens}
        return DistillConfig(noise=self.distill_noise, **tokens)


VARIANT_SYNTAX = "METHOD[+sam=RHO][+distill=NOISE[:TOKENS]]"


def method_variant(name: str) -> Variant:
    """Parse a bench method name (``VARIANT_SYNTAX``); a clear error names what is wrong."""
    from prod_unlearn.methods import METHODS

    method, *wrappers = name.split("+")
    if method not in METHODS:
        raise ValueError(
            f"unknown method {method!r} (expected one of {', '.join(sorted(METHODS))}, as {VARIANT_SYNTAX})"
        )
    found: dict[str, Any] = {}
    for w in wrappers:
        key, _, value = w.partition("=")
        try:
            if key == "sam" and key not in found:
                found[key] = rho = float(value)
                ok = rho > 0 and math.isfinite(rho)
            elif key == "distill" and key not in found:
                noise, _, tokens = value.partition(":")
                found[key] = (float(noise), int(tokens) if tokens else None)
                ok = 0 <= found[key][0] <= 1 and (found[key][1] is None or found[key][1] > 0)
            else:
                ok = False
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"{name!r}: expected {VARIANT_SYNTAX} with RHO > 0, NOISE in [0, 1], TOKENS > 0 (each once)"
            )
    noise, tokens = found.get("distill", (None, None))
    return Variant(method, found.get("sam", 0.0), noise, tokens)


def upgrade(results: dict) -> dict:
    """A results.json of layout 2 read as layout 3 (in place): each utility item list of the old
    kinds becomes ``{"task", "values", "figures"}``, and each attack kind's key keeps the fields of
    its own settings (layout 2 stored all 24 fields every kind shared). Nothing is re-measured."""
    if results.get("format") != 2:
        return results
    from prod_unlearn.attacks import KINDS, get_attack

    for name, key in (results.get("keys") or {}).items():
        kind = name.removeprefix("attack:")
        if name.startswith("attack:") and kind in KINDS and isinstance(key, dict):
            results["keys"][name] = {k: v for k, v in key.items() if k in get_attack(kind).Settings.names()}
    axis = (results.get("config") or {}).get("utility")
    for cell in (results.get("cells") or {}).values():
        upgrade_utility_items(cell, axis)
    results["format"] = FORMAT
    return results


def upgrade_utility_items(cell, axis: str | None) -> None:
    """A cell's layout-2 utility items (``{"kind", "healthy" | "nll", "tokens", ...}``) as layout 3,
    in place (results.json cells, and the original's entries of an older calibration_state.json)."""
    u = (cell.get("items") or {}).get("utility") if isinstance(cell, dict) else None
    if not u or "kind" not in u:
        return
    kind = u.pop("kind")
    if kind == "health":
        u.update(values=u.pop("healthy"), figures={"heldout_ppl": u.pop("heldout_ppl")})
    elif kind == "ppl":
        u.update(values=[list(p) for p in zip(u.pop("nll"), u.pop("tokens"))], figures={})
    u["task"] = axis


@dataclass
class BenchConfig:
    methods: list[str] = field(default_factory=lambda: ["prod", "ga", "npo", "dpo", "flat", "undial"])
    tasks: list[str] = field(default_factory=lambda: ["copyright", "insecure", "deprecated"])
    epochs: int | None = None  # None: the model's recommended epochs (training/defaults.py), else the paper's
    eval_points: int = 5  # evaluations per run, evenly spaced over its optimiser steps
    lr: float | None = None  # None: calibrated table (else default_lr); a number: shared by every method
    default_lr: float | None = None  # (task, method) pairs the calibrated table has no entry for [None: the
    # model's recommended lr (training/defaults.py), else the paper's]
    calibration: str | None = None  # calibrated table [default: prod_unlearn/assets/calibration.json]
    seeds: int = 1  # runs per (task, method), data orders seed, seed + 1, ...
    # Utility axis for PDR: health (default; code-health score, falls monotonically as a model is
    # damaged, measured in tasks/health.py) | ppl (original / current held-out perplexity:
    # cheaper, but mild damage can *lower* perplexity) | humaneval (pass@1; 0 for tiny models).
    utility: str = "health"
    attack_ks: list[int] = field(default_factory=lambda: [0, 16, 64])
    # attack kinds run on the copyright task's final models (prod_unlearn/attacks/bench.py: budgets and
    # cost; about 6 min on 2 cores for these 7 models; every kind: prod_unlearn.attacks.KINDS)
    attacks: list[str] = field(default_factory=lambda: list(DEFAULT_KINDS))
    max_items: int | None = None  # first N items of each task's forget/eval set (0 or None: all)
    max_new_tokens: int = 256
    copyright_cuts: list[float] = field(default_factory=lambda: list(POINT_CUTS))  # line cuts scored per file
    ppl_tokens: int = 10_000
    max_length: int | None = None  # None: the model's recommended max length, else the paper's
    model: str | None = None  # default: the embedded model
    device: str = "auto"
    seed: int = 0
    bootstrap: int = 1000  # bootstrap resamples of the items (report only)
    level: float = 0.95  # interval level (report only)
    lr_grid: list[float] = field(default_factory=lambda: list(LR_GRID))  # --calibrate
    tolerance: float = TOLERANCE  # --calibrate
    rule: str = "utility"  # --calibrate: utility (largest lr within tolerance) | forget (matched forgetting)
    target: float = TARGET  # --rule forget: share of the gap to the retain model to close
    # the floor: a model never trained on the tasks' sets [None: the shipped retain model for the embedded
    # model (the tasks it never saw); "none": no floor]
    retain_model: str | None = None

    @classmethod
    def quick(cls, **kw) -> BenchConfig:
        """Meant for ~10 minutes on 2 cores: 3 methods, 16 items a task, 4 points, short generations."""
        base: dict[str, Any]
        base = dict(
            methods=["prod", "ga", "npo"],
            epochs=1,
            eval_points=4,
            max_items=16,
            max_new_tokens=96,
            ppl_tokens=8_000,
            attack_ks=[0, 16, 64],
            utility="ppl",
            attacks=list(QUICK_KINDS),
        )
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)


def resolve_bench_defaults(cfg: BenchConfig) -> BenchConfig:
    """``cfg`` with the settings left None filled from ``training/defaults.py`` (the model folder's
    unlearn_defaults.json, else the paper's; the memorisation recipe), as every entry point does."""
    from dataclasses import replace

    from prod_unlearn.models.loading import RETAIN_MODEL
    from prod_unlearn.training.defaults import resolve_train_config

    t = resolve_train_config(cfg.model)
    pick = lambda mine, default: default if mine is None else mine  # noqa: E731
    return replace(
        cfg,
        epochs=pick(cfg.epochs, t.epochs),
        max_length=pick(cfg.max_length, t.max_length),
        default_lr=pick(cfg.default_lr, t.lr),
        retain_model=pick(cfg.retain_model, "none" if cfg.model else str(RETAIN_MODEL)),
    )


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


def tokenizer_hash(tok) -> str:
    h = hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode())
    h.update(json.dumps([tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]).encode())
    return h.hexdigest()[:16]
