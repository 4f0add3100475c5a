"""Batched greedy generation with the KV cache (the paper decodes greedily everywhere)."""
from __future__ import annotations

import torch

from prod_unlearn.progress import progress


def model_context(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", None) or 4096)


@torch.no_grad()
def greedy_continue(model, tokenizer, prompts: list[list[int]], max_new_tokens: list[int],
                    batch_size: int = 16, desc: str = "generating", stop_at_eos: bool = True) -> list[list[int]]:
    """Greedy continuation of token-id prompts; returns new token ids, each cut to its own budget.

    Prompts are sorted by length and left-padded per batch so padding (and wasted compute) is
    small; prompts longer than the context minus the budget keep their last tokens.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ctx = model_context(model)
    pad = tokenizer.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    with progress() as bar:
        task = bar.add_task(desc, total=len(prompts))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            budget = max(max_new_tokens[i] for i in idx)
            keep = max(1, ctx - budget)
            batch = [prompts[i][-keep:] for i in idx]
            width = max(len(p) for p in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, p in enumerate(batch):
                ids[r, width - len(p):] = torch.tensor(p)
                mask[r, width - len(p):] = 1
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=budget, pad_token_id=pad,
                                 eos_token_id=tokenizer.eos_token_id if stop_at_eos else None,
                                 num_beams=1, temperature=None, top_p=None, top_k=None)
            for r, i in enumerate(idx):
                new = gen[r, width:].tolist()[:max_new_tokens[i]]
                if stop_at_eos and tokenizer.eos_token_id in new:
                    new = new[:new.index(tokenizer.eos_token_id)]
                out[i] = new
            bar.advance(task, len(idx))
    model.train(was_training)
    return out
