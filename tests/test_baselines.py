"""The baselines (GA, NPO, DPO, FLAT, UNDIAL) and the KL retain term: hand-computed loss values on
fixed logits, gradient directions, the sparse UNDIAL / retain targets against dense formulas, and
one short run per method through the training loop on the micro Llama (conftest.py)."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from prod_unlearn.data.batching import IGNORE, collate, encode
from prod_unlearn.data.examples import Example
from prod_unlearn.methods import get_method, make_params
from prod_unlearn.methods.flat import DIVERGENCES, flat_loss
from prod_unlearn.methods.refusals import load_refusals
from prod_unlearn.methods.undial import adjusted_target, tail_bucket_ce
from prod_unlearn.training.reference import load_or_compute_reference
from prod_unlearn.training.retain import RetainParams, coarse_kl, retain_kl, retain_reference, topk_reference



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Micro-model steps are pure overhead; on a loaded 2-core box two threads make them 30x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# ------------------------------------------------------------------ plain-math helpers


def logp(row, i):
    """log softmax(row)[i] with the math module only."""
    return row[i] - math.log(sum(math.exp(x) for x in row))


def logsig(x):
    return -math.log1p(math.exp(-x))


class FakeLM(torch.nn.Module):
    """Fixed logits per view; the view is told apart by input_ids[0, 0] (0 = forget, 1 = refusal)."""

    def __init__(self, *tables):
        super().__init__()
        self.tables = torch.nn.ParameterList([torch.nn.Parameter(torch.tensor(t)) for t in tables])

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.tables[int(input_ids[0, 0])])


class FakeRef:
    def __init__(self, values):
        self.values = {k: torch.tensor(v) for k, v in values.items()}

    def gather(self, view, name, indices, device=None):
        return self.values[(view, name)][indices]


def view_batch(marker, labels):
    labels = torch.tensor(labels)
    return {"input_ids": torch.full(labels.shape, marker), "attention_mask": torch.ones_like(labels), "labels": labels}


# Two forget examples, the second one padded: completion tokens (1, 2) and (0,).
F_LOGITS = [[[1.0, 2.0, 0.0], [0.0, 0.0, 3.0], [5.0, 5.0, 5.0]],
            [[0.5, -1.0, 2.0], [9.0, 9.0, 9.0], [9.0, 9.0, 9.0]]]
F_LABELS = [[IGNORE, 1, 2], [IGNORE, 0, IGNORE]]
F_TOK = [[logp(F_LOGITS[0][0], 1), logp(F_LOGITS[0][1], 2)], [logp(F_LOGITS[1][0], 0)]]   # token log-probs
# Refusal view for the same two prompts: tokens (0, 0) and (2, 1).
R_LOGITS = [[[0.0, 1.0, 1.0], [2.0, 0.0, -1.0], [0.0, 0.0, 0.0]],
            [[0.2, 0.1, 0.0], [1.0, 3.0, 0.0], [0.0, 0.0, 0.0]]]
R_LABELS = [[IGNORE, 0, 0], [IGNORE, 2, 1]]
R_TOK = [[logp(R_LOGITS[0][0], 0), logp(R_LOGITS[0][1], 0)], [logp(R_LOGITS[1][0], 2), logp(R_LOGITS[1][1], 1)]]
F_REF, R_REF = [-2.0, -0.7], [-3.0, -1.5]


def fake_case():
    model = FakeLM(F_LOGITS, R_LOGITS)
    batch = {"forget": view_batch(0, F_LABELS), "refusal": view_batch(1, R_LABELS), "index": torch.tensor([0, 1])}
    ref = FakeRef({("forget", "logp"): F_REF, ("refusal", "logp"): R_REF})
    return model, batch, ref


def run_loss(name, **params):
    m = get_method(name)
    model, batch, ref = fake_case()
    loss = m.loss(model, batch, ref, make_params(m, params))
    loss.backward()
    return loss.item(), model.tables[0].grad, model.tables[1].grad


def target_grads(grad, labels):
    """Gradient on the logit of each completion target (position t-1 predicts label t)."""
    return [float(grad[b, t - 1, lab]) for b, row in enumerate(labels) for t, lab in enumerate(row) if lab != IGNORE]


# ------------------------------------------------------------------ registry and defaults

def test_registered_with_published_defaults():
    assert make_params(get_method("npo")).beta == 0.1
    assert make_params(get_method("dpo")).beta == 0.1
    assert make_params(get_method("undial")).beta == 10.0
    assert make_params(get_method("flat")).divergence == "kl"
    assert get_method("ga").reference is None and get_method("flat").reference is None
    assert get_method("dpo").views == ("forget", "refusal") and get_method("flat").views == ("forget", "refusal")
    assert make_params(get_method("undial"), {"top_k": "64"}).top_k == 64   # CLI strings are converted
    for name, bad in [("npo", {"beta": 0}), ("dpo", {"beta": -1}), ("flat", {"divergence": "hinge"}),
                      ("undial", {"top_k": 0})]:
        with pytest.raises(ValueError, match=name):
            make_params(get_method(name), bad)


# ------------------------------------------------------------------ hand-computed losses

def test_ga_value_and_direction():
    loss, g, _ = run_loss("ga")
    toks = F_TOK[0] + F_TOK[1]
    assert loss == pytest.approx(sum(toks) / 3, abs=1e-6)       # -(mean token NLL) over the batch
    assert all(x > 0 for x in target_grads(g, F_LABELS))         # descent lowers the forget tokens


def test_npo_value_and_direction():
    beta = 0.1
    loss, g, _ = run_loss("npo")
    want = -(2 / beta) * sum(logsig(-beta * (sum(F_TOK[i]) - F_REF[i])) for i in range(2)) / 2
    assert loss == pytest.approx(want, abs=1e-5)
    assert all(x > 0 for x in target_grads(g, F_LABELS))
    # a larger beta is a different, still hand-checkable value
    loss5, _, _ = run_loss("npo", beta=0.5)
    assert loss5 == pytest.approx(-(2 / 0.5) * sum(logsig(-0.5 * (sum(F_TOK[i]) - F_REF[i])) for i in range(2)) / 2,
                                  abs=1e-5)


def test_dpo_value_and_direction():
    beta = 0.1
    loss, gf, gr = run_loss("dpo")
    margins = [(sum(R_TOK[i]) - R_REF[i]) - (sum(F_TOK[i]) - F_REF[i]) for i in range(2)]
    assert loss == pytest.approx(-sum(logsig(beta * m) for m in margins) / 2, abs=1e-6)
    assert all(x > 0 for x in target_grads(gf, F_LABELS))        # forget tokens pushed down
    assert all(x < 0 for x in target_grads(gr, R_LABELS))        # refusal tokens pulled up


FLAT_BY_HAND = {   # L(P_g, P_f) per example, written out in closed form (module docstring table)
    "kl": lambda g, f: -g + math.exp(f - 1),
    "tv": lambda g, f: (math.tanh(f) - math.tanh(g)) / 2,
    "js": lambda g, f: math.log1p(math.exp(-g)) + f + math.log1p(math.exp(-f)) - 2 * math.log(2),
    "pearson": lambda g, f: -g + f + f * f / 4,
    "reverse_kl": lambda g, f: math.exp(-g) + f - 1,
    "squared_hellinger": lambda g, f: math.exp(-g) + math.exp(f) - 2,
    "neyman": lambda g, f: math.exp(-g) - 2 * math.exp(-f / 2) + 1,
}


@pytest.mark.parametrize("divergence", sorted(FLAT_BY_HAND))
def test_flat_value_and_direction(divergence):
    assert set(FLAT_BY_HAND) == set(DIVERGENCES)
    loss, gf, gr = run_loss("flat", divergence=divergence)
    pf = [sum(math.exp(t) for t in toks) / len(toks) for toks in F_TOK]   # mean token probability
    pg = [sum(math.exp(t) for t in toks) / len(toks) for toks in R_TOK]
    want = sum(FLAT_BY_HAND[divergence](pg[i], pf[i]) for i in range(2)) / 2
    assert loss == pytest.approx(want, abs=1e-6)
    assert all(x > 0 for x in target_grads(gf, F_LABELS))
    assert all(x < 0 for x in target_grads(gr, R_LABELS))


def test_flat_kl_is_the_design_formula():
    pg, pf = torch.tensor([0.2, 0.05]), torch.tensor([0.9, 0.6])
    want = ((-0.2 + math.exp(0.9 - 1)) + (-0.05 + math.exp(0.6 - 1))) / 2
    assert flat_loss(pg, pf, "kl").item() == pytest.approx(want, abs=1e-6)


# ------------------------------------------------------------------ UNDIAL's sparse target

H5 = [2.0, 1.0, 0.5, 0.0, -1.0]   # original logits, forget token 0, beta 10
Z5 = [0.3, -0.2, 0.1, 0.4, 0.0]   # current logits


def _q5():
    adj = [H5[0] - 10.0] + H5[1:]
    z = sum(math.exp(a) for a in adj)
    return [math.exp(a) / z for a in adj]


def test_undial_target_by_hand():
    q = _q5()
    ids, probs, tail = adjusted_target(torch.tensor([H5]), torch.tensor([0]), 10.0, top_k=2)
    assert ids.tolist() == [[1, 2, 0]]                             # top-2 besides y, then y
    assert probs[0].tolist() == pytest.approx([q[1], q[2], q[0]], abs=1e-7)
    assert tail.item() == pytest.approx(q[3] + q[4], abs=1e-7)
    # the loss: CE on the kept entries plus the tail as one bucket
    lz = [logp(Z5, i) for i in range(5)]
    rest = math.log(math.exp(lz[3]) + math.exp(lz[4]))
    want = -(q[1] * lz[1] + q[2] * lz[2] + q[0] * lz[0]) - (q[3] + q[4]) * rest
    assert tail_bucket_ce(torch.tensor([Z5]), ids, probs, tail).item() == pytest.approx(want, abs=1e-6)
    # top_k >= V - 1 keeps everything: the dense UNDIAL cross-entropy
    ids, probs, tail = adjusted_target(torch.tensor([H5]), torch.tensor([0]), 10.0, top_k=300)
    assert ids.shape == (1, 5) and tail.item() == pytest.approx(0.0, abs=1e-9)
    dense = -sum(q[i] * lz[i] for i in range(5))
    assert tail_bucket_ce(torch.tensor([Z5]), ids, probs, tail).item() == pytest.approx(dense, abs=1e-6)


@pytest.mark.parametrize("top_k", [1, 5, 20])
def test_undial_gradient_exact_at_the_original_model(top_k):
    g = torch.Generator().manual_seed(top_k)
    h = torch.randn(7, 40, generator=g) * 3
    y = torch.randint(0, 40, (7,), generator=g)
    ids, probs, tail = adjusted_target(h, y, 10.0, top_k)
    assert ids.shape == (7, top_k + 1) and (ids[:, -1] == y).all()
    torch.testing.assert_close(probs.sum(-1) + tail, torch.ones(7))
    sparse_in = h.clone().requires_grad_()
    tail_bucket_ce(sparse_in, ids, probs, tail).backward()
    adj = h.clone()
    adj[torch.arange(7), y] -= 10.0
    dense_in = h.clone().requires_grad_()
    (-(adj.softmax(-1) * dense_in.log_softmax(-1)).sum(-1).mean()).backward()
    torch.testing.assert_close(sparse_in.grad, dense_in.grad, atol=1e-7, rtol=1e-5)
    # and descent lowers the forget token's logit
    assert (dense_in.grad[torch.arange(7), y] > 0).all()


# ------------------------------------------------------------------ retain KL

def test_retain_topk_and_coarse_kl_by_hand():
    h = [2.0, 1.0, 0.5, 0.0]
    p = [math.exp(logp(h, i)) for i in range(4)]
    ref = topk_reference(torch.tensor([h]), torch.tensor([0]), RetainParams(top_k=2))
    assert ref["ids"].view(-1).tolist() == [0, 1]
    assert ref["probs"].view(-1).tolist() == pytest.approx(p[:2], abs=1e-7)
    assert ref["rest"].tolist() == pytest.approx([p[2] + p[3]], abs=1e-7)
    z = [0.0, 1.5, -0.5, 0.3]
    pi = [math.exp(logp(z, i)) for i in range(4)]
    m = p[2] + p[3]
    want = p[0] * math.log(p[0] / pi[0]) + p[1] * math.log(p[1] / pi[1]) + m * math.log(m / (pi[2] + pi[3]))
    ids, probs, rest = ref["ids"].view(1, -1), ref["probs"].view(1, -1), ref["rest"]
    assert coarse_kl(torch.tensor([z]), ids, probs, rest).item() == pytest.approx(want, abs=1e-6)
    assert coarse_kl(torch.tensor([h]), ids, probs, rest).item() == pytest.approx(0.0, abs=1e-6)
    full = topk_reference(torch.tensor([h]), torch.tensor([0]), RetainParams(top_k=10))   # all 4 kept: dense KL
    dense = sum(p[i] * math.log(p[i] / pi[i]) for i in range(4))
    assert coarse_kl(torch.tensor([z]), full["ids"].view(1, -1), full["probs"].view(1, -1),
                     full["rest"]).item() == pytest.approx(dense, abs=1e-6)


RETAIN = [Example("", "def mul(a, b):\n    return a * b\n", "mul"),
          Example("# paths\n", "import os\nimport sys\n\nprint(os.path.join(sys.prefix, 'lib'))\n", "paths"),
          Example("", "x = {'key': [1, 2, 3], 'other': (4, 5)}\nassert x['key'][0] == 1\n", "dict")]


def test_retain_reference_cached_and_zero_at_start(micro_model, tokenizer):
    from prod_unlearn.models.loading import model_fingerprint
    enc = encode(RETAIN, tokenizer, 64)
    fp = model_fingerprint(micro_model)
    ref = retain_reference(micro_model, enc, tokenizer.pad_token_id, fp, 2, None, top_k=8)
    again = retain_reference(micro_model, enc, tokenizer.pad_token_id, fp, 3, None, top_k=8)
    assert again.tensors.keys() == ref.tensors.keys()
    idx = torch.tensor([2, 0])                      # another batch composition than the frozen pass
    batch = collate([enc[i] for i in idx], tokenizer.pad_token_id)
    kl = retain_kl(micro_model, batch, ref, idx)
    assert abs(kl.item()) < 1e-5                    # the model is still the original one


def test_npo_and_dpo_start_at_their_closed_forms(micro_model, tokenizer, forget_examples):
    """theta = ref at the start: NPO = (2/beta) log 2, DPO = log 2 (positions and padding align)."""
    from prod_unlearn.methods.base import refusal_view
    refusals = load_refusals()
    for name, want in [("npo", 20 * math.log(2)), ("dpo", math.log(2))]:
        m = get_method(name)
        params = make_params(m)
        views = {"forget": forget_examples, "refusal": [refusal_view(e, refusals) for e in forget_examples]}
        enc = {v: encode(views[v], tokenizer, 64) for v in m.views}
        ref, _, _ = load_or_compute_reference(micro_model, enc, m, params, tokenizer.pad_token_id, "fp", 2)
        idx = torch.tensor([3, 1, 4])
        batch = {v: collate([enc[v][i] for i in idx], tokenizer.pad_token_id) for v in m.views}
        batch["index"] = idx
        assert m.loss(micro_model, batch, ref, params).item() == pytest.approx(want, abs=1e-4)


def test_npo_window_is_npo_on_each_window_as_an_item(micro_model, tokenizer, forget_examples):
    """-p window=W: each W-token window of a completion is weighed by its own sigmoid, as if it were an
    item (with the file's preceding context): at theta = ref it is (2/beta) log 2, and after a change
    of the weights it equals the mean over windows computed by hand from token log-probs."""
    from prod_unlearn.methods.base import completion_logits
    from prod_unlearn.methods.npo import window_logprob
    logits, targets = torch.randn(8, 11), torch.randint(0, 11, (8,))
    tok = -torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    sums = window_logprob(logits, targets, torch.tensor([5, 3]), 2)
    want = [tok[0:2].sum(), tok[2:4].sum(), tok[4:5].sum(), tok[5:7].sum(), tok[7:8].sum()]
    assert torch.allclose(sums, torch.stack(want))
    assert torch.allclose(window_logprob(logits, targets, torch.tensor([5, 3]), 0),
                          torch.stack([tok[:5].sum(), tok[5:].sum()]))
    m = get_method("npo")
    params = make_params(m, {"window": 7})
    enc = {"forget": encode(forget_examples, tokenizer, 64)}
    ref, _, _ = load_or_compute_reference(micro_model, enc, m, params, tokenizer.pad_token_id, "fp", 2)
    idx = torch.tensor([3, 1, 4])
    batch = {"forget": collate([enc["forget"][i] for i in idx], tokenizer.pad_token_id), "index": idx}
    assert m.loss(micro_model, batch, ref, params).item() == pytest.approx(20 * math.log(2), abs=1e-4)
    ref_windows = ref.gather("forget", "logp", idx)
    with torch.no_grad():
        for p in micro_model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    lg, tg, counts = completion_logits(micro_model, batch["forget"])
    tok = -torch.nn.functional.cross_entropy(lg, tg, reduction="none")
    ratios, at = [], 0
    for c in counts.tolist():
        ratios += [tok[at + s:at + min(s + 7, c)].sum() for s in range(0, c, 7)]
        at += c
    ratio = torch.stack(ratios) - ref_windows
    assert len(ratio) > len(idx)                                    # several windows per example
    want = -(2 / 0.1) * torch.nn.functional.logsigmoid(-0.1 * ratio).mean()
    assert m.loss(micro_model, batch, ref, params).item() == pytest.approx(want.item(), rel=1e-4)


# ------------------------------------------------------------------ end to end through the loop

@pytest.fixture(scope="module")
def learned_dir(tmp_path_factory, micro_dir, tokenizer):
    """The micro model after a little memorisation of the forget set (so there is something to forget)."""
    from conftest import FORGET
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(micro_dir, dtype=torch.float32)
    enc = encode(FORGET, tokenizer, 64)
    batch = collate(enc, tokenizer.pad_token_id)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    model.train()
    for _ in range(40):
        logits, targets, _ = _completion(model, batch)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    d = tmp_path_factory.mktemp("learned")
    model.save_pretrained(d, safe_serialization=True)
    tokenizer.save_pretrained(d)
    return d


def _completion(model, batch):
    from prod_unlearn.methods.base import completion_logits
    return completion_logits(model, batch)


@torch.no_grad()
def mean_nll(model, tokenizer, examples):
    model.eval()
    logits, targets, _ = _completion(model, collate(encode(examples, tokenizer, 64), tokenizer.pad_token_id))
    return torch.nn.functional.cross_entropy(logits, targets).item()


def _load(path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


@pytest.mark.parametrize("name", ["ga", "npo", "dpo", "flat", "undial"])
def test_unlearn_end_to_end(name, learned_dir, tokenizer, forget_examples, tmp_path):
    from prod_unlearn.methods.base import refusal_view
    from prod_unlearn.training.loop import TrainConfig, unlearn
    refusals = load_refusals()
    refusal_set = [refusal_view(e, refusals) for e in forget_examples]
    model = _load(learned_dir)
    before = mean_nll(model, tokenizer, forget_examples)
    before_refusal = mean_nll(model, tokenizer, refusal_set)
    assert before < 2.0                                        # memorised to some degree
    cfg = TrainConfig(epochs=2, lr=3e-3, batch_size=2, max_length=64, seed=0)
    run = unlearn(model, tokenizer, forget_examples, get_method(name), cfg, tmp_path / name, refusals=refusals)
    after_model = _load(tmp_path / name)
    after = mean_nll(after_model, tokenizer, forget_examples)
    assert after > before + 0.05, (name, before, after)       # the forget set is less likely
    if name in ("dpo", "flat"):
        assert mean_nll(after_model, tokenizer, refusal_set) < before_refusal   # the refusal is more likely
    assert [e["epoch"] for e in run["epochs"]] == [1, 2] and all(math.isfinite(e["loss"]) for e in run["epochs"])
    assert json.loads((tmp_path / name / "run.json").read_text())["method"] == name
    assert (run["reference"]["path"] is None) == (name in ("ga", "flat"))


def test_kl_retain_term_keeps_retain_distribution(learned_dir, tokenizer, forget_examples, tmp_path):
    """GA with the KL retain term moves the retain distribution less than GA alone."""
    from prod_unlearn.models.loading import model_fingerprint
    from prod_unlearn.training.loop import TrainConfig, unlearn
    original = _load(learned_dir)
    enc = encode(RETAIN, tokenizer, 64)
    ref = retain_reference(original, enc, tokenizer.pad_token_id, model_fingerprint(original), 4, None)
    idx = torch.arange(len(RETAIN))
    batch = collate(enc, tokenizer.pad_token_id)
    drift = {}
    for label, kwargs in [("none", {}), ("kl", {"retain": RETAIN})]:
        cfg = TrainConfig(epochs=2, lr=3e-3, batch_size=2, max_length=64, seed=0, retain_loss="kl",
                          retain_weight=5.0)
        run = unlearn(_load(learned_dir), tokenizer, forget_examples, get_method("ga"), cfg, tmp_path / label,
                      **kwargs)
        assert run["retain_examples"] == len(kwargs.get("retain", []))
        with torch.no_grad():
            drift[label] = retain_kl(_load(tmp_path / label).eval(), batch, ref, idx).item()
    assert 0 <= drift["kl"] < drift["none"], drift
