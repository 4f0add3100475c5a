"""`unlearn` trains until forgotten: each stopping condition, its record, its exit status."""
from __future__ import annotations

import json
import math

import pytest

from conftest import CODE, FORGET
from prod_unlearn.data.examples import Example, examples_hash, write_jsonl
from prod_unlearn.training.until import EXIT_NOT_FORGOTTEN, auto_check_every, check_steps
from test_cli import cli


@pytest.fixture
def sets(tmp_path):
    write_jsonl(list(FORGET), tmp_path / "forget.jsonl")
    write_jsonl([Example("", c, f"h{i}") for i, c in enumerate(CODE)], tmp_path / "heldout.jsonl")
    return tmp_path / "forget.jsonl", tmp_path / "heldout.jsonl"


def run_until(tmp_path, env, model, sets, *extra):
    forget, heldout = sets
    out = tmp_path / "out"
    r = cli(["unlearn", "--model", str(model), "--forget", str(forget), "--heldout", str(heldout), "--method", "ga",
             "--out", str(out), "--max-length", "64", *extra], env, timeout=300)
    run = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else None
    return r, run, out


def test_check_schedule_follows_the_forget_set_size():
    assert auto_check_every(1) == 5 and auto_check_every(50) == 10 and auto_check_every(1000) == 25
    assert check_steps(10, 25) == [10, 20, 25]


def test_stops_at_the_target(tmp_path, subprocess_env, memorised_dir, sets):
    """(The forget set as Parquet with other column names, curves to TensorBoard: a user's setup.)"""
    import pyarrow as pa
    import pyarrow.parquet as pq
    parquet = tmp_path / "forget.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": e.id, "context": e.prompt, "code": e.completion} for e in FORGET]),
                   parquet)
    r, run, out = run_until(tmp_path, subprocess_env, memorised_dir, (parquet, sets[1]), "--lr", "3e-2",
                            "--check-every", "2", "--max-steps", "60", "--until-bleu", "0.3",
                            "--max-utility-loss", "100", "--prompt-column", "context", "--completion-column", "code",
                            "--report-to", "tensorboard")
    assert r.returncode == 0, r.stdout + r.stderr
    assert run["forget_hash"] == examples_hash(FORGET) and run["data_name"] == str(parquet)
    assert list(out.glob("tensorboard/**/events.out.tfevents.*"))
    u = run["until"]
    assert u["stopped_by"] == "target" and u["forgotten"]
    last = u["curve"][-1]
    assert last["stop"] == "target" and max(last["bleu_cuts"].values()) <= 0.3
    assert last["step"] < 60 and last["step"] % 2 == 0           # stopped at a check, before the budget
    assert run["before"]["bleu"] > 0.3 >= run["after"]["bleu"]
    # the rule's own retain term: general code from the standard library, KL to the original
    from prod_unlearn.training.until import RETAIN_FILES
    assert run["retain_examples"] == RETAIN_FILES and run["config"]["retain_loss"] == "kl"
    assert (out / "model.safetensors").exists()
    # the model card: Hub metadata, what was forgotten by hash, never the forgotten text
    from huggingface_hub import ModelCard
    card = ModelCard.load(out / "README.md")
    assert set(card.data.tags) == {"unlearning", "prod-unlearn", "ga"} and card.data.library_name == "transformers"
    assert run["forget_hash"] in card.text and "stopped by | target" in card.text
    assert all(e.completion.strip() not in card.text for e in FORGET)
    lo, hi = run["after"]["bleu_ci"]
    assert lo <= run["after"]["bleu"] <= hi and f"{run['after']['bleu']:.4f} [{lo:.3f}, {hi:.3f}]" in card.text
    # an audit of this model re-renders the card with the audit's verdicts and a link to its page
    from prod_unlearn.report.model_card import add_audit
    audit = tmp_path / "audit"
    audit.mkdir()
    (audit / "report.json").write_text(json.dumps({"request": {"date": "2026-12-04T00:00:00"}, "recovery": [
        {"attack": "relearn", "condition": "forget@25", "bleu": 0.9, "lo": 0.8, "hi": 1.0, "retain_bleu": 0.07,
         "verdict": "undoes most of the forgetting"}], "three_way": []}))
    assert add_audit(out, audit) == out / "README.md"
    card = ModelCard.load(out / "README.md")
    assert "[../audit/report.html](../audit/report.html)" in card.text
    assert "| relearn | forget@25 | 0.900 [0.800, 1.000] | 0.070 | undoes most of the forgetting |" in card.text
    assert "stopped by | target" in card.text                      # the rest of the card is still there
    assert add_audit(memorised_dir, audit) is None                  # a folder we did not write is left alone


