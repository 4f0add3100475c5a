"""PDR (eq. 6), the report, and a resumable bench run on the micro model."""
from __future__ import annotations

import json

import pytest

from prod_unlearn.bench import BenchConfig, run_bench
from prod_unlearn.evaluation.pareto import dominates, pdr


def test_dominance_needs_strictly_better_on_one():
    assert dominates((0.5, 0.5), (0.4, 0.5))
    assert not dominates((0.5, 0.5), (0.5, 0.5))
    assert not dominates((0.6, 0.4), (0.5, 0.5))


def test_pdr_single_checkpoint_is_eq6():
    # a dominates b and c; b dominates c; c dominates nothing; d is incomparable with all.
    pts = {"a": [(0.9, 0.9)], "b": [(0.5, 0.5)], "c": [(0.4, 0.4)], "d": [(1.0, 0.1)]}
    r = pdr(pts)
    assert r == {"a": pytest.approx(2 / 3), "b": pytest.approx(1 / 3), "c": 0.0, "d": 0.0}


def test_pdr_pools_checkpoints():
    # m's two checkpoints vs r's two: (0.9,0.9) dominates both, (0.1,0.1) neither -> 2 of 4 pairs.
    r = pdr({"m": [(0.9, 0.9), (0.1, 0.1)], "r": [(0.5, 0.5), (0.6, 0.4)]})
    assert r["m"] == pytest.approx(0.5)
    assert r["r"] == pytest.approx(0.5)  # both of r's beat (0.1, 0.1)


def test_bench_runs_resumes_and_reports(micro_dir, tmp_path):
    cfg = BenchConfig(methods=["prod", "ga"], tasks=["copyright"], epochs=1, lr=1e-3, max_items=2,
                      max_new_tokens=8, ppl_tokens=300, max_length=64, attack_ks=[0, 4], model=str(micro_dir), utility="ppl",
                      device="cpu")
    out = tmp_path / "bench"
    res = run_bench(cfg, out)
    cells = res["cells"]
    assert {"copyright/original/0", "copyright/prod/1", "copyright/ga/1", "attack/prod", "attack/ga"} <= set(cells)
    for k in ("copyright/prod/1", "copyright/ga/1"):
        assert 0.0 <= cells[k]["forget_quality"] <= 1.0 and cells[k]["utility"] > 0
    assert cells["copyright/original/0"]["utility"] == 1.0  # ppl axis: original / current
    assert set(res["pdr"]["copyright"]) == {"prod", "ga"}
    for f in ("report.md", "report.json", "pareto_copyright.png", "attack.png"):
        assert (out / f).stat().st_size > 0
    assert "PDR" in (out / "report.md").read_text()

    # Resume: drop one finished cell; a rerun recomputes only that one.
    saved = json.loads((out / "results.json").read_text())
    keep = saved["cells"]["copyright/prod/1"]
    del saved["cells"]["copyright/ga/1"]
    (out / "results.json").write_text(json.dumps(saved))
    res2 = run_bench(cfg, out)
    assert res2["cells"]["copyright/prod/1"] == keep
    assert "copyright/ga/1" in res2["cells"]


def test_memorise_makes_the_model_reproduce_the_set(micro_model, tokenizer, forget_examples, tmp_path):
    """`learn`'s recipe (SFT + replay, cosine to 0) drives the forget-set NLL down and saves a model folder."""
    from prod_unlearn.data.batching import collate, encode
    from prod_unlearn.data.examples import Example
    from prod_unlearn.training.memorise import memorise
    from transformers import AutoModelForCausalLM

    b = collate(encode(forget_examples, tokenizer, 64), tokenizer.pad_token_id)
    before = micro_model(**b).loss.item()
    replay = [Example("", "x = [i * 2 for i in range(5)]\nprint(x)\n", "r1")]
    run = memorise(micro_model, tokenizer, forget_examples, tmp_path / "m", epochs=3, lr=3e-2, max_length=64,
                   replay=replay)
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "m")(**b).loss.item()
    assert after < 0.5 * before
    assert run["method"] == "sft" and run["retain_examples"] == 1
