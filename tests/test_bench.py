"""PDR (eq. 6), bootstrap intervals, ties, calibration, bench keys and a resumable bench on the micro model."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace

import numpy as np
import pytest

from prod_unlearn.bench import BenchConfig, check_keys, eval_steps, run_bench
from prod_unlearn.runs import key_differences
from prod_unlearn.bench.calibration import calibration_rule, run_calibration
from prod_unlearn.report.bench import write_report
from prod_unlearn.report.pareto import dominates, pdr
from prod_unlearn.evaluation.stats import (bootstrap_task, combine_mean, paired_difference, pdr_replicates,
                                           utility_replicates)


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


# ---------------------------------------------------------------- statistics (synthetic cells)

def _cell(fq_items, u_items, step=None):
    fq = float(np.mean(fq_items))
    u = float(np.mean(u_items))
    return {"forget_quality": fq, "utility": u, "step": step, "epoch": step,
            "items": {"fq": list(map(float, fq_items)), "utility": {"task": "t", "values": list(map(float, u_items))}}}


def _synthetic_runs(n: int, rng, p_fq: dict[str, list[float]], p_u: dict[str, list[float]], seeds=(0,)):
    """Bernoulli items per (method, point): probability p_fq[m][k] of forgetting an item, etc."""
    runs = {}
    for m in p_fq:
        runs[m] = {s: [_cell(rng.random(n) < pf, rng.random(n) < pu, step=k + 1)
                       for k, (pf, pu) in enumerate(zip(p_fq[m], p_u[m]))] for s in seeds}
    original = _cell(rng.random(n) < 0.05, rng.random(n) < 0.8, step=0)
    return original, runs


def test_pdr_replicates_equal_pdr_on_every_replicate():
    rng = np.random.default_rng(1)
    fq = {m: rng.random((3, 7)) for m in "abc"}
    u = {m: rng.random((3, 7)) for m in "abc"}
    u["c"][0] = u["a"][1]  # some exact ties on one axis
    fq["c"][0] = fq["a"][1]
    reps = pdr_replicates(fq, u)
    for b in range(7):
        ref = pdr({m: [(fq[m][p, b], u[m][p, b]) for p in range(3)] for m in fq})
        for m in fq:
            assert reps[m][b] == pytest.approx(ref[m])


def test_intervals_contain_the_point_estimate_and_shrink_with_more_items():
    p_fq = {"strong": [0.3, 0.6, 0.9], "weak": [0.1, 0.2, 0.3]}
    p_u = {"strong": [0.8, 0.8, 0.75], "weak": [0.6, 0.55, 0.5]}
    widths = {}
    for n in (20, 400):
        original, runs = _synthetic_runs(n, np.random.default_rng(0), p_fq, p_u)
        st = bootstrap_task(original, runs, resamples=500, seed=3)
        assert st["n_items"] == {"forget": n, "utility": n}
        for m, e in st["methods"].items():
            for k in ("pdr", "final_forget_quality", "final_utility"):
                assert e[k]["lo"] <= e[k]["point"] <= e[k]["hi"], (n, m, k, e[k])
            for p, c in zip(st["points"][m]["0"], runs[m][0]):
                assert p["forget_quality"]["point"] == pytest.approx(c["forget_quality"])
                assert p["utility"]["point"] == pytest.approx(c["utility"])
                assert p["forget_quality"]["lo"] <= p["forget_quality"]["point"] <= p["forget_quality"]["hi"]
                assert p["utility"]["lo"] <= p["utility"]["point"] <= p["utility"]["hi"]
        # the PDR point estimate is eq. 6 pooled over the points as they are
        ref = pdr({m: [(c["forget_quality"], c["utility"]) for c in runs[m][0]] for m in runs})
        for m in runs:
            assert st["methods"][m]["pdr"]["point"] == pytest.approx(ref[m])
        widths[n] = {k: st["methods"]["weak"][k]["hi"] - st["methods"]["weak"][k]["lo"]
                     for k in ("final_forget_quality", "final_utility")}
    for k in widths[20]:
        assert widths[400][k] < 0.5 * widths[20][k]  # ~ 1 / sqrt(n): 20x the items, ~4.5x narrower


def test_bootstrap_of_pdr_on_a_hand_built_example():
    """Two forget items, a's scores [1, 0], b's [0, 1], equal utility. On the items as they are the
    two points coincide (PDR 0 each); resample (0, 0) -> a dominates, (1, 1) -> b dominates,
    (0, 1) / (1, 0) -> tie again. c is a copy of a: the paired difference a - c is 0 in every resample."""
    def cell(fq):
        return {"forget_quality": float(np.mean(fq)), "utility": 0.5,
                "items": {"fq": fq, "utility": {"task": "toy", "values": [0.5, 0.5]}}}
    runs = {"a": {0: [cell([1.0, 0.0])]}, "b": {0: [cell([0.0, 1.0])]}, "c": {0: [cell([1.0, 0.0])]}}
    idx_f = np.array([[0, 0], [1, 1], [0, 1], [1, 0]])
    st = bootstrap_task(None, runs, indices=(idx_f, np.zeros((4, 2), dtype=int)), level=0.5)
    # exact replicates: resample (0,0): a, c dominate b (a, c tie with each other) -> PDR a = c = 1/2, b = 0
    # (1,1): b dominates a and c -> b = 1, a = c = 0; (0,1), (1,0): all equal -> 0.
    assert st["methods"]["a"]["pdr"]["point"] == 0.0 and st["methods"]["b"]["pdr"]["point"] == 0.0
    from prod_unlearn.evaluation import stats
    fq_reps = {m: stats.mean_replicates(runs[m][0][0]["items"]["fq"], idx_f)[None] for m in runs}
    u_reps = {m: np.full((1, 4), 0.5) for m in runs}
    reps = pdr_replicates(fq_reps, u_reps)
    assert reps["a"].tolist() == [0.5, 0.0, 0.0, 0.0]
    assert reps["b"].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert reps["c"].tolist() == [0.5, 0.0, 0.0, 0.0]
    d = st["pairs"]["pdr"]["a vs c"]
    assert (d["diff"], d["lo"], d["hi"], d["separated"]) == (0.0, 0.0, 0.0, False)
    # random resamples: P(a's PDR = 1/2) = P(both draws item 0) = 1/4
    st = bootstrap_task(None, runs, resamples=4000, seed=0)
    assert st["methods"]["a"]["pdr"]["hi"] == 0.5 and st["methods"]["a"]["pdr"]["lo"] == 0.0
    assert stats.interval(np.r_[np.zeros(3000), np.full(1000, 0.5)], 0.95) == (0.0, 0.5)


def test_paired_differences_mark_separated_and_ties():
    a, b = np.linspace(0.5, 0.7, 1001), np.linspace(0.1, 0.3, 1001)
    assert paired_difference(0.6, a, 0.2, b)["separated"]
    assert not paired_difference(0.6, a, 0.6, a + np.linspace(-0.1, 0.1, 1001))["separated"]
    # paired: two wide but perfectly correlated figures still separate
    noise = np.random.default_rng(0).normal(0, 0.3, 1001)
    d = paired_difference(0.5, 0.5 + noise, 0.45, 0.45 + noise)
    assert d["separated"] and d["lo"] == pytest.approx(0.05)
    # a clear winner and two methods that cannot be told apart
    p_fq = {"good": [0.9, 0.9], "mid1": [0.4, 0.5], "mid2": [0.4, 0.5]}
    p_u = {"good": [0.9, 0.9], "mid1": [0.5, 0.5], "mid2": [0.5, 0.5]}
    original, runs = _synthetic_runs(60, np.random.default_rng(2), p_fq, p_u)
    st = bootstrap_task(original, runs, resamples=500, seed=0)
    assert st["pairs"]["final_forget_quality"]["good vs mid1"]["separated"]
    assert st["pairs"]["final_forget_quality"]["good vs mid1"]["diff"] > 0
    assert not st["pairs"]["final_forget_quality"]["mid1 vs mid2"]["separated"]
    mean = combine_mean({"t1": st.pop("_replicates")["pdr"], "t2": bootstrap_task(
        original, runs, resamples=500, seed=1).pop("_replicates")["pdr"]})
    assert set(mean["methods"]) == {"good", "mid1", "mid2"}


def test_ppl_and_health_utility_replicates_use_the_tasks_formulas():
    from prod_unlearn.tasks import UTILITY_TASKS

    idx = np.array([[0, 1], [0, 0], [1, 1]])
    o = {"task": "ppl", "values": [[10.0, 10], [30.0, 10]]}
    m = {"task": "ppl", "values": [[20.0, 10], [30.0, 10]]}
    r = utility_replicates(m, idx, o, formula=UTILITY_TASKS["ppl"].formula)
    assert r == pytest.approx([np.exp(2.0 - 2.5), np.exp(1.0 - 2.0), 1.0])
    h = {"task": "health", "values": [1.0, 0.0], "figures": {"heldout_ppl": np.e ** 2}}
    assert utility_replicates(h, idx, formula=UTILITY_TASKS["health"].formula) == pytest.approx([0.25, 0.5, 0.0])
    assert utility_replicates(None, idx, fallback=0.3).tolist() == [0.3] * 3
    # the point figure is the same formula on the items as they are
    assert UTILITY_TASKS["health"].utility({"a": 1.0, "b": 0.0}, h["figures"]) == pytest.approx(0.25)
    assert UTILITY_TASKS["humaneval"].utility({"a": 1.0, "b": 0.0, "c": 1.0}, {}) == pytest.approx(2 / 3)


def test_a_format_2_results_file_reads_as_format_3():
    from prod_unlearn.bench.config import FORMAT, upgrade

    old = {"format": 2, "config": {"utility": "health"}, "cells": {
        "copyright/original": {"utility": 0.3, "items": {"fq": [0.1], "utility": {
            "kind": "health", "healthy": [1.0, 0.0], "heldout_ppl": 3.0}}},
        "copyright/ga/s0/1": {"utility": 0.2, "items": {"utility": {"kind": "ppl", "nll": [1.0], "tokens": [4]}}}}}
    new = upgrade(old)
    assert new["format"] == FORMAT
    assert new["cells"]["copyright/original"]["items"]["utility"] == {
        "task": "health", "values": [1.0, 0.0], "figures": {"heldout_ppl": 3.0}}
    assert new["cells"]["copyright/ga/s0/1"]["items"]["utility"]["values"] == [[1.0, 4]]
    # a real layout-2 bench (the bench-quick of 2026-11-28): its attack keys read as this version writes them, so it resumes
    from dataclasses import fields
    from conftest import REPO
    from prod_unlearn.attacks.bench import keys
    real = upgrade(json.loads((REPO / "tests" / "data" / "bench_quick_layout2.json").read_text()))
    cfg = BenchConfig(**{k: v for k, v in real["config"].items() if k in {f.name for f in fields(BenchConfig)}})
    assert {k: real["keys"][k] for k in keys(cfg)} == keys(cfg)
    check_keys(real["keys"], keys(cfg), "bench-quick")


# ---------------------------------------------------------------- calibration rule, keys

def test_calibration_rule_picks_the_largest_lr_within_tolerance():
    u = {5e-4: 0.0, 2e-4: 0.20, 1e-4: 0.28, 5e-5: 0.29, 1e-5: 0.30}
    assert calibration_rule(0.30, u) == (1e-4, True)            # 0.28 >= 0.9 * 0.30 = 0.27
    assert calibration_rule(0.30, u, tolerance=0.05) == (5e-5, True)   # 0.285
    assert calibration_rule(0.30, {2e-4: 0.27, 1e-4: 0.1}) == (2e-4, True)   # boundary counts; no monotony assumed
    assert calibration_rule(0.30, {2e-4: 0.1, 1e-4: 0.2}) == (1e-4, False)   # none qualifies: the smallest
    assert calibration_rule(1.0, {1e-3: 0.95}) == (1e-3, True)


def test_eval_steps_are_evenly_spaced_and_end_at_the_end():
    assert eval_steps(50, 5) == [10, 20, 30, 40, 50]
    assert eval_steps(34, 5) == [7, 14, 21, 28, 34]
    assert eval_steps(3, 5) == [1, 2, 3]


def test_key_mismatch_is_refused_naming_the_difference():
    stored = {"bench": {"utility": "ppl", "model_fingerprint": "abc"}, "copyright/prod/s0": {"lr": 3e-5, "seed": 0}}
    check_keys(stored, {"bench": {"utility": "ppl", "model_fingerprint": "abc"}, "copyright/ga/s0": {"lr": 1.0}}, "x")
    with pytest.raises(ValueError, match=r"copyright/prod/s0: lr: 3e-05 -> 0.0001.*--overwrite"):
        check_keys(stored, {"copyright/prod/s0": {"lr": 1e-4, "seed": 0}}, "runs/bench")
    assert key_differences({"a": {"b": 1}}, {"a": {"b": 2}}) == ["a.b: 1 -> 2"]


def test_report_marks_ties_and_winners_from_synthetic_results(tmp_path):
    # utility items whose figure is their mean (as humaneval's pass flags)
    cfg = BenchConfig(methods=["good", "mid1", "mid2"], tasks=["copyright"], eval_points=2, bootstrap=300,
                      utility="humaneval")
    p_fq = {"good": [0.9, 0.95], "mid1": [0.4, 0.5], "mid2": [0.4, 0.5]}
    p_u = {"good": [0.9, 0.9], "mid1": [0.5, 0.5], "mid2": [0.5, 0.5]}
    original, runs = _synthetic_runs(80, np.random.default_rng(5), p_fq, p_u)
    cells = {"copyright/original": original}
    info = {}
    for m, by_seed in runs.items():
        info[f"copyright/{m}/s0"] = {"lr": 3e-5, "lr_source": "shared (--lr)", "eval_steps": [1, 2], "steps_per_epoch": 2}
        for c in by_seed[0]:
            cells[f"copyright/{m}/s0/{c['step']}"] = c
    results = {"format": 3, "config": asdict(cfg), "runs": info, "cells": cells}
    rep = write_report(results, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| good vs mid1 | **good**:" in md
    assert "| mid1 vs mid2 | tie:" in md
    assert rep["pdr"]["copyright"]["good"] == pytest.approx(1.0)
    assert "3e-05 (shared (--lr))" in md
    assert json.loads((tmp_path / "report.json").read_text())["stats"]["copyright"]["methods"]["good"]["pdr"]
    results["format"] = 1
    with pytest.raises(ValueError, match="old bench protocol"):
        write_report(results, tmp_path)


# ---------------------------------------------------------------- per-item scores agree with the task figures

def test_per_item_scores_reproduce_the_task_figures(micro_dir, monkeypatch):
    from prod_unlearn.bench.scoring import evaluate_forget
    from prod_unlearn.tasks import insecure
    from prod_unlearn.tasks import FORGET_TASKS
    from prod_unlearn.models.loading import load_model
    model, tok = load_model(str(micro_dir), "cpu", "fp32")
    cfg = BenchConfig(max_new_tokens=8)
    # a fast stand-in for semgrep: flag continuations with an "e" (same for both paths)
    monkeypatch.setattr(insecure, "scan", lambda codes, lang="python", ctx=None: [["x"] if "e" in c else []
                                                                                  for c in codes])
    for task in ("insecure", "deprecated", "copyright"):
        spec = FORGET_TASKS[task]
        _, evalset = spec.load(spec.default_data)
        evalset = evalset[:4]
        res, per_item = evaluate_forget(task, model, tok, evalset, cfg)
        assert "per_item" not in res, task
        assert per_item and np.mean(list(per_item.values())) == pytest.approx(res["forget_quality"], abs=1e-3)


# ---------------------------------------------------------------- the bench on the micro model

def _micro_cfg(micro_dir, **kw):
    base = dict(methods=["prod", "ga"], tasks=["copyright"], epochs=1, eval_points=2, lr=1e-3, max_items=3,
                max_new_tokens=8, ppl_tokens=300, max_length=64, attack_ks=[0, 4], model=str(micro_dir),
                utility="ppl", device="cpu", bootstrap=200, attacks=[])  # the attack kinds: test_bench_attacks_*
    base.update(kw)
    return BenchConfig(**base)


def test_bench_runs_resumes_and_reports(micro_dir, tmp_path):
    cfg = _micro_cfg(micro_dir)
    out = tmp_path / "bench"
    res = run_bench(cfg, out)
    cells = res["cells"]
    assert {"copyright/original", "copyright/prod/s0/2", "copyright/prod/s0/3", "copyright/ga/s0/2",
            "copyright/ga/s0/3", "attack/prod", "attack/ga"} <= set(cells)
    for k in ("copyright/prod/s0/2", "copyright/ga/s0/3"):
        c = cells[k]
        assert 0.0 <= c["forget_quality"] <= 1.0 and c["utility"] > 0
        assert len(c["items"]["fq"]) == 3 and c["items"]["utility"]["task"] == "ppl"
    assert cells["copyright/prod/s0/2"]["step"] == 2 and cells["copyright/prod/s0/3"]["epoch"] == 1.0
    assert cells["copyright/original"]["utility"] == 1.0  # ppl axis: original / current
    assert len(res["items"]["copyright"]["forget"]) == 3
    assert set(res["pdr"]["copyright"]) == {"prod", "ga"}
    for f in ("report.md", "report.html", "report.json", "pareto_copyright.png", "attack.png"):
        assert (out / f).stat().st_size > 0
    page = (out / "report.html").read_text()   # the Pareto chart inlined, learning rates and the run key last
    assert 'src="data:image/png;base64,' in page and page.index("<h2>Learning rates</h2>") > page.index("<h2>copyright</h2>")
    md = (out / "report.md").read_text()
    assert "PDR" in md and "95 %" in md and "| prod vs ga |" in md and "1e-03" not in md and "0.001 (shared" in md
    assert not (out / "runs" / "copyright" / "prod" / "s0" / "checkpoints").exists()

    # Resume: drop an intermediate cell of a finished run; a rerun retrains that run (same data
    # order) and evaluates only the missing point; every other cell stays as it was.
    saved = json.loads((out / "results.json").read_text())
    keep = {k: v for k, v in saved["cells"].items() if k != "copyright/ga/s0/2"}
    del saved["cells"]["copyright/ga/s0/2"]
    (out / "results.json").write_text(json.dumps(saved))
    res2 = run_bench(cfg, out)
    assert "copyright/ga/s0/2" in res2["cells"]
    assert all(res2["cells"][k] == v for k, v in keep.items())

    # What shapes results is keyed: another lr for the same cells is refused, naming it.
    with pytest.raises(ValueError, match=r"copyright/prod/s0: lr: 0.001 -> 0.002"):
        run_bench(_micro_cfg(micro_dir, lr=2e-3, methods=["prod"]), out)
    with pytest.raises(ValueError, match=r"bench: max_new_tokens: 8 -> 9"):
        run_bench(_micro_cfg(micro_dir, max_new_tokens=9), out)
    res3 = run_bench(_micro_cfg(micro_dir, lr=2e-3, methods=["prod"], attack_ks=[0]), out, overwrite=True)
    assert set(res3["cells"]) == {"copyright/original", "copyright/prod/s0/2", "copyright/prod/s0/3", "attack/original",
                                  "attack/prod"}


def test_a_crash_during_an_evaluation_resumes_from_the_previous_point(micro_dir, tmp_path, monkeypatch):
    """The loop writes a state after every evaluation point: a bench killed while evaluating the
    last point resumes from the state of the point before, replays the steps since, and ends with
    the same figures as an uninterrupted bench."""
    import prod_unlearn.bench.scoring as bench
    cfg = _micro_cfg(micro_dir, methods=["prod"], max_items=4, attack_ks=[0])
    clean = run_bench(cfg, tmp_path / "clean")["cells"]
    real, calls = bench.evaluate_forget, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # original, step 2, then step 4 crashes
            raise RuntimeError("killed")
        return real(*a, **k)

    monkeypatch.setattr(bench, "evaluate_forget", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        run_bench(cfg, tmp_path / "b")
    saved = json.loads((tmp_path / "b" / "results.json").read_text())["cells"]
    assert set(saved) == {"copyright/original", "copyright/prod/s0/2"}
    prog = json.loads((tmp_path / "b" / "runs" / "copyright" / "prod" / "s0" / "checkpoints" / "state" /
                       "progress.json").read_text())
    assert (prog["epoch"], prog["batch"]) == (0, 2)
    cells = run_bench(cfg, tmp_path / "b")["cells"]
    assert len(calls) == 4  # only step 4 evaluated again
    for k in ("copyright/prod/s0/2", "copyright/prod/s0/4"):
        assert cells[k]["items"] == clean[k]["items"]


def test_bench_seeds_report_the_spread(micro_dir, tmp_path):
    cfg = _micro_cfg(micro_dir, seeds=2, methods=["ga", "npo"], attack_ks=[0], eval_points=1)
    res = run_bench(cfg, tmp_path / "b")
    assert {"copyright/ga/s0/3", "copyright/ga/s1/3", "copyright/npo/s1/3"} <= set(res["cells"])
    st = json.loads((tmp_path / "b" / "report.json").read_text())["stats"]["copyright"]
    assert set(st["methods"]["ga"]["final_forget_quality"]["seeds"]) == {"0", "1"}
    assert "seed_sd" in st["methods"]["ga"]["pdr"]
    assert "by seed" in (tmp_path / "b" / "report.md").read_text()


def test_calibrate_then_bench_uses_the_table(micro_dir, tmp_path):
    table = tmp_path / "calibration.json"
    table.write_text(json.dumps({"format": 1, "note": "empty", "profiles": []}))
    cfg = _micro_cfg(micro_dir, lr=None, methods=["ga"], lr_grid=[1e-3, 1e-4], tolerance=1.0)
    t = run_calibration(cfg, tmp_path / "cal", table_out=table)
    entry = t["profiles"][0]["tasks"]["copyright"]
    # tolerance 1.0: any utility qualifies, so the largest lr is the first tried and the only one
    assert entry["lr"] == {"ga": 1e-3} and entry["qualified"] == {"ga": True}
    assert list(entry["utility"]["ga"]) == ["0.001"]
    state = json.loads((tmp_path / "cal" / "calibration_state.json").read_text())
    assert list(state["runs"]) == ["copyright/ga/0.001"]
    assert run_calibration(cfg, tmp_path / "cal", table_out=table) == t  # resumed: nothing retrained
    shipped = json.loads(table.read_text())
    assert "note" not in shipped and len(shipped["profiles"]) == 1 and "largest" in shipped["rule"]

    res = run_bench(_micro_cfg(micro_dir, lr=None, methods=["ga", "prod"], calibration=str(table),
                               attack_ks=[0], eval_points=1), tmp_path / "b")
    assert res["runs"]["copyright/ga/s0"]["lr"] == 1e-3 and res["runs"]["copyright/ga/s0"]["lr_source"] == "calibrated"
    default = res["config"]["default_lr"]  # not calibrated: the shared default (the model's, else the paper's)
    assert res["runs"]["copyright/prod/s0"]["lr"] == default
    assert res["runs"]["copyright/prod/s0"]["lr_source"].startswith("shared default")
    md = (tmp_path / "b" / "report.md").read_text()
    assert "0.001 (calibrated)" in md and f"{default:g} (shared default" in md


def test_cli_calibrate_and_refusals(micro_dir, tmp_path):
    from typer.testing import CliRunner
    from prod_unlearn.cli import app

    def invoke(*args):
        return CliRunner().invoke(app, ["bench", *args], prog_name="prod-unlearn")

    common = ["--model", str(micro_dir), "--tasks", "copyright", "--methods", "ga", "--max-items", "2",
              "--utility", "ppl", "--epochs", "1", "--device", "cpu"]
    r = invoke("--calibrate", "--out", str(tmp_path / "cal"), "--lr-grid", "1e-3,1e-5", *common)
    assert r.exit_code == 0, r.output
    table = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert table["profiles"][0]["tasks"]["copyright"]["lr"]["ga"] in (1e-3, 1e-5)
    r = invoke("--calibrate", "--out", str(tmp_path / "cal"), "--lr-grid", "1e-3,1e-5", *common[:-4],
               "--epochs", "2", "--device", "cpu")
    assert r.exit_code == 2 and "epochs: 1 -> 2" in r.output and "--overwrite" in r.output
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps({"config": {}, "cells": {}}))
    r = invoke("--out", str(tmp_path / "old"), *common)
    assert r.exit_code == 2 and "old protocol" in r.output


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


# ---------------------------------------------------------------- attacks in the bench

def test_bench_attacks_report_intervals_and_resume(micro_dir, tmp_path, monkeypatch):
    """`bench --attacks mia,quantize`: one cell per (kind, model), a report section per kind with the
    methods side by side and 95 % intervals, a chart per kind; a rerun recomputes no attack cell,
    a dropped cell is recomputed alone, and the attack budgets are part of the folder's key."""
    import re
    from prod_unlearn.attacks import bench as attacks
    cfg = _micro_cfg(micro_dir, methods=["ga"], attacks=["mia", "quantize"])
    out = tmp_path / "b"
    res = run_bench(cfg, out)
    cells = res["cells"]
    for kind in ("mia", "quantize"):
        for m in ("original", "ga"):
            c = cells[f"attacks/{kind}/{m}"]
            assert c["kind"] == kind and c["rows"] and "per_item" not in c
    assert {"attack/original", "attack/ga"} <= set(cells)  # the paper's prefix section stays
    assert res["keys"]["attack:mia"]["n_boot"] == 200 and res["keys"]["attack:quantize"]["max_new_tokens"] == 8
    md = (out / "report.md").read_text()
    ci = r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]"
    for kind, first_col in (("mia", "loss"), ("quantize", "fp32")):
        assert f"### {kind}: " in md and f"![{kind}](attack_{kind}.png)" in md
        assert (out / f"attack_{kind}.png").stat().st_size > 1000
        table = md.split(f"### {kind}: ")[1]
        assert f"| method | {first_col} |" in table
        assert re.search(rf"\| original \| {ci} \|", table) and re.search(rf"\| ga \| {ci} \|", table)
    assert "Change against `fp32` (paired)" in md and "Prefix-injection attack" in md
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["attacks"]) == {"mia", "quantize"} and set(rep["attacks"]["mia"]) == {"original", "ga"}
    for row in rep["attacks"]["mia"]["ga"]["rows"] + rep["attacks"]["quantize"]["original"]["rows"]:
        assert row["lo"] <= row["mean"] <= row["hi"] and row["n"] > 0

    real, calls = attacks.run_attacks, []

    def counted(*a, **k):
        calls.append(k["kinds"])
        return real(*a, **k)

    monkeypatch.setattr(attacks, "run_attacks", counted)
    again = run_bench(cfg, out)
    assert calls == [] and again["cells"] == cells
    saved = json.loads((out / "results.json").read_text())
    del saved["cells"]["attacks/quantize/ga"]
    (out / "results.json").write_text(json.dumps(saved))
    again = run_bench(cfg, out)
    assert calls == [["quantize"]]
    assert all(again["cells"][k] == v for k, v in cells.items() if k != "attacks/quantize/ga")
    run_bench(_micro_cfg(micro_dir, methods=["ga"], attacks=["mia"]), out)  # fewer kinds: the same folder
    assert len(calls) == 1
    with pytest.raises(ValueError, match=r"attack:mia: n_boot: 200 -> 300"):
        run_bench(_micro_cfg(micro_dir, methods=["ga"], attacks=["mia"], bootstrap=300), out)