def test_guard_trips_restores_and_exits_non_zero(tmp_path, subprocess_env, memorised_dir, sets):
    r, run, out = run_until(tmp_path, subprocess_env, memorised_dir, sets, "--lr", "3e-2", "--check-every", "1",
                            "--max-steps", "40", "--until-bleu", "0", "--max-utility-loss", "0.02")
    assert r.returncode == EXIT_NOT_FORGOTTEN, r.stdout + r.stderr
    out_text = r.stdout + r.stderr
    assert "not forgotten" in out_text and "guard" in out_text
    u = run["until"]
    assert u["stopped_by"] == "guard" and not u["forgotten"]
    assert u["curve"][-1]["bpb_rise"] > 0.02
    # the first two trips put back the last good weights, halve the learning rate and double the
    # weight of the rule's retain term; the third stops
    trips = [p for p in u["curve"] if p["bpb_rise"] > 0.02]
    assert [p["action"][p["action"].index(", lr") :] if p["action"] else None for p in trips] == [
        ", lr x0.5, retain x2", ", lr x0.5, retain x2", None]
    assert all(p["action"].startswith("back to step ") for p in trips[:2])
    # (after a trip only the items not yet forgotten train: here none is, so every item trains)
    assert all(f"training {len(FORGET)} of {len(FORGET)} items" in p["action"] for p in trips[:2])
    assert u["lr_scale"] == 0.25 and u["retain_scale"] == 4 and run["retain_examples"] > 0
    assert "doubling the retain weight" in out_text
    kept = [p for p in u["curve"] if p["bpb_rise"] <= 0.02]
    if kept:  # the saved model is the most-forgotten check within the guard: its figures are the "after" ones
        assert u["kept_step"] == min(kept, key=lambda p: p["screen"])["step"]
        assert u["curve"][-1]["guard_bpb"] > max(p["guard_bpb"] for p in kept)
    assert (out / "model.safetensors").exists()


def _noise_rule(memorised_dir, tokenizer, sets, **rule):
    """A rule on a memorised micro model moved along one fixed noise direction (held-out bits per byte grow
    with the scale), with the BLEU each check reads set by the test: the decisions alone are under test."""
    import torch
    from transformers import AutoModelForCausalLM
    from prod_unlearn.data.examples import load_examples
    from prod_unlearn.tasks.ppl import heldout_ppl
    from prod_unlearn.training.until import StopRule, UntilForgotten
    forget, heldout = sets
    model = AutoModelForCausalLM.from_pretrained(memorised_dir, dtype=torch.float32)
    weights = [p for p in model.parameters()]
    start = [w.detach().clone() for w in weights]
    torch.manual_seed(0)
    noise = [torch.randn_like(w) for w in weights]

    def moved(scale):
        with torch.no_grad():
            for w, w0, n in zip(weights, start, noise):
                w.copy_(w0 + scale * n)
        return torch.cat([w.detach().flatten() for w in weights]).clone()

    bpb = lambda: heldout_ppl(model, tokenizer, heldout)["heldout_bpb"]  # noqa: E731
    base = bpb()
    rises = {}
    for scale in (0.002, 0.006, 0.03):
        moved(scale)
        rises[scale] = bpb() / base - 1
    assert 0 < rises[0.002] < rises[0.006] < rises[0.03]
    guard = rises[0.006] * 1.2        # 0.002 is within half the guard, 0.006 in its upper part, 0.03 past it
    assert rises[0.002] <= guard / 2 < rises[0.006] and rises[0.03] > guard
    moved(0)
    r = UntilForgotten(StopRule(until_bleu=0.0, max_utility_loss=guard, **rule), model, tokenizer,
                       load_examples(forget), 50, heldout, retain=True)
    read = {}
    r._extraction = lambda m, cuts: (read["bleu"], {"bleu_cut50": read["bleu"]}, read["items"])

    def check(step, scale, bleu, items=None):  # move, then check with this BLEU; the weights after the check
        moved(scale)
        read.update(bleu=bleu, items=items or {e.id: bleu for e in r.forget})
        verdict = r(model, step)
        return verdict, torch.cat([w.detach().flatten() for w in weights])

    return r, moved, check


