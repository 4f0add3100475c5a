"""Utility tasks: code-health measures on hand-made outputs, HumanEval through the sandbox."""
from __future__ import annotations

import json

import pytest

from prod_unlearn.tasks import health as H
from prod_unlearn.tasks import humaneval as HE
from prod_unlearn.tasks import UTILITY_TASKS, evaluate


@pytest.fixture(autouse=True)
def _sandbox_runs_here(monkeypatch):
    """HumanEval refuses to run model code where the sandbox cannot isolate it (tests/test_sandbox.py
    covers that); on such a machine these functional tests accept the risk explicitly."""
    from prod_unlearn import sandbox
    if not sandbox.isolation()["isolated"]:
        monkeypatch.setenv(sandbox.UNSAFE_ENV, "1")


# ---------------------------------------------------------------- health measures

def test_empty_and_repetition_detectors():
    assert H.is_empty("") and H.is_empty("  \n\n\t") and not H.is_empty("\n    x = 1")
    assert H.is_repetitive([7] * 8)                                   # one token 8 times in a row
    assert not H.is_repetitive([7] * 7 + [1, 2, 3])
    assert H.is_repetitive([1, 2, 3] + [4, 5] * 8)                    # a 2-token unit 8 times
    assert H.is_repetitive([9, 8, 7, 6] * 8)                          # a 4-token unit
    assert H.is_repetitive([1, 2, 3] * 6)                             # 3 distinct of 18 tokens (< 20 %)
    assert not H.is_repetitive(list(range(64)))
    assert not H.is_repetitive([1, 2, 1, 2, 3])                       # too short to judge


def test_syntax_validity_is_a_prefix_check():
    ctx = "class A:\n    def f(self, x):"
    assert H.syntax_valid(ctx, "\n        return x + 1\n\n    def g(self):\n        pass\n")
    assert H.syntax_valid(ctx, "\n        return (x +\n            1")     # open bracket at the end: a prefix
    assert H.syntax_valid(ctx, '\n        """Doc\n        more')          # open docstring: a prefix
    assert H.syntax_valid(ctx, "\n        y = x\n        if y:\n")       # open block at the end
    # the budget cuts the last line anywhere: it only has to be completable
    for cut in ("return 'unterminated", "return self.", "if x ==", "n = 0x", "s = f'{self.na", "y = x and \\\n  x"):
        assert H.syntax_valid(ctx, "\n        " + cut), cut
    assert H.syntax_valid(ctx, "") and H.syntax_valid(ctx, "\n\n")          # nothing written: nothing invalid
    assert not H.syntax_valid(ctx, "\n        return = = x\n        pass\n")
    assert not H.syntax_valid(ctx, "\n        x = 1\n          y = 2\n")    # unexpected indent
    assert not H.syntax_valid(ctx, "\nthe the the the the\n")
    assert not H.syntax_valid(ctx, " behavi behavi behavi beh")                # garbage on the cut line itself
    assert not H.syntax_valid(ctx, "\n        return x\n    y = = 2")
    assert H.split_partial("a\nb\nc") == ("a\nb\n", "c") and H.split_partial("abc") == ("", "abc")
    assert H.split_partial("a\nb = \\\n  c") == ("a\n", "b = \\\n  c")   # a continued line is still open


def test_rates_on_hand_made_outputs():
    ctx = "def f(x):"
    outputs = [  # (text, token ids)
        ("\n    return x\n", [1, 2, 3, 4]),                               # healthy
        ("", []),                                                       # mute
        ("   \n", [5]),                                                 # mute (whitespace only)
        ("\n" + "    x = x\n" * 10, [6, 7, 8, 9] * 10),                 # token collapse
        ("\n    return = = x\n", [1, 2, 2, 3]),                         # incoherent
    ]
    flags = [H.score(ctx, t, ids) for t, ids in outputs]
    agg = H.aggregate(flags)
    assert agg["empty_rate"] == pytest.approx(2 / 5)
    assert agg["repetition_rate"] == pytest.approx(1 / 5)
    assert agg["syntax_valid"] == pytest.approx(4 / 5)                  # empty output adds nothing invalid
    assert agg["healthy"] == pytest.approx(1 / 5)
    def utility(healthy, ppl):  # the task's formula on 5 prompts of which healthy x 5 are healthy
        return H.TASK.utility({i: float(i < healthy * 5) for i in range(5)}, {"heldout_ppl": ppl})
    assert utility(0.0, 20.0) == 0.0
    assert utility(0.8, 20.0) > utility(0.8, 40.0) > utility(0.4, 40.0)
    assert utility(1.0, float("inf")) == 0.0


