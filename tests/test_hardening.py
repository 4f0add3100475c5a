"""Hostile CLI inputs (issue 10): every bad option is one line naming it, before anything loads; nothing
a user made is overwritten; a run folder belongs to one configuration."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import PYTHON, REPO
from prod_unlearn.cli import app

runner = CliRunner()


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], prog_name="prod-unlearn", env=env)


def one_line_error(r, *needles, code=2):
    """Exit ``code``, one ``error: ...`` line, no traceback, naming every needle."""
    out = r.output.strip()
    assert r.exit_code == code, (r.exit_code, out[-2000:], r.exception)
    assert "Traceback" not in out
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert len(out.splitlines()) == 1, out
    assert out.startswith("error: "), out
    for n in needles:
        assert n in out, out
    return out


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def forget(tmp_path):
    f = tmp_path / "forget.jsonl"
    f.write_text("".join(json.dumps({"id": str(i), "completion": c}) + "\n" for i, c in enumerate(
        ["def add(a, b):\n    return a + b\n", "def mul(a, b):\n    return a * b\n",
         "for i in range(10):\n    print(i * i)\n"])))
    return f


@pytest.fixture
def model_copy(tmp_path, micro_dir):
    d = tmp_path / "model"
    shutil.copytree(micro_dir, d)
    return d


def unlearn(model, forget, out, *extra):
    return invoke("unlearn", "--model", model, "--forget", forget, "--out", out, "--no-evaluate", "--epochs", 1,
                  "--max-length", 64, "--device", "cpu", *extra)


# ---------------------------------------------------------------- bad values: one line, before any model loads

BAD_UNLEARN = [
    (["--epochs", "0"], "--epochs 0"), (["--epochs", "-1"], "--epochs -1"), (["--lr", "0"], "--lr 0"),
    (["--lr", "nan"], "--lr nan"), (["--lr", "inf"], "--lr inf"), (["--lr", "-1e-5"], "--lr -1e-05"),
    (["--max-length", "0"], "--max-length 0"), (["--max-length", "-5"], "--max-length -5"),
    (["--batch-size", "0"], "--batch-size 0"), (["--batch-size", "-1"], "--batch-size -1"),
    (["--grad-accum", "0"], "--grad-accum 0"), (["--save-steps", "-1"], "--save-steps -1"),
    (["--scheduler", "bogus"], "--scheduler bogus"), (["--retain-loss", "l2"], "--retain-loss l2"),
    (["--retain-weight", "nan"], "--retain-weight nan"), (["--lora-r", "0"], "--lora-r 0"),
    (["--device", "bogus"], "--device bogus"), (["--device", "cuda:x"], "--device cuda:x"),
    (["--dtype", "fp8"], "--dtype fp8"), (["--method", "nope"], "--method nope"),
    (["--method", "npo", "-p", "beta=abc"], "--param beta=abc"), (["--method", "npo", "-p", "beta=nan"], "beta=nan"),
    (["--method", "npo", "-p", "beta=inf"], "beta=inf"), (["-p", "alpha=nan"], "alpha=nan"),
    (["-p", "p=2"], "p must be in (0, 1]"), (["-p", "nope=1"], "--param nope"), (["-p", "p0.8"], "KEY=VALUE"),
    (["--method", "undial", "-p", "top_k=1.5"], "top_k=1.5"), (["--epochs", "abc"], "--epochs"),
    (["--bogus-option"], "--bogus-option"),
]


@pytest.mark.parametrize("extra,needle", BAD_UNLEARN, ids=[" ".join(a) for a, _ in BAD_UNLEARN])
def test_bad_unlearn_option_is_one_line(tmp_path, forget, extra, needle, monkeypatch):
    import prod_unlearn.models.loading as loading
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("model loaded before the checks"))
    r = invoke("unlearn", "--forget", forget, "--out", tmp_path / "out", "--no-evaluate", *extra)
    msg = one_line_error(r, needle)
    assert any(w in msg for w in ("expected", "unknown", "must be", "No such option", "no such parameter", "not a valid"))
    assert not (tmp_path / "out").exists()


BAD_OTHER = [
    (["eval", "--max-new-tokens", "-1"], "--max-new-tokens -1"), (["eval", "--task", "bogus"], "--task bogus"),
    (["eval", "--batch-size", "0"], "--batch-size 0"), (["eval", "--device", "gpu"], "--device gpu"),
    (["eval", "--task", "humaneval", "--data", "{forget}"], "reads no data"),
    (["eval", "--task", "ppl", "--data", "{missing}"], "no such file"),
    (["attack", "--k", "-5"], "--k -5"), (["attack", "--k", "0"], "at least one prefix length"),
    (["attack", "--max-new-tokens", "0"], "--max-new-tokens 0"),
    (["bench", "--methods", ""], "--methods ''"), (["bench", "--methods", "prod,,ga"], "--methods"),
    (["bench", "--methods", "prod,nope"], "--methods nope"), (["bench", "--tasks", ""], "--tasks ''"),
    (["bench", "--epochs", "0"], "--epochs 0"), (["bench", "--lr", "nan"], "--lr nan"),
    (["bench", "--max-items", "-1"], "--max-items -1"), (["bench", "--lr-grid", "1e-5,abc"], "--lr-grid"),
    (["learn", "--data", "{forget}", "--out", "{out}", "--epochs", "0"], "--epochs 0"),
    (["learn", "--data", "{forget}", "--out", "{out}", "--batch-size", "0"], "--batch-size 0"),
    (["learn", "--data", "{forget}", "--out", "{out}", "--lr", "0"], "--lr 0"),
    (["learn", "--data", "{forget}", "--out", "{out}", "--max-length", "-5"], "--max-length -5"),
    (["pretrain", "--preset", "huge", "--out", "{out}"], "--preset huge"),
    (["pretrain", "--out", "{out}", "--device", "tpu"], "--device tpu"),
    (["build-task", "copyright", "--out", "{out}"], "NAME copyright"),
    (["scan", "{missing}"], "no such file"), (["scan", "--language", "klingon", "{forget}"], "klingon"),
]


@pytest.mark.parametrize("args,needle", BAD_OTHER, ids=[" ".join(a) for a, _ in BAD_OTHER])
def test_bad_option_of_other_commands_is_one_line(tmp_path, forget, args, needle, monkeypatch):
    import prod_unlearn.models.loading as loading
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("model loaded before the checks"))
    fill = {"forget": str(forget), "missing": str(tmp_path / "missing.jsonl"), "out": str(tmp_path / "out")}
    args = [a.format(**fill) for a in args]
    if args[0] == "bench":
        args += ["--out", str(tmp_path / "bench")]
    one_line_error(invoke(*args), needle)
    assert not (tmp_path / "out").exists() and not (tmp_path / "bench").exists()


def test_forget_inputs_that_would_hang_or_recurse(tmp_path):
    fifo = tmp_path / "forget.fifo"
    os.mkfifo(fifo)
    one_line_error(invoke("unlearn", "--forget", fifo, "--out", tmp_path / "o"), "--forget", "FIFO")
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    one_line_error(invoke("unlearn", "--forget", deep, "--out", tmp_path / "o"), "deep.jsonl", "nested too deeply")
    one_line_error(invoke("eval", "--task", "ppl", "--data", fifo), "FIFO")


def test_fifo_never_hangs_a_real_process(tmp_path, subprocess_env):
    fifo = tmp_path / "forget.fifo"
    os.mkfifo(fifo)
    exe = Path(PYTHON).with_name("prod-unlearn")
    cmd = [str(exe)] if exe.exists() else [PYTHON, "-m", "prod_unlearn.cli"]
    r = subprocess.run(cmd + ["unlearn", "--forget", str(fifo), "--out", str(tmp_path / "o")], env=subprocess_env,
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "FIFO" in r.stderr, r.stderr


def test_report_on_bad_results_json(tmp_path):
    for text, needle in (("{}", "not a bench results file"), ("[1, 2]", "not a bench results file"),
                         ("{nope", "not valid JSON"), ("[" * 50_000, "results.json")):
        (tmp_path / "results.json").write_text(text)
        one_line_error(invoke("report", "--out", tmp_path), needle)


def test_hub_id_without_network_fails_fast(tmp_path, forget):
    t0 = time.time()
    r = invoke("unlearn", "--model", "some-org/no-such-model", "--forget", forget, "--out", tmp_path / "o",
               env={"HF_HUB_OFFLINE": "1"})
    one_line_error(r, "some-org/no-such-model", "HF_HUB_OFFLINE")
    # online but the hub unreachable (a closed local port): seconds, not a minute of retries
    r = invoke("eval", "--model", "some-org/no-such-model",
               env={"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9",
                    "HTTPS_PROXY": "", "https_proxy": "", "ALL_PROXY": ""})
    one_line_error(r, "cannot reach", "127.0.0.1:9")
    assert time.time() - t0 < 15


def test_debug_flag_keeps_the_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    one_line_error(invoke("unlearn", "--forget", bad, "--out", tmp_path / "o"), "missing field 'completion'")
    from prod_unlearn.data.examples import DataError
    r = invoke("--debug", "unlearn", "--forget", bad, "--out", tmp_path / "o")
    assert isinstance(r.exception, DataError)
    r = invoke("unlearn", "--forget", bad, "--out", tmp_path / "o", env={"PROD_UNLEARN_DEBUG": "1"})
    assert isinstance(r.exception, DataError)


# ---------------------------------------------------------------- never overwrite a user's input

def test_out_equal_to_or_inside_the_model_is_refused(model_copy, forget):
    before = digest(model_copy)
    one_line_error(unlearn(model_copy, forget, model_copy), "--out", "is the --model folder")
    one_line_error(unlearn(model_copy, forget, model_copy / "sub"), "is inside the --model folder")
    one_line_error(unlearn(model_copy, forget, model_copy.parent), "contains the --model folder")
    one_line_error(invoke("learn", "--model", model_copy, "--data", forget, "--out", model_copy), "is the --model folder")
    assert digest(model_copy) == before


def test_out_inside_the_data_or_the_package_is_refused(tmp_path, micro_dir):
    data = tmp_path / "code"
    data.mkdir()
    (data / "a.py").write_text("def a():\n    return 1\n")
    one_line_error(unlearn(micro_dir, data, data / "out"), "is inside the --forget folder")
    import prod_unlearn
    pkg = Path(prod_unlearn.__file__).parent
    one_line_error(unlearn(micro_dir, data, pkg / "assets" / "x"), "inside the installed package")
    one_line_error(invoke("pretrain", "--preset", "tiny", "--out", pkg / "assets"), "inside the installed package")


def test_out_that_is_a_file_or_read_only(tmp_path, forget, micro_dir, monkeypatch):
    import prod_unlearn.models.loading as loading
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("model loaded before the checks"))
    one_line_error(unlearn(micro_dir, forget, forget), "is a file")
    if os.getuid() == 0:
        ro = Path("/proc/self/prod-unlearn-out")        # root writes anywhere chmod allows; /proc refuses
    else:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        ro = d / "out"
    one_line_error(unlearn(micro_dir, forget, ro), "cannot write")


def test_pretrain_refuses_a_non_empty_out(tmp_path):
    out = tmp_path / "mine"
    (out / "model").mkdir(parents=True)
    (out / "model" / "weights.bin").write_text("precious")
    one_line_error(invoke("pretrain", "--preset", "tiny", "--out", out), "not empty")
    assert (out / "model" / "weights.bin").read_text() == "precious"


def test_pretrain_default_out_is_not_the_package():
    import inspect
    from prod_unlearn.models import pretrain
    from prod_unlearn.cli import models
    src = inspect.getsource(models.pretrain)
    assert "runs/pretrain" in src
    assert not Path(pretrain.PretrainConfig().out).resolve().is_relative_to(Path(pretrain.__file__).resolve().parent.parent)


# ---------------------------------------------------------------- a run folder belongs to one configuration

def test_changed_configuration_is_refused_naming_the_difference(tmp_path, micro_dir, memorised_dir, forget):
    out = tmp_path / "run"
    r = unlearn(micro_dir, forget, out)
    assert r.exit_code == 0, r.output
    key = json.loads((out / "run_key.json").read_text())
    assert key["method"] == "prod" and key["params"]["p"] == 0.8 and key["model_fingerprint"]
    weights = digest(out)["model.safetensors"]
    one_line_error(unlearn(micro_dir, forget, out, "-p", "p=0.5"), "params.p: 0.8 -> 0.5", "--overwrite")
    one_line_error(unlearn(micro_dir, forget, out, "--lr", "1e-3"), "optimisation.lr: 5e-06 -> 0.001")
    one_line_error(unlearn(micro_dir, forget, out, "--method", "ga"), "method: prod -> ga")
    one_line_error(unlearn(memorised_dir, forget, out), "other model weights", "fingerprint")
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"completion": "x = 1\n"}) + "\n")
    one_line_error(unlearn(micro_dir, other, out), "forget_hash")
    assert digest(out)["model.safetensors"] == weights          # nothing was resumed or rewritten
    # the same command again, even with the same weights at another path: accepted (complete run)
    moved = tmp_path / "moved-model"
    shutil.copytree(micro_dir, moved)
    assert unlearn(moved, forget, out).exit_code == 0
    assert digest(out)["model.safetensors"] == weights
    # --overwrite starts afresh with the new settings
    r = unlearn(micro_dir, forget, out, "-p", "p=0.5", "--overwrite")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "run_key.json").read_text())["params"]["p"] == 0.5
    assert json.loads((out / "run.json").read_text())["params"]["p"] == 0.5


def test_overwrite_never_clears_a_folder_that_is_not_a_run(tmp_path, micro_dir, forget):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    one_line_error(unlearn(micro_dir, forget, out), "not written by `prod-unlearn unlearn`")
    one_line_error(unlearn(micro_dir, forget, out, "--overwrite"), "never replaces what it did not write")
    assert (out / "thesis.tex").read_text() == "years of work"


def test_nan_loss_names_the_method_and_what_to_change(tmp_path, micro_dir, forget):
    r = unlearn(micro_dir, forget, tmp_path / "o", "--method", "ga", "--lr", "1e30")
    msg = one_line_error(r, "ga: loss became", "--lr")
    assert "nan" in msg or "inf" in msg


def test_eval_ppl_data_is_honoured(tmp_path, micro_dir, forget):
    default = invoke("eval", "--model", micro_dir, "--task", "ppl", "--json", "--device", "cpu")
    mine = invoke("eval", "--model", micro_dir, "--task", "ppl", "--data", forget, "--json", "--device", "cpu")
    assert default.exit_code == 0 and mine.exit_code == 0, (default.output, mine.output)
    ppl = lambda r: json.loads(r.stdout.strip().splitlines()[-1])["heldout_ppl"]  # noqa: E731
    assert ppl(default) != ppl(mine)


def test_attack_with_items_too_short_for_k_is_an_error(tmp_path, micro_dir, forget):
    r = invoke("attack", "--model", micro_dir, "--data", forget, "--k", "0", "--k", "4000", "--max-new-tokens", "4",
               "--device", "cpu")
    one_line_error(r, "--k 4000", "long enough")


def test_checkpoints_do_not_flood_the_log(tmp_path, tokenizer, forget, caplog):
    """Tied embeddings made every checkpoint log "Removed shared tensor ..."; every save and load drew
    shard progress bars."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    model = tmp_path / "tied"
    LlamaForCausalLM(cfg).save_pretrained(model)
    tokenizer.save_pretrained(model)
    r = unlearn(model, forget, tmp_path / "out", "--epochs", 2)
    assert r.exit_code == 0, r.output
    for noise in ("Removed shared tensor", "Writing model shards", "Loading weights"):
        assert noise not in r.output
        assert not [rec for rec in caplog.records if noise in rec.getMessage()]   # pytest captures log records