def test_a_guard_trip_goes_back_to_the_last_check_with_headroom(memorised_dir, tokenizer, sets):
    """A trip goes back to the last check within half the guard (room for the gentler path), not to the
    last check within it; a trip that stops the run puts back the most-forgotten check within the guard."""
    import torch
    rule, moved, check = _noise_rule(memorised_dir, tokenizer, sets, backtracks=1, patience=99)
    camp, kept = moved(0.002), moved(0.006)
    ids = [e.id for e in rule.forget]
    assert len(ids) >= 3
    gone = {ids[0]: 0.05, ids[1]: 0.02}                              # at most half the target (0.1): these rest
    rule.rule.until_bleu = 0.1
    assert check(1, 0.002, 0.5, {**{i: 0.9 for i in ids}, **gone})[0] is None
    assert check(2, 0.006, 0.4)[0] is None
    assert rule.resting == []                                         # nothing rests before a trip
    verdict, now = check(3, 0.03, 0.3)                                # answered: back to step 1, not 2
    assert verdict is None and rule.restored and torch.equal(now, camp)
    n = len(ids)
    assert rule.curve[-1]["action"] == f"back to step 1, training {n - 2} of {n} items, lr x0.5, retain x2"
    assert rule.lr_scale == 0.5 and rule.retain_scale == 2
    assert rule.resting == [0, 1] and rule.state_dict()["resting"] == [0, 1]   # the items gone at step 1
    back = {**{i: 0.9 for i in ids}, ids[1]: 0.2, ids[2]: 0.0}        # one came back, another is gone
    assert check(4, 0.002, 0.45, back)[0] is None                    # within the guard, less forgotten than step 2
    assert rule.resting == [2]
    verdict, now = check(5, 0.03, 0.2)                                # the last trip: to step 2, the lowest BLEU
    assert verdict == "guard" and torch.equal(now, kept) and rule.record()["kept_step"] == 2
    assert "the saved model is step 2's, the lowest BLEU within the guard: 0.400" in rule.verdict()


@pytest.mark.parametrize("reason", ["budget", "stalled"])
def test_a_run_above_the_target_saves_its_most_forgotten_check(memorised_dir, tokenizer, sets, reason):
    """Within the guard, less extraction is what the user asked for: the budget or a stall that ends a run
    puts back its lowest-BLEU check, not the last one."""
    import torch
    stall = {"patience": 1, "raises": 0} if reason == "stalled" else {"patience": 99}
    rule, moved, check = _noise_rule(memorised_dir, tokenizer, sets, **stall)
    rule.max_steps = 2 if reason == "budget" else 50
    best = moved(0.002)
    assert check(1, 0.002, 0.3)[0] is None
    verdict, now = check(2, 0.001, 0.5)
    assert verdict == reason and rule.restored and torch.equal(now, best)
    assert rule.record()["kept_step"] == 1
    assert "the saved model is step 1's, the lowest BLEU within the guard: 0.300" in rule.verdict()