def test_bench_prefix_kind_fills_the_papers_prefix_cell(micro_model, tokenizer, forget_examples):
    """With `prefix` among the kinds the bench derives the old attack/<method> cell from its result:
    the same numbers `prefix_attack` gives."""
    from prod_unlearn.attacks import prefix
    cfg = BenchConfig(attack_ks=[0, 2, 4], max_new_tokens=8, bootstrap=50)
    from prod_unlearn.attacks.bench import attack_settings
    res = prefix.run(micro_model, tokenizer, forget_examples, cfg=attack_settings("prefix", cfg))
    old = prefix.prefix_attack(micro_model, tokenizer, forget_examples, [0, 2, 4], max_new_tokens=8)
    new = prefix.summarise(res["per_item"]["model"])
    assert new == {k: {str(kk): vv for kk, vv in v.items()} for k, v in old.items()}


def test_bench_attacks_option(micro_dir, tmp_path):
    from typer.testing import CliRunner
    from prod_unlearn.attacks.bench import DEFAULT_KINDS, QUICK_KINDS, estimate_seconds, parse_kinds
    from prod_unlearn.attacks import KINDS
    from prod_unlearn.cli import app
    assert parse_kinds("all") == KINDS and parse_kinds("none") == [] and parse_kinds(None) is None
    assert parse_kinds("mia, quantize") == ["mia", "quantize"]
    assert list(DEFAULT_KINDS) == BenchConfig().attacks and list(QUICK_KINDS) == BenchConfig.quick().attacks
    assert estimate_seconds(DEFAULT_KINDS, 7) <= 15 * 60  # the default bench's attack budget
    r = CliRunner().invoke(app, ["bench", "--attacks", "mia,nope", "--out", str(tmp_path / "b")],
                           prog_name="prod-unlearn")
    assert r.exit_code == 2 and "--attacks nope" in r.output and not (tmp_path / "b").exists()
    assert "--attacks" in CliRunner().invoke(app, ["bench", "--help"], prog_name="prod-unlearn").output


