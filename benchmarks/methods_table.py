"""Every method on the embedded model's copyright set, same epochs and lr: forget BLEU and
held-out perplexity before and after. Writes benchmarks/methods.json and prints a Markdown table.

    python benchmarks/methods_table.py [--epochs 2] [--lr 3e-5] [--methods prod,ga,npo,dpo,flat,undial]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from prod_unlearn.data.examples import load_examples
from prod_unlearn.tasks import DATA, evaluate
from prod_unlearn.io import atomic_write_json, read_json
from prod_unlearn.methods import get_method
from prod_unlearn.models.loading import DEFAULT_MODEL, load_model
from prod_unlearn.training.defaults import resolve_train_config
from prod_unlearn.training.loop import unlearn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--methods", default="prod,ga,npo,dpo,flat,undial")
    ap.add_argument("--out", default="runs/methods")
    ap.add_argument("--json", default=str(Path(__file__).with_name("methods.json")))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    forget = load_examples(DATA / "copyright.jsonl")
    results = read_json(args.json) if Path(args.json).exists() else {}
    if "original" not in results:
        model, tok = load_model(str(DEFAULT_MODEL), args.device, "fp32")
        results["original"] = evaluate(model, tok, examples=forget)
        atomic_write_json(args.json, results)
    for name in args.methods.split(","):
        if name in results:  # resumable: finished cells are not redone
            continue
        model, tok = load_model(str(DEFAULT_MODEL), args.device, "fp32")
        t0 = time.time()
        cfg = resolve_train_config(DEFAULT_MODEL, epochs=args.epochs, lr=args.lr)  # max length: the model's
        unlearn(model, tok, forget, get_method(name), cfg, Path(args.out) / name, model_name="embedded")
        res = evaluate(model, tok, examples=forget)
        res["train_seconds"] = round(time.time() - t0 - res["seconds"], 1)
        res["device"] = args.device
        results[name] = res
        atomic_write_json(args.json, results)
    base = results["original"]
    print("| method | forget BLEU | forget quality | held-out ppl | ppl change | train s |\n|---|---|---|---|---|---|")
    print(f"| original | {base['bleu']:.3f} | {base['forget_quality']:.3f} | {base['heldout_ppl']:.2f} | - | - |")
    for name, r in results.items():
        if name != "original":
            print(f"| {name} | {r['bleu']:.3f} | {r['forget_quality']:.3f} | {r['heldout_ppl']:.2f} | "
                  f"{100 * (r['heldout_ppl'] / base['heldout_ppl'] - 1):+.1f} % | {r['train_seconds']} |")


if __name__ == "__main__":
    main()
