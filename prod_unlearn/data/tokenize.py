"""THE tokenisation policy: one rule for BOS, the prompt/completion boundary and padding.

Training, the frozen reference pass, generation, perplexity and every task encode through these
functions, so the completion tokens a method is trained to forget are exactly the tokens its
evaluation scores.

- BOS: the tokenizer's ``bos_token_id`` is prepended once, when it has one; special tokens are
  never added by the tokenizer itself (``add_special_tokens=False``), so no model gets two.
- Boundary: prompt and completion are tokenised *together* and split where the joint text is
  split. A token that straddles the boundary belongs to the completion (the prompt then ends a
  few characters early), so the prompt ends in a token the model saw in that place whatever the
  tokenizer (byte-level BPE, SentencePiece). Tokenizers without offsets encode both parts apart.
- Padding: ``pad_id`` (pad, else eos, else 0); generation pads on the left, training on the right.
"""

from __future__ import annotations


def bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def pad_id(tokenizer) -> int:
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if t is not None:
            return int(t)
    return 0


def right_pad(seqs: list[list[int]], pad: int):
    """(input_ids, attention_mask) long tensors, each row right-padded with ``pad`` to the longest."""
    import torch

    ids_ = torch.full((len(seqs), max(map(len, seqs))), pad, dtype=torch.long)
    mask = torch.zeros_like(ids_)
    for r, s in enumerate(seqs):
        ids_[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids_, mask


def ids(tokenizer, text: str) -> list[int]:
    """Token ids of plain text, no special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def encode_pair(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """(BOS + prompt ids, completion ids), split where the joint text ``prompt + completion`` is."""
    if not prompt:
        return bos(tokenizer), ids(tokenizer, completion)
    try:
        enc = tokenizer(prompt + completion, add_special_tokens=False, return_offsets_mapping=True)
        joint, offs = enc["input_ids"], enc["offset_mapping"]
    except (NotImplementedError, ValueError, KeyError, TypeError):
        joint = offs = None
    if joint and offs and len(offs) == len(joint):
        k = 0
        while k < len(joint) and offs[k][1] <= len(prompt):
            k += 1
        return bos(tokenizer) + joint[:k], joint[k:]
    return bos(tokenizer) + ids(tokenizer, prompt), ids(tokenizer, completion)


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """BOS + prompt: what generation is fed for a prompt written as text."""
    return bos(tokenizer) + ids(tokenizer, prompt)


def encode_document(tokenizer, text: str) -> list[int]:
    """BOS + text: a whole document (perplexity, pretraining)."""
    return bos(tokenizer) + ids(tokenizer, text)


def line_cut(text: str, fraction: float) -> int:
    """Character offset just after the line end nearest ``fraction`` of the text's lines (>= 1 line,
    and at least one line left after it): where a user would cut a file to prompt with it."""
    lines = text.splitlines(keepends=True)
    if len(lines) < 2:
        return 0
    n = min(len(lines) - 1, max(1, round(fraction * len(lines))))
    return sum(len(line) for line in lines[:n])
