"""The guard every command passes before its body runs: declared bounds, path roles, one output guard.

Each numeric, list and path option declares what it accepts beside its default:
``typer.Option(16, callback=bound(min=1))``. Click runs the check while it parses, for every command;
``tests/test_bounds.py`` walks every option of every command and feeds it its out-of-bounds values,
so an option without a declared ``Bound`` fails the suite the day it is added.

Then ``cli._Command.invoke`` calls :func:`guard` with all options parsed:
- an option that has no effect in the chosen mode (``Bound.needs``) is an error naming the mode;
- inputs (paths and local model folders) must be regular files or folders: a FIFO, socket or device is
  refused (it would block or loop);
- an output may not be, contain or sit inside any input or the installed package, and an existing
  output is only reused, or cleared by ``--overwrite``, when the same command wrote it (``MARKER``);
  an existing file is only replaced when prod-unlearn wrote it;
- a run holds its output folder's lock (``LOCK``) while it writes: a second run refuses at once;
- each output folder gets ``config.toml``: the command's options as resolved. ``--config FILE``
  (every command) reads such a file as the options' defaults (flags given still win; the bounds
  apply to its values), so ``prod-unlearn unlearn --config runs/prod/config.toml`` replays a run.
Nothing is written before these checks pass; a folder the guard created and the command left
empty (an error) is removed again.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from prod_unlearn.cli.checks import PACKAGE_DIR, input_path
from prod_unlearn.errors import UsageError
from prod_unlearn.runs import CONFIG, LOCK, MARKER, OURS

GUARD = "prod_unlearn.guard"  # ctx.meta key: (bound, param, value) of every declared option
PNG_SIGNATURE = b"prod-unlearn"  # plots.py writes it into every PNG's metadata


def option_name(param: click.Parameter) -> str:
    return param.opts[0] if isinstance(param, click.Option) else param.human_readable_name


@dataclass(frozen=True)
class Bound:
    """What one option accepts; checked at parse time (``callback=``) and by :func:`guard`."""

    min: float | None = None  # inclusive lower bound
    gt: float | None = None  # exclusive lower bound
    max: float | None = None  # inclusive upper bound
    items: bool = False  # a comma-separated list: no empty entry, none repeated
    path: str | None = None  # input | input-file | input-folder | model | output | output-file
    owner: str | None = None  # output folder written by this command [default: the running one]
    suffixes: tuple[str, ...] = ()  # an output file's accepted extensions
    choices: Callable[[], list] | tuple | None = None  # the accepted names (a callable: a registry, read late)
    item: Callable[[str], object] | None = None  # checks one list entry (raises ValueError: the message)
    pattern: str | None = None  # a regular expression the whole value must match
    nonempty: bool = False  # a free-form name that may not be empty
    adopt: str | None = None  # a file that marks an unmarked folder as the owner's (an older version's
    # bench); never enough for --overwrite
    default: Callable[[dict], Path] | None = None  # the output folder when the option is left out
    needs: Callable[[dict], bool] | None = None  # the option has an effect only when this holds...
    needs_text: str = ""  # ...said as "needs --calibrate"

    def parse(self, ctx: click.Context, param: click.Parameter, value):
        ctx.meta.setdefault(GUARD, []).append((self, param, value))
        if value is not None:
            for v in value if isinstance(value, (list, tuple)) else [value]:
                self.check(option_name(param), v)
        return value

    def check(self, opt: str, v) -> None:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if not math.isfinite(v):
                raise UsageError(f"{opt} {v}: expected a finite number")
            if (
                (self.min is not None and v < self.min)
                or (self.gt is not None and v <= self.gt)
                or (self.max is not None and v > self.max)
            ):
                raise UsageError(f"{opt} {v}: expected {self.describe(isinstance(v, int))}")
        if self.choices is not None and not self.items:
            known = list(self.choices() if callable(self.choices) else self.choices)
            if v not in known:
                raise UsageError(f"{opt} {v}: expected one of {', '.join(map(str, known))}")
        if self.pattern is not None and not re.fullmatch(self.pattern, str(v)):
            raise UsageError(f"{opt} {v}: expected {self.pattern.replace('|', ' | ')}")
        if self.nonempty and not str(v).strip():
            raise UsageError(f"{opt} '': expected a name")
        if self.items:
            names = [s.strip() for s in str(v).split(",")]
            if not str(v).strip() or not all(names):
                raise UsageError(f"{opt} {v!r}: expected a comma-separated list without empty entries")
            if len(set(names)) != len(names):
                raise UsageError(f"{opt} {v}: a name is repeated")
            known = list(self.choices() if callable(self.choices) else self.choices or [])
            for n in names if known else []:
                if n not in known:
                    raise UsageError(f"{opt} {n}: unknown (expected one of {', '.join(known)})")
            if self.item is not None:
                for n in names:
                    try:
                        self.item(n)
                    except ValueError as e:
                        raise UsageError(f"{opt} {n}: {e}") from None
        if self.path and not str(v).strip():
            raise UsageError(f"{opt} '': expected a {'model folder or hub id' if self.path == 'model' else 'path'}")
        if self.suffixes and Path(str(v)).suffix.lower() not in self.suffixes:
            raise UsageError(f"{opt} {v}: expected a file name ending in {' or '.join(self.suffixes)}")
        if self.path in ("input", "input-file", "input-folder"):
            input_path(
                opt,
                Path(os.path.expanduser(str(v))),
                {"input": "file or folder", "input-file": "file", "input-folder": "folder"}[self.path],
            )
        elif self.path == "model" and str(v).lower() != "none" and Path(os.path.expanduser(str(v))).exists():
            input_path(opt, Path(os.path.expanduser(str(v))), "folder")

    def describe(self, integer: bool) -> str:
        parts = (
            ([f">= {self.min:g}"] if self.min is not None else [])
            + ([f"> {self.gt:g}"] if self.gt is not None else [])
            + ([f"<= {self.max:g}"] if self.max is not None else [])
        )
        return f"{'an integer' if integer else 'a number'} {' and '.join(parts)}"

    def bad_values(self) -> list[str]:
        """Values outside the bounds (for the generated test)."""
        nums: list[float] = []
        if self.min is not None:
            nums.append(self.min - 1)
        if self.gt is not None:
            nums.append(self.gt)
        if self.max is not None:
            nums.append(self.max + 1)
        bad = [str(int(b)) if float(b).is_integer() else str(b) for b in nums]
        if self.items:
            bad += [",", "", "a,,b"]
        if self.suffixes:
            bad.append("chart.txt")
        if self.choices is not None or self.pattern or self.item is not None:
            bad.append("no-such-choice")
        if self.nonempty or self.path == "model":
            bad.append("")
        return bad


def bound(**kw) -> Callable:
    """``typer.Option(default, callback=bound(min=1))``: the option's click callback, its Bound attached."""
    b = Bound(**kw)

    def callback(ctx: click.Context, param: click.Parameter, value):
        return b.parse(ctx, param, value)

    callback.__dict__["bound"] = b  # a function attribute (read with getattr), which mypy cannot declare
    return callback


