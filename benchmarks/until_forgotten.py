"""A user's own files, memorised then unlearned with no training flags: does `unlearn` forget them?

    python benchmarks/until_forgotten.py --out benchmarks/until-forgotten [--sizes 1,5,10,50] [--methods prod,npo,ga]

A method may carry parameters: ``--methods npo:window=128`` runs ``--method npo -p window=128``
(its rows are keyed ``N-npo:window=128``).

For each size, the first N of 50 real Python files that the embedded model never saw (``rich`` and
``markdown_it`` from this environment's site-packages, 0.8-3.6 KB like the copyright set, ordered
by a hash of their path, so the sets are nested) are memorised with ``prod-unlearn learn`` (its
recipe), then ``prod-unlearn unlearn --model <learned> --forget <files> --method M`` runs with no
training flags (train until forgotten: README "Unlearn until forgotten"). Records per run: exit
status, stopping condition, optimiser steps, wall time, line-cut BLEU before/after at each cut,
held-out bits per byte before/after. Writes ``results.json`` (resumable: done runs are skipped),
``README.md`` (the table) and ``frontier-50.png`` (every check of each 50-file run). Also times the
main job (``prod-unlearn unlearn``, no arguments).
One job at a time on 2 threads; run nothing else meanwhile.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SITE = Path(next(p for p in sys.path if p.endswith("site-packages")))
PACKAGES = ("rich", "markdown_it")


def user_files(n: int = 50) -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((SITE / pkg).rglob("*.py"))
             if 800 <= p.stat().st_size <= 3600 and p.name != "__init__.py"]
    files.sort(key=lambda p: hashlib.sha256(p.relative_to(SITE).as_posix().encode()).hexdigest())
    if len(files) < n:
        raise SystemExit(f"only {len(files)} candidate files under {SITE} ({', '.join(PACKAGES)})")
    return files[:n]


def cli(args: list[str], log: Path) -> tuple[int, float]:
    exe = Path(sys.executable).with_name("prod-unlearn")
    t = time.time()
    with open(log, "w") as f:
        rc = subprocess.run([str(exe), *args], stdout=f, stderr=subprocess.STDOUT,
                            env={**os.environ, "PROD_UNLEARN_NO_PROGRESS": "1"}).returncode
    return rc, round(time.time() - t, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/until-forgotten"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/until-forgotten"))
    ap.add_argument("--sizes", default="1,5,10,50")
    ap.add_argument("--methods", default="prod,npo,ga")
    ap.add_argument("--main-job", action="store_true", help="also time `prod-unlearn unlearn` with no arguments")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    res_path = a.out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    files = user_files()
    for size in map(int, a.sizes.split(",")):
        src = a.work / f"files-{size}"
        if not src.exists():
            for p in files[:size]:
                dst = src / p.relative_to(SITE)
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_text(p.read_text(encoding="utf-8"), encoding="utf-8")
        learned = a.work / f"learned-{size}"
        key = f"learn-{size}"
        done = a.work / f"{key}.json"   # the learned model outlives a results file started afresh
        if not done.exists():
            rc, s = cli(["learn", "--data", str(src), "--out", str(learned)], a.work / f"{key}.log")
            if rc != 0:
                raise SystemExit(f"{key} failed (rc {rc}): {(a.work / f'{key}.log').read_text()[-1000:]}")
            done.write_text(json.dumps({"rc": rc, "seconds": s,
                                        "files": [p.relative_to(SITE).as_posix() for p in files[:size]]}))
        results[key] = json.loads(done.read_text())
        res_path.write_text(json.dumps(results, indent=1))
        for spec in filter(None, a.methods.split(",")):
            key = f"{size}-{spec}"
            if key in results:
                continue
            m, *params = spec.split(":")
            out = a.work / key.replace(":", "-").replace("=", "")
            rc, s = cli(["unlearn", "--model", str(learned), "--forget", str(src), "--method", m, "--out", str(out),
                         *[x for p in params for x in ("-p", p)]], a.work / f"{out.name}.log")
            if rc not in (0, 3) or not (out / "run.json").exists():  # 3: saved, not forgotten; else a failure
                raise SystemExit(f"{key} failed (rc {rc}): {(a.work / f'{out.name}.log').read_text()[-1000:]}")
            run = json.loads((out / "run.json").read_text())
            u = run.get("until", {})
            results[key] = {"rc": rc, "seconds": s, "stopped_by": u.get("stopped_by"), "kept_step": u.get("kept_step"),
                            "checks": len(u.get("curve", [])), "train_seconds": run.get("total_seconds"),
                            "before": {k: v for k, v in run["before"].items() if k.startswith(("bleu", "heldout_bpb"))},
                            "after": {k: v for k, v in run["after"].items() if k.startswith(("bleu", "heldout_bpb"))},
                            "curve": u.get("curve")}
            res_path.write_text(json.dumps(results, indent=1))
            print(key, json.dumps({k: v for k, v in results[key].items() if k != "curve"}), flush=True)
    if a.main_job and "main-job" not in results:
        out = a.work / "main-job"
        rc, s = cli(["unlearn", "--out", str(out)], a.work / "main-job.log")
        run = json.loads((out / "run.json").read_text())
        results["main-job"] = {"rc": rc, "seconds": s, "stopped_by": run.get("until", {}).get("stopped_by"),
                               "kept_step": run.get("until", {}).get("kept_step"), "train_seconds": run.get("total_seconds"),
                               "before": run["before"], "after": run["after"], "curve": run.get("until", {}).get("curve")}
        res_path.write_text(json.dumps(results, indent=1))
    (a.out / "README.md").write_text(table(results))
    print(table(results))
    frontier(results, a.out)


def table(results: dict) -> str:
    """The README table: the saved model's worst cut (and each cut), bits per byte over 60 k tokens."""
    rows = ["| files | method | stopped by | steps | the rule's answers (step: change) | wall time | BLEU before (50 % cut) | "
            "BLEU after, worst of the 25 / 50 / 75 % cuts | held-out bits per byte before -> after (60 k tokens) |",
            "|---|---|---|---:|---|---:|---:|---:|---|"]
    specs = sorted({k.split("-", 1)[1] for k in results if k[0].isdigit() and not k.startswith("learn")},
                   key=lambda m: (["prod", "npo", "ga"] + [m]).index(m))
    order = [f"{s}-{m}" for s in (1, 5, 10, 50) for m in specs] + ["main-job"]
    for key in (k for k in order if k in results):
        r = results[key]
        size, m = ("50 (shipped copyright set, the main job)", "prod") if key == "main-job" else key.split("-", 1)
        m = m.replace(":", ", -p ")
        curve = r.get("curve") or []
        kept = next((p for p in curve if p["step"] == r.get("kept_step")), curve[-1] if curve else None)
        worst = f"{kept['bleu']:.3f}" if kept else "-"
        cuts = kept.get("bleu_cuts", {}) if kept else {}
        if len(cuts) == 3:
            worst += " (" + " / ".join(f"{cuts[c]:.3f}" for c in ("bleu_cut25", "bleu_cut50", "bleu_cut75")) + ")"
        b, a = r["before"], r["after"]
        mark = "**" if r["stopped_by"] == "target" else ""
        answers = "; ".join(f"{p['step']}: {p['action']}" for p in curve if p.get("action")) or "-"
        rows.append(f"| {size} | {m} | {mark}{r['stopped_by']}{mark} | {r.get('kept_step')} | {answers} | "
                    f"{int(r['seconds'] // 60)} min {int(r['seconds'] % 60):02d} s | {b['bleu']:.3f} | {worst} | "
                    f"{b['heldout_bpb']:.3f} -> {a['heldout_bpb']:.3f} "
                    f"({100 * (a['heldout_bpb'] / b['heldout_bpb'] - 1):+.1f} %) |")
    return "\n".join(rows) + "\n"


