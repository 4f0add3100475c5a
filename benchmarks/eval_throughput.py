"""Generation throughput of the evaluation: the old ``generate`` path vs ``greedy_continue``, in one run.

The workload is the copyright evaluation itself: every prompt (line cuts at 25/50/75 % of the
lines, and the paper's token half) of the first ``--files`` forget files, each with its own
budget (the task's default, or ``--new-tokens``), EOS honoured, exactly as
``tasks/copyright.py`` builds them. The paths run on it interleaved ``--repeats``
times (a shared machine slows whichever runs when it is busy; interleaving spreads that over
all of them):

- ``old@1``: the previous ``greedy_continue`` (``model.generate``, kept verbatim below as
  ``old_greedy_continue``) one prompt at a time: the reference for agreement (greedy decoding of
  one sequence, no padding);
- ``old@B``: the same at ``--old-batch`` (16: the batch every task used);
- ``new``: ``prod_unlearn.evaluation.generation.greedy_continue`` at its default batch (or
  ``--batch``), one token per step;
- ``new+hints``: the same with each prompt's true continuation as its hint, i.e. what the
  evaluation runs (exact speculative decoding: fast where the model reproduces the file, as the
  shipped model does; pass ``--model`` an unlearned model for the other regime).

Threads: ``--threads N`` runs every path on N intra-op threads (the fair comparison); by
default each path gets its own default: torch's for the old path (as before), and
``threads.default_threads`` for the new one.

tokens/s = generated tokens / wall time (prefill included); the spread is min-max over repeats,
the figure the median. Agreement = share of generated token positions where a path's token
equals ``old@1``'s (``old@B``'s with ``--no-old-single``); a row that diverges at a
floating-point near-tie counts every later position as a disagreement; also rows identical. ``--micro-vocab N`` runs the same prompt
lengths through an in-process micro Llama (random ids). ``--model`` any causal LM (e.g. a
1 B model on a GPU).

    python benchmarks/eval_throughput.py                          # embedded model, 8 files
    python benchmarks/eval_throughput.py --files 4 --repeats 2 --json
    python benchmarks/eval_throughput.py --threads 1
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cost import machine, micro_config  # noqa: E402


class _Ids:
    """The fields the generators read from a tokenizer (micro models have none)."""
    pad_token_id = 1
    eos_token_id = 0
    bos_token_id = 0

    def decode(self, ids, **_):
        return " ".join(map(str, ids))


@torch.no_grad()
def old_greedy_continue(model, tokenizer, prompts: list[list[int]], max_new_tokens: list[int],
                        batch_size: int = 16, stop_at_eos: bool = True) -> list[list[int]]:
    """The evaluation's generator before the rewrite in `evaluation/generation.py` (``model.generate``, left padding per sorted batch), verbatim
    but for the progress bar."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ctx = int(getattr(model.config, "max_position_embeddings", None) or 4096)
    pad = tokenizer.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        budget = max(max_new_tokens[i] for i in idx)
        keep = max(1, ctx - budget)
        batch = [prompts[i][-keep:] for i in idx]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, p in enumerate(batch):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=budget, pad_token_id=pad,
                             eos_token_id=tokenizer.eos_token_id if stop_at_eos else None,
                             num_beams=1, temperature=None, top_p=None, top_k=None)
        for r, i in enumerate(idx):
            new = gen[r, width:].tolist()[:max_new_tokens[i]]
            if stop_at_eos and tokenizer.eos_token_id in new:
                new = new[:new.index(tokenizer.eos_token_id)]
            out[i] = new
    model.train(was_training)
    return out