def test_gap_closed_is_paired_over_items():
    from prod_unlearn.evaluation.stats import gap_closed
    g = gap_closed([0.1, 0.2, 0.3], [0.5, 0.5, 0.65], [0.9, 0.8, 1.0], resamples=500)
    assert g["point"] == pytest.approx(0.5) and g["lo"] <= 0.5 <= g["hi"]
    assert gap_closed([0.5, 0.5], [0.6, 0.7], [0.5, 0.5]) is None       # no gap to close: no figure


@pytest.fixture(scope="module")
def retain_dir(tmp_path_factory, tokenizer):
    """Another micro model (another seed, same tokenizer): never trained on anything, the floor."""
    from conftest import make_model
    d = tmp_path_factory.mktemp("retain")
    make_model(tokenizer, seed=1).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def test_bench_puts_the_retain_model_beside_every_method(micro_dir, retain_dir, tmp_path):
    """`bench --retain-model`: scored on the task, attacked like the methods, and the report's floor
    section gives each method's share of the gap closed."""
    out = tmp_path / "b"
    res = run_bench(_micro_cfg(micro_dir, methods=["ga"], retain_model=str(retain_dir), attacks=["mia"]), out)
    cells = res["cells"]
    assert {"copyright/retain", "attacks/mia/retain", "attack/retain"} <= set(cells)
    assert res["config"]["floor_tasks"] == ["copyright"] and res["keys"]["bench"]["retain_fingerprint"]
    md = (out / "report.md").read_text()
    assert "## Against the retain model" in md and "| retain (floor) |" in md and "| ga |" in md.split("### copyright")[1]
    assert "| retain |" in md.split("### mia")[1]                      # attacked beside the methods
    assert "copyright" in json.loads((out / "report.json").read_text())["gap_closed"]
    assert _micro_cfg(micro_dir).retain_model is None and \
        run_bench.__globals__["resolve_bench_defaults"](_micro_cfg(micro_dir)).retain_model == "none"


