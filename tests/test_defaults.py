"""One home for training defaults: resolution order, the model folder's file, the README table."""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from conftest import REPO
from prod_unlearn.models.loading import DEFAULT_MODEL
from prod_unlearn.training.defaults import (FILE_KEYS, MEMORISE, MODEL_DEFAULTS_FILE, ConfigError,
                                            copy_model_defaults, resolve_train_config)
from prod_unlearn.training.loop import TrainConfig


def _folder(tmp_path: Path, settings: dict | str | None) -> Path:
    d = tmp_path / "model"
    d.mkdir(parents=True, exist_ok=True)
    if settings is not None:
        (d / MODEL_DEFAULTS_FILE).write_text(settings if isinstance(settings, str) else json.dumps(settings))
    return d


def test_user_beats_model_file_beats_paper(tmp_path):
    d = _folder(tmp_path, {"note": "tuned", "lr": 1e-4, "epochs": 2, "scheduler": "cosine"})
    cfg = resolve_train_config(d)
    assert (cfg.lr, cfg.epochs, cfg.scheduler, cfg.max_length) == (1e-4, 2, "cosine", TrainConfig().max_length)
    assert cfg.sources["lr"] == f"model:{(d / MODEL_DEFAULTS_FILE).resolve()}"
    assert cfg.sources["max_length"] == "paper" and cfg.sources["seed"] == "default"
    cfg = resolve_train_config(d, lr=3e-3, epochs=None)          # None = not given (an option left out)
    assert (cfg.lr, cfg.epochs, cfg.sources["lr"]) == (3e-3, 2, "user")
    bare = resolve_train_config(_folder(tmp_path / "b", None))
    paper = TrainConfig()
    assert all(getattr(bare, k) == getattr(paper, k) for k in FILE_KEYS)
    assert resolve_train_config("owner/some-hub-model").lr == paper.lr   # no local file: the paper's


def test_embedded_model_explicit_or_implicit_is_the_same_run():
    shipped = json.loads((DEFAULT_MODEL / MODEL_DEFAULTS_FILE).read_text())
    implicit, explicit = resolve_train_config(None), resolve_train_config(str(DEFAULT_MODEL))
    assert asdict(implicit) == asdict(explicit)
    assert all(getattr(implicit, k) == v for k, v in shipped.items() if k != "note")


def test_memorise_recipe_and_copy_to_the_learned_model(tmp_path):
    cfg = resolve_train_config(None, "memorise", epochs=3)
    assert cfg.epochs == 3 and cfg.lr == MEMORISE["lr"] and cfg.scheduler == MEMORISE["scheduler"]
    assert cfg.sources["lr"] == "memorise recipe" and cfg.sources["epochs"] == "user"
    out = tmp_path / "learned"
    assert copy_model_defaults(None, out) == out / MODEL_DEFAULTS_FILE
    assert asdict(resolve_train_config(out))["lr"] == resolve_train_config(None).lr
    assert copy_model_defaults(tmp_path / "no-file-here", tmp_path / "x") is None


@pytest.mark.parametrize("content, message", [
    ('{"lr": 1e-4,\n "epochs": }', r"unlearn_defaults.json:2:\d+: not valid JSON"),
    ('{"learning_rate": 1e-4}', r"unlearn_defaults.json: unknown setting 'learning_rate'"),
    ('{"epochs": 1.5}', r"unlearn_defaults.json: epochs 1.5: expected an integer"),
    ('{"lr": -1}', r"unlearn_defaults.json: lr -1: expected a positive number"),
    ('{"retain_loss": "l2"}', r"unlearn_defaults.json: retain_loss 'l2': expected one of nll, kl"),
    ('[1, 2]', r"unlearn_defaults.json: expected a JSON object"),
])
def test_bad_model_file_is_one_line_naming_it(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        resolve_train_config(_folder(tmp_path, content))


def test_bad_values_name_the_option():
    with pytest.raises(ConfigError, match=r"^--retain-loss kld: expected one of nll, kl$"):
        resolve_train_config(None, retain_loss="kld")
    with pytest.raises(ConfigError, match=r"^--scheduler step: expected one of constant, linear, cosine$"):
        resolve_train_config(None, scheduler="step")
    with pytest.raises(ConfigError, match=r"^--lr 0.0: expected a positive number$"):
        resolve_train_config(None, lr=0.0)


def test_cli_unlearn_resolves_through_the_same_source(monkeypatch, tmp_path, micro_model, tokenizer):
    """No --model and --model <the embedded folder> train with the same config; a flag wins."""
    import prod_unlearn.models.loading as loading
    import prod_unlearn.training.loop as loop
    from typer.testing import CliRunner

    from prod_unlearn.cli import app
    seen = []
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: (micro_model, tokenizer))
    fake_run = {"epochs": [], "model": "m", "method": "prod", "params": {}, "config": {}, "forget_examples": 1,
                "forget_hash": "h", "model_fingerprint": "f"}   # what the loop returns (the model card reads it)
    monkeypatch.setattr(loop, "unlearn", lambda m, t, f, meth, cfg, out, **k: seen.append(cfg) or dict(fake_run))
    forget = tmp_path / "forget.jsonl"
    forget.write_text(json.dumps({"prompt": "", "completion": "def f():\n    return 1\n"}) + "\n")
    base = ["unlearn", "--forget", str(forget), "--no-evaluate"]
    for i, extra in enumerate([[], ["--model", str(DEFAULT_MODEL)], ["--lr", "7e-5"]]):
        r = CliRunner().invoke(app, base + ["--out", str(tmp_path / f"run{i}")] + extra, prog_name="prod-unlearn")
        assert r.exit_code == 0, r.output
    a, b, c = (asdict(x) for x in seen)
    assert a == b
    assert a["lr"] == json.loads((DEFAULT_MODEL / MODEL_DEFAULTS_FILE).read_text())["lr"]
    assert (c["lr"], c["sources"]["lr"], c["epochs"]) == (7e-5, "user", a["epochs"])


def _readme_table() -> dict[str, list[str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("### Defaults", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.match(r"`(\w+)`", cells[0]) if line.startswith("|") else None
        if m:
            rows[m.group(1)] = [c.strip("*`") for c in cells[1:]]
    return rows


def test_readme_defaults_table_matches_the_code():
    rows = _readme_table()
    assert set(rows) == set(FILE_KEYS), "the README table must list every TrainConfig setting"
    columns = [resolve_train_config("/no/such/model"), resolve_train_config(None), resolve_train_config(None, "memorise")]
    for key, cells in rows.items():
        assert len(cells) == len(columns), key
        for cell, cfg in zip(cells, columns):
            want = getattr(cfg, key)
            got = type(want)(float(cell)) if isinstance(want, (int, float)) else cell
            assert got == want, f"README 'Defaults': {key} says {cell}, the code resolves {want}"


def test_readme_main_job_states_the_embedded_settings():
    cfg = resolve_train_config(None)
    text = (REPO / "README.md").read_text().split("## Main job", 1)[1].split("\n## ", 1)[0]
    lr = f"{cfg.lr:g}".replace("e-0", "e-")
    want = f"until forgotten at lr {lr} (batch {cfg.batch_size}, max length {cfg.max_length}, at most " \
           f"{cfg.max_steps} optimiser steps"
    assert want in " ".join(text.split()), f"README 'Main job' should say: {want}"
