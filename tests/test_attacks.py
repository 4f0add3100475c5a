"""Attacks on the forgetting (prod_unlearn.attacks): each changes what it should, on micro models."""
from __future__ import annotations

import ast
import contextlib
import io
import json
import random
import re
import shutil
import subprocess
import tempfile
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import FORGET, make_model
from prod_unlearn.attacks import KINDS, get_attack, markdown_section, public, run_attacks
from prod_unlearn.attacks import mia, prefix, quantize, relearn, rewrite, transform
from prod_unlearn.attacks.common import auc, bootstrap_mean, cut_items, weights_restored
from prod_unlearn.data.batching import collate, encode
from prod_unlearn.data.examples import Example, write_jsonl

FAST = dict(max_new_tokens=12, n_boot=200, batch_size=8)

PROGRAM = '''"""Module docstring."""
import os
from collections import OrderedDict as OD

LIMIT = 3  # a module constant


def helper(values, scale=2):
    """Scale and keep the small ones."""
    total = 0
    kept = [v * scale for v in values if v < LIMIT]  # comprehension
    for item in kept:
        total += item
    try:
        int("x")
    except ValueError as err:
        total += len(str(err)) > 0
    return total, OD(a=1), os.sep


class Counter:
    """Counts."""
    start = 10

    def __init__(self, step):
        self.count = self.start
        self.step = step

    def bump(self, times=1):
        for _ in range(times):
            self.count += self.step
        return self.count


def main():
    counter = Counter(step=2)
    result = helper([1, 2, 5], scale=3)
    print(result, counter.bump(times=2), f"{LIMIT + 1}")


def only_doc():
    """Nothing else here."""


main()
'''


def _run_program(src: str) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(src, "<prog>", "exec"), {"__name__": "prog"})
    return buf.getvalue()