# ---------------------------------------------------------------- checks that belong to the data (issue 23)

def test_transform_needs_rewritable_python():
    """JavaScript or unparsable items: an error naming an item when none can be rewritten, a count when some."""
    from prod_unlearn.attacks.transform import transformed_sets
    from prod_unlearn.data.examples import DataError, Example
    js = Example("// a.js\n", "function f(a) {\n  return a + 1;\n}\n", "a.js", {})
    py = Example("# b.py\n", "def f(a):\n    b = a + 1\n    return b\n", "b.py", {})
    with pytest.raises(DataError, match="a.js"):
        transformed_sets([js], ["rename"])
    sets, skipped = transformed_sets([js, py], ["rename"])
    assert skipped == ["a.js"] and len(sets["rename"]) == 1


def test_mia_control_that_is_the_forget_set():
    from prod_unlearn.attacks.mia import non_members
    from prod_unlearn.data.examples import DataError, Example
    a, b, c = (Example(f"# {n}\n", f"x = {n!r}\ny = 2\n", n, {}) for n in "abc")
    with pytest.raises(DataError, match="--control"):
        non_members([a, b], [b, a], None)
    assert non_members([a, b], [a, c], None) == [c]      # the shared file is no non-member


def test_report_refuses_non_finite_cells(tmp_path):
    from prod_unlearn.bench import FORMAT
    from prod_unlearn.report.bench import non_finite, write_report
    assert non_finite({"a": [1.0, {"b": 2}]}) is None
    cells = {"tiny|prod|copyright|1e-05|0": {"forget_quality": float("nan")}}
    assert non_finite({"cells": cells}) == "cells.tiny|prod|copyright|1e-05|0.forget_quality = nan"
    with pytest.raises(ValueError, match="forget_quality = nan"):
        write_report({"format": FORMAT, "config": {"seed": 0}, "cells": cells}, tmp_path)


