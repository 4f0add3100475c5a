"""Every default the command line states is the one the code declares: an option's default value,
and a number or list its help names as "[default ...]", equal the dataclass field (or constant) that
the Python API and the training code read. A default changed in one place and not the other fails
here, naming both (the class of bug: `eval --max-new-tokens` once said 512 where the task used 256).
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import click
import pytest
import typer

from prod_unlearn.attacks.audit import AuditBudget
from prod_unlearn.attacks.bench import DEFAULT_KINDS, QUICK_KINDS
from prod_unlearn.attacks import prefix, quantize, relearn, transform
from prod_unlearn.bench.config import LR_GRID, TARGET, BenchConfig
from prod_unlearn.cli import app
from prod_unlearn.tasks.copyright import _copyright_eval
from prod_unlearn.tasks.deprecated import SITE_TOKENS
from prod_unlearn.tasks.humaneval import humaneval
from prod_unlearn.tasks.insecure import GENERATION_CAP
from prod_unlearn.training.distill import DistillConfig
from prod_unlearn.training.loop import TrainConfig
from prod_unlearn.training.memorise import default_replay
from prod_unlearn.training.until import RETAIN_FILES, StopRule, auto_check_every

QUICK = BenchConfig.quick()


def _options() -> dict[tuple[str, str], click.Option]:
    cmd = typer.main.get_command(app)
    return {(name, p.name): p for name, c in cmd.commands.items() for p in c.params
            if isinstance(p, click.Option) and p.name}


def _arg_default(fn, name: str):
    return inspect.signature(fn).parameters[name].default


# (command, option) -> the value its default must equal (the declaration the code reads)
VALUES = {
    ("distill", "noise"): DistillConfig.noise, ("distill", "tokens"): DistillConfig.tokens,
    ("distill", "lr"): DistillConfig.lr, ("distill", "batch_size"): DistillConfig.batch_size,
    ("distill", "context"): DistillConfig.context, ("distill", "seed"): DistillConfig.seed,
    ("attack", "k"): list(prefix.Settings.ks), ("attack", "steps"): list(relearn.Settings.steps),
    ("attack", "lr"): relearn.Settings.lr, ("attack", "seed"): prefix.Settings.seed,
    ("audit", "max_new_tokens"): AuditBudget.max_new_tokens,
    ("bench", "target"): TARGET, ("bench", "rule"): BenchConfig.rule,
}

# (command, option) -> the text its help must state as "[default ...]", built from the declarations
HELP = {
    ("unlearn", "until_bleu"): f"{StopRule.until_bleu:.2f}",
    ("unlearn", "max_utility_loss"): f"{StopRule.max_utility_loss:.2f}",
    ("unlearn", "check_every"): f"from the forget set's size, {auto_check_every(1)} to {auto_check_every(10**6)}",
    ("unlearn", "retain"): f"training until forgotten, {RETAIN_FILES} files of this Python's standard library",
    ("bench", "eval_points"): f"{BenchConfig.eval_points}; quick: {QUICK.eval_points}",
    ("bench", "seeds"): f"{BenchConfig.seeds}",
    ("bench", "utility"): f"{BenchConfig.utility}; quick: {QUICK.utility}",
    ("bench", "max_items"): f"all; quick {QUICK.max_items}",
    ("bench", "lr_grid"): ",".join(f"{x:.0e}".replace("e-0", "e-") for x in LR_GRID),
    ("bench", "attacks"): f"{','.join(DEFAULT_KINDS)}",
    ("bench", "methods"): "all six" if len(BenchConfig().methods) == 6 else "?",
    ("bench", "tasks"): ",".join(BenchConfig().tasks),
    ("eval", "max_new_tokens"): (f"copyright {_arg_default(_copyright_eval, 'max_new_tokens')}, insecure "
                                 f"{GENERATION_CAP}, deprecated {SITE_TOKENS}, humaneval "
                                 f"{_arg_default(humaneval, 'max_new_tokens')}"),
    ("learn", "replay"): f"{_arg_default(default_replay, 'n')} training files",
    ("unlearn", "save_steps"): f"{TrainConfig.save_steps}, per epoch only",
    ("audit", "max_items"): f"{prefix.AUDIT.max_items} files for prefix, transform and quantize"
    if prefix.AUDIT.max_items == transform.AUDIT.max_items == quantize.AUDIT.max_items else "the presets differ",
    ("audit", "steps"): ", ".join(map(str, relearn.AUDIT.steps)),
    ("attack", "max_new_tokens"): f"{prefix.Settings.max_new_tokens} for prefix, "
                                  f"{relearn.Settings.max_new_tokens} for the other kinds",
}


def _api_pairs():
    """(command, option, API default) for every option that is also a parameter of the command's
    Python API function (the CLI is a layer over it: the same default, or None there = declared
    elsewhere and checked in VALUES)."""
    from prod_unlearn import api

    functions = {"unlearn": api.unlearn, "eval": api.evaluate, "attack": api.attack, "audit": api.audit,
                 "bench": api.benchmark, "distill": api.distill}
    for (command, name), opt in sorted(_options().items()):
        if command in functions and name in inspect.signature(functions[command]).parameters:
            default = inspect.signature(functions[command]).parameters[name].default
            if default is not inspect.Parameter.empty:
                yield command, name, default


@pytest.mark.parametrize("command,name,default", list(_api_pairs()), ids=lambda x: str(x))
def test_option_default_is_the_python_apis(command, name, default):
    opt = _options()[(command, name)]
    if default is None and opt.default is not None:
        assert (command, name) in VALUES, f"{command} --{name}: {opt.default!r} here, declared nowhere the API reads"
        return
    got = str(opt.default) if isinstance(opt.default, Path) else opt.default
    assert got == default, f"{command} --{name}: CLI default {opt.default!r}, Python API default {default!r}"


@pytest.mark.parametrize("key", sorted(VALUES), ids="/".join)
def test_option_default_is_the_declared_one(key):
    opt = _options()[key]
    assert opt.default == VALUES[key], f"{key[0]} --{key[1]}: default {opt.default!r}, declared {VALUES[key]!r}"


def test_every_stated_number_default_is_checked():
    """A help text that states a number as its default is in HELP or VALUES (so it is checked)."""
    stated = {key for key, opt in _options().items() if opt.help and re.search(r"\[default[^\]]*\d", opt.help)}
    unchecked = sorted(stated - set(HELP) - set(VALUES) - {("learn", "lr")})  # lr: a hint for 7B, not a default
    assert not unchecked, f"options stating a default no test checks: {unchecked}"


@pytest.mark.parametrize("key", sorted(HELP), ids="/".join)
def test_help_states_the_declared_default(key):
    opt = _options()[key]
    stated = " ".join(re.findall(r"\[default[: ]\s*([^\]]*)\]", " ".join((opt.help or "").split())))
    assert HELP[key] in stated, f"{key[0]} --{key[1]}: help says [default {stated}], the code declares {HELP[key]}"


def test_bench_quick_attacks_are_stated():
    opt = _options()[("bench", "attacks")]
    assert f"quick: {','.join(QUICK_KINDS)}" in " ".join((opt.help or "").split())


def test_the_check_catches_a_stale_help(monkeypatch):
    import sys
    stale = click.Option(["--until-bleu"], default=None, help="Stop once ... [default: 0.20]")
    monkeypatch.setattr(sys.modules[__name__], "_options", lambda: {("unlearn", "until_bleu"): stale})
    with pytest.raises(AssertionError, match=r"help says \[default 0.20\], the code declares 0.10"):
        test_help_states_the_declared_default(("unlearn", "until_bleu"))


def test_help_shows_every_stated_default():
    """What a help text states is what `--help` prints: "[default: ...]" is text, not rich markup
    (rich once dropped every one of them from the rendered help)."""
    from typer.testing import CliRunner
    stated = {}
    for (command, _), opt in _options().items():
        for text in re.findall(r"\[default[^\]]*\]", opt.help or ""):
            stated.setdefault(command, []).append(text)
    assert len(stated) >= 5
    for command, texts in stated.items():
        out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400"}).output
        flat = " ".join(out.replace("│", " ").split())
        for text in texts:
            assert " ".join(text.split()) in flat, (command, text)
