"""Forget-quality and code-health metrics shared by every task."""

from __future__ import annotations

import math

import sacrebleu
import torch

from prod_unlearn.evaluation.threads import keeps_threads
from prod_unlearn.progress import progress


def bleu(hypothesis: str, reference: str) -> float:
    """Sentence BLEU in [0, 1] (sacrebleu, default 13a tokenisation and exp smoothing)."""
    if not reference.strip():
        return 0.0
    return sacrebleu.sentence_bleu(hypothesis, [reference]).score / 100.0


def windows_of(tokenizer, texts: list[str], max_length: int, max_tokens: int | None = None) -> list[list[int]]:
    """BOS + text (``data.tokenize.encode_document``) cut into non-overlapping windows of
    ``max_length`` tokens, in text order; with ``max_tokens``, the first windows holding that many."""
    return [w for _, w in text_windows(tokenizer, texts, max_length, max_tokens)]


def text_windows(
    tokenizer, texts: list[str], max_length: int, max_tokens: int | None = None
) -> list[tuple[int, list[int]]]:
    """``windows_of``'s windows, each with the index of the text it comes from."""
    from prod_unlearn.data.tokenize import encode_document

    windows = []
    for i, text in enumerate(texts):
        ids = encode_document(tokenizer, text)
        for s in range(0, max(1, len(ids) - 1), max_length):
            w = ids[s : s + max_length]
            if len(w) > 1:
                windows.append((i, w))
    return windows[: first_windows([w for _, w in windows], max_tokens)]


def first_windows(windows: list[list[int]], max_tokens: int | None) -> int:
    """How many leading windows ``max_tokens`` keeps (a window is kept while fewer are counted)."""
    if max_tokens is None:
        return len(windows)
    k = n = 0
    while k < len(windows) and n < max_tokens:
        n += len(windows[k])
        k += 1
    return k


def length_batches(lengths: list[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Indices sorted by length (longest first) cut into batches of at most ``max_rows`` rows and
    ``max_tokens`` padded tokens (one row always fits): the padding of a batch is only the
    differences between neighbouring lengths."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < max_rows and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@keeps_threads
@torch.no_grad()
def window_nll(
    model, tokenizer, windows: list[list[int]], batch_size: int = 8, batch_tokens: int | None = None, desc: str = "nll"
) -> tuple[list[float], list[int]]:
    """Summed next-token NLL and scored-token count of each window (every token but the first).

    Windows are batched by length (``length_batches``: at most ``batch_size`` windows and
    ``batch_tokens`` tokens, default 8 windows' worth but no more logits than 256 MiB), so a text's
    short last window is padded only to other short windows instead of to the longest.
    """
    from prod_unlearn.data.tokenize import pad_id, right_pad
    from prod_unlearn.evaluation.threads import default_threads

    default_threads()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    longest = max((len(w) for w in windows), default=1)
    vocab = int(getattr(model.config, "vocab_size", 0) or 32_000)
    if batch_tokens is None:
        batch_tokens = max(longest, min(batch_size * longest, 2**26 // vocab))
    pad = pad_id(tokenizer)
    nll, count = [0.0] * len(windows), [0] * len(windows)
    try:
        with progress() as bar:
            task = bar.add_task(desc, total=len(windows))
            for rows in length_batches([len(w) for w in windows], max(1, batch_size), batch_tokens):
                ids, mask = (t.to(device) for t in right_pad([windows[i] for i in rows], pad))
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
                tgt = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.size(-1)).float(), tgt.reshape(-1), ignore_index=-100, reduction="none"
                ).view_as(tgt)
                for r, i in enumerate(rows):
                    nll[i] = float(loss[r].sum())
                    count[i] = int((tgt[r] != -100).sum())
                bar.advance(task, len(rows))
    finally:
        model.train(was_training)
    return nll, count


def bits_per_byte(model, tokenizer, texts: list[str], max_length: int = 1024, max_tokens: int | None = None) -> float:
    """NLL in bits per UTF-8 byte of the texts' windows (all tokens but each window's first):
    comparable across tokenizers, which perplexity is not."""
    windows = windows_of(tokenizer, texts, max_length, max_tokens)
    return window_bits_per_byte(tokenizer, windows, window_nll(model, tokenizer, windows, desc="bits per byte")[0])


def window_bits_per_byte(tokenizer, windows: list[list[int]], nll: list[float]) -> float:
    """Bits per byte from ``window_nll``'s summed NLL of ``windows`` (each scores all but its first token)."""
    n_bytes = sum(len(tokenizer.decode(w[1:]).encode("utf-8")) for w in windows)
    return sum(nll) / (math.log(2) * max(1, n_bytes))
