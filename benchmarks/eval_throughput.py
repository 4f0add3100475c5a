"""Generation throughput of the evaluation path: ``greedy_continue`` (batched, KV cache) at batch 1 vs 16.

The workload is the copyright task's: the first half of each forget file (BOS + tokens) is
continued greedily for ``--new-tokens`` tokens (EOS ignored, so every sequence generates the full
budget and the token count is exact). ``--micro-vocab N`` runs the same prompt lengths through an
in-process micro Llama with an N-token vocabulary (random prompt ids): only |V| and the model
size change, not the workload.

    python benchmarks/eval_throughput.py                        # embedded model, 16 files, 128 tokens
    python benchmarks/eval_throughput.py --micro-vocab 150000
    python benchmarks/eval_throughput.py --quick --json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cost import machine, micro_config  # noqa: E402


class _Ids:
    """The two fields ``greedy_continue`` reads from a tokenizer (micro models have none)."""
    pad_token_id = 1
    eos_token_id = 0


def copyright_prompts(n_files: int, new_tokens: int) -> tuple[list[list[int]], object]:
    from prod_unlearn.data.examples import load_examples
    from prod_unlearn.evaluation.copyright import split_halves
    from prod_unlearn.models.loading import ASSETS, DEFAULT_MODEL, load_tokenizer
    tok = load_tokenizer(str(DEFAULT_MODEL))
    examples = load_examples(ASSETS / "data" / "copyright.jsonl")[:n_files]
    items = split_halves(examples, tok, max_new_tokens=new_tokens, context=1536)
    return [c.prompt_ids for c in items], tok


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="", help="model folder or hub id (default: the embedded model)")
    ap.add_argument("--micro-vocab", type=int, default=0)
    ap.add_argument("--micro-hidden", type=int, default=128)
    ap.add_argument("--micro-layers", type=int, default=2)
    ap.add_argument("--files", type=int, default=16, help="copyright forget files (prompts)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--repeats", type=int, default=3,
                    help="alternate the batch sizes this many times; keep each one's fastest (others' load only adds)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="32 new tokens, one repeat, batch 1 and 16")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.new_tokens, args.repeats, args.batch_sizes = 32, 1, "1,16"
    os.environ.setdefault("PROD_UNLEARN_NO_PROGRESS", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    from prod_unlearn.evaluation.generation import greedy_continue
    from prod_unlearn.models.loading import DEFAULT_MODEL, load_model, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    prompts, tok = copyright_prompts(args.files, args.new_tokens)
    if args.micro_vocab:
        from transformers import LlamaForCausalLM
        torch.manual_seed(0)
        cfg = micro_config(args.micro_vocab, args.micro_hidden, args.micro_layers, 2048)
        model = LlamaForCausalLM(cfg).to(device, resolve_dtype(args.dtype, device)).eval()
        g = torch.Generator().manual_seed(0)
        prompts = [[0] + torch.randint(2, args.micro_vocab, (len(p) - 1,), generator=g).tolist() for p in prompts]
        tok = _Ids()
        name = f"micro-llama(vocab={args.micro_vocab}, hidden={args.micro_hidden}, layers={args.micro_layers})"
    else:
        model, tok = load_model(args.model or str(DEFAULT_MODEL), device=device, dtype=args.dtype)
        name = args.model or "embedded"
    budgets = [args.new_tokens] * len(prompts)
    sizes = [int(x) for x in args.batch_sizes.split(",")]

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    greedy_continue(model, tok, prompts[:2], [4, 4], batch_size=2, stop_at_eos=False)  # warm-up
    runs: dict[int, list[float]] = {b: [] for b in sizes}
    tokens = {}
    for _ in range(args.repeats):
        for b in sizes:
            sync()
            t = time.perf_counter()
            out = greedy_continue(model, tok, prompts, budgets, batch_size=b, stop_at_eos=False)
            sync()
            runs[b].append(time.perf_counter() - t)
            tokens[b] = sum(len(o) for o in out)
    res = {}
    for b in sizes:
        sec = min(runs[b])
        res[str(b)] = {"seconds": sec, "tokens": tokens[b], "tokens_per_second": tokens[b] / sec,
                       "seconds_all": runs[b]}
    first = res[str(sizes[0])]["tokens_per_second"]
    for b in sizes:
        res[str(b)]["speedup"] = res[str(b)]["tokens_per_second"] / first
    record = {"model": name, "vocab": model.config.vocab_size, "device": device,
              "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "files": len(prompts), "new_tokens": args.new_tokens,
              "prompt_tokens_mean": sum(map(len, prompts)) / len(prompts), "machine": machine(),
              "batch": res}
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table
        t = Table(title=f"greedy_continue - {name}, |V|={record['vocab']}, {len(prompts)} prompts "
                        f"(mean {record['prompt_tokens_mean']:.0f} tokens) x {args.new_tokens} new tokens, "
                        f"{device}, {record['dtype']}, {record['threads']} threads")
        for col in ("batch", "seconds", "tokens/s", f"x batch {sizes[0]}"):
            t.add_column(col, justify="right")
        for b in sizes:
            r = res[str(b)]
            t.add_row(str(b), f"{r['seconds']:.2f}", f"{r['tokens_per_second']:.1f}", f"{r['speedup']:.2f}")
        Console().print(t)
    return record


if __name__ == "__main__":
    main()
