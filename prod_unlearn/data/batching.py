"""Tokenise (prompt, completion) pairs and pad them into batches; loss only on completion tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prod_unlearn.data.examples import Example
from prod_unlearn.data.tokenize import encode_pair, right_pad

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    prompt_len: int  # tokens (BOS + prompt) that carry no loss


def encode(examples: list[Example], tokenizer, max_length: int) -> list[Encoded]:
    """BOS + prompt + completion (``data.tokenize.encode_pair``), cut to max_length.

    A prompt longer than half the window keeps its last tokens, so every example keeps at least
    half a window of completion.
    """
    out = []
    for e in examples:
        prompt, completion = encode_pair(tokenizer, e.prompt, e.completion)
        if len(prompt) > max_length // 2 and len(prompt) + len(completion) > max_length:
            prompt = prompt[-(max_length // 2) :]
        ids = (prompt + completion)[:max_length]
        if len(ids) <= len(prompt):
            raise ValueError(f"example {e.id!r}: no completion token fits in max_length={max_length}")
        out.append(Encoded(ids, len(prompt)))
    return out


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels (IGNORE on prompt and padding)."""
    ids, mask = right_pad([e.input_ids for e in items], pad_id)
    labels = torch.full_like(ids, IGNORE)
    for r, e in enumerate(items):
        labels[r, e.prompt_len : len(e.input_ids)] = ids[r, e.prompt_len : len(e.input_ids)]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of an epoch: a pure function of (seed, epoch), so a resumed run replays it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()
