"""The decoding loop's cache: one buffer per attention layer, allocated for the batch's whole
length, written in place and read through a view of its filled part (generation.py, "cache growth")."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the installed transformers (>= 4.56, pyproject.toml) has both
    from transformers.cache_utils import DynamicCache, DynamicLayer

    _LayerBase = DynamicLayer
else:
    try:  # transformers >= 4.56: caches are lists of layers
        from transformers.cache_utils import DynamicCache, DynamicLayer
    except ImportError:  # pragma: no cover - older transformers: the generic path only
        DynamicCache = DynamicLayer = None
    _LayerBase = DynamicLayer if DynamicLayer is not None else object


class Window:
    """Where the current forward call reads and writes, shared by every layer of a cache."""

    def __init__(self, batch: int, capacity: int):
        self.batch, self.capacity = batch, capacity
        self.rows = slice(None)  # rows of the buffer this call covers (a prefill sub-batch, or all)
        self.start = 0  # first column this call attends to
        self.write = 0  # column where this call's first token goes


class _BufferLayer(_LayerBase):
    """A full-attention cache layer backed by one buffer [batch, heads, capacity, dim] (zeros:
    padding columns hold finite values that the mask hides). ``update`` writes the call's keys
    and values at ``window.write`` for ``window.rows`` and returns a view from ``window.start``."""

    def __init__(self, window: Window):
        super().__init__()
        self.window = window
        self.kbuf: torch.Tensor | None = None
        self.vbuf: torch.Tensor | None = None

    def lazy_initialization(self, key_states, value_states):
        self.device = key_states.device
        w = self.window
        self.kbuf = key_states.new_zeros((w.batch, key_states.shape[1], w.capacity, key_states.shape[-1]))
        self.vbuf = value_states.new_zeros((w.batch, value_states.shape[1], w.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        w = self.window
        end = w.write + key_states.shape[-2]
        self.kbuf[w.rows, :, w.write : end] = key_states
        self.vbuf[w.rows, :, w.write : end] = value_states
        self.keys = self.kbuf[w.rows, :, w.start : end]
        self.values = self.vbuf[w.rows, :, w.start : end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.window.write - self.window.start

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return self.window.capacity

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("compacted by _decode_batch through realign(): the window moves with the buffers")

    def realign(self, rows: torch.Tensor, columns: torch.Tensor, capacity: int) -> None:
        """Keep ``rows``; row r's new columns 0..w-1 are its old ``columns[r]`` (its filled ones,
        right-aligned by ``_decode_batch``), in a buffer of ``capacity`` columns."""
        if self.is_initialized:
            assert self.kbuf is not None and self.vbuf is not None  # set with is_initialized
            self.kbuf, self.vbuf = (gather_columns(buf, rows, columns, capacity) for buf in (self.kbuf, self.vbuf))
            self.keys, self.values = self.kbuf[:, :, : columns.shape[1]], self.vbuf[:, :, : columns.shape[1]]


def gather_columns(buf: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, capacity: int) -> torch.Tensor:
    kept = buf.index_select(0, rows)
    at = columns.to(buf.device)[:, None, :, None].expand(-1, kept.shape[1], -1, kept.shape[3])
    out = kept.new_zeros((kept.shape[0], kept.shape[1], capacity, kept.shape[3]))
    out[:, :, : columns.shape[1]] = kept.gather(2, at)
    return out


def forward_kwargs(model) -> dict:
    """Which optional forward arguments this model takes (names moved across transformers versions)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wrappers
    params = inspect.signature(base.forward).parameters
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    cache_arg = "cache" if "cache" in params else "past_key_values"
    return {
        "cache_arg": cache_arg,
        "position_ids": "position_ids" in params or has_var_kw,
        "logits_to_keep": "logits_to_keep" in params,
    }


def buffer_cache(model, window: Window):
    """A DynamicCache whose layers are ``_BufferLayer``s, or None when the model's cache is not
    plain full attention in every layer (then the generic path runs)."""
    if DynamicCache is None:
        return None
    try:
        probe = DynamicCache(config=model.config)
    except Exception:
        return None
    if not probe.layers or any(type(layer) is not DynamicLayer for layer in probe.layers):
        return None
    probe.layers = [_BufferLayer(window) for _ in probe.layers]
    return probe