def test_calibrate_at_matched_forgetting(micro_dir, retain_dir, tmp_path, monkeypatch):
    """--rule forget walks the grid from the smallest lr up to the first that closes the target share of
    the original -> retain gap (forget qualities stubbed: 0.2 original, 0.9 retain); the profile key
    carries the rule; calibration.md shows both rules' columns from the same runs."""
    import prod_unlearn.bench.scoring as scoring
    import prod_unlearn.models.loading as loading
    import prod_unlearn.training.loop as loop
    from prod_unlearn.bench.calibration import run_calibration
    after = {1e-4: 0.30, 1e-3: 0.85, 1e-2: 0.99}          # forget quality after training at each lr
    real_unlearn, real_companion = loop.unlearn, loading.load_companion

    def unlearn(model, tok, forget, method, cfg, *a, **k):
        model._fq = after[cfg.lr]
        return real_unlearn(model, tok, forget, method, cfg, *a, **k)

    def companion(*a, **k):
        m = real_companion(*a, **k)
        m._fq = 0.9
        return m
    monkeypatch.setattr(loop, "unlearn", unlearn)
    monkeypatch.setattr(loading, "load_companion", companion)
    monkeypatch.setattr(scoring, "evaluate_forget", lambda task, model, *a: ({"forget_quality": getattr(model, "_fq", 0.2)},
                                                                             None))
    cfg = _micro_cfg(micro_dir, methods=["ga"], retain_model=str(retain_dir), rule="forget", lr=None,
                     lr_grid=[1e-4, 1e-3, 1e-2])
    prof = run_calibration(cfg, tmp_path / "cal")["profiles"][0]
    entry = prof["tasks"]["copyright"]
    assert prof["key"]["rule"] == "forget" and prof["key"]["target"] == 0.9
    assert entry["lr"]["ga"] == 1e-3 and entry["qualified"]["ga"]          # 0.85 closes 0.93 of the gap
    assert entry["gap_closed"]["ga"] == {"0.0001": pytest.approx(0.1429, abs=1e-3),
                                         "0.001": pytest.approx(0.9286, abs=1e-3)}   # 1e-2 never trained
    md = (tmp_path / "cal" / "calibration.md").read_text()
    assert "Matched forgetting" in md and "| ga | 0.001 |" in md and "**chosen**" in md
    # the other rule in the same folder: the runs are shared, both profiles kept, and a bench report
    # sets the two side by side
    table = run_calibration(replace(cfg, rule="utility"), tmp_path / "cal")
    assert {p["key"].get("rule", "utility") for p in table["profiles"]} == {"utility", "forget"}
    from prod_unlearn.report.bench import matched_section
    entries = {p["key"].get("rule", "utility"): p["tasks"]["copyright"] for p in table["profiles"]}
    rows = matched_section({"copyright": entries}, {"methods": ["ga"]})
    assert rows[0] == "## Matched utility vs matched forgetting"
    assert any(r.startswith("| ga | ") and "| 0.001 | 0.93 |" in r for r in rows), rows


