"""Evaluation results cached on disk by content, like the frozen reference pass.

``unlearn`` evaluates the model it starts from before training; run twice on the same model and
data, that before-evaluation is the same computation, so its result is stored once under
``$PROD_UNLEARN_CACHE/evaluations/`` (next to ``references/``; default ``~/.cache/prod-unlearn``)
and read back. The key covers everything the figures depend on:

- the weights (``models.loading.model_fingerprint``: names, shapes, dtypes, a strided sample of
  values) and the model config; the device type (CPU and GPU kernels round differently);
- the tokenizer (its serialised vocabulary and merges, or its name, size and special ids);
- the task, its examples (every field), ``with_ppl`` and every evaluation option;
- the code and shipped data that evaluate: every ``.py`` file of ``prod_unlearn/evaluation`` and
  ``prod_unlearn/data``, ``assets/data/heldout.jsonl``, and the torch / transformers / sacrebleu
  versions; any file an option names (e.g. ``heldout=``) by content.

A stale entry therefore cannot be read: change any of these and the key changes. Writes are
atomic (``io.atomic_write_json``); an unreadable entry is recomputed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path

from prod_unlearn.io import cache_root

PACKAGE = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    return cache_root() / "evaluations"


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_files() -> list[Path]:
    """Every file whose content can change an evaluation's result (the packages a task runs on)."""
    return sorted(
        [
            *(f for d in ("evaluation", "tasks", "sandbox", "data") for f in PACKAGE.joinpath(d).glob("*.py")),
            PACKAGE / "assets" / "data" / "heldout.jsonl",
        ]
    )


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """The evaluation and task code, the shipped held-out data and the numeric libraries' versions."""
    h = hashlib.sha256()
    for f in code_files():
        if f.is_file():
            h.update(f"{f.relative_to(PACKAGE)}:{_file_digest(f)}\n".encode())
    import sacrebleu
    import torch
    import transformers

    h.update(
        f"torch={torch.__version__} transformers={transformers.__version__} sacrebleu={sacrebleu.__version__}".encode()
    )
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256()
    try:
        h.update(tokenizer.backend_tokenizer.to_str().encode())
    except Exception:  # slow tokenizer or no backend: what identifies it
        h.update(str(getattr(tokenizer, "name_or_path", type(tokenizer).__name__)).encode())
        h.update(str(len(tokenizer)).encode())
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        h.update(f"{name}={getattr(tokenizer, name, None)}".encode())
    return h.hexdigest()


def _jsonable(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, Path)) and len(str(value)) < 4096:
        try:
            if os.path.isfile(value):
                return {"file": str(value), "sha256": _file_digest(Path(value))}
        except (OSError, ValueError):
            pass
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def evaluation_key(model, tokenizer, task: str, examples, with_ppl: bool, options: dict) -> str:
    from prod_unlearn.models.loading import model_fingerprint

    config = getattr(model, "config", None)
    try:
        config_text = config.to_json_string(use_diff=False) if config is not None else ""
    except Exception:
        config_text = repr(config)
    device = next(model.parameters()).device.type
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "model": model_fingerprint(model),
                "config": hashlib.sha256(config_text.encode()).hexdigest(),
                "device": device,
                "tokenizer": tokenizer_fingerprint(tokenizer),
                "task": task,
                "with_ppl": with_ppl,
                "options": _jsonable(options),
                "code": code_fingerprint(),
            },
            sort_keys=True,
        ).encode()
    )
    h.update(json.dumps(_jsonable(list(examples or [])), sort_keys=True).encode())
    return h.hexdigest()[:32]


def load(key: str) -> dict | None:
    path = cache_dir() / f"{key}.json"
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def store(key: str, result: dict) -> Path:
    from prod_unlearn.io import atomic_write_json

    path = cache_dir() / f"{key}.json"
    atomic_write_json(path, result)
    return path
