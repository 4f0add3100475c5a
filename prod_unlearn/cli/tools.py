"""`build-task`, `scan`, `methods`, `info`: the forget sets, the detector and what is installed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from prod_unlearn.cli.app import command, fail, option, run_or_fail
from prod_unlearn.cli.guard import bound as B
from prod_unlearn.progress import console


@command("build-task")
def build_task(
    name: str = typer.Argument(..., callback=B(choices=("insecure", "deprecated")), help="insecure | deprecated"),
    out: Path | None = option(
        "Where to write the set [default: the shipped file and its build record]", path="output-file"
    ),
    model: str | None = option(
        "insecure: the model whose reproduction of each item is recorded [default: the embedded model]",
        path="model",
        needs=lambda p: p["name"] == "insecure",
        needs_text="unless NAME is insecure (the deprecated set is mined without a model)",
    ),
):
    """Rebuild a default forget set from the embedded model's training corpus (how the shipped sets were made)."""

    def go():
        from prod_unlearn.build import build_task as run_build

        rec = run_build(name, out, model)
        console.print({k: v for k, v in rec.items() if k not in ("per_api", "still_valid", "before_all_candidates")})

    run_or_fail(go)


@command()
def scan(
    files: list[Path] | None = typer.Argument(
        None, callback=B(path="input-file"), help="Files to scan [default: standard input]"
    ),
    language: str = typer.Option(
        "python", callback=B(nonempty=True), help="Language of the code (codeshield's names; py, js... accepted)"
    ),
):
    """Run the Insecure Code Detector (codeshield regex + semgrep rules) on code and print each finding."""

    def go():
        from prod_unlearn.tasks.detector import DetectorError, resolve_language
        from prod_unlearn.tasks.detector import scan as run_scan

        try:
            resolve_language(language)
        except DetectorError as e:
            fail(str(e))
        names = [str(f) for f in files] if files else ["-"]
        texts = [Path(n).read_text(encoding="utf-8", errors="replace") if n != "-" else sys.stdin.read() for n in names]
        for n, found in zip(names, run_scan(texts, language, all_matches=True)):
            for x in found:
                sys.stdout.write(f"{n}:{x.line}: {x.analyzer} {x.pattern_id} {x.cwe}\n")

    run_or_fail(go)


@command()
def methods(json_out: bool = typer.Option(False, "--json", help="Machine-readable output")):
    """List the unlearning methods with their parameters and defaults."""
    from dataclasses import fields

    from prod_unlearn.methods import METHODS

    rows: dict[str, dict[str, Any]] = {
        n: {"summary": m.summary, "params": {f.name: getattr(m.params(), f.name) for f in fields(m.params)}}
        for n, m in sorted(METHODS.items())
    }
    if json_out:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    from rich.table import Table

    t = Table(title="methods (-p KEY=VALUE sets a parameter)")
    t.add_column("method")
    t.add_column("parameters (defaults)")
    t.add_column("summary")
    for n, r in rows.items():
        t.add_row(n, ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-", r["summary"])
    console.print(t)


@command()
def info(json_out: bool = typer.Option(False, "--json", help="Machine-readable output")):
    """Where the embedded model and the default forget sets are."""
    from prod_unlearn.models.loading import DEFAULT_MODEL, RETAIN_MODEL
    from prod_unlearn.tasks import HELDOUT, default_forget_sets
    from prod_unlearn.version import __version__

    excluded = json.loads((RETAIN_MODEL / "pretrain.json").read_text())["excluded"]["sets"]
    res = {
        "version": __version__,
        "default_model": str(DEFAULT_MODEL),
        "default_forget_sets": {k: str(v) for k, v in default_forget_sets().items()},
        "heldout": str(HELDOUT),
        "retain_models": {s: str(RETAIN_MODEL) for s in excluded},
    }
    if json_out:
        sys.stdout.write(json.dumps(res) + "\n")
    else:
        console.print(res)