def test_bench_on_a_ray_cluster_gives_the_local_figures(micro_dir, tmp_path, monkeypatch):
    """`bench --executor ray` on a local 2-worker cluster: the same cells as a local run (one thread per
    process on both sides, so the arithmetic is the same); a unit lost with its worker is redone, and
    only it: the cells already saved are kept."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'prod-unlearn[ray]')")
    import torch
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = _micro_cfg(micro_dir, methods=["prod", "ga"], attacks=["mia"])
        local = run_bench(cfg, tmp_path / "local")["cells"]
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
        try:
            out = tmp_path / "ray"
            cells = run_bench(cfg, out, executor="ray")["cells"]
            assert set(cells) == set(local)
            for k, c in local.items():
                a = {kk: v for kk, v in c.items() if kk not in ("seconds",)}
                b = {kk: v for kk, v in cells[k].items() if kk not in ("seconds",)}
                assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True), k
            # a unit lost: its cells dropped from results.json; a rerun redoes that unit alone
            saved = json.loads((out / "results.json").read_text())
            for k in ("copyright/ga/s0/2", "copyright/ga/s0/3"):
                del saved["cells"][k]
            (out / "results.json").write_text(json.dumps(saved))
            before = {k: v for k, v in saved["cells"].items()}
            again = run_bench(cfg, out, executor="ray")["cells"]
            assert all(again[k] == v for k, v in before.items()) and set(again) == set(local)
        finally:
            ray.shutdown()
    finally:
        torch.set_num_threads(threads)


def test_a_worker_killed_mid_unit_costs_only_that_unit(micro_dir, tmp_path):
    """SIGKILL to a Ray worker while it runs a unit: Ray runs the unit again (a training run resumes
    from its saved state) and the bench ends with the figures of an undisturbed run."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'prod-unlearn[ray]')")
    import signal
    import threading
    import psutil
    cfg = _micro_cfg(micro_dir, methods=["prod", "ga"], max_items=4)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        clean = run_bench(cfg, tmp_path / "clean", executor="ray")["cells"]
        killed, done = [], threading.Event()

        def killer():
            while not done.is_set() and not killed:
                for p in psutil.process_iter(["cmdline"]):
                    if "ray::_collect" in " ".join(p.info["cmdline"] or []):
                        os.kill(p.pid, signal.SIGKILL)
                        killed.append(p.pid)
                        break
                time.sleep(0.05)
        t = threading.Thread(target=killer, daemon=True)
        t.start()
        try:
            cells = run_bench(cfg, tmp_path / "b", executor="ray")["cells"]
        finally:
            done.set()
            t.join()
        if not killed:
            pytest.skip("every unit finished before the killer found one")
        assert set(cells) == set(clean)
        for k, c in clean.items():
            assert {kk: v for kk, v in c.items() if kk != "seconds"} == \
                {kk: v for kk, v in cells[k].items() if kk != "seconds"}, k
    finally:
        ray.shutdown()


