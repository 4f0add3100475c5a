"""The embedded model's tokenizer: byte-level BPE trained on the corpus, with every newline its own
pre-token (no token spans a line end)."""

from __future__ import annotations

BOS = "<|endoftext|>"
PAD = "<|pad|>"


def newline_isolating(tokenizer):
    """Make every newline its own pre-token, so no token spans a line end: a prompt cut at any line
    end encodes as an exact prefix of the whole text (the v1 tokenizer merged a newline with the next
    line's indentation, so a prompt ending at a line end ended in a token never seen there)."""
    from tokenizers import pre_tokenizers

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True),
        ]
    )
    return tokenizer


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token=BOS,
        eos_token=BOS,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
    )
    newline_isolating(tok)
    tok.backend_tokenizer.train_from_iterator(
        texts,
        trainer=__import__("tokenizers").trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=[BOS, PAD],
            show_progress=False,
            initial_alphabet=__import__("tokenizers").pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return tok


def crossing_newline_tokens(tokenizer, token_ids) -> set[int]:
    """The ids among ``token_ids`` whose text holds a newline and anything else (must be empty)."""
    bad = set()
    for t in set(token_ids):
        s = tokenizer.decode([t])
        if "\n" in s and s.strip("\n"):
            bad.add(t)
    return bad
