"""How generation groups its prompts (evaluation/generation.py): the cost of a decode step, the cut
of the length-sorted prompts into decode batches, and of a batch into prefill calls."""

from __future__ import annotations

import math

PREFILL_TOKENS = 8192  # max prompt tokens (padding included) per prefill call
PREFILL_PAD = 0.125  # a prefill sub-batch stays under this share of padding


def step_costs(model) -> tuple[float, int]:
    """(fixed cost of one decode step, cache bytes per token), the fixed cost in cache columns.

    A decode step reads every weight once whatever the batch (plus the framework's per-call
    overhead, taken as as much again), and each row reads its whole cache, padding included:
    ``fixed`` = 2 x weight bytes / cache bytes per token. The embedded model: 2 x 55 MB / 18 KB
    = 6000 columns, i.e. a step costs as much as 6000 cached tokens of reading (measured: ~12 ms
    for the fixed part on one core, ~1.8 us per cached token and row).
    """
    cfg = model.config
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    p = next(model.parameters())
    size = p.element_size()
    weights = sum(q.numel() * q.element_size() for q in model.parameters())
    hidden = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0) or 1024)
    layers = int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 0) or 12)
    heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_head", 0) or 1)
    kv_heads = int(getattr(cfg, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(cfg, "head_dim", 0) or hidden // heads)
    per_token = max(1, 2 * layers * kv_heads * head_dim * size)
    return 2 * weights / per_token, per_token


def decode_batches(
    order: list[int], lengths: list[int], budgets: list[int], batch_size: int, fixed: float, max_tokens: int
) -> list[list[int]]:
    """Cut the length-sorted (ascending) order into consecutive batches of at most ``batch_size``
    rows and ``max_tokens`` cache tokens (rows x (longest prompt + largest budget)) that minimise
    the estimated decoding cost (dynamic programming over the cut points).

    A batch of rows r with prompt width W (its longest prompt) costs ``fixed`` per step for
    max(budget) steps plus, per row, the cache it reads: sum over its steps of (W + t), i.e.
    ``b_r * W + b_r**2 / 2`` (a finished row leaves the batch). Few large batches amortise the
    fixed cost; batches of similar lengths read little padding: on a small model on a CPU a
    batch spanning 70- and 1000-token prompts spends most of its time reading padding, on a
    large one (large ``fixed``) the fixed cost wins and batches stay full.
    """
    n = len(order)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):  # batch = order[i:j], its widest prompt lengths[j-1]
        width = lengths[j - 1]
        sum_b = sum_b2 = 0.0
        max_b = 0
        for i in range(j - 1, max(-1, j - 1 - batch_size), -1):
            b = budgets[i]
            sum_b += b
            sum_b2 += b * b
            max_b = max(max_b, b)
            if i < j - 1 and (j - i) * (width + max_b) > max_tokens:
                break
            cost = best[i] + fixed * max_b + width * sum_b + sum_b2 / 2
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches: list[list[int]] = []
    j = n
    while j > 0:
        batches.append(order[cut[j] : j])
        j = cut[j]
    return batches[::-1]


def prefill_groups(
    lengths: list[int], max_tokens: int = PREFILL_TOKENS, max_pad: float = PREFILL_PAD
) -> list[tuple[int, int]]:
    """Split rows sorted by ascending length into [start, end) runs whose left padding stays
    under ``max_pad`` of their padded tokens and whose padded size stays under ``max_tokens``."""
    groups, start, total = [], 0, 0
    for i, n in enumerate(lengths):
        rows = i - start + 1
        if i > start and (n * rows > max_tokens or n * rows - (total + n) > max_pad * n * rows):
            groups.append((start, i))
            start, total = i, 0
        total += n
    if lengths:
        groups.append((start, len(lengths)))
    return groups
