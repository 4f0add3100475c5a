"""One home for training defaults: every entry point (CLI ``unlearn``, ``learn``, ``bench``, the
Python API) gets its settings from ``resolve_train_config``.

Unlearning, highest first:
  1. a value the caller gives (a CLI flag, a keyword argument);
  2. the model folder's recommended settings, ``<model>/unlearn_defaults.json`` (a local folder;
     the embedded model ships one, and ``learn`` copies its base model's file into the model it
     writes, so a model memorised from the embedded one keeps the embedded settings);
  3. the paper's settings: ``TrainConfig``'s field defaults (AdamW, lr 5e-6, 10 epochs, max
     length 1024, batch 1 x grad_accum 1 per device; the paper's effective batch is 32).
Memorisation (``learn``, ``bench``'s memorise-first tasks): the caller's values, else
``MEMORISE`` (the recipe that memorises the embedded model's sets; model files do not change it).

``TrainConfig.sources`` (written to run.json with the rest of the config) says where each value
came from: ``user``, ``model:<path of the file>``, ``paper`` (a value the paper states),
``default`` (TrainConfig's own default where the paper states none) or ``memorise recipe``.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

from prod_unlearn.io import read_json
from prod_unlearn.training.loop import TrainConfig

MODEL_DEFAULTS_FILE = "unlearn_defaults.json"

# What `learn` trains with unless told otherwise: next-token training with the lr decayed to zero
# (cosine) after a short warm-up, each step paired with a replay batch of general code (retain nll).
MEMORISE = {
    "epochs": 14,
    "lr": 1e-3,
    "max_length": 1024,
    "scheduler": "cosine",
    "warmup_steps": 10,
    "retain_loss": "nll",
    "retain_weight": 1.0,
}

PAPER_STATES = ("epochs", "lr", "max_length")  # TrainConfig fields whose default the paper states
SCHEDULERS = ("constant", "linear", "cosine")
RETAIN_LOSSES = ("nll", "kl")
_NOT_SETTINGS = ("method_params", "eval_steps", "sources", "until_forgotten")  # per run, never a default from a file
FILE_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name not in _NOT_SETTINGS)
_TYPES = {f.name: type(getattr(TrainConfig(), f.name)) for f in fields(TrainConfig) if f.name in FILE_KEYS}


class ConfigError(ValueError):
    """A bad setting; one line naming where it came from (an option or a file) and what is expected."""


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_value(name: str, value, where: str):
    """``value`` converted to the field's type, or ConfigError naming ``where``."""
    typ = _TYPES[name]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise ConfigError(f"{where}: expected {'a number' if typ is float else 'an integer' if typ is int else 'text'}")
    if name == "scheduler" and value not in SCHEDULERS:
        raise ConfigError(f"{where}: expected one of {', '.join(SCHEDULERS)}")
    if name == "retain_loss" and value not in RETAIN_LOSSES:
        raise ConfigError(f"{where}: expected one of {', '.join(RETAIN_LOSSES)}")
    if typ is float and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number")
    positive = ("epochs", "lr", "batch_size", "grad_accum", "max_length", "reference_batch_size", "max_steps")
    if name in positive and not value > 0:
        raise ConfigError(f"{where}: expected a positive {'number' if typ is float else 'integer'}")
    if name not in positive and typ in (int, float) and value < 0:
        raise ConfigError(f"{where}: expected a non-negative {'number' if typ is float else 'integer'}")
    return value


def model_defaults_path(model: str | Path | None) -> Path | None:
    """The model folder's ``unlearn_defaults.json`` if there is one (None: the embedded model)."""
    if model is None:
        from prod_unlearn.models.loading import DEFAULT_MODEL

        model = DEFAULT_MODEL
    folder = Path(model).expanduser()
    path = folder / MODEL_DEFAULTS_FILE
    return path.resolve() if path.is_file() else None


def model_defaults(model: str | Path | None) -> tuple[dict, Path | None]:
    """(settings, file) from the model folder's recommended unlearning settings; ({}, None) without one."""
    path = model_defaults_path(model)
    if path is None:
        return {}, None
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object of settings ({', '.join(FILE_KEYS)})")
    out = {}
    for k, v in raw.items():
        if k == "note":
            continue
        if k not in FILE_KEYS:
            raise ConfigError(f"{path}: unknown setting {k!r} (expected some of {', '.join(FILE_KEYS)}, or 'note')")
        out[k] = check_value(k, v, f"{path}: {k} {v!r}")
    return out, path


def resolve_train_config(
    model: str | Path | None = None, purpose: str = "unlearn", given_by: str = "user", **overrides
) -> TrainConfig:
    """The TrainConfig for a run on ``model`` (a folder, a hub id, or None for the embedded model).

    ``overrides``: TrainConfig fields; a None value means "not given" (a CLI option left out).
    ``purpose``: "unlearn" (caller > model folder's file > paper) or "memorise" (caller > MEMORISE).
    ``given_by`` labels the caller's values in ``sources`` (e.g. "bench" for the bench's protocol).
    """
    unknown = set(overrides) - {f.name for f in fields(TrainConfig)} | ({"sources"} & set(overrides))
    if unknown:
        raise TypeError(f"resolve_train_config: unknown setting(s) {sorted(unknown)}")
    values = {k: getattr(TrainConfig(), k) for k in FILE_KEYS}
    sources = {k: "paper" if k in PAPER_STATES else "default" for k in FILE_KEYS}
    if purpose == "unlearn":
        found, path = model_defaults(model)
        values.update(found)
        sources.update(dict.fromkeys(found, f"model:{path}"))
    elif purpose == "memorise":
        values.update(MEMORISE)
        sources.update(dict.fromkeys(MEMORISE, "memorise recipe"))
    else:
        raise ValueError(f"purpose must be 'unlearn' or 'memorise', got {purpose!r}")
    extra = {}
    for k, v in overrides.items():
        if v is None:
            continue
        if k in FILE_KEYS:
            values[k] = check_value(k, v, f"{_option(k)} {v}")
            sources[k] = given_by
        else:
            extra[k] = v
    return TrainConfig(**values, **extra, sources=sources)


def copy_model_defaults(src_model: str | Path | None, dest: str | Path) -> Path | None:
    """Give a model folder derived from ``src_model`` (``learn``'s output) the same recommended settings."""
    path = model_defaults_path(src_model)
    if path is None:
        return None
    from prod_unlearn.io import atomic_write_text

    target = Path(dest) / MODEL_DEFAULTS_FILE
    atomic_write_text(target, path.read_text(encoding="utf-8"))
    return target
