"""The `prod-unlearn` command line: help, machine-readable listings, one-line user errors."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import PYTHON, REPO
from prod_unlearn.cli import app

COMMANDS = ["unlearn", "eval", "learn", "pretrain", "methods", "info"]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args), prog_name="prod-unlearn")


def cli(args, env, timeout=120):
    """The installed console script in a real process (real stderr, real exit code)."""
    exe = Path(PYTHON).with_name("prod-unlearn")
    cmd = [str(exe)] if exe.exists() else [PYTHON, "-m", "prod_unlearn.cli"]
    return subprocess.run(cmd + list(args), env={**env, "COLUMNS": "80"}, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_every_command():
    r = invoke("--help")
    assert r.exit_code == 0, r.output
    assert "Usage: prod-unlearn" in r.output
    for c in COMMANDS:
        assert c in r.output


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(command):
    r = invoke(command, "--help")
    assert r.exit_code == 0, r.output
    assert f"Usage: prod-unlearn {command}" in r.output
    assert "--help" in r.output


def test_unlearn_help_documents_the_main_options():
    out = invoke("unlearn", "--help").output
    for opt in ("--model", "--forget", "--method", "--out", "--param", "--epochs", "--lr", "--save-steps"):
        assert opt in out


def test_methods_json():
    r = invoke("methods", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert rows["prod"]["params"] == {"p": 0.8, "alpha": 0.0, "loss": "ce"}
    assert rows["prod"]["summary"]
    assert invoke("methods").exit_code == 0


def test_info_json():
    r = invoke("info", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert Path(info["default_model"]).is_dir()
    assert (Path(info["default_model"]) / "config.json").exists()
    assert Path(info["default_forget_sets"]["copyright"]).is_file()
    assert Path(info["heldout"]).is_file()
    assert info["version"]
    for name in ("copyright", "insecure", "deprecated"):   # the never-trained reference of each default set
        retain = Path(info["retain_models"][name])
        assert (retain / "model.safetensors").is_file()
        assert name in json.loads((retain / "pretrain.json").read_text())["excluded"]["sets"]


def _one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    err = r.stderr.strip()
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for n in needles:
        assert n in err, err


def test_bad_forget_jsonl_is_one_line_error(tmp_path, subprocess_env):
    f = tmp_path / "my_forget.jsonl"
    f.write_text(json.dumps({"completion": "x = 1\n"}) + "\n" + json.dumps({"prompt": "p"}) + "\n")
    r = cli(["unlearn", "--forget", str(f), "--out", str(tmp_path / "out")], subprocess_env)
    _one_line_error(r, "my_forget.jsonl:2", "missing field 'completion'")
    assert not (tmp_path / "out").exists()


def test_missing_model_folder(tmp_path, subprocess_env):
    r = cli(["unlearn", "--model", str(tmp_path / "no_model_here"), "--out", str(tmp_path / "out"),
             "--no-evaluate"], subprocess_env)
    _one_line_error(r, "no such model folder", "no_model_here")


def test_unknown_method_and_param_in_process(tmp_path):
    f = tmp_path / "f.jsonl"
    f.write_text(json.dumps({"completion": "x = 1\n"}) + "\n")
    r = invoke("unlearn", "--method", "nope", "--forget", str(f), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "--method nope: expected one of" in r.output and "prod" in r.output
    r = invoke("unlearn", "--param", "p0.8", "--forget", str(f), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "expected KEY=VALUE" in r.output


def test_retain_model_defaults_to_the_shipped_one_for_a_default_set_only(tokenizer):
    from prod_unlearn.tasks import load_retain_model
    from prod_unlearn.data.examples import load_examples
    from prod_unlearn.models.loading import DEFAULT_MODEL, RETAIN_MODEL, load_tokenizer
    from prod_unlearn.tasks import default_forget_sets
    embedded = load_tokenizer(str(DEFAULT_MODEL))
    copyright_set = load_examples(default_forget_sets()["copyright"])
    name, model = load_retain_model(None, copyright_set, embedded, "cpu")
    assert name == str(RETAIN_MODEL) and model is not None
    assert load_retain_model(None, copyright_set[:3], embedded, "cpu") == (None, None)   # not the default set
    assert load_retain_model(None, copyright_set, tokenizer, "cpu") == (None, None)       # another vocabulary
    assert load_retain_model("none", copyright_set, embedded, "cpu") == (None, None)
