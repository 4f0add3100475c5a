"""PROD's sculpted target and sparse loss against hand-computed cases and a dense reference
implementation (docs/design.md, "PROD, exactly"); the on-disk reference cache."""
from __future__ import annotations

import math
import os

import pytest
import torch

from prod_unlearn.data.batching import collate, encode
from prod_unlearn.methods import get_method, make_params
from prod_unlearn.methods.prod import ProdParams, sculpt_target, sparse_loss, validate
from prod_unlearn.models.loading import model_fingerprint
from prod_unlearn.training.reference import (Reference, cache_key, compute_reference, load_or_compute_reference)

P5 = [0.4, 0.3, 0.15, 0.1, 0.05]   # original distribution of the hand-computed cases (sorted)


def _logits(probs, shift=1.7):
    """Logits whose softmax is exactly ``probs`` (up to float rounding); shift is irrelevant."""
    return (torch.tensor(probs, dtype=torch.float64).log() + shift).float()


def _dense(ids, probs, counts, n):
    """Sparse target -> list of {token: prob} per position."""
    out, k = [], 0
    for c in counts.tolist():
        out.append({int(i): float(p) for i, p in zip(ids[k:k + c], probs[k:k + c])})
        assert len(out[-1]) == c, "a token appears twice in one position's target"
        k += c
    assert len(out) == n and k == len(ids) == len(probs)
    return out


def _target(probs, y, p, alpha=0.0):
    ids, pr, counts = sculpt_target(_logits(probs)[None], torch.tensor([y]), p, alpha)
    assert ids.dtype == torch.int32 and counts.dtype == torch.int32
    return _dense(ids, pr, counts, 1)[0]


def _approx(d: dict, expected: dict):
    assert set(d) == set(expected), (d, expected)
    for k, v in expected.items():
        assert d[k] == pytest.approx(v, abs=1e-6), (k, d, expected)


# ------------------------------------------------------------------ hand-computed cases

def test_forget_token_eliminated_then_nucleus():
    # Remove token 0 (0.4): survivors renormalise to [0.5, 0.25, 1/6, 1/12] for tokens 1..4.
    # Nucleus p=0.8: 0.5 -> 0.75 -> 0.9167 (crosses 0.8, kept) -> {1, 2, 3}; renormalised.
    _approx(_target(P5, 0, 0.8), {1: 0.3 / 0.55, 2: 0.15 / 0.55, 3: 0.1 / 0.55})


def test_elimination_happens_before_nucleus():
    # If the nucleus were taken first on the original distribution it would be {0, 1, 2}
    # (0.4 -> 0.7 -> 0.85), and eliminating 0 afterwards would leave {1, 2}. The right order
    # (eliminate, then nucleus) gives {1, 2, 3}.
    got = _target(P5, 0, 0.8)
    assert set(got) == {1, 2, 3}
    assert set(got) != {1, 2}


def test_crossing_token_is_kept():
    # After removing token 0: cumulative 0.5, 0.75, ... p=0.7 is crossed by token 2 -> {1, 2}.
    _approx(_target(P5, 0, 0.7), {1: 0.3 / 0.45, 2: 0.15 / 0.45})
    # p=0.76 is crossed by token 3 only -> {1, 2, 3}
    assert set(_target(P5, 0, 0.76)) == {1, 2, 3}
    # removing a middle token: [0.4, 0.3, 0.1, 0.05]/0.85 = .4706 .3529 .1176 .0588 -> cum .47 .82 ...
    _approx(_target(P5, 2, 0.8), {0: 0.4 / 0.7, 1: 0.3 / 0.7})
    _approx(_target(P5, 2, 0.9), {0: 0.4 / 0.8, 1: 0.3 / 0.8, 3: 0.1 / 0.8})


def test_top1_always_kept():
    _approx(_target(P5, 0, 0.01), {1: 1.0})   # p below the top token's mass: top-1 alone
    _approx(_target(P5, 3, 0.01), {0: 1.0})
    # even when the forget token dominates, the best surviving token is kept
    _approx(_target([0.999, 0.0006, 0.0004], 0, 0.5), {1: 1.0})


def test_p_one_keeps_every_non_target_token():
    _approx(_target(P5, 1, 1.0), {0: 0.4 / 0.7, 2: 0.15 / 0.7, 3: 0.1 / 0.7, 4: 0.05 / 0.7})
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 200, generator=g) * 4            # wide spread: a long low-mass tail
    targets = torch.randint(0, 200, (6,), generator=g)
    ids, probs, counts = sculpt_target(logits, targets, 1.0)
    assert counts.tolist() == [199] * 6
    for t, d in enumerate(_dense(ids, probs, counts, 6)):
        assert int(targets[t]) not in d


