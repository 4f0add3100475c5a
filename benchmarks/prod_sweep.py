"""PROD learning-rate x epoch sweep on the embedded model (how the main job's defaults were chosen).

    python benchmarks/prod_sweep.py --device cuda --lrs 1e-5,2e-5,3e-5 --epochs 3
"""
import argparse
import json

from prod_unlearn.data.examples import load_examples
from prod_unlearn.evaluation.suite import DATA, evaluate
from prod_unlearn.methods import get_method
from prod_unlearn.models.loading import DEFAULT_MODEL, load_model
from prod_unlearn.training.defaults import resolve_train_config
from prod_unlearn.training.loop import unlearn

ap = argparse.ArgumentParser()
ap.add_argument("--device", default="cpu")
ap.add_argument("--lrs", default="1e-5,2e-5,3e-5")
ap.add_argument("--epochs", type=int, default=3)
ap.add_argument("--method", default="prod")
ap.add_argument("--out", default="runs/sweep")
ap.add_argument("--max-new-tokens", type=int, default=512)
ap.add_argument("--ppl-tokens", type=int, default=60_000)
args = ap.parse_args()
forget = load_examples(DATA / "copyright.jsonl")
for lr in map(float, args.lrs.split(",")):
    model, tok = load_model(str(DEFAULT_MODEL), args.device, "fp32")
    run = unlearn(model, tok, forget, get_method(args.method),
                  resolve_train_config(DEFAULT_MODEL, epochs=args.epochs, lr=lr),  # max length: the model's
                  f"{args.out}/{args.method}-{lr}", evaluate=lambda m, ep: evaluate(m, tok, examples=forget, max_new_tokens=args.max_new_tokens,
                                                  ppl_tokens=args.ppl_tokens))
    for e in run["epochs"]:
        print(json.dumps({"method": args.method, "lr": lr, "epoch": e["epoch"], "bleu": e["eval"]["bleu"],
                          "heldout_ppl": e["eval"]["heldout_ppl"], "before_ppl": run["before"]["heldout_ppl"]}))
