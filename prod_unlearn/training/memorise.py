"""Memorisation on demand: fine-tune a model until it reproduces a set (the paper's setup).

The recipe that works (measured on the embedded model; settings in ``training/defaults.py``
``MEMORISE``): next-token training on the set with the learning rate decayed to zero (cosine),
each step paired with a batch of general code (replay) so the model memorises instead of
overfitting.
"""

from __future__ import annotations

from pathlib import Path

from prod_unlearn.data.examples import Example


def default_replay(n: int = 200) -> list[Example]:
    """The embedded model's own training split: replaying it teaches that model nothing new."""
    from prod_unlearn.data.corpus import list_sources, split_corpus, stdlib_root

    return [Example("", f.text, f.path) for f in split_corpus(list_sources(stdlib_root()))["train"][:n]]


def memorise(
    model,
    tokenizer,
    examples: list[Example],
    out: str | Path,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    seed: int | None = None,
    replay: list[Example] | None = None,
    model_name: str = "",
    evaluate=None,
    cfg=None,
    report_to: str = "none",
) -> dict:
    """Train ``model`` on ``examples`` (+ replay) into ``out``. Settings: ``cfg`` if given, else the
    arguments, None ones from the memorisation recipe (``resolve_train_config(..., "memorise")``).
    ``out`` gets the base model's unlearn_defaults.json (``model_name``'s folder), so unlearning the
    memorised model later uses the settings recommended for its base."""
    from prod_unlearn.methods import get_method
    from prod_unlearn.training.defaults import copy_model_defaults, resolve_train_config
    from prod_unlearn.training.loop import unlearn

    if cfg is None:
        cfg = resolve_train_config(
            model_name or None,
            "memorise",
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            max_length=max_length,
            seed=seed,
        )
    run = unlearn(
        model,
        tokenizer,
        examples,
        get_method("sft"),
        cfg,
        out,
        retain=replay or default_replay(),
        model_name=model_name,
        evaluate=evaluate,
        report_to=report_to,
    )
    if model_name:
        copy_model_defaults(model_name, out)
    return run