def test_deprecated_set_needs_call_sites(tmp_path):
    from prod_unlearn.data.examples import DataError, Example
    from prod_unlearn.tasks.deprecated import load_deprecated, split_examples
    assert load_deprecated()[0]                          # the shipped set: every item is a call site
    ok = Example("import os\nos.", "os.popen(", "s1", {"api": "os.popen", "split": "forget"})
    plain = Example("# a.py\n", "def f():\n    return 1\n", "a.py", {})
    with pytest.raises(DataError, match="'a.py' is not a call site"):
        split_examples([ok, plain])


def test_scan_over_semgreps_limit_is_explained(monkeypatch):
    import prod_unlearn.tasks.detector as ins
    monkeypatch.setattr(ins, "SEMGREP_MAX_BYTES", 100)
    with pytest.raises(ins.DetectorError, match="over the 100-byte limit"):
        ins.scan(["x = 1\n" * 50])


# ---------------------------------------------------------------- one output guard (issue 23)

def test_no_command_replaces_what_it_did_not_write(tmp_path, micro_dir, forget):
    """A folder that merely looks like a run, bench or model, and a user's file: refused, untouched."""
    looks_like_run = tmp_path / "looks-like-run"
    (looks_like_run / "checkpoints").mkdir(parents=True)
    (looks_like_run / "run.json").write_text("{}")
    (looks_like_run / "notes.md").write_text("mine")
    looks_like_bench = tmp_path / "looks-like-bench"
    for d in ("runs", "base"):
        (looks_like_bench / d).mkdir(parents=True)
    (looks_like_bench / "results.json").write_text("{}")
    model_copy = tmp_path / "a-model"
    shutil.copytree(micro_dir, model_copy)
    user_file = tmp_path / "mine.jsonl"
    user_file.write_text("precious\n")
    before = {p: digest(p) for p in (looks_like_run, looks_like_bench, model_copy)}
    one_line_error(unlearn(micro_dir, forget, looks_like_run, "--overwrite"), "never replaces")
    one_line_error(invoke("bench", "--out", looks_like_bench, "--overwrite"), "never replaces")
    one_line_error(invoke("learn", "--data", forget, "--out", model_copy), "never replaces")
    one_line_error(invoke("audit", "--model", model_copy, "--out", model_copy / "audit"), "is inside the --model folder")
    one_line_error(invoke("build-task", "deprecated", "--out", user_file), "prod-unlearn did not write it")
    user_png = tmp_path / "chart.png"
    user_png.write_bytes(b"\x89PNG\r\n\x1a\n a user's chart")
    one_line_error(invoke("attack", "--png", user_png), "prod-unlearn did not write it")
    assert {p: digest(p) for p in before} == before and user_file.read_text() == "precious\n"
    assert user_png.read_bytes().endswith(b"a user's chart")