def copyright_workload(tok, n_files: int, new_tokens: int, context: int
                       ) -> tuple[list[list[int]], list[int], list[list[int]]]:
    """(prompt ids, budgets, true continuations) of the copyright evaluation of the first n_files forget files."""
    from prod_unlearn.data.examples import load_examples
    from prod_unlearn.tasks import copyright as cp
    from prod_unlearn.models.loading import ASSETS
    examples = load_examples(ASSETS / "data" / "copyright.jsonl")[:n_files]
    from prod_unlearn.tasks import FORGET_TASKS
    default = inspect.signature(FORGET_TASKS["copyright"].evaluate).parameters["max_new_tokens"].default
    budget = new_tokens or default                                    # the task's own budget
    if hasattr(cp, "line_cut_items"):
        items = cp.line_cut_items(examples, tok, max_new_tokens=budget, context=context)
        if hasattr(cp, "token_half_items"):   # the task also scores the paper's token-half prompts
            items += cp.token_half_items(examples, tok, max_new_tokens=budget, context=context)
        return [c.prompt_ids for c in items], [len(c.reference_ids) for c in items], [c.reference_ids for c in items]
    items = cp.split_halves(examples, tok, max_new_tokens=budget, context=context)   # older protocol
    refs = [tok(c.reference, add_special_tokens=False)["input_ids"] for c in items]
    return [c.prompt_ids for c in items], [len(r) for r in refs], refs