def test_alpha_suppression_puts_negative_mass_on_the_forget_token():
    base = {1: 0.3 / 0.55, 2: 0.15 / 0.55, 3: 0.1 / 0.55}
    _approx(_target(P5, 0, 0.8, alpha=0.5), {**base, 0: -0.5 * 0.4})
    _approx(_target(P5, 0, 0.8, alpha=1.0), {**base, 0: -0.4})
    _approx(_target(P5, 0, 0.8, alpha=-0.125), {**base, 0: 0.125 * 0.4})   # negative alpha delays forgetting
    _approx(_target(P5, 0, 0.8, alpha=0.0), base)                          # alpha=0: target token absent (0 mass)


def test_renormalised_and_grouped_by_position():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 40, generator=g) * 3
    targets = torch.randint(0, 40, (9,), generator=g)
    for p in (0.2, 0.8, 0.95):
        ids, probs, counts = sculpt_target(logits, targets, p)
        sums = torch.zeros(9).index_add(0, torch.repeat_interleave(torch.arange(9), counts.long()), probs)
        torch.testing.assert_close(sums, torch.ones(9))
        assert (probs > 0).all()
        assert counts.min() >= 1 and counts.max() < 40
    ids, probs, counts = sculpt_target(logits, targets, 0.8, alpha=0.5)
    p_orig = logits.softmax(-1)[torch.arange(9), targets]
    for t, d in enumerate(_dense(ids, probs, counts, 9)):
        assert d[int(targets[t])] == pytest.approx(-0.5 * float(p_orig[t]), rel=1e-5)
        assert sum(v for k, v in d.items() if k != int(targets[t])) == pytest.approx(1.0, abs=1e-5)


def test_validate():
    validate(ProdParams())
    for bad in (ProdParams(p=0.0), ProdParams(p=1.5), ProdParams(loss="mse"), ProdParams(alpha=0.5, loss="kl")):
        with pytest.raises(ValueError):
            validate(bad)
    m = get_method("prod")
    assert make_params(m, {"p": "0.4", "alpha": "0.25"}) == ProdParams(p=0.4, alpha=0.25)
    with pytest.raises(ValueError, match="no such parameter"):
        make_params(m, {"beta": 1})


# ------------------------------------------------------------------ dense reference implementation

def dense_target(h: torch.Tensor, y: torch.Tensor, p: float, alpha: float) -> torch.Tensor:
    """docs/design.md's steps literally: full-vocabulary sort per position, dense [n, V] target.

    Computed in float64 so that the cumulative sum is exact enough for p = 1.0 to mean "all"."""
    h = h.double()
    n, V = h.shape
    out = torch.zeros(n, V, dtype=h.dtype)
    for t in range(n):
        z = h[t].clone()
        z[y[t]] = float("-inf")                                   # 1. forget-data elimination
        q = torch.softmax(z, -1)                                  # 2. noise elimination
        sq, order = torch.sort(q, descending=True)
        cum = torch.cumsum(sq, 0)
        k = int((cum >= p).nonzero()[0]) if bool((cum >= p).any()) else V - 1
        k = max(k, 0)                                             # smallest prefix reaching p, crossing token kept
        survivors = order[:k + 1]
        survivors = survivors[q[survivors] > 0]                   # never resurrect the eliminated token
        masked = torch.full_like(z, float("-inf"))
        masked[survivors] = z[survivors]
        out[t] = torch.softmax(masked, -1)                        # 3. redistribution
        if alpha != 0.0:                                          # 4. alpha-suppression
            out[t, y[t]] = -alpha * torch.softmax(h[t], -1)[y[t]]
    return out.float()