def test_health_prompts_are_deterministic_and_the_reference_passes():
    a, b = H.make_prompts(n_prompts=48), H.make_prompts(n_prompts=48)
    assert len(a) == 48 and [p.id for p in a] == [p.id for p in b]
    assert len({p.id.split(":")[0] for p in a}) > 10                   # spread over many files
    for p in a:
        assert not p.prompt.endswith(("\n", " ")) and p.context.endswith(p.prompt.splitlines()[-1])
        # the true continuation is always valid under the check (it is the check's ceiling)
        assert H.syntax_valid(p.context, p.truth[:400]), p.id


def test_health_on_the_micro_model(micro_model, tokenizer):
    res = evaluate(micro_model, tokenizer, task="health", n_prompts=4, completion_tokens=8, ppl_tokens=400)
    assert res["task"] == "health" and res["n"] == 4
    for k in UTILITY_TASKS["health"].keys:
        assert k in res, k
    for k in ("syntax_valid", "empty_rate", "repetition_rate", "healthy", "utility"):
        assert 0.0 <= res[k] <= 1.0
    assert res["syntax_valid_reference"] == 1.0
    json.dumps(res)


# ---------------------------------------------------------------- HumanEval

def test_truncate_at_stop_sequences():
    body = "\n    return x\n"
    assert HE.truncate(body + "\ndef other():\n    pass\n") == body
    assert HE.truncate(body + "\n# trailing comment") == body
    assert HE.truncate(body + "\nprint(f(1))") == body
    assert HE.truncate(body + "\nif __name__ == '__main__':\n    f()") == body
    indented = "\n    # an indented comment stays\n    return 1"
    assert HE.truncate(indented) == indented


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail():
    problems = HE.load_problems(2)
    assert [p["task_id"] for p in problems] == ["HumanEval/0", "HumanEval/1"]
    canonical = [p["canonical_solution"] for p in problems]
    ok = HE.check_completions(problems, canonical, strip_prompt=False)
    assert [r["passed"] for r in ok] == [True, True], ok
    wrong = HE.check_completions(problems, ["    return None\n", "    return []\n"], strip_prompt=False)
    assert [r["passed"] for r in wrong] == [False, False]
    assert all(r["status"] == "failed" for r in wrong)
    # exiting early with status 0 skips the tests: not a pass
    cheat = HE.check_completions(problems[:1], ["    import sys; sys.exit(0)\n"], strip_prompt=False)
    assert not cheat[0]["passed"]
    # a completion that hangs is stopped
    hang = HE.check_completions(problems[:1], ["    while True:\n        pass\n"], strip_prompt=False, timeout=1)
    assert hang[0]["status"] == "timeout"
    # with strip_prompt (the default) a completion continues the prompt without its final newline
    stripped = HE.check_completions(problems[:1], ["\n" + canonical[0]])
    assert stripped[0]["passed"]


def test_humaneval_on_the_micro_model(micro_dir):
    from prod_unlearn.models.loading import load_model
    model, tok = load_model(str(micro_dir), "cpu", "fp32")
    res = evaluate(model, tok, task="humaneval", limit=2, max_new_tokens=16)
    assert res["task"] == "humaneval" and res["n"] == 2
    for k in UTILITY_TASKS["humaneval"].keys:
        assert k in res, k
    assert res["pass_at_1"] == 0.0 and res["n_passed"] == 0
    json.dumps(res)
