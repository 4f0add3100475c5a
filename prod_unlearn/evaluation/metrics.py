"""Forget-quality and code-health metrics shared by every task."""
from __future__ import annotations

import math

import sacrebleu
import torch

from prod_unlearn.progress import progress


def bleu(hypothesis: str, reference: str) -> float:
    """Sentence BLEU in [0, 1] (sacrebleu, default 13a tokenisation and exp smoothing)."""
    if not reference.strip():
        return 0.0
    return sacrebleu.sentence_bleu(hypothesis, [reference]).score / 100.0


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], max_length: int = 1024, batch_size: int = 8,
               max_tokens: int | None = None, desc: str = "perplexity") -> float:
    """exp(mean token NLL) over texts cut into non-overlapping windows of max_length tokens."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    windows, budget = [], max_tokens
    for text in texts:
        ids = bos + tokenizer(text, add_special_tokens=False)["input_ids"]
        for s in range(0, max(1, len(ids) - 1), max_length):
            w = ids[s:s + max_length]
            if len(w) > 1:
                windows.append(w)
    if budget is not None:
        kept, n = [], 0
        for w in windows:
            if n >= budget:
                break
            kept.append(w)
            n += len(w)
        windows = kept
    total_nll, total_tok = 0.0, 0
    with progress() as bar:
        task = bar.add_task(desc, total=len(windows))
        for s in range(0, len(windows), batch_size):
            batch = windows[s:s + batch_size]
            width = max(len(w) for w in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, w in enumerate(batch):
                ids[r, :len(w)] = torch.tensor(w)
                mask[r, :len(w)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            tgt = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1),
                                                    ignore_index=-100, reduction="sum")
            total_nll += nll.item()
            total_tok += int((tgt != -100).sum())
            bar.advance(task, len(batch))
    model.train(was_training)
    return math.exp(total_nll / max(1, total_tok))


def bits_per_byte(model, tokenizer, texts: list[str], max_length: int = 1024, batch_size: int = 8,
                  desc: str = "bits per byte") -> float:
    """Held-out NLL in bits per UTF-8 byte: comparable across tokenizers (perplexity is not)."""
    from prod_unlearn.data.tokenize import encode_document
    n_tok = 0
    for text in texts:
        n = len(encode_document(tokenizer, text))
        n_tok += n - math.ceil(max(1, n - 1) / max_length)  # windows score all but their first token
    ppl = perplexity(model, tokenizer, texts, max_length, batch_size, desc=desc)
    return math.log(ppl) * n_tok / (math.log(2) * sum(len(t.encode("utf-8")) for t in texts))