def test_overwrite_clears_only_its_own_command_s_folder(tmp_path, micro_dir, forget):
    out = tmp_path / "run"
    assert unlearn(micro_dir, forget, out).exit_code == 0
    assert json.loads((out / ".prod-unlearn.json").read_text())["command"] == "unlearn"
    one_line_error(invoke("audit", "--out", out), "holds the output of `prod-unlearn unlearn`")
    (out / "extra.txt").write_text("dropped by --overwrite: the folder is the run's")
    assert unlearn(micro_dir, forget, out, "--overwrite").exit_code == 0
    assert not (out / "extra.txt").exists() and (out / "model.safetensors").exists()


def test_a_second_run_on_the_same_folder_refuses_at_once(tmp_path, micro_dir, forget):
    from prod_unlearn.cli.guard import Claim
    out = tmp_path / "run"
    held = Claim("--out", out, "unlearn", overwrite=False)     # as if another process were writing it
    try:
        one_line_error(unlearn(micro_dir, forget, out), "another prod-unlearn run is writing this folder",
                       f"pid {os.getpid()}")
    finally:
        held.release(ok=True)
    assert unlearn(micro_dir, forget, out).exit_code == 0


def test_a_failed_start_leaves_no_folder_behind(tmp_path, micro_dir):
    out = tmp_path / "new"
    one_line_error(unlearn(micro_dir, tmp_path / "missing.jsonl", out), "--forget")
    one_line_error(invoke("unlearn", "--model", micro_dir, "--out", out, "--method", "nope"), "--method nope")
    assert not out.exists()