def test_a_method_with_sharpness_aware_steps_is_a_bench_method(micro_dir, tmp_path):
    """``METHOD+sam=RHO``: the method trained as ``unlearn --sam RHO``, side by side with the plain one."""
    from prod_unlearn.bench.config import method_variant

    assert method_variant("ga").sam == 0.0 and method_variant("ga+sam=0.05").sam == 0.05
    for bad in ("ga+sam=0", "ga+sam=x", "ga+lora=1", "nope+sam=0.1", "ga+sam=0.1+sam=0.2"):
        with pytest.raises(ValueError, match="expected|unknown method"):
            method_variant(bad)
    out = tmp_path / "bench"
    res = run_bench(_micro_cfg(micro_dir, methods=["ga", "ga+sam=0.05"], eval_points=1), out)
    plain = json.loads((out / "runs" / "copyright" / "ga" / "s0" / "run.json").read_text())
    sam = json.loads((out / "runs" / "copyright" / "ga+sam=0.05" / "s0" / "run.json").read_text())
    assert plain["config"]["sam_rho"] == 0 and sam["config"]["sam_rho"] == 0.05
    assert res["keys"]["copyright/ga+sam=0.05/s0"]["train"]["sam_rho"] == 0.05
    assert res["cells"]["copyright/ga/s0/3"]["forget_quality"] != res["cells"]["copyright/ga+sam=0.05/s0/3"][
        "forget_quality"] or plain["epochs"] != sam["epochs"]  # another objective, another run
    assert "ga+sam=0.05" in (out / "report.md").read_text()


