"""The resumable state of a training run: ``progress.json`` sealed to the checkpoint beside it, and
the full weights of a sharded model gathered for saving."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def seal(state_dir: Path, prog: dict) -> str:
    """Binds progress.json to the checkpoint saved beside it: a hand-edited position, a truncated
    file or a checkpoint of another run no longer matches. Cheap at 7B (per file: size, first and
    last MiB)."""
    h = hashlib.sha256(json.dumps({k: v for k, v in prog.items() if k != "seal"}, sort_keys=True).encode())
    for f in sorted((state_dir / "accelerate").rglob("*")):
        if f.is_file():
            size = f.stat().st_size
            h.update(f"{f.relative_to(state_dir).as_posix()}:{size}".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
                fh.seek(max(0, size - (1 << 20)))
                h.update(fh.read(1 << 20))
    return h.hexdigest()


def read_progress(state_dir: Path) -> dict:
    """The resumable position, only if it matches its checkpoint (never trusted otherwise)."""
    again = "use --overwrite to start afresh"
    try:
        prog = json.loads((state_dir / "progress.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{state_dir / 'progress.json'}: unreadable resume state ({e}); {again}") from None
    if not isinstance(prog, dict) or prog.get("seal") != seal(state_dir, prog):
        raise ValueError(
            f"{state_dir}: the resume state does not match its checkpoint (edited, corrupt, or written "
            f"by an older version); {again}"
        )
    return prog


def full_state(accelerator, model) -> dict | None:
    """The full weights of a sharded model (FSDP, DeepSpeed ZeRO-3), gathered by every process (a
    collective) for the main one to save; None when the model holds its own full weights."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return None
    return accelerator.get_state_dict(model)