def test_a_tampered_or_corrupt_resume_state_is_refused(tmp_path, micro_dir, forget):
    out = tmp_path / "run"
    assert unlearn(micro_dir, forget, out, "--epochs", "1").exit_code == 0
    prog_path = out / "checkpoints" / "state" / "progress.json"
    prog = json.loads(prog_path.read_text())
    assert prog["seal"]
    for text, needle in ((json.dumps({**prog, "epoch": 99}), "does not match its checkpoint"),
                         ("{not json", "unreadable resume state")):
        prog_path.write_text(text)
        r = unlearn(micro_dir, forget, out, "--epochs", "2", "--scheduler", "constant")
        last = r.output.strip().splitlines()[-1]       # (after the reference pass's line)
        assert r.exit_code == 2 and "Traceback" not in r.output and last.startswith("error: ") and needle in last


def test_special_files_inside_folders_are_refused_not_read(tmp_path):
    from prod_unlearn.data.corpus import list_sources
    from prod_unlearn.data.examples import load_examples
    (tmp_path / "a.py").write_text("def a():\n    return 1\n")
    os.mkfifo(tmp_path / "pipe.py")
    with pytest.raises(ValueError, match="pipe.py: a FIFO"):
        list_sources(tmp_path)
    with pytest.raises(ValueError, match="pipe.py: a FIFO"):
        load_examples(tmp_path)


