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


def test_tiny_pretrain_writes_a_loadable_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from prod_unlearn.models.pretrain import config_for, pretrain
    rec = pretrain(config_for("tiny", out=str(tmp_path), train_tokens=8_000, eval_every=1000, device="cpu"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert model.config.model_type == "llama" and len(tok) == model.config.vocab_size
    assert set(rec["metrics"]) >= {"memorised_bleu", "control_bleu", "heldout_ppl"}
    assert len(load_examples(tmp_path / "data" / "copyright.jsonl")) == 50
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert all("sha256" in f for f in manifest["files"]["memorise"])


def test_shipped_assets_are_consistent():
    rec = json.loads((DEFAULT_MODEL / "pretrain.json").read_text())
    assert rec["metrics"]["memorised_bleu"] >= 0.5 > rec["metrics"]["control_bleu"]
    manifest = json.loads((ASSETS / "data" / "manifest.json").read_text())
    shipped = [e.id for e in load_examples(ASSETS / "data" / "copyright.jsonl")]
    assert shipped == [f["path"] for f in manifest["files"]["memorise"]]
    assert (ASSETS / "data" / "LICENSE-PSF.txt").exists()
