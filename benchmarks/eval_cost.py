"""What one bench point costs: each task's evaluation timed on one model, as the bench calls it.

    python benchmarks/eval_cost.py --model runs/bench/runs/copyright/prod/s0    # a partly forgotten model

Prints seconds per evaluation (one run each, on the current thread default) for: the copyright
task at the bench's one cut and at the three cuts `eval` uses, the health utility at the bench's
10 k and the earlier 30 k held-out tokens, insecure and deprecated. Run it alone on the machine.
"""
from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder [default: the embedded model]")
    args = ap.parse_args()
    os.environ.setdefault("PROD_UNLEARN_NO_PROGRESS", "1")
    from prod_unlearn.bench import BenchConfig, _task_data, resolve_bench_defaults
    from prod_unlearn.models.loading import DEFAULT_MODEL, load_model
    from prod_unlearn.tasks import UTILITY_TASKS, copyright as cp
    model, tok = load_model(args.model or str(DEFAULT_MODEL), device="cpu", dtype="auto")
    cfg = resolve_bench_defaults(BenchConfig())

    def timed(name, fn):
        t = time.perf_counter()
        value = fn()
        print(f"{name:34s} {time.perf_counter() - t:6.1f} s   {value}", flush=True)

    _, _, files = _task_data("copyright", cfg)
    timed("copyright, 50 % cut (bench)", lambda: cp.continuation_bleu(model, tok, files, 256, cuts=cp.POINT_CUTS)["bleu"])
    timed("copyright, 25/50/75 % cuts (eval)", lambda: cp.continuation_bleu(model, tok, files, 256)["bleu"])
    for n in (cfg.ppl_tokens, 30_000):
        timed(f"health, {n // 1000} k held-out tokens", lambda: UTILITY_TASKS["health"].evaluate(model, tok, ppl_tokens=n)["utility"])
    for task in ("insecure", "deprecated"):
        spec, _, items = _task_data(task, cfg)
        timed(task, lambda: spec.evaluate(model, tok, items, max_new_tokens=cfg.max_new_tokens,
                                          token_half=False)["forget_quality"])


if __name__ == "__main__":
    main()