def test_an_error_about_a_path_with_a_newline_stays_whole(tmp_path, micro_dir):
    out = one_line_error(unlearn(micro_dir, tmp_path / "two\nlines.jsonl", tmp_path / "o"), "two\\nlines.jsonl")
    assert "no such" in out


def test_models_compared_with_another_tokenizer_are_refused_before_loading(tokenizer):
    from prod_unlearn.models.loading import DEFAULT_MODEL, ModelError, load_companion
    with pytest.raises(ModelError, match="--original .*tokenizer differs"):
        load_companion("--original", str(DEFAULT_MODEL), tokenizer)


# ---------------------------------------------------------------- config.toml and --config (issue 21)

def test_every_output_folder_has_a_config_that_replays_it(tmp_path, micro_dir, forget, monkeypatch):
    import tomllib
    out = tmp_path / "run"
    assert unlearn(micro_dir, forget, out, "--lr", "1e-3").exit_code == 0
    cfg = tomllib.loads((out / "config.toml").read_text())["unlearn"]
    assert cfg["lr"] == 1e-3 and cfg["forget"] == str(forget.resolve()) and cfg["model"] == str(micro_dir.resolve())
    assert "overwrite" not in cfg
    monkeypatch.chdir(tmp_path.parent)                  # from another folder: the paths are absolute
    weights = digest(out)["model.safetensors"]
    r = invoke("unlearn", "--config", out / "config.toml")
    assert r.exit_code == 0 and digest(out)["model.safetensors"] == weights, r.output   # the same, complete run
    one_line_error(invoke("unlearn", "--config", out / "config.toml", "--lr", "2e-3"), "optimisation.lr: 0.001 -> 0.002")
    one_line_error(invoke("audit", "--config", out / "config.toml"), "no [audit] table", "`unlearn`")


