"""The fast greedy decoder equals greedy decoding one sequence at a time; cheaper scoring.

Reference: a plain loop without any cache, one prompt at a time (full forward of prompt +
generated tokens, argmax of the last logits). The batched decoder must give the same tokens
(near-ties aside: the agreement rate is printed and must be >= 99 %), honour every row's budget,
EOS and stop strings, and not depend on the left padding its batch gives a row.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

import prod_unlearn.evaluation.generation as gen
from prod_unlearn.evaluation.batch_plan import decode_batches, prefill_groups
from prod_unlearn.evaluation.generation import greedy_continue
import prod_unlearn.evaluation.drafts as drafts
import prod_unlearn.evaluation.kv_cache as kv_cache
import prod_unlearn.evaluation.threads as threads
from prod_unlearn.evaluation.threads import default_threads

from conftest import make_model


@torch.no_grad()
def reference_greedy(model, prompt: list[int], budget: int, eos: int | None = None) -> list[int]:
    ids = list(prompt)
    out: list[int] = []
    for _ in range(budget):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        t = int(logits.argmax())
        if eos is not None and t == eos:
            break
        out.append(t)
        ids.append(t)
    return out


def agreement(out, ref) -> float:
    same = sum(a == b for o, r in zip(out, ref) for a, b in zip(o, r))
    return same / max(1, sum(max(len(o), len(r)) for o, r in zip(out, ref)))


def workload(vocab: int, n: int = 14, seed: int = 0):
    """Prompts of 1..60 tokens (BOS first), budgets 0..24; the longest prompts get short budgets so
    that finished rows leave the batch and padding columns are dropped."""
    rng = random.Random(seed)
    lengths = [1, 2, 3, 5, 8, 9, 13, 20, 21, 30, 34, 45, 55, 60][:n]
    rng.shuffle(lengths)
    prompts = [[0] + [rng.randrange(2, vocab) for _ in range(k - 1)] for k in lengths]
    budgets = [0 if k == 9 else max(1, 24 - k // 3) for k in lengths]
    return prompts, budgets


class NoEos:
    """The fixture tokenizer with EOS switched off or set to another id (for stop tests)."""

    def __init__(self, tok, eos=None):
        self._tok, self.eos_token_id = tok, eos
        self.pad_token_id, self.bos_token_id = tok.pad_token_id, tok.bos_token_id

    def decode(self, ids, **kw):
        return self._tok.decode(ids, **kw)


@pytest.fixture
def model(tokenizer):
    return make_model(tokenizer)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batched_equals_one_at_a_time(model, tokenizer, batch_size):
    prompts, budgets = workload(len(tokenizer))
    ref = [reference_greedy(model, p, b) for p, b in zip(prompts, budgets)]
    out = greedy_continue(model, NoEos(tokenizer), prompts, budgets, batch_size=batch_size)
    rate = agreement(out, ref)
    print(f"batch {batch_size}: token agreement with one-at-a-time decoding {100 * rate:.2f} %")
    assert rate >= 0.99
    assert [len(o) for o in out] == budgets           # every row exactly its own budget (EOS off)


def test_generic_cache_path_matches_buffer_path(model, tokenizer, monkeypatch):
    prompts, budgets = workload(len(tokenizer), seed=1)
    fast = greedy_continue(model, NoEos(tokenizer), prompts, budgets, batch_size=64)
    monkeypatch.setattr(gen, "buffer_cache", lambda model, window: None)   # the model's own DynamicCache
    generic = greedy_continue(model, NoEos(tokenizer), prompts, budgets, batch_size=64)
    assert agreement(generic, fast) >= 0.99


class CountCalls:
    """Counts the model's decoding steps (forward calls that read a cache: the mask is longer
    than the input)."""

    def __init__(self, model, monkeypatch):
        self.n, forward = 0, model.forward

        def counted(*a, **kw):
            self.n += kw["attention_mask"].shape[1] > kw["input_ids"].shape[1]
            return forward(*a, **kw)
        monkeypatch.setattr(model, "forward", counted)


def spoil(hint: list[int], every: int, vocab: int) -> list[int]:
    """The hint with every ``every``-th token changed (the model will not follow it there)."""
    return [(t + 1) % vocab if k % every == every - 1 else t for k, t in enumerate(hint)]


def test_hints_change_the_time_never_the_tokens(model, tokenizer, monkeypatch):
    prompts, budgets = workload(len(tokenizer), seed=6)
    budgets = [max(b, 16) if b else 0 for b in budgets]
    ref = [reference_greedy(model, p, b) for p, b in zip(prompts, budgets)]
    calls = CountCalls(model, monkeypatch)
    plain = greedy_continue(model, NoEos(tokenizer), prompts, budgets, batch_size=64)
    steps_plain, calls.n = calls.n, 0
    followed = greedy_continue(model, NoEos(tokenizer), prompts, budgets, batch_size=64, hints=ref)
    steps_followed, calls.n = calls.n, 0
    # drafts that the model rejects every 5th token, misaligned tails, and no hint for some rows
    mixed = [spoil(r, 5, len(tokenizer)) if i % 3 else (r[3:] if i % 2 else None) for i, r in enumerate(ref)]
    partial = greedy_continue(model, NoEos(tokenizer), prompts, budgets, batch_size=64, hints=mixed)
    print(f"decoding steps: {steps_plain} one token per step, {steps_followed} with the true continuation as hint")
    for out in (plain, followed, partial):
        assert agreement(out, ref) >= 0.99
        assert [len(o) for o in out] == budgets
    assert steps_followed * 3 <= steps_plain       # a followed hint is verified many tokens per step


def test_hint_drafts_are_verified_when_rows_leave_and_holes_are_realigned(model, tokenizer, monkeypatch):
    """Every row follows its hint except one token in 12, so most steps draft, rejected slots
    leave holes and the cache is realigned (rows of different budgets leave meanwhile)."""
    monkeypatch.setattr(drafts, "QUORUM", 0.5)
    prompts, budgets = workload(len(tokenizer), seed=7)
    budgets = [b + 20 if b else 0 for b in budgets]
    ref = [reference_greedy(model, p, b) for p, b in zip(prompts, budgets)]
    realigned = []
    realign = kv_cache._BufferLayer.realign
    monkeypatch.setattr(kv_cache._BufferLayer, "realign", lambda self, *a: realigned.append(1) or realign(self, *a))
    out = greedy_continue(model, NoEos(tokenizer), prompts, budgets, batch_size=64,
                          hints=[spoil(r, 12, len(tokenizer)) for r in ref])
    assert agreement(out, ref) >= 0.99 and [len(o) for o in out] == budgets
    assert realigned


def test_a_step_drafts_only_when_the_batch_follows_its_hints():
    from prod_unlearn.evaluation.drafts import plan_step
    sure, unsure = 100 / 101, 0.4
    assert plan_step([[1] * 300] * 10, [sure] * 10, cap=257) == 65     # expected run 100: 64 drafted
    assert plan_step([[1] * 300] * 10, [sure] * 10, cap=9) == 9        # the logits cap
    assert plan_step([[1] * 3] * 10, [sure] * 10, cap=257) == 3        # the drafts' length
    assert plan_step([[1] * 300] * 10, [sure] * 8 + [unsure] * 2, cap=257) == 1   # 2 of 10 would not keep it
    assert plan_step([[1] * 300] * 9 + [[]], [sure] * 10, cap=257) == 65          # 9 of 10 suffice
    assert plan_step([[1] * 300] * 9 + [None] * 5, [sure] * 14, cap=257) == 65    # finished rows do not count


def test_left_padding_does_not_change_a_row(model, tokenizer):
    rng = random.Random(3)
    short = [0] + [rng.randrange(2, len(tokenizer)) for _ in range(4)]
    long = [0] + [rng.randrange(2, len(tokenizer)) for _ in range(80)]
    alone = greedy_continue(model, NoEos(tokenizer), [short], [20])[0]
    padded = greedy_continue(model, NoEos(tokenizer), [short, long], [20, 20], batch_size=2)[0]
    assert padded == alone == reference_greedy(model, short, 20)


def test_eos_stops_its_row_only(model, tokenizer):
    prompts, budgets = workload(len(tokenizer), seed=2)
    free = greedy_continue(model, NoEos(tokenizer), prompts, budgets, batch_size=64)
    eos = next(o[len(o) // 2] for o in free if len(o) > 4)      # a token some row does generate
    out = greedy_continue(model, NoEos(tokenizer, eos), prompts, budgets, batch_size=64)
    for o, f in zip(out, free):
        assert o == (f[:f.index(eos)] if eos in f else f)
    assert any(len(o) < len(f) for o, f in zip(out, free))


def test_stop_sequences_end_each_row_where_its_text_first_contains_one(model, tokenizer):
    prompts, budgets = workload(len(tokenizer), seed=4)
    budgets = [24 if b else 0 for b in budgets]
    free = greedy_continue(model, NoEos(tokenizer), prompts, budgets, batch_size=64)
    texts = [tokenizer.decode(o) for o in free]
    stops = [t[len(t) // 2:len(t) // 2 + 2] for t in texts if len(t) > 6][:2]
    assert stops
    out = greedy_continue(model, NoEos(tokenizer), prompts, budgets, batch_size=64, stop_sequences=stops)
    for o, f in zip(out, free):
        k = next((k for k in range(1, len(f) + 1) if any(s in tokenizer.decode(f[:k]) for s in stops)), len(f))
        assert o == f[:k]
    assert any(len(o) < len(f) for o, f in zip(out, free))


def test_context_limit_keeps_the_last_prompt_tokens(model, tokenizer):
    ctx = model.config.max_position_embeddings
    rng = random.Random(5)
    prompt = [0] + [rng.randrange(2, len(tokenizer)) for _ in range(ctx + 20)]
    out = greedy_continue(model, NoEos(tokenizer), [prompt], [8])[0]
    assert out == reference_greedy(model, prompt[-(ctx - 8):], 8)


def test_mode_restored_and_empty_prompt_refused(model, tokenizer):
    model.train()
    greedy_continue(model, NoEos(tokenizer), [[0, 5]], [2])
    assert model.training
    with pytest.raises(ValueError):
        greedy_continue(model, NoEos(tokenizer), [[]], [2])
    assert greedy_continue(model, NoEos(tokenizer), [[]], [0]) == [[]]


def test_batches_follow_the_cost_model_and_prefill_groups():
    lengths = sorted([70, 72, 75, 80, 300, 310, 320, 1000] * 8)
    order, budgets = list(range(len(lengths))), [128] * len(lengths)
    small = decode_batches(order, lengths, budgets, batch_size=32, fixed=500, max_tokens=10**9)
    assert [i for b in small for i in b] == order and all(len(b) <= 32 for b in small)
    assert all(lengths[b[0]] == lengths[b[-1]] or lengths[b[-1]] < 2 * lengths[b[0]] for b in small)  # no 70 + 1000
    large = decode_batches(order, lengths, budgets, batch_size=32, fixed=10**7, max_tokens=10**9)
    assert [len(b) for b in large] == [32, 32]           # weights dominate: full batches
    capped = decode_batches(order, lengths, budgets, batch_size=32, fixed=10**7, max_tokens=4 * (1000 + 128))
    assert all(len(b) * (lengths[b[-1]] + 128) <= 4 * 1128 or len(b) == 1 for b in capped)
    groups = prefill_groups(lengths, max_tokens=4096)
    assert groups[0][0] == 0 and groups[-1][1] == len(lengths)
    assert all(max(lengths[s:e]) * (e - s) <= 4096 or e - s == 1 for s, e in groups)


def test_default_threads_respects_the_user(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_THREADS", {"ceiling": None, "chosen": None, "at": float("-inf"), "process": None})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        monkeypatch.setenv("PROD_UNLEARN_THREADS", "1")
        assert default_threads() == 1 == torch.get_num_threads()
        monkeypatch.delenv("PROD_UNLEARN_THREADS")
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(1)
        assert default_threads() == 1                    # OMP_NUM_THREADS set: torch's setting kept
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert default_threads() == 1                    # the user's lower setting is a ceiling
        assert 1 <= threads.available_cores() <= (os.cpu_count() or 1)
    finally:
        torch.set_num_threads(before)


def test_shipped_model_matches_generate_one_at_a_time():
    from prod_unlearn.data.examples import load_examples
    from prod_unlearn.data.tokenize import encode_prompt
    from prod_unlearn.models.loading import ASSETS, DEFAULT_MODEL, load_model
    model, tok = load_model(str(DEFAULT_MODEL), device="cpu", dtype="fp32")
    files = load_examples(ASSETS / "data" / "copyright.jsonl")[:4]
    prompts = [encode_prompt(tok, e.prompt + e.completion[:200 * (k + 1)]) for k, e in enumerate(files)]
    budgets = [12, 6, 12, 9]
    ref = []
    for p, b in zip(prompts, budgets):
        ids = torch.tensor([p])
        g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=b,
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, num_beams=1,
                           temperature=None, top_p=None, top_k=None)
        new = g[0, len(p):].tolist()
        ref.append(new[:new.index(tok.eos_token_id)] if tok.eos_token_id in new else new)
    out = greedy_continue(model, tok, prompts, budgets, batch_size=4)
    rate = agreement(out, ref)
    print(f"shipped model: token agreement with generate() at batch 1: {100 * rate:.2f} %")
    assert rate >= 0.99


# ---------------------------------------------------------------- perplexity and the evaluation cache

def test_window_nll_batching_does_not_change_it(model, tokenizer):
    from prod_unlearn.evaluation.metrics import length_batches, window_nll, windows_of
    from conftest import CODE
    windows = windows_of(tokenizer, CODE * 3, 16)
    one, n1 = window_nll(model, tokenizer, windows, batch_size=1)
    many, n8 = window_nll(model, tokenizer, windows, batch_size=8)
    tight, nt = window_nll(model, tokenizer, windows, batch_size=8, batch_tokens=40)
    assert n1 == n8 == nt == [len(w) - 1 for w in windows]  # every token but a window's first is scored
    assert one == pytest.approx(many, rel=1e-5) and one == pytest.approx(tight, rel=1e-5)
    lengths = [16, 3, 16, 9, 16, 2, 5]
    batches = length_batches(lengths, max_rows=3, max_tokens=40)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 3 and (lengths[b[0]] * len(b) <= 40 or len(b) == 1) for b in batches)


def test_before_evaluation_is_cached_by_content(model, tokenizer, forget_examples):
    from prod_unlearn.tasks import evaluate
    kw = dict(examples=forget_examples, with_ppl=False, max_new_tokens=8, token_half=False)
    first = evaluate(model, tokenizer, cache=True, **kw)
    again = evaluate(model, tokenizer, cache=True, **kw)
    assert "cached" not in first and again["cached"] is True
    assert {k: v for k, v in again.items() if k not in ("cached", "seconds")} == \
           {k: v for k, v in first.items() if k != "seconds"}
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)                  # other weights: computed again
    assert "cached" not in evaluate(model, tokenizer, cache=True, **kw)
    assert "cached" not in evaluate(model, tokenizer, cache=True, **{**kw, "max_new_tokens": 6})


def test_unlearn_twice_reads_the_before_evaluation_from_the_cache(tmp_path, micro_dir, subprocess_env):
    import json
    import subprocess
    import sys
    from conftest import FORGET, REPO
    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(json.dumps({"prompt": e.prompt, "completion": e.completion, "id": e.id}) + "\n"
                              for e in FORGET))
    befores = []
    for run in ("a", "b"):
        out = tmp_path / run
        r = subprocess.run([sys.executable, "-m", "prod_unlearn.cli", "unlearn", "--model", str(micro_dir),
                            "--forget", str(forget), "--method", "ga", "--epochs", "1", "--out", str(out)],
                           env=subprocess_env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        befores.append(json.loads((out / "run.json").read_text())["before"])
    assert "cached" not in befores[0] and befores[1]["cached"] is True
    assert "bleu_cut50" in befores[0] and "bleu_cut25" not in befores[0]   # one prompt per file (POINT_CUTS)
    assert befores[1]["forget_quality"] == befores[0]["forget_quality"]
    assert befores[1]["heldout_ppl"] == befores[0]["heldout_ppl"]


def test_evaluation_cache_key_covers_every_module_an_evaluation_runs():
    """A cached evaluation is stale when any task, metric or sandbox code changes: the key hashes them."""
    from prod_unlearn.evaluation.cache import PACKAGE, code_files
    covered = {f.relative_to(PACKAGE).as_posix() for f in code_files()}
    for pkg in ("tasks", "evaluation", "sandbox", "data"):
        for f in PACKAGE.joinpath(pkg).glob("*.py"):
            assert f"{pkg}/{f.name}" in covered
    from prod_unlearn.tasks import FORGET_TASKS, UTILITY_TASKS
    import inspect
    for task in [*FORGET_TASKS.values(), *UTILITY_TASKS.values()]:
        assert Path(inspect.getsourcefile(task.evaluate)).resolve().relative_to(PACKAGE).as_posix() in covered
