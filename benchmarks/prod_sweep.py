"""PROD learning-rate sweep on the embedded model: how the main job's defaults were chosen.

One run per lr (batch 1, constant lr), evaluated at a few optimiser steps along it: line-cut
copyright BLEU (the figure the main job reports) and held-out bits per byte.

    python benchmarks/prod_sweep.py --lrs 1e-5,2e-5,4e-5 --epochs 2 --points 25,50,100
"""
import argparse
import json
import time

import torch

from prod_unlearn.data.examples import load_examples
from prod_unlearn.tasks.copyright import continuation_bleu
from prod_unlearn.tasks.memorisation import heldout_bpb
from prod_unlearn.tasks import DATA
from prod_unlearn.methods import get_method
from prod_unlearn.models.loading import DEFAULT_MODEL, load_model
from prod_unlearn.training.defaults import resolve_train_config
from prod_unlearn.training.loop import unlearn

ap = argparse.ArgumentParser()
ap.add_argument("--device", default="cpu")
ap.add_argument("--lrs", default="1e-5,2e-5,4e-5")
ap.add_argument("--epochs", type=int, default=2)
ap.add_argument("--points", default="25,50,100", help="optimiser steps to evaluate at")
ap.add_argument("--method", default="prod")
ap.add_argument("--out", default="runs/sweep")
ap.add_argument("--max-new-tokens", type=int, default=128)
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)
forget = load_examples(DATA / "copyright.jsonl")
points = [int(p) for p in args.points.split(",")]


def figures(model, tok) -> dict:
    r = continuation_bleu(model, tok, forget, max_new_tokens=args.max_new_tokens)
    return {"bleu": round(r["bleu"], 4), "exact_next5": round(r["exact_next5"], 4),
            "heldout_bpb": heldout_bpb(model, tok)}


model, tok = load_model(str(DEFAULT_MODEL), args.device, "fp32")
base = figures(model, tok)
print(json.dumps({"lr": 0, "step": 0, **base}), flush=True)
for lr in map(float, args.lrs.split(",")):
    model, tok = load_model(str(DEFAULT_MODEL), args.device, "fp32")
    cfg = resolve_train_config(DEFAULT_MODEL, epochs=args.epochs, lr=lr, eval_steps=points)
    t0 = time.time()

    def at_step(m, step, lr=lr, t0=t0):
        f = figures(m, tok)
        f["bpb_change"] = round(f["heldout_bpb"] / base["heldout_bpb"] - 1, 4)
        print(json.dumps({"lr": lr, "step": step, **f, "elapsed_s": round(time.time() - t0)}), flush=True)

    unlearn(model, tok, forget, get_method(args.method), cfg, f"{args.out}/{args.method}-{lr}", step_evaluate=at_step)