def dense_loss(z: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    n = z.size(0)
    log_pi = torch.log_softmax(z, -1)
    if kind == "ce":
        return -(target * log_pi).sum() / n
    if kind == "kl":
        return (torch.xlogy(target, target) - target * log_pi).sum() / n
    if kind == "js":
        pi = log_pi.exp()
        m = 0.5 * (target + pi)
        log_t = target.clamp_min(1e-30).log()          # target is a constant; 0 * log(0) = 0
        return (0.5 * target * (log_t - m.log()) + 0.5 * pi * (log_pi - m.log())).sum() / n
    raise ValueError(kind)


CASES = [(kind, p, alpha) for p in (0.2, 0.8, 0.9, 1.0) for kind, alpha in
         (("ce", 0.0), ("ce", 0.5), ("kl", 0.0), ("js", 0.0))]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind, p, alpha", CASES)
def test_sparse_loss_equals_dense(seed, kind, p, alpha):
    g = torch.Generator().manual_seed(seed)
    n, V = 11, 97
    h = torch.randn(n, V, generator=g) * 2.5           # frozen original logits
    y = torch.randint(0, V, (n,), generator=g)
    y[0] = int(h[0].argmax())                          # one position where the forget token is the top-1
    z0 = torch.randn(n, V, generator=g) * 2.0          # current model logits

    ids, probs, counts = sculpt_target(h, y, p, alpha)
    dense = dense_target(h, y, p, alpha)
    # the sparse target IS the dense target
    scattered = torch.zeros(n, V)
    scattered[torch.repeat_interleave(torch.arange(n), counts.long()), ids.long()] = probs
    torch.testing.assert_close(scattered, dense, atol=1e-6, rtol=1e-5)
    if p < 1.0:
        assert counts.sum() < n * (V - 1)              # and it is sparse

    z_s = z0.clone().requires_grad_(True)
    z_d = z0.clone().requires_grad_(True)
    ls = sparse_loss(z_s, ids, probs, counts, kind)
    ld = dense_loss(z_d, dense, kind)
    ls.backward()
    ld.backward()
    assert torch.isfinite(ls)
    torch.testing.assert_close(ls, ld, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z_s.grad, z_d.grad, atol=1e-6, rtol=1e-4)


def test_kl_and_ce_share_gradient():
    g = torch.Generator().manual_seed(5)
    h, z0 = torch.randn(5, 30, generator=g) * 2, torch.randn(5, 30, generator=g)
    y = torch.randint(0, 30, (5,), generator=g)
    ids, probs, counts = sculpt_target(h, y, 0.8)
    grads = []
    for kind in ("ce", "kl"):
        z = z0.clone().requires_grad_(True)
        sparse_loss(z, ids, probs, counts, kind).backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_official_eps_capped_log_departs_only_on_confident_logits():
    """README 'Differences from the official implementation': the official loss takes
    log(softmax + 1e-10). Where the target's tokens keep a probability well above 1e-10 it equals
    our exact log_softmax; on a confident distribution its gradient shrinks and turns."""
    g = torch.Generator().manual_seed(0)
    base, y = torch.randn(16, 512, generator=g), torch.randint(0, 512, (16,), generator=g)
    diffs = []
    for k in (1.0, 8.0):                      # logits scaled by k: k = 8 is a confident model
        h = base * k
        h[torch.arange(16), y] += 5 * k
        ids, probs, counts = sculpt_target(h, y, 0.8)
        dense = torch.zeros_like(h)
        dense[torch.repeat_interleave(torch.arange(16), counts.long()), ids.long()] = probs
        z = h.clone().requires_grad_(True)
        exact, = torch.autograd.grad(sparse_loss(z, ids, probs, counts), z)
        capped, = torch.autograd.grad(-(dense * torch.log(torch.softmax(z, -1) + 1e-10)).sum(-1).mean(), z)
        diffs.append(float((capped - exact).norm() / exact.norm()))
    assert diffs[0] < 1e-5 and diffs[1] > 0.3, diffs


# ------------------------------------------------------------------ reference pass and cache

def _views(tokenizer, examples, max_length=64):
    return {"forget": encode(examples, tokenizer, max_length)}


def test_reference_matches_per_example_sculpt(micro_model, tokenizer, forget_examples):
    m = get_method("prod")
    params = make_params(m)
    views = _views(tokenizer, forget_examples)
    ref = compute_reference(micro_model, views, m, params, tokenizer.pad_token_id, batch_size=3)
    ref1 = compute_reference(micro_model, views, m, params, tokenizer.pad_token_id, batch_size=1)
    for i, e in enumerate(views["forget"]):
        b = collate([e], tokenizer.pad_token_id)
        with torch.no_grad():
            logits = micro_model(input_ids=b["input_ids"]).logits[0, e.prompt_len - 1:-1]
        ids, probs, counts = sculpt_target(logits, torch.tensor(e.input_ids[e.prompt_len:]), params.p)
        idx = torch.tensor([i])
        # padding in a batch of 3 does not change any example's target
        for r in (ref, ref1):
            assert torch.equal(r.gather("forget", "ids", idx), ids)
            assert torch.equal(r.gather("forget", "counts", idx), counts)
            torch.testing.assert_close(r.gather("forget", "probs", idx), probs, atol=1e-6, rtol=1e-5)
    # gather concatenates in the order asked
    both = ref.gather("forget", "counts", torch.tensor([3, 1]))
    assert torch.equal(both, torch.cat([ref.gather("forget", "counts", torch.tensor([3])),
                                        ref.gather("forget", "counts", torch.tensor([1]))]))


def test_reference_cache_round_trip(micro_model, tokenizer, forget_examples):
    m = get_method("prod")
    params = make_params(m, {"p": 0.9, "alpha": 0.25})
    views = _views(tokenizer, forget_examples)
    fp = model_fingerprint(micro_model)
    pad = tokenizer.pad_token_id
    ref, path, hit = load_or_compute_reference(micro_model, views, m, params, pad, fp)
    assert not hit and path.exists()
    assert path.is_relative_to(os.environ["PROD_UNLEARN_CACHE"])    # the cache honours PROD_UNLEARN_CACHE
    assert not list(path.parent.glob("*.tmp"))                       # written atomically, no leftovers
    ref2, path2, hit2 = load_or_compute_reference(micro_model, views, m, params, pad, fp)
    assert hit2 and path2 == path
    assert set(ref2.tensors) == set(ref.tensors)
    for k, v in ref.tensors.items():
        assert ref2.tensors[k].dtype == v.dtype and torch.equal(ref2.tensors[k], v), k
    assert ref2.nbytes() == ref.nbytes() > 0


def test_cache_key_covers_params_data_and_weights(micro_model, tokenizer, forget_examples):
    m = get_method("prod")
    params = make_params(m)
    views = _views(tokenizer, forget_examples)
    fp = model_fingerprint(micro_model)
    base = cache_key(fp, views, m, params)
    assert cache_key(fp, _views(tokenizer, forget_examples), m, make_params(m)) == base   # deterministic
    assert cache_key(fp, views, m, make_params(m, {"p": 0.5})) != base
    assert cache_key(fp, views, m, make_params(m, {"alpha": 0.5})) != base
    assert cache_key(fp, views, m, make_params(m, {"loss": "js"})) != base
    changed = list(forget_examples)
    changed[2] = type(changed[2])(changed[2].prompt, changed[2].completion + "x", changed[2].id)
    assert cache_key(fp, _views(tokenizer, changed), m, params) != base
    assert cache_key(fp, _views(tokenizer, forget_examples[:-1]), m, params) != base
    assert cache_key(fp, _views(tokenizer, forget_examples, max_length=16), m, params) != base
    with torch.no_grad():
        micro_model.model.layers[0].mlp.up_proj.weight[3, 5] += 1e-3
    fp2 = model_fingerprint(micro_model)
    assert fp2 != fp and cache_key(fp2, views, m, params) != base
    # and a changed model really misses the cache
    _, p1, _ = load_or_compute_reference(micro_model, views, m, params, tokenizer.pad_token_id, fp)
    _, p2, hit = load_or_compute_reference(micro_model, views, m, params, tokenizer.pad_token_id, fp2)
    assert p1 != p2 and not hit


def test_prod_loss_on_model_equals_sparse_loss(micro_model, tokenizer, forget_examples):
    m = get_method("prod")
    params = make_params(m)
    views = _views(tokenizer, forget_examples)
    ref = compute_reference(micro_model, views, m, params, tokenizer.pad_token_id)
    idx = torch.tensor([4, 0])
    batch = {"forget": collate([views["forget"][i] for i in idx], tokenizer.pad_token_id), "index": idx}
    got = m.loss(micro_model, batch, ref, params)
    # at the start, the model IS the original: CE to p_T is finite and above the target's entropy
    logits = []
    for i in idx.tolist():
        e = views["forget"][i]
        with torch.no_grad():
            logits.append(micro_model(input_ids=torch.tensor([e.input_ids])).logits[0, e.prompt_len - 1:-1])
    want = sparse_loss(torch.cat(logits), ref.gather("forget", "ids", idx), ref.gather("forget", "probs", idx),
                       ref.gather("forget", "counts", idx))
    torch.testing.assert_close(got.detach(), want, atol=1e-5, rtol=1e-5)
    assert isinstance(ref, Reference) and math.isfinite(float(got.detach()))
