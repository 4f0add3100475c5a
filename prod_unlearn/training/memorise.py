"""Memorisation on demand: fine-tune a model until it reproduces a set (the paper's setup).

The recipe that works (DESIGN.md, measured): next-token training on the set with the learning
rate decayed to zero (cosine), each step paired with a batch of general code (replay) so the
model memorises instead of overfitting.
"""
from __future__ import annotations

from pathlib import Path

from prod_unlearn.data.examples import Example


def default_replay(n: int = 200) -> list[Example]:
    """The embedded model's own training split: replaying it teaches that model nothing new."""
    from prod_unlearn.data.corpus import list_sources, split_corpus, stdlib_root
    return [Example("", f.text, f.path) for f in split_corpus(list_sources(stdlib_root()))["train"][:n]]


def memorise(model, tokenizer, examples: list[Example], out: str | Path, epochs: int = 14, lr: float = 1e-3,
             batch_size: int = 1, max_length: int = 1024, seed: int = 0, replay: list[Example] | None = None,
             model_name: str = "", evaluate=None) -> dict:
    from prod_unlearn.methods import get_method
    from prod_unlearn.training.loop import TrainConfig, unlearn
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, seed=seed,
                      scheduler="cosine", warmup_steps=10, retain_loss="nll", retain_weight=1.0)
    return unlearn(model, tokenizer, examples, get_method("sft"), cfg, out, retain=replay or default_replay(),
                   model_name=model_name, evaluate=evaluate)
