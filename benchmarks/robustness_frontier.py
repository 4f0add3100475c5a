"""Does any configuration forget in a way that survives relearning? One point per configuration.

    python benchmarks/robustness_frontier.py [--configs prod,prod-sam0.05,...]   # writes into --out

Each configuration unlearns the embedded model's copyright set with `prod-unlearn unlearn` (train
until forgotten, no other flags than the configuration's), optionally followed by `prod-unlearn
distill` (UNDO: a perturbed copy distilled from the unlearned model on general code), then is attacked with the relearning
attack (25 steps at lr 1e-4 on a held-out 10 % of the files, scored on the other 90 %) and the
membership attack, each beside the shipped retain model under the identical attack (the floor).
Records: optimiser steps, tokens through forward+backward (forget tokens seen, x2 for SAM's second
pass, plus the distillation's tokens), wall time (unlearning + distillation), held-out bits per byte change, BLEU after relearning minus the floor's,
Min-K%++ AUC minus the floor's. Writes ``results.json`` (resumable) and ``robustness.png`` (compute
against BLEU above the floor after relearning). One job at a time on 2 threads.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {  # name: extra `unlearn` flags
    "prod": ["--method", "prod"],
    "prod-sam0.05": ["--method", "prod", "--sam", "0.05"],
    "prod-sam0.5": ["--method", "prod", "--sam", "0.5"],
    "simnpo": ["--method", "simnpo"],
    "ga": ["--method", "ga"],
    "rmu": ["--method", "rmu"],
    "rmu-c100": ["--method", "rmu", "-p", "steering=100", "--lr", "2e-4"],
    # until the forget files also look unseen to Min-K%++ (against the held-out files; the attack
    # scores them against the control files)
    "ga-auc0.5": ["--method", "ga", "--until-auc", "0.5"],
    "prod-auc0.5": ["--method", "prod", "--until-auc", "0.5"],
}
DISTILL = {  # name: (the configuration whose model is distilled, `distill` flags); about 3 s per 2048 tokens on 2 cores
    "prod+undo0.3": ("prod", ["--noise", "0.3", "--tokens", "400000"]),
    "prod+undo0.5": ("prod", ["--noise", "0.5", "--tokens", "2000000"]),
    "prod+undo0.8": ("prod", ["--noise", "0.8", "--tokens", "2000000"]),
    "ga+undo0.5": ("ga", ["--noise", "0.5", "--tokens", "2000000"]),
    "ga-auc0.5+undo0.5": ("ga-auc0.5", ["--noise", "0.5", "--tokens", "2000000"]),
    "prod-auc0.5+undo0.5": ("prod-auc0.5", ["--noise", "0.5", "--tokens", "2000000"]),
}


def forget_tokens_per_file() -> float:
    from prod_unlearn.data.examples import load_examples
    from prod_unlearn.models.loading import DEFAULT_MODEL, load_tokenizer
    from prod_unlearn.tasks import default_forget_sets
    tok = load_tokenizer(str(DEFAULT_MODEL))
    files = load_examples(default_forget_sets()["copyright"])
    return sum(len(tok(e.prompt + e.completion)["input_ids"]) for e in files) / len(files)


def cli(args: list[str], log: Path) -> tuple[int, float, str]:
    exe = Path(sys.executable).with_name("prod-unlearn")
    t = time.time()
    p = subprocess.run([str(exe), *args], capture_output=True, text=True,
                       env={**os.environ, "PROD_UNLEARN_NO_PROGRESS": "1"})
    log.write_text(p.stdout + p.stderr)
    return p.returncode, round(time.time() - t, 1), p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks") / "robustness")
    ap.add_argument("--work", type=Path, default=Path("/tmp/robustness"))
    ap.add_argument("--configs", default="prod-sam0.05,simnpo")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    path = a.out / "results.json"
    res = json.loads(path.read_text()) if path.exists() else {}
    per_file = forget_tokens_per_file()
    for name in a.configs.split(","):
        if name in res:
            continue
        base, distill = DISTILL.get(name, (name, None))
        model = a.work / base
        if not (model / "run.json").exists():
            rc, secs, _ = cli(["unlearn", *CONFIGS[base], "--out", str(model)], a.work / f"{base}.log")
            if not (model / "run.json").exists():
                raise SystemExit(f"{base}: unlearn failed (rc {rc}); see {a.work / f'{base}.log'}")
        else:  # unlearned before (by this script, or the main job's own folder copied here)
            secs = res.get(base, {}).get("unlearn_seconds") or json.loads((model / "run.json").read_text()).get(
                "total_seconds")
        run = json.loads((model / "run.json").read_text())
        steps = run.get("until", {}).get("kept_step") or run["until"]["curve"][-1]["step"]
        sam = "--sam" in CONFIGS[base]
        r = {"flags": CONFIGS[base], "unlearn_seconds": secs, "train_seconds": run.get("total_seconds"),
             "stopped_by": run.get("until", {}).get("stopped_by"), "steps": steps,
             "forward_backward_passes": steps * (2 if sam else 1),
             "tokens": round(steps * per_file * (2 if sam else 1)),
             "bleu_after": run["after"]["bleu"], "bpb_before": run["before"]["heldout_bpb"],
             "bpb_after": run["after"]["heldout_bpb"]}
        if distill:
            student = a.work / name
            rc, dsecs, _ = cli(["distill", "--teacher", str(model), "--out", str(student), *distill], a.work / f"{name}.log")
            if rc != 0:
                raise SystemExit(f"{name}: distill failed (rc {rc}); see {a.work / f'{name}.log'}")
            d = json.loads((student / "distill.json").read_text())
            r.update(distill_flags=distill, distill_seconds=dsecs, distill_tokens=d["tokens"],
                     tokens=r["tokens"] + d["tokens"], bpb_after=d["heldout"]["student"]["heldout_bpb"],
                     unlearn_seconds=(secs or 0) + dsecs)
            model = student
        for kind in ("relearn", "mia"):
            rc, secs, out = cli(["attack", "--kind", kind, "--model", str(model), "--json"], a.work / f"{name}-{kind}.log")
            if rc != 0:
                raise SystemExit(f"{name}: attack {kind} failed (rc {rc}); see {a.work / f'{name}-{kind}.log'}")
            rows = json.loads(out.strip().splitlines()[-1])["rows"]
            r[f"{kind}_seconds"] = secs
            if kind == "relearn":
                pick = lambda who: next(x for x in rows if x["model"] == who and x["metric"] == "bleu"  # noqa: E731
                                        and x["condition"] == "forget@25")
                m, f = pick("model"), pick("retain")
                r.update(relearn_condition=m["condition"], relearn_bleu=[m["mean"], m["lo"], m["hi"]],
                         floor_bleu=[f["mean"], f["lo"], f["hi"]], above_floor=m["mean"] - f["mean"])
            else:
                pick = lambda who: next(x for x in rows if x["model"] == who and x["condition"] == "min_k_pp")  # noqa: E731
                m, f = pick("model"), pick("retain")
                r.update(mia_auc=[m["mean"], m["lo"], m["hi"]], floor_auc=[f["mean"], f["lo"], f["hi"]],
                         auc_above_floor=m["mean"] - f["mean"])
        res[name] = r
        path.write_text(json.dumps(res, indent=1))
        print(name, json.dumps(r), flush=True)
    for r in res.values():  # points recorded before tokens were
        r.setdefault("tokens", round(r["forward_backward_passes"] * per_file))
    path.write_text(json.dumps(res, indent=1))
    plot(res, a.out / "robustness.png")


def plot(res: dict, png: Path) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for ax, key, label in ((axes[0], "tokens", "tokens through forward+backward (log)"),
                           (axes[1], "unlearn_seconds", "unlearning (+ distillation) wall time, s (2 CPU cores)")):
        for name, r in res.items():
            if key not in r:
                continue
            ax.scatter(r[key], r["above_floor"], s=30)
            ax.annotate(name, (r[key], r["above_floor"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.axhline(0.10, color="grey", ls="--", lw=0.8)
        if key == "tokens":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("BLEU after 25 relearning steps - retain floor")
        ax.grid(alpha=0.3)
    fig.suptitle("Forgetting that survives relearning (goal: below the dashed line)")
    fig.tight_layout()
    fig.savefig(png)


if __name__ == "__main__":
    main()
