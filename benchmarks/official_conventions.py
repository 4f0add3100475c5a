"""How much two conventions of the official PROD code change the loss on the embedded model.

1. ``log(softmax + 1e-10)`` (official) vs the exact ``log_softmax`` (ours) in the cross-entropy to
   the PROD target, at the original weights: loss values, and the gradients w.r.t. the logits
   and w.r.t. the weights (relative difference, cosine, norm ratio). Where the model is
   confident, the target puts mass on tokens of probability far below 1e-10; there the capped
   log stops at log(1e-10) = -23.0 and its gradient is scaled by p / (p + 1e-10) ~ 0.
2. The first predicted position (official ``mask_start_pos = 1``): the forget token is not
   removed there; after the nucleus it is zeroed and the target is not renormalised, so when
   p(y_0) alone reaches the nucleus threshold the target is empty at that position.

    python benchmarks/official_conventions.py --files 4 --threads 1
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=4, help="copyright files for the loss/gradient comparison")
    ap.add_argument("--max-length", type=int, default=1536)
    ap.add_argument("--p", type=float, default=0.8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sharpen", default="1,2,3",
                    help="also compare the logit gradients with the logits multiplied by these factors "
                         "(a more confident model than the embedded one)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from prod_unlearn.data.batching import collate, encode
    from prod_unlearn.data.examples import load_examples
    from prod_unlearn.tasks import DATA
    from prod_unlearn.methods.base import completion_logits
    from prod_unlearn.methods.prod import sculpt_target, sparse_loss
    from prod_unlearn.models.loading import DEFAULT_MODEL, load_model

    model, tok = load_model(str(DEFAULT_MODEL), "cpu", "fp32")
    model.eval()
    examples = load_examples(DATA / "copyright.jsonl")
    enc = encode(examples[:args.files], tok, args.max_length)
    batch = collate(enc, tok.pad_token_id)

    with torch.no_grad():
        logits, targets, counts = completion_logits(model, batch)
        ids, probs, cnt = sculpt_target(logits, targets, args.p)
    rows = torch.repeat_interleave(torch.arange(len(cnt)), cnt.long())
    dense = torch.zeros_like(logits)
    dense[rows, ids.long()] = probs
    p_model = torch.softmax(logits, -1)
    tiny = (dense * (p_model < 1e-8)).sum() / dense.sum()

    def losses(z, ids=ids, probs=probs, cnt=cnt, dense=dense):
        exact = sparse_loss(z, ids, probs, cnt, "ce")
        capped = -(dense * torch.log(torch.softmax(z, -1) + 1e-10)).sum(-1).mean()
        return exact, capped

    def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
        a, b = a.flatten().double(), b.flatten().double()
        return {"relative_difference": round(float((b - a).norm() / a.norm()), 4),
                "cosine": round(float(F.cosine_similarity(a, b, dim=0)), 4),
                "norm_ratio_capped_over_exact": round(float(b.norm() / a.norm()), 4)}

    z = logits.clone().requires_grad_(True)
    exact, capped = losses(z)
    g_exact, = torch.autograd.grad(exact, z)
    g_capped, = torch.autograd.grad(capped, z)

    def weight_grad(which: int) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        lg, _, _ = completion_logits(model, batch)
        losses(lg)[which].backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    gw_exact, gw_capped = weight_grad(0), weight_grad(1)

    sharpened = {}
    for k in (float(x) for x in args.sharpen.split(",")):
        zk = (logits * k).detach()
        with torch.no_grad():
            i_k, p_k, c_k = sculpt_target(zk, targets, args.p)
        d_k = torch.zeros_like(zk)
        d_k[torch.repeat_interleave(torch.arange(len(c_k)), c_k.long()), i_k.long()] = p_k
        zk.requires_grad_(True)
        e_k, c_loss = losses(zk, i_k, p_k, c_k, d_k)
        ge, = torch.autograd.grad(e_k, zk)
        gc, = torch.autograd.grad(c_loss, zk)
        low = (d_k * (torch.softmax(zk.detach(), -1) < 1e-8)).sum() / d_k.sum()
        sharpened[f"x{k:g}"] = {"loss_exact": round(float(e_k.detach()), 4), "loss_capped": round(float(c_loss.detach()), 4),
                                "target_mass_on_tokens_below_1e-8": round(float(low), 4), **compare(ge, gc)}

    # 2. the first predicted position of every copyright file: p(y_0 | BOS) and the L1 distance
    # between the official target there (y_0 not removed first; nucleus, softmax, then y_0 zeroed)
    # and ours (y_0 removed, nucleus, renormalised)
    first, l1 = [], []
    with torch.no_grad():
        for e in encode(examples, tok, 8):
            x = torch.tensor([e.input_ids[:e.prompt_len]])      # BOS (+ prompt): its last position predicts y_0
            z0 = model(input_ids=x).logits[0, -1].float()
            y0 = e.input_ids[e.prompt_len]
            first.append(float(torch.softmax(z0, -1)[y0]))
            q = torch.softmax(z0, -1)
            sq, order = q.sort(descending=True)
            drop = sq.cumsum(-1) > args.p
            drop[1:] = drop[:-1].clone()
            drop[0] = False
            official = torch.softmax(z0.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf")), -1)
            official[y0] = 0.0
            i0, p0, _ = sculpt_target(z0[None], torch.tensor([y0]), args.p)
            ours = torch.zeros_like(z0)
            ours[i0.long()] = p0
            l1.append(float((official - ours).abs().sum()))
    record = {
        "files": args.files, "positions": int(counts.sum()), "p": args.p,
        "loss_exact": round(float(exact.detach()), 4), "loss_capped": round(float(capped.detach()), 4),
        "target_mass_on_tokens_below_1e-8": round(float(tiny), 4),
        "grad_logits": compare(g_exact, g_capped), "grad_weights": compare(gw_exact, gw_capped),
        "sharpened_logits": sharpened,
        "first_position": {"files": len(first), "mean_p_y0": round(sum(first) / len(first), 6),
                           "max_p_y0": round(max(first), 6), "files_where_targets_differ": sum(x > 1e-6 for x in l1),
                           "share_p_y0_at_least_p": round(sum(q >= args.p for q in first) / len(first), 4),
                           "mean_l1_official_vs_ours": round(sum(l1) / len(l1), 6),
                           "max_l1_official_vs_ours": round(max(l1), 6)},
    }
    print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