def test_budget_spent_exits_non_zero(tmp_path, subprocess_env, memorised_dir, sets):
    """(Without the rule's retain term: --retain-weight 0.)"""
    r, run, _ = run_until(tmp_path, subprocess_env, memorised_dir, sets, "--lr", "1e-6", "--max-steps", "3",
                          "--check-every", "2", "--until-bleu", "0", "--max-utility-loss", "100",
                          "--retain-weight", "0")
    assert run["retain_examples"] == 0
    assert r.returncode == EXIT_NOT_FORGOTTEN, r.stdout + r.stderr
    assert "3 optimiser steps spent" in r.stdout + r.stderr
    assert [p["step"] for p in run["until"]["curve"]] == [2, 3]
    assert run["until"]["stopped_by"] == "budget" and run["stopped_by"] == "budget"


def test_rule_options_need_the_rule(tmp_path, subprocess_env, sets):
    forget, _ = sets
    r = cli(["unlearn", "--forget", str(forget), "--epochs", "1", "--until-bleu", "0.2", "--out",
             str(tmp_path / "o")], subprocess_env)
    assert r.returncode == 2 and "--until-bleu: has no effect with --epochs" in r.stderr + r.stdout


@pytest.mark.parametrize("method", ["ga", "npo"])
def test_stalled_run_stops_before_the_budget(tmp_path, subprocess_env, memorised_dir, sets, method):
    """A run whose extraction no longer falls (here: an lr too small to move it) stops after `patience`
    checks instead of spending the budget, and says what to try. Each stall is first answered: by a
    larger learning rate, or by the method's own answer where it has one (NPO: a tenth of beta, the
    cure for a saturated sigmoid), with half the weight of the rule's retain term."""
    r, run, out = run_until(tmp_path, subprocess_env, memorised_dir, sets, "--lr", "1e-9", "--max-steps", "40",
                            "--check-every", "1", "--until-bleu", "0", "--max-utility-loss", "100", "--method", method)
    assert r.returncode == EXIT_NOT_FORGOTTEN, r.stdout + r.stderr
    said = " ".join((r.stdout + r.stderr).split())
    assert "stopped making progress" in said and "0.25x the retain weight" in said
    u = run["until"]
    answers = ["lr x2, retain x0.5"] * 2 if method == "ga" else ["beta 0.01, retain x0.5", "beta 0.001, retain x0.5"]
    # 7 checks without progress at one setting make a stall; two are answered, the third stops the run
    assert [(p["step"], p["action"]) for p in u["curve"] if p["action"]] == [(7, answers[0]), (14, answers[1])]
    assert u["stopped_by"] == "stalled" and u["curve"][-1]["step"] == 21 and u["retain_scale"] == 0.25
    if method == "ga":
        assert u["lr_scale"] == 4 and "at 4x --lr" in said
    else:  # the loop trains with the answered beta: at a standstill NPO's loss is (2 / beta) log 2
        assert u["lr_scale"] == 1 and u["params"]["beta"] == pytest.approx(0.001)
        losses = [e["loss"] for e in run["epochs"]]  # per epoch of 3 steps; beta 0.1 until step 7, 0.001 from 15
        assert losses[0] == pytest.approx(20 * math.log(2), rel=1e-3)
        assert losses[-1] == pytest.approx(2000 * math.log(2), rel=1e-3)
        # a resumed run trains with the answered beta (the rule's state counts the answers)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from prod_unlearn.methods import get_method, make_params
        from prod_unlearn.training.until import StopRule, UntilForgotten
        npo = get_method("npo")
        rule = UntilForgotten(StopRule(), AutoModelForCausalLM.from_pretrained(memorised_dir),
                              AutoTokenizer.from_pretrained(memorised_dir), FORGET, 5, sets[1],
                              params=make_params(npo), on_stall=npo.on_stall)
        rule.load_state_dict(json.loads((out / "checkpoints" / "state" / "progress.json").read_text())["rule"])
        assert rule.params.beta == pytest.approx(0.001)