# ---------------------------------------------------------------- outputs


def _within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _is_ours(file: Path) -> bool:
    """A file prod-unlearn wrote: for now its PNG charts (their metadata names us)."""
    try:
        with open(file, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and PNG_SIGNATURE in head


def check_output(opt: str, out: Path, inputs: list[tuple[str, Path]], is_file: bool) -> None:
    """Where an output may go; creates nothing."""
    p = Path(os.path.expanduser(str(out)))
    if p.exists() and not is_file and not p.is_dir():
        raise UsageError(f"{opt} {out}: is a file, expected a folder")
    if is_file and p.is_dir():
        raise UsageError(f"{opt} {out}: is a folder, expected a file name")
    rp = p.resolve()
    for opt_in, src in inputs:
        rs = src.resolve()
        what = f"the {opt_in} {'folder' if src.is_dir() else 'file'}"
        if _within(rp, rs):
            raise UsageError(
                f"{opt} {out}: {'is' if rp == rs else 'is inside'} {what} {src}; writing there would "
                f"overwrite it (choose another {'file' if is_file else 'folder'})"
            )
        if not is_file and _within(rs, rp):
            raise UsageError(f"{opt} {out}: contains {what} {src}; a run rewrites its folder (choose another folder)")
    if _within(rp, PACKAGE_DIR):
        raise UsageError(f"{opt} {out}: is inside the installed package ({PACKAGE_DIR}); choose a folder of your own")
    if is_file and p.exists() and not _is_ours(p):
        raise UsageError(
            f"{opt} {out}: exists and prod-unlearn did not write it; it is never replaced (choose a new "
            f"name, or delete it)"
        )
    probe = p.parent if is_file else p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{opt} {out}: {probe} is a file, cannot create a folder under it")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{opt} {out}: cannot write to {probe} (permission denied)")