@pytest.mark.parametrize("text,needle", [("[unlearn]\nlr = -1\n", "--lr -1.0: expected a number > 0"),
                                         ("[unlearn]\nbogus = 1\n", "[unlearn] bogus: `prod-unlearn unlearn` has no such"),
                                         ("x =", "not a TOML file"),
                                         ("[unlearn]\nepochs = 'a'\n", "[unlearn] epochs = 'a': expected an integer"),
                                         ("[unlearn]\nepochs = 1.5\n", "epochs = 1.5: expected an integer"),
                                         ("[unlearn]\nevaluate = 'yes'\n", "evaluate = 'yes': expected true or false")])
def test_a_bad_config_is_one_line(tmp_path, text, needle):
    f = tmp_path / "c.toml"
    f.write_text(text)
    one_line_error(invoke("unlearn", "--config", f), needle)


@pytest.mark.parametrize("umask, folder, weights", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_a_saved_model_has_the_modes_the_umask_asks_for(tmp_path, micro_dir, forget, umask, folder, weights):
    """mkdtemp makes 0700 folders and safetensors 0600 weights: others on a shared machine could
    not read a model we saved, whatever the user's umask said."""
    import stat
    old = os.umask(umask)
    try:
        out = tmp_path / "run"
        assert unlearn(micro_dir, forget, out, "--save-steps", "1").exit_code == 0
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert (out / "checkpoints" / "epoch-1" / "model.safetensors").exists()
    assert {str(p.relative_to(out)): oct(mode(p)) for p in [out, *out.rglob("*")]} == {
        str(p.relative_to(out)): oct(folder if p.is_dir() else weights) for p in [out, *out.rglob("*")]}
