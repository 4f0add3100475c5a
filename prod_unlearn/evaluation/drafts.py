"""Exact speculative decoding without a second model: a row drafts tokens from its hint (the
evaluated reference) and a verification step keeps the longest prefix the model agrees with
(generation.py, "one token per step")."""

from __future__ import annotations

import math

NGRAM = 3  # off its hint, a row drafts what followed its last NGRAM tokens in the hint
DRAFT_LENGTHS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # draft lengths a verification step may use
QUORUM = 0.9  # a step drafts only when this share of its rows has a draft it expects to keep
LOGITS_BYTES = 256 * 2**20  # a verification step's logits stay under this (caps the draft length)
HOLE_SHARE = 0.25  # realign the cache once rejected drafts hold this share of its columns


class Drafter:
    """What one row proposes to verify next, from the caller's hint: its next tokens while the
    output follows it, else what followed the first occurrence in the hint of the output's last
    ``NGRAM`` tokens (an output that skipped or changed a line and went on verbatim). ``rate``
    is the share of proposed tokens kept so far (prior: 9 of 10). Looking up the prompt and the
    output as well (prompt-lookup decoding) kept ~70 % of its drafts on a model that had
    forgotten, and made decoding slower on the CPU (the holes it leaves cost more than it saves)."""

    def __init__(self, prompt: list[int], hint: list[int] | None):
        self.hint, self.tail, self.done = list(hint or ()), list(prompt[-NGRAM:]), 0
        self.aligned = bool(self.hint)
        self.in_hint = {}
        for i in range(len(self.hint) - NGRAM, -1, -1):  # earliest occurrence wins
            self.in_hint[tuple(self.hint[i : i + NGRAM])] = i + NGRAM
        self.accepted, self.rejected = 9, 1

    def extend(self, toks: list[int]) -> None:
        for t in toks:
            self.aligned = self.aligned and self.done < len(self.hint) and self.hint[self.done] == t
            self.done += 1
        self.tail = (self.tail + toks)[-NGRAM:]

    def propose(self, k: int) -> list[int]:
        if k <= 0 or not self.hint:
            return []
        if self.aligned:
            return self.hint[self.done : self.done + k]
        at = self.in_hint.get(tuple(self.tail))
        return self.hint[at : at + k] if at is not None else []

    def rate(self) -> float:
        return self.accepted / (self.accepted + self.rejected)

    def record(self, proposed: int, accepted: int) -> None:
        if proposed:
            self.accepted += accepted
            self.rejected += accepted < proposed


def plan_step(drafts: list[list[int] | None], rates: list[float], cap: int) -> int:
    """Tokens per row for the next step: 1 + the largest draft length k (of ``DRAFT_LENGTHS``,
    under ``cap``) for which ``QUORUM`` of the live rows have a draft of k tokens and expect to
    keep all k (expected run of kept tokens rate / (1 - rate) >= k). Every row pays for the
    width, a row without a draft too, and a slot not kept stays a hole that later steps read
    until the cache is realigned: measured on the CPU, a cost model that let rows draft on their
    own (~70-75 % of drafts kept on partly forgotten models) decoded 20-30 % slower than one token
    per step; this rule drafts when the batch as a whole follows its hints (a memorised text) and
    not otherwise. ``drafts[r]`` None: a finished row."""
    live = [(len(d), p) for d, p in zip(drafts, rates) if d is not None]
    need = max(1, math.ceil(QUORUM * len(live)))
    width = 1
    for k in DRAFT_LENGTHS:
        if k + 1 > cap or sum(n >= k and p >= k / (k + 1) for n, p in live) < need:
            break
        width = k + 1
    return width
