"""Generated from the declarations (issue 23): every option of every command but its flags declares
what it accepts (cli/guard.py, bound: numeric bounds, lists, path roles, choices, patterns), and each
out-of-bounds value is one line naming the option, exit 2, before anything loads. A new option
without a declaration fails here the day it is added."""
from __future__ import annotations

import inspect
import os

import pytest
from typer.models import ArgumentInfo, OptionInfo
from typer.testing import CliRunner

from prod_unlearn.cli import app
from prod_unlearn.cli.checks import PACKAGE_DIR

runner = CliRunner()
REQUIRED = {"learn": ["--data", "{forget}", "--out", "{tmp}/learned"], "build-task": ["insecure"],
            "distill": ["--teacher", "{tmp}/teacher", "--out", "{tmp}/distilled"]}


def declared():
    """(command, option flag, annotation, help, its Bound or None) for every option of every command."""
    rows = []
    for c in app.registered_commands:
        name = c.name or c.callback.__name__
        for pname, p in inspect.signature(c.callback).parameters.items():
            info = p.default
            if not isinstance(info, (OptionInfo, ArgumentInfo)):
                continue
            flag = (info.param_decls[0] if getattr(info, "param_decls", None) else
                    "--" + pname.replace("_", "-") if isinstance(info, OptionInfo) else pname.upper())
            rows.append((name, flag, str(p.annotation), info.help or "", getattr(info.callback, "bound", None)))
    return rows


def test_every_option_declares_what_it_accepts():
    """Flags (bool) aside, every option of every command has a declared bound."""
    missing = [f"{c} {flag}" for c, flag, ann, h, b in declared() if ann != "bool" and b is None]
    assert not missing, "options without a declared bound (cli/guard.py, bound): " + ", ".join(missing)
    assert len([r for r in declared() if r[4] is not None]) >= 100


def _bad_paths(b, tmp_path, forget):
    fifo = tmp_path / "fifo.py"
    if not fifo.exists():
        os.mkfifo(fifo)
    foreign = tmp_path / "notes"
    foreign.mkdir(exist_ok=True)
    (foreign / "mine.txt").write_text("a user's file\n")
    if b.path in ("input", "input-file", "input-folder"):
        return [str(tmp_path / "missing"), str(fifo)]
    if b.path == "model":
        return [str(fifo)]
    if b.path == "output":
        return [str(PACKAGE_DIR / "x"), str(foreign), str(forget)]
    if b.path == "output-file":
        return [str(foreign / "mine.txt"), str(foreign)]
    return []


def cases(tmp_path, forget):
    for cmd, flag, ann, h, b in declared():
        if b is None:
            continue
        for bad in b.bad_values() + _bad_paths(b, tmp_path, forget):
            yield cmd, flag, bad


def test_every_out_of_bounds_value_is_one_line_naming_the_option(tmp_path):
    forget = tmp_path / "forget.jsonl"
    forget.write_text('{"completion": "def f():\\n    return 1\\n"}\n')
    seen = 0
    for cmd, flag, bad in cases(tmp_path, forget):
        base = [a.format(forget=forget, tmp=tmp_path) for a in REQUIRED.get(cmd, [])]
        if flag.startswith("-"):
            if flag in base:                      # replace a required option's value
                i = base.index(flag)
                base = base[:i] + base[i + 2:]
            args = [cmd, *base, f"{flag}={bad}"]
        else:                                     # an argument (scan FILES, build-task NAME): it replaces theirs
            base = [a for i, a in enumerate(base) if a.startswith("-") or (i and base[i - 1].startswith("-"))]
            args = [cmd, *base, bad]
        before = sorted(p.name for p in tmp_path.iterdir())
        r = runner.invoke(app, args, prog_name="prod-unlearn")
        out = r.output.strip()
        assert r.exit_code == 2, (args, r.exit_code, out[-500:])
        assert len(out.splitlines()) == 1 and out.startswith("error: "), (args, out)
        assert flag in out or (not flag.startswith("-") and flag in out.upper()) or "FILES" in out, (args, out)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, (args, "wrote something")
        seen += 1
    assert seen >= 100


NO_EFFECT = [
    (["unlearn", "--epochs", "1", "--check-every", "5"], "--check-every: has no effect with --epochs"),
    (["bench", "--lr-grid", "1e-5"], "--lr-grid: has no effect without --calibrate"),
    (["build-task", "deprecated", "--model", "x"], "--model: has no effect unless NAME is insecure"),
    (["attack", "--kind", "prefix", "--control", "{forget}"], "--control: has no effect unless --kind is mia"),
    (["audit", "--kinds", "prefix", "--control", "{forget}"], "--control: has no effect unless --kinds includes mia"),
]


@pytest.mark.parametrize("args,needle", NO_EFFECT, ids=[a[0] + " " + a[-2] for a, _ in NO_EFFECT])
def test_an_option_without_effect_in_the_mode_is_an_error(tmp_path, args, needle):
    forget = tmp_path / "f.jsonl"
    forget.write_text('{"completion": "x = 1\\ny = 2\\n"}\n')
    r = runner.invoke(app, [a.format(forget=forget) for a in args], prog_name="prod-unlearn")
    assert r.exit_code == 2 and r.output.strip().startswith(f"error: {needle}"), r.output
