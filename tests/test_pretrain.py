"""The embedded model's pipeline end to end (tiny preset) and the shipped assets."""
from __future__ import annotations

import json

from prod_unlearn.data.corpus import list_sources, split_corpus, stdlib_root
from prod_unlearn.data.examples import load_examples
from prod_unlearn.models.loading import ASSETS, DEFAULT_MODEL


def test_split_is_deterministic_and_disjoint():
    files = list_sources(stdlib_root())
    a, b = split_corpus(files), split_corpus(list(reversed(files)))
    assert {k: sorted(f.path for f in v) for k, v in a.items()} == {k: sorted(f.path for f in v) for k, v in b.items()}
    train = {f.path for f in a["train"]}
    assert len(a["memorise"]) == 50
    assert not train & {f.path for f in a["heldout"]} and not train & {f.path for f in a["control"]}


def test_tiny_pretrain_writes_a_loadable_model_and_continues_from_it(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from prod_unlearn.data.tokenize import ids
    from prod_unlearn.models.pretrain import config_for, pretrain
    from prod_unlearn.models.tokenizer import crossing_newline_tokens
    seen = []
    final = lambda m, t, split: seen.append(len(split["memorise"])) or {"files": len(split["memorise"])}  # noqa: E731
    rec = pretrain(config_for("tiny", out=str(tmp_path / "a"), train_tokens=8_000, eval_every=1000, device="cpu"),
                   final_eval=final)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "a" / "model")
    assert model.config.model_type == "llama" and len(tok) == model.config.vocab_size
    assert rec["metrics"] == {"files": 50} and seen == [50]
    assert json.loads((tmp_path / "a" / "model" / "pretrain.json").read_text())["metrics"] == {"files": 50}
    text = load_examples(tmp_path / "a" / "data" / "copyright.jsonl")[0].completion
    assert crossing_newline_tokens(tok, ids(tok, text)) == set()      # the saved tokenizer keeps the rule
    assert len(load_examples(tmp_path / "a" / "data" / "copyright.jsonl")) == 50
    manifest = json.loads((tmp_path / "a" / "data" / "manifest.json").read_text())
    assert all("sha256" in f for f in manifest["files"]["memorise"])
    # continued training (the cpu presets): same vocabulary, the initial weights' fingerprint recorded
    rec2 = pretrain(config_for("tiny", out=str(tmp_path / "b"), init=str(tmp_path / "a" / "model"),
                               train_tokens=2_000, copyright_repeats=2, eval_every=1000, device="cpu"))
    assert rec2["init"]["path"] == str(tmp_path / "a" / "model") and rec2["init"]["fingerprint"]
    assert AutoTokenizer.from_pretrained(tmp_path / "b" / "model").get_vocab() == tok.get_vocab()


def test_shipped_assets_are_consistent():
    rec = json.loads((DEFAULT_MODEL / "pretrain.json").read_text())
    m = rec["metrics"]
    assert m["copyright"]["bleu"] >= 0.9 and m["control"]["bleu"] <= 0.15   # line-cut prompts (issue targets)
    manifest = json.loads((ASSETS / "data" / "manifest.json").read_text())
    shipped = [e.id for e in load_examples(ASSETS / "data" / "copyright.jsonl")]
    assert shipped == [f["path"] for f in manifest["files"]["memorise"]]
    assert (ASSETS / "data" / "LICENSE-PSF.txt").exists()
