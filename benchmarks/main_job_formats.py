"""The main job from each forget-set format: the shipped copyright set written as Parquet (with other
column names, read through --prompt-column/--completion-column), CSV and a `datasets` folder, then
`prod-unlearn unlearn` on each with the main job's defaults. Same set => same sha256 => same figures.

    python benchmarks/main_job_formats.py [--work /tmp/formats]   # ~6 min per format on 2 cores

Writes results.json and README.md into the `formats` folder beside this script.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent / "prod-unlearn"


def write_formats(work: Path) -> dict[str, list[str]]:
    """format name -> the `unlearn` arguments that read it."""
    import datasets
    import pandas as pd
    from prod_unlearn.data.examples import load_examples
    from prod_unlearn.tasks import default_forget_sets
    rows = [{"prompt": e.prompt, "completion": e.completion, "id": e.id, "meta": json.dumps(e.meta)}
            for e in load_examples(default_forget_sets()["copyright"])]
    work.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.rename(columns={"prompt": "header", "completion": "code"}).to_parquet(work / "copyright.parquet")
    df.to_csv(work / "copyright.csv", index=False)
    datasets.Dataset.from_pandas(df).save_to_disk(str(work / "copyright_ds"))
    return {"jsonl": [],
            "parquet": ["--forget", str(work / "copyright.parquet"), "--prompt-column", "header",
                        "--completion-column", "code"],
            "csv": ["--forget", str(work / "copyright.csv")],
            "datasets": ["--forget", str(work / "copyright_ds")]}


def figures(run: dict) -> dict:
    after = run["after"]
    return {"forget_sha256": run["forget_hash"][:16], "stopped_by": run["until"]["stopped_by"],
            "steps": run["until"]["curve"][-1]["step"], "bleu_after": after["bleu"], "bleu_ci": after.get("bleu_ci"),
            "bpb": [run["before"]["heldout_bpb"], after["heldout_bpb"]]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/formats"))
    ap.add_argument("--formats", default="jsonl,parquet,csv,datasets")
    a = ap.parse_args()
    args = write_formats(a.work)
    res = {}
    for name in a.formats.split(","):
        out = a.work / f"run-{name}"
        t0 = time.time()
        subprocess.run([str(BIN), "unlearn", *args[name], "--out", str(out), "--overwrite"], check=True)
        res[name] = {**figures(json.loads((out / "run.json").read_text())), "seconds": round(time.time() - t0)}
        print(name, res[name], flush=True)
    (HERE / "formats").mkdir(exist_ok=True)
    (HERE / "formats" / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    same = len({json.dumps({k: v for k, v in r.items() if k != "seconds"}, sort_keys=True) for r in res.values()}) == 1
    lines = ["# The main job from each forget-set format", "",
             "`python benchmarks/main_job_formats.py` (2 cores, one job at a time).", "",
             "| format | set sha256 | stopped by | steps | forget BLEU after (95 % CI) | held-out bpb | seconds |",
             "|---|---|---|---:|---|---|---:|"]
    for n, r in res.items():
        ci = f" ({r['bleu_ci'][0]:.3f}-{r['bleu_ci'][1]:.3f})" if r.get("bleu_ci") else ""
        lines.append(f"| {n} | {r['forget_sha256']} | {r['stopped_by']} | {r['steps']} | {r['bleu_after']:.4f}{ci} | "
                     f"{r['bpb'][0]:.4f} -> {r['bpb'][1]:.4f} | {r['seconds']} |")
    lines += ["", f"Identical figures in every format: **{'yes' if same else 'NO'}**. (Seconds: wall time of each run, "
                  "not a timing benchmark: other work shared the 2 cores.)"]
    (HERE / "formats" / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
