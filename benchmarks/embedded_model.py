"""What the embedded model has memorised, prompted as a user would, and its held-out bits per byte.

    python benchmarks/embedded_model.py --json                       # the shipped model
    python benchmarks/embedded_model.py --model runs/v1 --json       # another folder (e.g. v1 from git)

v1 can be restored beside the checkout with
``git archive 366614f prod_unlearn/assets/model | tar -x -C runs/v1 --strip-components 3``.
Also prints the prompt-protocol table (first 8 copyright files, greedy, 128 new tokens): BLEU when
the prompt is the first half of the file's token ids vs. its text cut at the line nearest the
middle and tokenised alone, as a user's prompt is (with and without BOS, and without the file's
first line).
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def protocol_table(model, tok, n_files: int = 8, new_tokens: int = 128) -> dict:
    from prod_unlearn.data.examples import load_examples
    from prod_unlearn.data.tokenize import bos, encode_prompt, ids, line_cut
    from prod_unlearn.evaluation.generation import greedy_continue
    from prod_unlearn.evaluation.metrics import bleu
    from prod_unlearn.models.loading import ASSETS
    files = load_examples(ASSETS / "data" / "copyright.jsonl")[:n_files]
    prompts: dict[str, list] = {k: [] for k in ("token half + BOS", "token half, no BOS", "line cut + BOS",
                                                "line cut, no BOS", "line cut, first line dropped")}
    refs = []
    for e in files:
        full = ids(tok, e.completion)
        half = len(full) // 2
        at = line_cut(e.completion, 0.5)
        p, c = encode_prompt(tok, e.completion[:at]), ids(tok, e.completion[at:])   # the text alone
        first = e.completion.index("\n") + 1
        prompts["token half + BOS"].append((bos(tok) + full[:half], full[half:half + new_tokens]))
        prompts["token half, no BOS"].append((full[:half], full[half:half + new_tokens]))
        prompts["line cut + BOS"].append((p, c[:new_tokens]))
        prompts["line cut, no BOS"].append((p[len(bos(tok)):], c[:new_tokens]))
        prompts["line cut, first line dropped"].append((ids(tok, e.completion[first:at]), c[:new_tokens]))
        refs.append(c)
    out = {}
    for name, pairs in prompts.items():
        gens = greedy_continue(model, tok, [p for p, _ in pairs], [len(r) for _, r in pairs], desc=name,
                               hints=[r for _, r in pairs])
        out[name] = round(sum(bleu(tok.decode(g), tok.decode(r)) for g, (_, r) in zip(gens, pairs)) / len(pairs), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder [default: the embedded model]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only-bpb", action="store_true", help="held-out bits per byte and the protocol table only")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from prod_unlearn.tasks.memorisation import heldout_bpb, memorisation_report
    from prod_unlearn.models.loading import DEFAULT_MODEL, load_model
    t0 = time.time()
    model, tok = load_model(a.model or str(DEFAULT_MODEL), "cpu", "fp32")
    rec = {"model": a.model or "embedded", "protocol": protocol_table(model, tok)}
    rec.update({"heldout_bpb": heldout_bpb(model, tok)} if a.only_bpb else memorisation_report(model, tok))
    rec["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(rec, indent=None if a.json else 2))


if __name__ == "__main__":
    main()