def _canonical_dump(tree: ast.AST) -> str:
    """ast.dump with every bound/loaded identifier replaced by its order of first appearance."""
    names: dict[str, str] = {}

    def canon(n: str) -> str:
        return names.setdefault(n, f"_{len(names)}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            node.id = canon(node.id)
        elif isinstance(node, ast.arg):
            node.arg = canon(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            node.name = canon(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            node.name = canon(node.name)
    return ast.dump(tree)


def _identifier_tokens(src: str) -> set[str]:
    return {t.string for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type == tokenize.NAME}


def _unlearned(memorised_model, tokenizer):
    """The memorised micro model after 3 steps of gradient ascent on FORGET (forgets most of it)."""
    model = memorised_model.train()
    batch = collate(encode(FORGET, tokenizer, 64), tokenizer.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        (-model(**batch).loss).backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


# ---------------------------------------------------------------- registry and shared pieces

def test_registry_lists_every_kind():
    assert KINDS == ["prefix", "relearn", "transform", "quantize", "mia"]
    for k in KINDS:
        mod = get_attack(k)
        assert mod.NAME == k and callable(mod.run) and callable(mod.plot) and mod.SUMMARY
    with pytest.raises(ValueError, match="expected one of"):
        get_attack("bogus")


def test_bootstrap_interval_contains_the_mean_and_is_seeded():
    v = [0.1, 0.5, 0.9, 0.3, 0.7]
    a, b = bootstrap_mean(v, 500, seed=1), bootstrap_mean(v, 500, seed=1)
    assert a == b
    assert a["mean"] == pytest.approx(0.5) and a["lo"] <= a["mean"] <= a["hi"] and a["lo"] < a["hi"]
    assert bootstrap_mean([0.4])["lo"] == bootstrap_mean([0.4])["hi"] == 0.4
    assert bootstrap_mean([])["mean"] is None


def test_line_cut_items_end_at_a_line(tokenizer):
    items = cut_items(tokenizer, FORGET, cut=0.5, max_new_tokens=64)
    assert [it.id for it in items] == [e.id for e in FORGET]
    for e, it in zip(FORGET, items):
        text = e.prompt + e.completion
        prompt = tokenizer.decode(it.prompt_ids, skip_special_tokens=True)
        lines = e.completion.splitlines(keepends=True)
        cut = len(e.prompt) + len("".join(lines[:max(1, round(len(lines) / 2))]))
        # the prompt ends at the line cut (a token straddling it belongs to the completion: data.tokenize)
        assert text.startswith(prompt) and cut - 6 < len(prompt) <= cut
        assert text[len(prompt):] == it.ref_text


def test_prefix_attack_keeps_the_bench_shape(memorised_model, tokenizer):
    from prod_unlearn.attacks.prefix import prefix_attack as moved
    from prod_unlearn.attacks.prefix import prefix_attack
    assert moved is prefix_attack
    res = prefix_attack(memorised_model, tokenizer, FORGET, ks=[0, 2], max_new_tokens=12)
    assert set(res) == {"bleu", "gain", "gain_mean", "gain_min", "gain_max"}
    assert all(isinstance(v, dict) for v in res.values()) and set(res["bleu"]) == {0, 2}
    assert res["bleu"][0] > 0.9  # the memorised model reproduces its files from the line cut
    full = get_attack("prefix").run(memorised_model, tokenizer, FORGET, original=memorised_model,
                                    cfg=prefix.Settings(ks=(0, 2), **FAST))
    assert {(r["model"], r["condition"]) for r in full["rows"]} == {(m, f"k={k}") for m in ("model", "original")
                                                                   for k in (0, 2)}
    json.dumps(full)


# ---------------------------------------------------------------- relearn

def test_relearning_on_the_forget_set_brings_it_back(memorised_model, tokenizer):
    model = _unlearned(memorised_model, tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = relearn.Settings(steps=(5, 25), lr=3e-3, relearn_length=64, holdout=0.2, sources=("forget",), **FAST)
    res = relearn.run(model, tokenizer, FORGET, cfg=cfg)
    rows = {(r["condition"], r["metric"]): r for r in res["rows"]}
    assert len(res["config"]["relearned"]) == 1 and res["config"]["scored"] == 4
    assert rows[("forget@25", "nll")]["mean"] < rows[("forget@0", "nll")]["mean"] - 0.5
    assert rows[("forget@25", "bleu")]["mean"] > rows[("forget@0", "bleu")]["mean"]
    assert rows[("forget@25", "bleu")]["gain_mean"] > 0
    for k, v in model.state_dict().items():  # the attack leaves the model as it found it
        assert torch.equal(v, before[k]), k
    assert not model.training


def test_relearn_split_is_seeded_and_disjoint():
    ex = [Example("", f"x = {i}\ny = {i}\n", str(i)) for i in range(20)]
    held, rest = relearn.split_forget(ex, 0.1, seed=3)
    assert len(held) == 2 and len(rest) == 18 and not {e.id for e in held} & {e.id for e in rest}
    assert relearn.split_forget(ex, 0.1, seed=3) == (held, rest)
    with pytest.raises(ValueError):
        relearn.split_forget(ex[:1])


# ---------------------------------------------------------------- transform

def test_renaming_is_consistent_and_leaves_the_program_otherwise_equal():
    out, mapping = rewrite.rename_identifiers(PROGRAM)
    assert out != PROGRAM and mapping
    # renamed: functions, parameters, locals, loop/except/comprehension targets, module globals
    for name in ("helper", "values", "total", "kept", "item", "err", "v", "main", "counter", "result", "LIMIT",
                 "Counter", "only_doc"):
        assert name in mapping, name
    # never renamed: builtins, imports, attribute and method names, class attributes, parameters that calls
    # pass by keyword (step, times, scale), self, dunders
    for name in ("print", "len", "range", "int", "str", "os", "OD", "count", "bump", "start", "self", "times",
                 "scale", "step", "__init__"):
        assert name not in mapping, name
    toks = _identifier_tokens(out)
    assert not set(mapping) & toks and set(mapping.values()) <= toks
    assert {"print", "os", "OD", "bump", "count", "start", "scale", "times"} <= toks
    # same AST once the mapping is applied, and equal up to a consistent renaming without it
    expected = rewrite._RenameAst(mapping).visit(ast.parse(PROGRAM))
    assert ast.dump(ast.parse(out)) == ast.dump(expected)
    assert _canonical_dump(ast.parse(out)) == _canonical_dump(ast.parse(PROGRAM))
    # layout and comments kept: same line count, comments in place
    assert len(out.splitlines()) == len(PROGRAM.splitlines()) and "# comprehension" in out
    assert _run_program(out) == _run_program(PROGRAM)


def test_comment_stripping_preserves_the_ast():
    out = rewrite.strip_comments(PROGRAM, docstrings=False)
    assert "#" not in out and '"""Counts."""' in out
    assert ast.dump(ast.parse(out)) == ast.dump(ast.parse(PROGRAM))
    both = rewrite.strip_comments(PROGRAM)
    assert '"""' not in both and "#" not in both
    assert ast.dump(ast.parse(both)) == ast.dump(rewrite.drop_docstrings(ast.parse(PROGRAM)))
    assert "def only_doc():\n    pass\n" in both
    assert _run_program(both) == _run_program(PROGRAM)


def test_reformat_and_all_keep_the_program():
    ref = rewrite.reformat(PROGRAM)
    assert ref != PROGRAM and ast.dump(ast.parse(ref)) == ast.dump(ast.parse(PROGRAM))
    everything = rewrite.transform_all(PROGRAM)
    assert "helper" not in everything and "#" not in everything and '"""' not in everything
    assert _run_program(everything) == _run_program(PROGRAM)


def test_transform_attack_scores_every_rewrite_on_the_same_files(memorised_model, tokenizer):
    bad = Example("", "def broken(:\n    pass\n", "broken")
    res = transform.run(memorised_model, tokenizer, FORGET + [bad], cfg=transform.Settings(**FAST))
    assert res["skipped"] == ["broken"]
    per = res["per_item"]["model"]
    assert set(per) == set(rewrite.TRANSFORMS)
    ids = {frozenset(v) for v in per.values()}
    assert len(ids) == 1 and len(next(iter(ids))) == len(FORGET)
    rows = {(r["condition"], r["metric"]): r for r in res["rows"]}
    assert rows[("identity", "bleu")]["mean"] > 0.9 and rows[("identity", "next_lines")]["mean"] > 0.9
    assert ("rename", "next_lines") in rows
    assert rows[("identity", "bleu")]["gain_mean"] == 0


# ---------------------------------------------------------------- quantize

@pytest.mark.parametrize("bits", [8, 4])
def test_per_channel_quantisation_moves_each_weight_at_most_half_a_step(bits):
    w = torch.randn(16, 40, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 3, 16)[:, None]
    q, scale = quantize.fake_quantize(w, bits)
    assert scale.shape == (16,)
    assert torch.all((w - q).abs() <= scale[:, None] / 2 + 1e-6)
    levels = torch.round(q / scale[:, None])
    assert levels.abs().max() <= 2 ** (bits - 1) - 1
    assert torch.allclose(levels, q / scale[:, None], atol=1e-4)
    assert len(torch.unique(levels)) <= 2 ** bits - 1


def test_quantize_conditions_change_the_model_and_are_undone(micro_model, tokenizer):
    before = {k: v.clone() for k, v in micro_model.state_dict().items()}
    with weights_restored(micro_model):
        quantize.apply_condition(micro_model, "int8")
        for name, p in micro_model.named_parameters():
            if p.dim() == 2:
                step = before[name].abs().amax(dim=1) / 127
                assert torch.all((p - before[name]).abs() <= step[:, None] / 2 + 1e-6), name
                assert not torch.equal(p, before[name])
            else:
                assert torch.equal(p, before[name])  # norms untouched
    with weights_restored(micro_model):
        quantize.apply_condition(micro_model, "bf16")
        w = micro_model.lm_head.weight
        assert torch.equal(w, before["lm_head.weight"].to(torch.bfloat16).float())
    for k, v in micro_model.state_dict().items():
        assert torch.equal(v, before[k])
    res = quantize.run(micro_model, tokenizer, FORGET, cfg=quantize.Settings(quant_ppl_files=2, quant_ppl_tokens=32, **FAST))
    assert [r["condition"] for r in res["rows"]] == ["fp32", "bf16", "fp16", "int8", "int4"]
    assert set(res["heldout_ppl"]["model"]) == {"fp32", "bf16", "fp16", "int8", "int4"}


# ---------------------------------------------------------------- mia

def test_mann_whitney_auc():
    assert auc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auc([0, 1], [5, 6]) == 0.0
    assert auc([1, 1], [1, 1]) == 0.5
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=30), rng.normal(0.5, size=25)
    a[:5] = b[:5]  # ties
    brute = np.mean([(x > y) + 0.5 * (x == y) for x in a for y in b])
    assert auc(a, b) == pytest.approx(brute)


def _snippets(n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    return [Example("", f"def f{i}({c}):\n    return {c} * {rng.randint(10, 99)} + {rng.randint(10, 99)}\n", f"s{i}")
            for i, c in ((i, rng.choice("xyzabc")) for i in range(n))]


def test_mia_auc_is_one_on_an_overfit_model_and_half_on_random_splits(tokenizer):
    texts = _snippets(20)
    members, nonmembers = texts[:10], texts[10:]
    model = make_model(tokenizer).train()
    batch = collate(encode(members, tokenizer, 64), tokenizer.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    for _ in range(40):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    control = Path(tempfile.mkdtemp()) / "control.jsonl"
    write_jsonl(nonmembers, control)
    res = mia.run(model, tokenizer, members, original=make_model(tokenizer),
                  cfg=mia.Settings(n_boot=200, control_path=str(control)))
    rows = {(r["model"], r["condition"]): r for r in res["rows"]}
    for score in ("loss", "min_k", "min_k_pp"):
        assert rows[("model", score)]["mean"] >= 0.95, score
        assert rows[("model", score)]["gain_mean"] > 0  # more trace than in the untrained original
    # random member / non-member labels carry no signal: AUC ~ 0.5 on average
    scores = mia.membership_scores(make_model(tokenizer), tokenizer, [e.completion for e in texts])
    aucs = []
    for s in range(200):
        idx = list(range(20))
        random.Random(s).shuffle(idx)
        aucs.append(auc([scores[i]["min_k_pp"] for i in idx[:10]], [scores[i]["min_k_pp"] for i in idx[10:]]))
    assert abs(np.mean(aucs) - 0.5) < 0.05


# ---------------------------------------------------------------- run_attacks, CLI, audit

def test_run_attacks_for_bench(micro_model, tokenizer, tmp_path):
    res = run_attacks(micro_model, tokenizer, FORGET, kinds=["prefix", "quantize"], ks=(0, 2), quant=("int8",),
                      quant_ppl_tokens=0, **FAST)
    assert list(res) == ["prefix", "quantize"]
    for kind, r in res.items():
        assert r["kind"] == kind and r["rows"]
        assert "per_item" not in public(r)
        assert markdown_section(r)[0].startswith(f"### {kind}")
    with pytest.raises(ValueError):
        run_attacks(micro_model, tokenizer, FORGET, kinds=["prefix"], no_such_option=1)
    from prod_unlearn.attacks import methods_table, plot_methods
    table = methods_table("quantize", {"ga": res["quantize"], "prod": res["quantize"]})
    assert table[0] == "| method | fp32 | int8 |" and len(table) == 4 and table[3].startswith("| prod | ")
    plot_methods("prefix", {"ga": res["prefix"], "prod": res["prefix"]}, tmp_path / "m.png")
    assert (tmp_path / "m.png").exists()


def _cli(*args):
    from prod_unlearn.cli import app
    return CliRunner().invoke(app, list(args), prog_name="prod-unlearn")


def test_cli_help_documents_attack_kinds_and_audit():
    out = _cli("attack", "--help").output
    for opt in ("--kind", "--original", "--steps", "--max-items", "--json", "--png"):
        assert opt in out
    r = _cli("audit", "--help")
    assert r.exit_code == 0 and "Usage: prod-unlearn audit" in r.output
    for opt in ("--model", "--forget", "--original", "--out"):
        assert opt in r.output


def test_cli_attack_kind_json_and_png(micro_dir, memorised_dir, tmp_path):
    data = tmp_path / "forget.jsonl"
    write_jsonl(FORGET, data)
    png = tmp_path / "t.png"
    r = _cli("attack", "--kind", "transform", "--model", str(micro_dir), "--original", str(memorised_dir),
             "--data", str(data), "--max-new-tokens", "8", "--json", "--png", str(png), "--device", "cpu")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["kind"] == "transform" and {row["model"] for row in res["rows"]} == {"model", "original"}
    assert png.stat().st_size > 1000
    r = _cli("attack", "--model", str(memorised_dir), "--data", str(data), "--k", "0", "--k", "2",
             "--max-new-tokens", "8", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.stdout.strip().splitlines()[-1])) == {"bleu", "gain_mean", "gain_min", "gain_max"}
    r = _cli("attack", "--kind", "nope", "--model", str(micro_dir), "--data", str(data))
    assert r.exit_code == 2 and "expected one of" in r.output


@pytest.fixture(scope="module")
def audit_out(memorised_dir, micro_dir, tmp_path_factory, tokenizer):
    """One audit of a micro model with every attack and a retain model (read by several tests)."""
    from transformers import AutoModelForCausalLM
    tmp_path = tmp_path_factory.mktemp("audit")
    data = tmp_path / "forget.jsonl"
    write_jsonl(FORGET, data)
    unlearned = tmp_path / "unlearned"
    model = AutoModelForCausalLM.from_pretrained(memorised_dir, dtype=torch.float32)
    _unlearned(model, tokenizer).save_pretrained(unlearned)
    tokenizer.save_pretrained(unlearned)
    out = tmp_path / "audit"
    with pytest.MonkeyPatch.context() as mp:  # (the autouse isolation is per test; this runs once)
        mp.setenv("PROD_UNLEARN_CACHE", str(tmp_path / "cache"))
        mp.setenv("PROD_UNLEARN_NO_PROGRESS", "1")
        r = _cli("audit", "--model", str(unlearned), "--forget", str(data), "--original", str(memorised_dir),
                 "--retain-model", str(micro_dir), "--out", str(out), "--max-new-tokens", "8", "--steps", "2",
                 "--steps", "4", "--device", "cpu")
        assert r.exit_code == 0, r.output
    return out


def test_audit_writes_its_report(audit_out):
    """With a retain model (here the never-fine-tuned micro model) every section has its floor."""
    out = audit_out
    for f in ("report.md", "report.html", "report.json", "extraction.png", "recovery.png") + \
            tuple(f"{k}.png" for k in KINDS):
        assert (out / f).exists(), f
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["attacks"]) == set(KINDS)
    assert rep["utility"]["model"]["ratio"] > 0 and rep["timings"]["total"] > 0
    assert {r_["attack"] for r_ in rep["recovery"]} == {"prefix", "relearn", "transform", "quantize"}
    md = (out / "report.md").read_text()
    for heading in ("## Verdict", "## Extraction at each prompt cut", "### relearn", "### mia", "## Utility",
                    "## Budget", "Against the retain model"):
        assert heading in md
    # the retain model went through the identical attacks: every kind has its rows, the verdicts a floor
    assert all(any(row["model"] == "retain" for row in rep["attacks"][k]["rows"]) for k in KINDS)
    assert all(rec["retain_bleu"] is not None for rec in rep["recovery"])
    figures = {t["figure"]: t for t in rep["three_way"]}
    assert "membership AUC (Min-K%++)" in figures
    assert figures["held-out perplexity (utility, not a forget figure)"]["gap_closed"] is None
    ext = figures["extraction BLEU at the 50% cut"]
    assert ext["retain"] is not None and ext["original"] > ext["retain"]
    ks = rep["forget_quality_ks"]
    assert ks["n"] == len(FORGET) and 0 <= ks["lo"] <= ks["hi"] <= 1 and 0 <= ks["statistic"] <= 1
    assert 0 <= ks["p_value"] <= 1
    assert "Forget quality (TOFU-style" in md and "Membership gap to the retain model" in md
    if ext["gap_closed"] is not None:
        assert abs(ext["gap_closed"] - (ext["original"] - ext["model"]) / (ext["original"] - ext["retain"])) < 1e-9


def test_cli_control_files_for_mia(micro_dir, tmp_path):
    """`--control FILE` replaces the shipped non-members in `attack --kind mia` and `audit`; other
    kinds refuse it (they read no control files)."""
    data, control = tmp_path / "forget.jsonl", tmp_path / "control.jsonl"
    write_jsonl(FORGET, data)
    write_jsonl([Example("", "def area(r):\n    return 3.14 * r * r\n", "c1"),
                 Example("# sum\n", "total = 0\nfor x in [1, 2]:\n    total += x\n", "c2")], control)
    r = _cli("attack", "--kind", "mia", "--model", str(micro_dir), "--data", str(data), "--control", str(control),
             "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["config"]["nonmembers"] == 2 and res["config"]["members"] == len(FORGET)
    r = _cli("attack", "--kind", "prefix", "--model", str(micro_dir), "--data", str(data), "--control", str(control))
    assert r.exit_code == 2 and "--control" in r.output
    r = _cli("attack", "--kind", "mia", "--model", str(micro_dir), "--data", str(data),
             "--control", str(tmp_path / "nope.jsonl"))
    assert r.exit_code == 2 and "nope.jsonl" in r.output
    out = tmp_path / "audit"
    r = _cli("audit", "--model", str(micro_dir), "--forget", str(data), "--kinds", "mia", "--control", str(control),
             "--out", str(out), "--max-new-tokens", "4", "--device", "cpu")
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["budget"]["control_path"] == str(control) and rep["attacks"]["mia"]["config"]["nonmembers"] == 2
    r = _cli("audit", "--model", str(micro_dir), "--forget", str(data), "--kinds", "prefix", "--control",
             str(control), "--out", str(tmp_path / "a2"))
    assert r.exit_code == 2 and "--control" in r.output and not (tmp_path / "a2").exists()


def test_cli_attack_with_retain_model_floor(micro_dir, memorised_dir, tmp_path):
    """`attack --retain-model` puts a never-trained model through the identical attack (same split and
    seed): its rows are the floor, labelled `retain`; relearning it recovers what any model would."""
    data = tmp_path / "forget.jsonl"
    write_jsonl(FORGET, data)
    r = _cli("attack", "--kind", "relearn", "--model", str(memorised_dir), "--retain-model", str(micro_dir),
             "--data", str(data), "--steps", "2", "--max-new-tokens", "8", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    labels = {row["model"] for row in res["rows"]}
    assert labels == {"model", "retain"}
    conds = lambda who: {(row["condition"], row["metric"]) for row in res["rows"] if row["model"] == who}  # noqa: E731
    assert conds("model") == conds("retain")
    r = _cli("attack", "--kind", "mia", "--model", str(memorised_dir), "--retain-model", "none", "--data", str(data),
             "--json", "--device", "cpu")
    assert r.exit_code == 0 and {row["model"] for row in json.loads(r.stdout.strip().splitlines()[-1])["rows"]} == {"model"}


def test_cli_eval_reports_the_retain_floor(micro_dir, memorised_dir, tmp_path):
    data = tmp_path / "forget.jsonl"
    write_jsonl(FORGET, data)
    args = ["eval", "--model", str(memorised_dir), "--task", "copyright", "--data", str(data), "--max-new-tokens", "16",
            "--json", "--device", "cpu"]
    r = _cli(*args, "--retain-model", str(micro_dir))
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["retain_model"] == str(micro_dir) and res["retain"]["n"] == res["n"]
    assert res["retain"]["bleu"] < res["bleu"]          # the memorised model reproduces; the never-trained one does not
    r = _cli(*args)                                     # a user's own set: no retain model is known
    assert r.exit_code == 0 and "retain" not in json.loads(r.stdout.strip().splitlines()[-1])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _chromium(*args, timeout: int = 90) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--user-data-dir=" + tempfile.mkdtemp(), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_audit_html_is_one_self_contained_page(audit_out):
    """report.html: verdict first, every attack's section with its chart inlined, then request, budget and
    the run section; nothing fetched, no script, user-supplied text shown as text."""
    page = (audit_out / "report.html").read_text()
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings[0] == "Verdict" and headings[-3:] == ["Request", "Budget", "Run"]
    assert {"Extraction at each prompt cut", "Attacks", "Utility"} <= set(headings)
    attacks = page[page.index("<h2>Attacks</h2>"):page.index("<h2>Utility</h2>")]
    for kind in KINDS:
        section = attacks[attacks.index(f"<h3>{kind}:"):]
        section = section[:section.find("<h3>", 4) if "<h3>" in section[4:] else len(section)]
        assert 'src="data:image/png;base64,' in section, kind          # its chart, inlined
        assert "[" in section and "]" in section                         # intervals in its table
    assert "run key" in page and "transformers" in page
    assert not re.search(r'src="(?!data:)|href="http|<script', page)    # self-contained, no script
    assert "Content-Security-Policy" in page and "@media print" in page


def test_report_html_escapes_what_the_markdown_carries(tmp_path):
    from prod_unlearn.html_report import write_html
    md = "# t\n\n## Verdict\n\n| a | b |\n|---|---:|\n| <script>x()</script> | `<img src=y>` |\n\n![c](../outside.png)\n"
    page = write_html(tmp_path, md, "t").read_text()
    assert "<script>x()" not in page and "&lt;script&gt;" in page and "<img src=y>" not in page
    assert "chart ../outside.png is missing" in page  # never reads a file outside the report folder


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium (Debian package `chromium`; .ci/run installs it)")
def test_audit_html_renders_in_chromium(audit_out, tmp_path):
    """Headless Chromium renders the page (a screenshot that is not blank, every section in its DOM)
    and prints it on A4."""
    import matplotlib.image
    shot = tmp_path / "shot.png"
    url = (audit_out / "report.html").as_uri()
    r = _chromium("--window-size=1280,2000", f"--screenshot={shot}", url)
    assert shot.exists(), r.stderr[-2000:]
    px = matplotlib.image.imread(shot)[..., :3]
    ink = (px.mean(axis=2) < 0.9).mean()          # share of pixels that are not (near) white
    assert 0.02 < ink < 0.9 and px.std() > 0.05, ink
    dom = _chromium("--dump-dom", url).stdout
    for h in ("Verdict", "Extraction at each prompt cut", "Attacks", "Utility", "Request", "Budget", "Run"):
        assert f"<h2>{h}</h2>" in dom, h
    pdf = tmp_path / "report.pdf"
    _chromium("--no-pdf-header-footer", f"--print-to-pdf={pdf}", url)
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and data.count(b"/Type /Page") - data.count(b"/Type /Pages") >= 2
    assert re.search(rb"/MediaBox \[0 0 59[45](\.\d+)? 84[12]", data)   # A4 (595 x 842 pt)


# ---------------------------------------------------------------- settings


def test_each_kind_owns_its_settings_and_the_audit_presets_them():
    from prod_unlearn.attacks import settings
    from prod_unlearn.attacks.audit import AuditBudget

    s = settings("prefix", ks=(0, 4), steps=[5])  # --steps is relearn's: prefix leaves it
    assert s.ks == (0, 4) and not hasattr(s, "steps") and s.max_new_tokens == 128
    assert settings("relearn", steps=[5]).steps == (5,) and settings("relearn").max_new_tokens == 64
    with pytest.raises(ValueError, match="stepz: no attack has them"):
        settings("prefix", stepz=(5,))
    b = AuditBudget(max_items=0, steps=(3,))
    assert b.attack_settings("prefix", False).max_items is None  # 0 = every file of a capped kind
    assert b.attack_settings("prefix", False).ks == prefix.AUDIT.ks
    r = b.attack_settings("relearn", True)
    assert r.steps == (3,) and r.relearn_eval_items == relearn.AUDIT.relearn_eval_items and not r.original
    assert b.attack_settings("mia", True).original  # the original is attacked where the audit asks
    assert {s.max_new_tokens for s in (b.attack_settings(k, False) for k in KINDS)} == {AuditBudget.max_new_tokens}
