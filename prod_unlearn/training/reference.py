"""The one frozen pass of the original model, packed per example and cached on disk.

Everything a method needs from the original model is computed here once, before training, so
training holds a single model. The cache key covers the weights (content fingerprint), the
tokenised data, the method and its parameters: a stale cache can never be loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from prod_unlearn.data.batching import Encoded, collate
from prod_unlearn.io import atomic_file, cache_root
from prod_unlearn.methods.base import Method, completion_logits
from prod_unlearn.progress import progress


class Reference:
    """Per-example tensors packed as ``{view}/{name}/values`` + ``{view}/{name}/offsets``."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def gather(self, view: str, name: str, indices, device=None) -> torch.Tensor:
        """Concatenate the entries of ``indices`` (in order) for one view/field."""
        values, offsets = self.tensors[f"{view}/{name}/values"], self.tensors[f"{view}/{name}/offsets"]
        parts = [values[offsets[i] : offsets[i + 1]] for i in indices.tolist()]
        out = torch.cat(parts) if parts else values[:0]
        return out.to(device) if device is not None else out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def cache_dir() -> Path:
    return cache_root() / "references"


def cache_key(fingerprint: str, views: dict[str, list[Encoded]], method: Method, params) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {"model": fingerprint, "method": method.name, "params": asdict(params)}, sort_keys=True, default=str
        ).encode()
    )
    for view, items in sorted(views.items()):
        h.update(view.encode())
        for e in items:
            h.update(f"{e.prompt_len}:".encode() + bytes(str(e.input_ids), "ascii"))
    return h.hexdigest()[:24]


@torch.no_grad()
def compute_reference(
    model, views: dict[str, list[Encoded]], method: Method, params, pad_id: int, batch_size: int = 4
) -> Reference:
    """Run the frozen model once over every view and pack ``method.reference`` per example."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    packed: dict[str, torch.Tensor] = {}
    total = sum(len(v) for v in views.values())
    with progress() as bar:
        task = bar.add_task("frozen reference pass", total=total)
        for view, items in views.items():
            per_example: list[dict[str, torch.Tensor]] = []
            for s in range(0, len(items), batch_size):
                b = {k: v.to(device) for k, v in collate(items[s : s + batch_size], pad_id).items()}
                logits, targets, counts = completion_logits(model, b)
                assert method.reference is not None  # callers pass only methods with a frozen reference
                for lg, tg in zip(logits.split(counts.tolist()), targets.split(counts.tolist())):
                    per_example.append(
                        {k: v.detach().cpu().reshape(-1) for k, v in method.reference(lg, tg, params).items()}
                    )
                bar.advance(task, len(counts))
            for name in per_example[0]:
                vals = [d[name] for d in per_example]
                packed[f"{view}/{name}/values"] = torch.cat(vals).contiguous()
                packed[f"{view}/{name}/offsets"] = torch.tensor([0] + [len(v) for v in vals]).cumsum(0)
    model.train(was_training)
    return Reference(packed)


def load_or_compute_reference(
    model, views, method: Method, params, pad_id: int, fingerprint: str, batch_size: int = 4
) -> tuple[Reference, Path, bool]:
    """Return (reference, cache path, hit). Writes are atomic (temp file + rename)."""
    path = cache_dir() / f"{method.name}-{cache_key(fingerprint, views, method, params)}.safetensors"
    if path.exists():
        return Reference(load_file(path)), path, True
    ref = compute_reference(model, views, method, params, pad_id, batch_size)
    with atomic_file(path) as tmp:
        save_file(ref.tensors, str(tmp))
    return ref, path, False