def agreement(out: list[list[int]], ref: list[list[int]]) -> dict:
    same = sum(a == b for o, r in zip(out, ref) for a, b in zip(o, r))
    total = sum(max(len(o), len(r)) for o, r in zip(out, ref))
    prefix = 0
    for o, r in zip(out, ref):
        k = 0
        while k < min(len(o), len(r)) and o[k] == r[k]:
            k += 1
        prefix += k
    return {"token_agreement": same / max(1, total), "prefix_agreement": prefix / max(1, total),
            "rows_identical": sum(o == r for o, r in zip(out, ref)), "rows": len(ref)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="", help="model folder or hub id (default: the embedded model)")
    ap.add_argument("--micro-vocab", type=int, default=0)
    ap.add_argument("--micro-hidden", type=int, default=128)
    ap.add_argument("--micro-layers", type=int, default=2)
    ap.add_argument("--files", type=int, default=8, help="copyright forget files (3 prompts each)")
    ap.add_argument("--new-tokens", type=int, default=0, help="budget cap (0: the task's default)")
    ap.add_argument("--old-batch", type=int, default=16)
    ap.add_argument("--batch", type=int, default=0, help="new path's batch (0: its default)")
    ap.add_argument("--no-old-single", action="store_true",
                    help="skip old@1 (slow; agreement is then measured against old@B)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads for every path (0: each path's default: torch's for the old "
                         "path, as before; threads.default_threads for the new one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("PROD_UNLEARN_NO_PROGRESS", "1")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    from prod_unlearn.evaluation.generation import DEFAULT_BATCH, greedy_continue, model_context
    from prod_unlearn.models.loading import DEFAULT_MODEL, load_model, load_tokenizer, resolve_device, resolve_dtype

    torch_default = torch.get_num_threads()
    if args.threads:
        os.environ["PROD_UNLEARN_THREADS"] = str(args.threads)   # the new path keeps it too
    old_threads = args.threads or torch_default
    device = resolve_device(args.device)
    if args.micro_vocab:
        from transformers import LlamaForCausalLM
        torch.manual_seed(0)
        cfg = micro_config(args.micro_vocab, args.micro_hidden, args.micro_layers, 2048)
        model = LlamaForCausalLM(cfg).to(device, resolve_dtype(args.dtype, device)).eval()
        tok = load_tokenizer(str(DEFAULT_MODEL))
        prompts, budgets, _ = copyright_workload(tok, args.files, args.new_tokens, model_context(model))
        hints = None                                   # random ids: no true continuation to hint
        g = torch.Generator().manual_seed(0)
        prompts = [[0] + torch.randint(2, args.micro_vocab, (len(p) - 1,), generator=g).tolist() for p in prompts]
        tok = _Ids()
        name = f"micro-llama(vocab={args.micro_vocab}, hidden={args.micro_hidden}, layers={args.micro_layers})"
    else:
        model, tok = load_model(args.model or str(DEFAULT_MODEL), device=device, dtype=args.dtype)
        model.eval()
        prompts, budgets, hints = copyright_workload(tok, args.files, args.new_tokens, model_context(model))
        name = args.model or "embedded"
    new_batch = args.batch or DEFAULT_BATCH

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def old(batch):
        def run():
            torch.set_num_threads(old_threads)
            return old_greedy_continue(model, tok, prompts, budgets, batch_size=batch)
        return run

    paths = {}
    if not args.no_old_single:
        paths["old@1"] = old(1)
    paths[f"old@{args.old_batch}"] = old(args.old_batch)
    paths[f"new@{new_batch}"] = lambda: greedy_continue(model, tok, prompts, budgets, batch_size=new_batch)
    if hints and "hints" in inspect.signature(greedy_continue).parameters:   # what the evaluation runs
        paths[f"new@{new_batch}+hints"] = lambda: greedy_continue(model, tok, prompts, budgets, batch_size=new_batch,
                                                                  hints=hints)
    torch.set_num_threads(old_threads)
    old_greedy_continue(model, tok, prompts[:2], [4, 4], batch_size=2)          # warm-up
    greedy_continue(model, tok, prompts[:2], [4, 4], batch_size=2)
    seconds: dict[str, list[float]] = {k: [] for k in paths}
    threads: dict[str, list[int]] = {k: [] for k in paths}
    outputs: dict[str, list[list[int]]] = {}
    for _ in range(args.repeats):
        for k, fn in paths.items():
            sync()
            t = time.perf_counter()
            outputs[k] = fn()
            sync()
            seconds[k].append(time.perf_counter() - t)
            threads[k].append(torch.get_num_threads())
    if args.no_old_single:
        reference, ref_name = outputs[f"old@{args.old_batch}"], f"old@{args.old_batch}"
    else:
        reference, ref_name = outputs["old@1"], "old@1"
    res = {}
    for k in paths:
        n = sum(len(o) for o in outputs[k])
        tps = [n / s for s in seconds[k]]
        res[k] = {"tokens": n, "seconds": seconds[k], "threads": threads[k],
                  "tokens_per_second": statistics.median(tps), "tokens_per_second_min": min(tps),
                  "tokens_per_second_max": max(tps),
                  **agreement(outputs[k], reference)}
    base = res[f"old@{args.old_batch}"]["tokens_per_second"]
    for k in paths:
        res[k]["speedup_vs_old_batch"] = res[k]["tokens_per_second"] / base
    record = {"model": name, "vocab": model.config.vocab_size, "device": device,
              "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "torch": torch.__version__,
              "threads": args.threads or "default", "torch_default_threads": torch_default, "files": args.files,
              "prompts": len(prompts),
              "prompt_tokens_mean": sum(map(len, prompts)) / len(prompts), "budget_tokens": sum(budgets),
              "repeats": args.repeats, "agreement_reference": ref_name, "machine": machine(), "paths": res}
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table
        t = Table(title=f"copyright evaluation generation - {name}, {len(prompts)} prompts (mean "
                        f"{record['prompt_tokens_mean']:.0f} tokens), {sum(budgets)} budget tokens, {device}, "
                        f"{record['dtype']}, threads {record['threads']}, {args.repeats} repeats")
        for col in ("path", "threads", "tokens", "tok/s (median)", "min-max", f"x old@{args.old_batch}",
                    f"token agreement vs {ref_name}", "rows identical"):
            t.add_column(col, justify="right")
        for k, r in res.items():
            t.add_row(k, ",".join(map(str, sorted(set(r["threads"])))), str(r["tokens"]),
                      f"{r['tokens_per_second']:.1f}",
                      f"{r['tokens_per_second_min']:.0f}-{r['tokens_per_second_max']:.0f}",
                      f"{r['speedup_vs_old_batch']:.2f}", f"{100 * r['token_agreement']:.2f} %",
                      f"{r['rows_identical']}/{r['rows']}")
        Console().print(t)
    return record


if __name__ == "__main__":
    main()
