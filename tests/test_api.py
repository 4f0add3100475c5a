"""The Python API (issue 21): the functions the commands are built on, from a user's script."""
from __future__ import annotations

import json

import pytest

CODE = ["def add(a, b):\n    total = a + b\n    return total\n", "def mul(a, b):\n    prod = a * b\n    return prod\n",
        "for i in range(10):\n    sq = i * i\n    print(sq)\n"]
OTHER = ["def sub(a, b):\n    diff = a - b\n    return diff\n", "while True:\n    line = input()\n    break\n",
         "class A:\n    x = 1\n    y = 2\n"]


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"id": f"{path.stem}{i}", "completion": t}) + "\n" for i, t in enumerate(texts)))
    return path


def test_a_script_unlearns_evaluates_and_attacks(micro_dir, tmp_path):
    import prod_unlearn as pu
    data = _jsonl(tmp_path / "forget.jsonl", CODE)
    forget = pu.load_forget_set(data)
    res = pu.unlearn(str(micro_dir), forget, "ga", tmp_path / "run", epochs=1, lr=1e-3, max_length=64,
                     device="cpu", evaluate=False)
    assert isinstance(res, pu.UnlearnResult) and res.forgotten is None and res.verdict is None
    assert (res.out / "model.safetensors").exists() and res.run["method"] == "ga" and len(res.run["epochs"]) == 1
    ev = pu.evaluate(str(res.out), "copyright", data, max_new_tokens=8, device="cpu", retain_model="none")
    assert ev["n"] == 3 and 0 <= ev["forget_quality"] <= 1 and ev["model"] == str(res.out)
    mia = pu.attack(str(res.out), "mia", forget, original=str(micro_dir), retain_model="none",
                    control_path=str(_jsonl(tmp_path / "control.jsonl", OTHER)))
    assert mia["kind"] == "mia" and {r["model"] for r in mia["rows"]} == {"model", "original"}
    # the same run again: resumed and complete, refused with other settings
    assert pu.unlearn(str(micro_dir), forget, "ga", tmp_path / "run", epochs=1, lr=1e-3, max_length=64,
                      device="cpu", evaluate=False).run["epochs"] == res.run["epochs"]
    with pytest.raises(ValueError, match="optimisation.lr: 0.001 -> 0.002"):
        pu.unlearn(str(micro_dir), forget, "ga", tmp_path / "run", epochs=1, lr=2e-3, max_length=64, device="cpu")


def test_the_api_is_the_packages_face():
    import prod_unlearn as pu
    assert all(callable(getattr(pu, name)) for name in pu.API) and set(pu.API) <= set(pu.__all__)
    assert pu.unlearn.__module__ == "prod_unlearn.api" and pu.unlearn.__doc__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pu.nope


def test_the_readme_example_runs_as_written(memorised_dir, tmp_path, monkeypatch):
    """The README's Python block, unchanged, in a folder holding `my-coder` (the micro model, with the
    recommended settings a model folder may carry: unlearn_defaults.json) and `takedown.jsonl`."""
    import re
    import shutil

    from conftest import FORGET, REPO

    from prod_unlearn.data.examples import write_jsonl
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"In Python \(.*?```python\n(.*?)```", text, re.S).group(1)
    shutil.copytree(memorised_dir, tmp_path / "my-coder")
    (tmp_path / "my-coder" / "unlearn_defaults.json").write_text(json.dumps(
        {"lr": 3e-2, "max_length": 64, "max_steps": 12, "epochs": 1}))
    write_jsonl(list(FORGET), tmp_path / "takedown.jsonl")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROD_UNLEARN_NO_PROGRESS", "1")
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    res, report, results = scope["res"], scope["report"], scope["results"]
    assert (tmp_path / "runs" / "takedown" / "model.safetensors").exists() and res.run["until"]
    assert (tmp_path / "runs" / "takedown-audit" / "report.html").exists() and report["recovery"]
    assert results["pdr"] and (tmp_path / "runs" / "bench" / "report.md").exists()