class Claim:
    """An output folder this run holds: its marker names the command, its lock keeps out a second run."""

    def __init__(self, opt: str, out: Path, command: str, overwrite: bool, adopt: str | None = None):
        self.out = Path(os.path.expanduser(str(out)))
        self.created = not self.out.exists() or not any(self.out.iterdir())
        if not self.created:
            marker = self.out / MARKER
            try:
                owner = json.loads(marker.read_text(encoding="utf-8"))["command"] if marker.exists() else None
            except (OSError, ValueError, KeyError, TypeError):
                raise UsageError(f"{opt} {out}: its {MARKER} is unreadable; choose another folder") from None
            if owner is None and adopt and (self.out / adopt).is_file() and not overwrite:
                owner = command
            if owner is None:
                raise UsageError(
                    f"{opt} {out}: not empty and not written by `prod-unlearn {command}` (no {MARKER}); "
                    f"prod-unlearn never replaces what it did not write (choose a new or empty folder)"
                )
            if owner != command:
                raise UsageError(
                    f"{opt} {out}: holds the output of `prod-unlearn {owner}`, not of `{command}` "
                    f"(choose another folder)"
                )
        self.out.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(self.fd)
            raise UsageError(
                f"{opt} {out}: another prod-unlearn run is writing this folder ({holder}); wait for it "
                f"to end, or choose another folder"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()}, `prod-unlearn {command}` since {time.strftime('%H:%M:%S')}".encode(), 0)
        if overwrite and not self.created:  # only ever a folder this command wrote (checked above)
            for child in self.out.iterdir():
                if child.name != LOCK:
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        if not (self.out / MARKER).exists():
            from prod_unlearn.io import atomic_write_json
            from prod_unlearn.version import __version__

            atomic_write_json(
                self.out / MARKER,
                {"command": command, "prod_unlearn": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")},
            )

    def release(self, ok: bool) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        if not ok and self.created and {p.name for p in self.out.iterdir()} <= set(OURS):
            shutil.rmtree(self.out, ignore_errors=True)  # an error before anything was written: leave no trace


def guard(ctx: click.Context, command: str) -> list[Claim]:
    """The cross-option checks of one command, then its output folders claimed (see the module docstring)."""
    entries = ctx.meta.get(GUARD, [])
    params = ctx.params
    for b, param, _value in entries:
        if (
            b.needs
            and ctx.get_parameter_source(param.name) not in (None, click.core.ParameterSource.DEFAULT)
            and not b.needs(params)
        ):
            raise UsageError(f"{option_name(param)}: has no effect {b.needs_text}")
    inputs = []
    for b, param, value in entries:
        if b.path in ("input", "input-file", "input-folder", "model") and value is not None:
            for v in value if isinstance(value, (list, tuple)) else [value]:
                local = Path(os.path.expanduser(str(v)))
                if local.exists():
                    inputs.append((option_name(param), local))
    outputs = []
    for b, param, value in entries:
        if b.path in ("output", "output-file"):
            out = value if value is not None else (b.default(params) if b.default else None)
            if out is not None:
                check_output(option_name(param), Path(out), inputs, b.path == "output-file")
                outputs.append((b, option_name(param), Path(out)))
    claims: list[Claim] = []
    try:
        for b, opt, out in outputs:
            if b.path == "output":
                claims.append(Claim(opt, out, b.owner or command, bool(params.get("overwrite")), b.adopt))
                if (b.owner or command) == command:
                    save_config(claims[-1].out / CONFIG, command, ctx)
    except BaseException:
        for c in claims:
            c.release(ok=False)
        raise
    return claims


# ---------------------------------------------------------------- config files


def _toml_value(v):
    if isinstance(v, Path):
        return str(v.expanduser().resolve())  # a replay works from any folder
    if isinstance(v, (list, tuple)):
        return [_toml_value(x) for x in v]
    return v


def save_config(path: Path, command: str, ctx: click.Context) -> None:
    """The command's options as resolved (None = left to its default; --overwrite never: a replay
    must not clear what the first run wrote)."""
    import tomli_w

    from prod_unlearn.io import atomic_write_text
    from prod_unlearn.version import __version__

    values = {k: _toml_value(v) for k, v in ctx.params.items() if v is not None and k not in ("overwrite",)}
    for b, param, v in ctx.meta.get(GUARD, []):  # a local model folder given by a relative path
        if b.path == "model" and v and Path(os.path.expanduser(v)).exists():
            values[param.name] = str(Path(os.path.expanduser(v)).resolve())
    path = path.resolve()
    atomic_write_text(
        path,
        f"# prod-unlearn {__version__}, {time.strftime('%Y-%m-%dT%H:%M:%S')}: replay with "
        f"`prod-unlearn {command} --config {path}`\n" + tomli_w.dumps({command: values}),
    )


def _config_value(where: str, param: click.Parameter, v):
    """A config value of the option's own type (TOML has types: 1.5 for an integer option is an
    error, not a 1); a single value for a repeatable option is a list of one."""
    if param.multiple or param.nargs == -1:
        return [_typed(where, param.type, x) for x in (v if isinstance(v, list) else [v])]
    return _typed(where, param.type, v)


def _typed(where: str, kind: click.ParamType, v):
    if isinstance(kind, click.types.BoolParamType):
        ok, want = type(v) is bool, "true or false"
    elif isinstance(kind, click.types.IntParamType):
        ok, want = type(v) is int, "an integer"
    elif isinstance(kind, click.types.FloatParamType):
        ok, want = type(v) in (int, float), "a number"
    else:
        ok, want = type(v) is str, "a string"
    if not ok:
        raise UsageError(f"{where} = {v!r}: expected {want}")
    return v


def load_config(ctx: click.Context, param: click.Parameter, value):
    """``--config FILE``: its ``[command]`` table becomes the options' defaults (eager: before the others)."""
    if value is None:
        return None
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib
    command = ctx.command.name
    path = Path(os.path.expanduser(value))
    input_path("--config", path, "file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"--config {value}: not a TOML file ({e})") from None
    if command not in data:
        other = ", ".join(f"`{k}`" for k in data if isinstance(data[k], dict)) or "none"
        raise UsageError(f"--config {value}: no [{command}] table (it holds settings of: {other})")
    table = data[command]
    known = {p.name: p for p in ctx.command.params if p.name != "config"}
    for k, v in table.items():
        if k not in known:
            raise UsageError(f"--config {value}: [{command}] {k}: `prod-unlearn {command}` has no such option")
        table[k] = _config_value(f"--config {value}: [{command}] {k}", known[k], v)
    ctx.default_map = {**(ctx.default_map or {}), **table}
    return value
