"""Train embedded-model candidates side by side on one GPU, measure them, keep the best two.

How the shipped model was chosen (docs/embedded-model.md). On the GPU machine:

    python benchmarks/pretrain_gpu.py --source .stdlib --out $OUT --deadline-s 300

``.stdlib`` is a copy of the corpus (this machine's standard library: the split, and so the
shipped task sets, depend on its files). Each variant is ``prod-unlearn pretrain --preset gpu``
with the overrides in ``VARIANTS``, in its own process; afterwards the memorisation report
(without the insecure-code detector: semgrep is not installed there; the detector rate is measured
back here with ``benchmarks/embedded_model.py``). ``--out`` gets ``summary.json`` (every variant's
config, log and figures) and the two best model folders as ``NAME.tar.NN`` pieces of 15 MB
(``cat NAME.tar.* | tar -x``), packed even when the deadline stopped its evaluation. ``--smoke``
runs the same pipeline with the tiny preset on CPU.

Measured on one H200 (2026-11-28, three variants at once, each 4 CPU threads): 813 steps in 119 s,
1220 in 157 s; the on-GPU memorisation report then ran past a 450 s deadline for all three (not
investigated: no more device time); the models were packed from the warm machine and measured on
CPU. ``long`` was shipped (docs/embedded-model.md).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {  # overrides of the `gpu` preset (45 M tokens = 1220 steps of 24 x 1536; `long` is the preset)
    "base": {"train_tokens": 30_000_000, "copyright_repeats": 1},   # v1's length
    "long": {},
    "long-memo": {"memorise_share": 0.35},
}


def targets_met(m: dict) -> int:
    """How many of the model card's memorisation targets this variant meets (docs/embedded-model.md;
    the detector rate is checked later, on CPU)."""
    c = m.get("copyright", {})
    cuts = [v for k, v in c.items() if k.startswith("bleu_cut")]
    return sum([c.get("bleu", 0) >= 0.90, bool(cuts) and min(cuts) >= 0.85,
                m.get("control", {}).get("bleu", 1) <= 0.15, m.get("insecure", {}).get("bleu", 0) >= 0.8,
                m.get("deprecated", {}).get("forget_sites", {}).get("deprecated_match", 0) >= 0.8])


def run_variant(name: str, a) -> None:
    import torch
    from prod_unlearn.tasks.memorisation import memorisation_report, monitor
    from prod_unlearn.models.pretrain import config_for, pretrain
    torch.backends.cuda.matmul.allow_tf32 = True
    over = dict(VARIANTS[name])
    if a.smoke:
        over = {"train_tokens": 40_000 * (2 if over else 1), "device": "cpu"}
    else:
        over.setdefault("time_budget_s", 240)  # three processes share the GPU
    cfg = config_for("tiny" if a.smoke else "gpu", source=a.source, out=str(a.work / name), **over)
    rec = pretrain(cfg, monitor=monitor,
                   final_eval=lambda m, t, split: memorisation_report(m, t, with_detector=False))
    rec["variant"] = name
    (a.work / f"{name}.json").write_text(json.dumps(rec))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default=None, help="corpus root [default: this Python's stdlib]")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/pretrain_gpu"))
    ap.add_argument("--deadline-s", type=float, default=420, help="stop waiting for variants after this")
    ap.add_argument("--keep", type=int, default=2, help="model folders to pack into --out")
    ap.add_argument("--smoke", action="store_true", help="tiny preset on CPU: checks the pipeline")
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # child process
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.variant:
        return run_variant(a.variant, a)

    t0 = time.time()
    env = dict(os.environ, OMP_NUM_THREADS="4", PYTHONUNBUFFERED="1")
    args = [sys.executable, __file__, "--out", str(a.out), "--work", str(a.work)] + (
        ["--source", a.source] if a.source else []) + (["--smoke"] if a.smoke else [])
    procs = {n: subprocess.Popen(args + ["--variant", n], env=env, stdout=open(a.work / f"{n}.log", "w"),
                                 stderr=subprocess.STDOUT) for n in VARIANTS}
    while any(p.poll() is None for p in procs.values()) and time.time() - t0 < a.deadline_s:
        time.sleep(2)
    for n, p in procs.items():
        if p.poll() is None:
            p.kill()
            print(f"{n}: killed at the deadline")
    done = {n: json.loads((a.work / f"{n}.json").read_text()) for n in VARIANTS if (a.work / f"{n}.json").exists()}
    trained = [n for n in VARIANTS if (a.work / n / "model" / "model.safetensors").exists()]
    for n in VARIANTS:
        if n not in done:
            print(f"--- {n}: no record (stopped or failed); log tail:\n" + (a.work / f"{n}.log").read_text()[-3000:])

    def rank(n):  # evaluated variants by targets met, then held-out bits per byte; the rest by its log
        if n in done:
            return (0, -targets_met(done[n]["metrics"]), done[n]["metrics"].get("heldout_bpb", 9))
        bpb = re.findall(r"'heldout_bpb_6': ([0-9.]+)", (a.work / f"{n}.log").read_text())
        return (1, 0, float(bpb[-1]) if bpb else 9)
    ranked = sorted(trained, key=rank)
    a.out.mkdir(parents=True, exist_ok=True)
    summary = {"ranked": ranked, "wall_s": round(time.time() - t0, 1),
               "variants": {n: {"overrides": VARIANTS[n], "targets_met": targets_met(r["metrics"]), **r}
                            for n, r in done.items()}}
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1))
    for n in ranked[:a.keep]:  # packed even when its evaluation did not finish: the model is what costs
        subprocess.run(f"tar -C {a.work / n} -c model | split -b 15M -d - {a.out / (n + '.tar.')}",
                       shell=True, check=True)
    for n, r in done.items():
        print(n, r["steps"], "steps", r["train_time_s"], "s", "targets", targets_met(r["metrics"]),
              json.dumps(r["metrics"]), "log", [(e["step"], e.get("heldout_bpb_6")) for e in r["log"]])


if __name__ == "__main__":
    main()
