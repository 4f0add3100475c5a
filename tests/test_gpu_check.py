"""benchmarks/gpu_check.py works before it meets a GPU: every part runs with tiny shapes on CPU."""
from __future__ import annotations

import json
import subprocess

from conftest import PYTHON, REPO


def test_gpu_check_smoke(tmp_path, subprocess_env):
    r = subprocess.run([PYTHON, str(REPO / "benchmarks/gpu_check.py"), "--smoke", "--out", str(tmp_path),
                        "--work", str(tmp_path / "work")], env=subprocess_env, cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    parts = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]
    errors = {k: v["error"] for k, v in parts.items() if isinstance(v, dict) and "error" in v}
    assert not errors, errors
    for size in ("steps_1b", "steps_7b_lora"):
        assert {"sft", "prod", "npo", "undial"} <= set(parts[size])
        assert parts[size]["prod"]["time_x_sft"] > 0
    assert all(row["lora_changed"] == row["lora_tensors"] for m, row in parts["steps_7b_lora"].items()
               if isinstance(row, dict))
    assert all(row["token_agreement"] == 1.0 for row in parts["generation"].values() if isinstance(row, dict))
    assert parts["fsdp"]["rc"] == 0 and parts["fsdp"]["loads"]
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check")