# earlier GA runs on 50 files kept beside the table (their guard read the same 60 k tokens): file -> label
EARLIER = {
    "ga-50-headroom.json": "ga (no flags), before files rest after a trip",
    "ga-50-retain-weight-4-headroom.json": "ga --retain-weight 4, before files rest",
    "ga-50-retain-weight-8-guard60k.json": "ga --retain-weight 8, before files rest and the headroom",
}


def frontier(results: dict, out: Path, size: int = 50) -> None:
    """``frontier-50.png``: BLEU at the 50 % cut against the rise of held-out bits per byte at every check
    of each run on ``size`` files (this table's rows and ``EARLIER``), in step order: where each method's
    utility-for-forgetting path meets the guard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {f"{k.split('-', 1)[1]} (no flags)": r["curve"] for k, r in results.items()
            if k.startswith(f"{size}-") and r.get("curve")}
    runs.update({label: json.loads((out / f).read_text())["until"]["curve"]
                 for f, label in EARLIER.items() if f.startswith(f"ga-{size}-") and (out / f).exists()})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for color, (label, curve) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], runs.items()):
        paths = [[]]  # a guard trip goes back to an earlier check: each path after it is drawn on its own
        for p in curve:
            paths[-1].append((100 * p["bpb_rise"], p["bleu_cuts"].get("bleu_cut50", p["screen"])))
            if (p.get("action") or "").startswith("back to"):
                paths.append([])
        for i, path in enumerate(filter(None, paths)):
            ax.plot(*zip(*path), "-o", ms=2.5, lw=0.8, color=color, label=None if i else label)
    ax.axvline(100 * 0.10, color="k", ls="--", lw=0.8)
    ax.axhline(0.10, color="k", ls=":", lw=0.8)
    ax.set(xlabel="held-out bits per byte, rise over the learned model (%)", ylabel="line-cut BLEU, 50 % cut",
           title=f"{size} memorised files: every check of each run (guard --, target ..)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"frontier-{size}.png", dpi=120)


if __name__ == "__main__":
    main()
