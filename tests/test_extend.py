"""A contributor's new attack kind is one module (tests/toy_attack.py) and one registration line;
from then on the command line, the Python API, the audit and the bench all run it."""
from __future__ import annotations

import json

import pytest
import torch

import toy_attack
from conftest import FORGET
from prod_unlearn import attacks
from prod_unlearn.data.examples import write_jsonl


@pytest.fixture
def toy():
    attacks.register(toy_attack)            # the one line
    yield toy_attack
    attacks.ATTACKS.remove(toy_attack)
    attacks.KINDS.remove(toy_attack.NAME)


def test_register_checks_the_module():
    import types
    half = types.ModuleType("half")
    half.NAME = "half"
    with pytest.raises(TypeError, match="attack module half: has no SUMMARY"):
        attacks.register(half)
    with pytest.raises(ValueError, match="'mia' is already registered"):
        attacks.register(attacks.get_attack("mia"))


def test_a_registered_attack_runs_everywhere(toy, memorised_dir, micro_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner
    from prod_unlearn import api
    from prod_unlearn.bench import run_bench
    from prod_unlearn.cli import app
    from test_bench import _micro_cfg
    monkeypatch.setenv("PROD_UNLEARN_NO_PROGRESS", "1")
    data = tmp_path / "forget.jsonl"
    write_jsonl(FORGET, data)
    # the command line: the kind is among the choices, its table and chart come out
    r = CliRunner().invoke(app, ["attack", "--kind", "toy", "--model", str(memorised_dir), "--data", str(data),
                                 "--max-new-tokens", "8", "--json", "--png", str(tmp_path / "toy.png"),
                                 "--retain-model", "none", "--device", "cpu"], prog_name="prod-unlearn")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert res["kind"] == "toy" and {row["condition"] for row in res["rows"]} == {"plain", "named"}
    assert (tmp_path / "toy.png").stat().st_size > 1000
    # the Python API
    out = api.attack(str(memorised_dir), "toy", str(data), max_new_tokens=8, retain_model="none")
    assert out["kind"] == "toy"
    # the audit: a bleu attack is a recovery row of the verdict
    rep = api.audit(str(memorised_dir), forget=data, out=tmp_path / "audit", kinds="toy", retain_model="none",
                    max_new_tokens=8, device="cpu")
    assert "toy" in rep["attacks"] and [row["attack"] for row in rep["recovery"]] == ["toy"]
    assert "toy" in (tmp_path / "audit" / "report.md").read_text()
    # the bench: one cell per attacked model, a report section
    with torch.random.fork_rng():
        res = run_bench(_micro_cfg(micro_dir, methods=["ga"], attacks=["toy"]), tmp_path / "bench")
    assert {"attacks/toy/original", "attacks/toy/ga"} <= set(res["cells"])
    assert "### toy: " in (tmp_path / "bench" / "report.md").read_text()


@pytest.fixture
def toy_tasks():
    import toy_tasks as tt
    from prod_unlearn import tasks
    tasks.register(tt.FORGET)               # one line each
    tasks.register(tt.UTILITY)
    yield tt
    del tasks.FORGET_TASKS[tt.FORGET.name], tasks.UTILITY_TASKS[tt.UTILITY.name]


def test_registered_tasks_run_in_eval_and_the_bench(toy_tasks, memorised_dir, micro_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner
    from prod_unlearn import tasks
    from prod_unlearn.bench import run_bench
    from prod_unlearn.cli import app
    from test_bench import _micro_cfg
    monkeypatch.setenv("PROD_UNLEARN_NO_PROGRESS", "1")
    with pytest.raises(ValueError, match="'toy-forget' is already registered"):
        tasks.register(toy_tasks.FORGET)
    run = CliRunner().invoke
    r = run(app, ["eval", "--task", "toy-forget", "--model", str(memorised_dir), "--json", "--device", "cpu"],
            prog_name="prod-unlearn")
    assert r.exit_code == 0, r.output
    fig = json.loads(r.output.strip().splitlines()[-1])
    assert fig["task"] == "toy-forget" and fig["n"] == len(FORGET) and 0 <= fig["forget_quality"] < 0.5   # memorised
    r = run(app, ["eval", "--task", "toy-utility", "--model", str(memorised_dir), "--json", "--device", "cpu"],
            prog_name="prod-unlearn")
    assert r.exit_code == 0, r.output
    assert 0 < json.loads(r.output.strip().splitlines()[-1])["utility"] <= 1
    res = run_bench(_micro_cfg(memorised_dir, methods=["ga"], tasks=["toy-forget"], utility="toy-utility"),
                    tmp_path / "bench")
    final = res["cells"]["toy-forget/ga/s0/3"]
    assert final["forget_quality"] > res["cells"]["toy-forget/original"]["forget_quality"]   # ga forgot
    md = (tmp_path / "bench" / "report.md").read_text()
    assert "toy-forget" in md and "toy-utility" in md
    assert res["pdr"]