def test_a_method_followed_by_distillation_is_a_bench_method(micro_dir, tmp_path, monkeypatch):
    """``METHOD+distill=NOISE[:TOKENS]``: the method's run, then `distill` on its final model; the last
    point and the attacks read the distilled student, the earlier points the method's own run."""
    from prod_unlearn.bench.config import Variant, method_variant
    from prod_unlearn.training import distill as distill_module
    from conftest import CODE

    assert method_variant("ga+distill=0.5:2048") == Variant("ga", 0.0, 0.5, 2048)
    assert method_variant("prod+sam=0.05+distill=1") == Variant("prod", 0.05, 1.0, None)
    for bad in ("ga+distill=2", "ga+distill=0.5:0", "ga+distill=0.5+distill=0.3", "ga+distill=x", "ga+distill"):
        with pytest.raises(ValueError, match="expected METHOD"):
            method_variant(bad)
    monkeypatch.setattr(distill_module, "default_data", lambda exclude: (CODE * 20, {"source": "test"}))
    out = tmp_path / "bench"
    res = run_bench(_micro_cfg(micro_dir, methods=["ga", "ga+distill=0.8:2048"], eval_points=2, attacks=["mia"]), out)
    cells = res["cells"]
    # the point before the end is the method's own run: the same as plain ga's (same data order, same lr)
    assert cells["copyright/ga+distill=0.8:2048/s0/2"]["forget_quality"] == cells["copyright/ga/s0/2"]["forget_quality"]
    assert cells["copyright/ga+distill=0.8:2048/s0/3"]["utility"] != cells["copyright/ga/s0/3"]["utility"]
    run = out / "runs" / "copyright" / "ga+distill=0.8:2048" / "s0"
    rec = json.loads((run / "distill.json").read_text())
    assert rec["steps"] == 1 and rec["config"]["noise"] == 0.8 and rec["teacher"] == "ga+distill=0.8:2048"
    assert res["keys"]["copyright/ga+distill=0.8:2048/s0"]["distill"]["tokens"] == 2048
    assert "attack/ga+distill=0.8:2048" in cells  # the attacks load the student saved in the run folder
    with pytest.raises(ValueError, match="a \\+distill variant trains at its method's calibrated lr"):
        run_calibration(_micro_cfg(micro_dir, methods=["ga+distill=0.5"]), tmp_path / "cal")