def test_large_sets_are_screened_at_one_cut_then_confirmed(memorised_dir, tokenizer, sets):
    """Above `screen_above` items a check scores the 50 % cut only; the other cuts are scored when it
    meets the target, and the worst cut decides."""
    import torch
    from transformers import AutoModelForCausalLM
    from prod_unlearn.data.examples import load_examples
    from prod_unlearn.training.until import StopRule, UntilForgotten
    forget, heldout = sets
    model = AutoModelForCausalLM.from_pretrained(memorised_dir, dtype=torch.float32)
    items = load_examples(forget)
    far = UntilForgotten(StopRule(until_bleu=0.0, screen_above=2), model, tokenizer, items, 50, heldout)
    assert far(model, 1) is None and set(far.curve[-1]["bleu_cuts"]) == {"bleu_cut50"}
    near = UntilForgotten(StopRule(until_bleu=1.0, screen_above=2), model, tokenizer, items, 50, heldout)
    assert near(model, 1) == "target"
    point = near.curve[-1]
    assert set(point["bleu_cuts"]) == {"bleu_cut25", "bleu_cut50", "bleu_cut75"}
    assert point["bleu"] == max(point["bleu_cuts"].values())


def test_a_membership_target_holds_the_run_until_the_forget_files_look_unseen(memorised_dir, tokenizer, sets):
    """``until_auc``: the target also needs Min-K%++ AUC (forget files against the held-out files, the
    membership attack's score) at most the given value; the verdict names both figures."""
    import torch
    from transformers import AutoModelForCausalLM
    from prod_unlearn.attacks.common import auc
    from prod_unlearn.attacks.mia import membership_scores
    from prod_unlearn.data.examples import load_examples
    from prod_unlearn.training.until import StopRule, UntilForgotten
    forget, heldout = sets
    model = AutoModelForCausalLM.from_pretrained(memorised_dir, dtype=torch.float32)
    items, unseen = load_examples(forget), load_examples(heldout)
    score = lambda ex: [s["min_k_pp"] for s in membership_scores(model, tokenizer, [e.prompt + e.completion for e in ex])]  # noqa: E731
    expected = auc(score(items), score(unseen))
    assert expected > 0.55  # the memorised model still tells its files from unseen ones
    from prod_unlearn.attacks.mia import heldout_auc
    scorer = heldout_auc(tokenizer, items, heldout)
    with pytest.raises(ValueError, match="needs a membership scorer"):
        UntilForgotten(StopRule(until_auc=0.5), model, tokenizer, items, 5, heldout)
    held = UntilForgotten(StopRule(until_bleu=1.0, until_auc=0.5), model, tokenizer, items, 5, heldout,
                          membership=scorer)
    assert held(model, 5) == "budget"  # extraction met, membership not: the budget ends it, not the target
    assert held.curve[-1]["auc"] == round(expected, 4) and held.record()["rule"]["until_auc"] == 0.5
    assert "membership AUC" in held.verdict() and f"{expected:.3f}" in held.verdict()
    met = UntilForgotten(StopRule(until_bleu=1.0, until_auc=1.0), model, tokenizer, items, 5, heldout,
                         membership=scorer)
    assert met(model, 5) == "target" and met.verdict() is None


def test_an_item_rests_only_when_every_cut_is_forgotten(memorised_dir, tokenizer, sets, monkeypatch):
    """A file gone at two cuts but still completed at the third keeps training (its mean over the cuts
    would be under half the target; the target needs every cut)."""
    from prod_unlearn.tasks import copyright
    rule, _, _ = _noise_rule(memorised_dir, tokenizer, sets)
    del rule._extraction                       # the real one, on these rows
    a, b = (e.id for e in rule.forget[:2])
    rows = [{"id": a, "cut": c, "bleu": v} for c, v in (("25", 0.0), ("50", 0.0), ("75", 0.14))]
    rows += [{"id": b, "cut": c, "bleu": 0.0} for c in ("25", "50", "75")]
    monkeypatch.setattr(copyright, "continuation_bleu",
                        lambda *a, **k: {"bleu_cut25": 0.0, "bleu_cut50": 0.0, "bleu_cut75": 0.07, "rows": rows})
    worst, per_cut, per_item = rule._extraction(None, copyright.CUTS)
    assert worst == 0.07 and per_item == {a: 0.14, b: 0.0}
    rule.rule.until_bleu = 0.1
    assert rule._rest(per_item) == [1]
