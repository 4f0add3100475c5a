"""`bench` and `report`: methods x tasks, and its report rebuilt from results.json."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from prod_unlearn.cli import checks as chk
from prod_unlearn.cli.app import (
    DEVICE,
    check_options,
    command,
    fail,
    forget_task_names,
    option,
    retain_model_option,
    run_or_fail,
    utility_task_names,
)
from prod_unlearn.cli.guard import bound as B
from prod_unlearn.errors import UsageError
from prod_unlearn.progress import console


def bench_method(name: str) -> None:
    from prod_unlearn.bench.config import method_variant

    method_variant(name)


@command()
def bench(
    out: Path = typer.Option(
        Path("runs/bench"),
        callback=B(path="output", adopt="results.json"),
        help="Report folder (resumable: rerun to continue)",
    ),
    quick: bool = typer.Option(
        False, help="~10 min on 2 cores: prod/ga/npo, 1 epoch, 16 items a task, 4 points, ppl axis"
    ),
    methods: str | None = option(
        "Comma-separated methods, each optionally with sharpness-aware steps and/or distillation after it: "
        "prod+sam=0.05, prod+distill=0.5 (noise; :TOKENS for another budget) [default: all six]",
        items=True,
        item=bench_method,
    ),
    tasks: str | None = option(
        "Comma-separated tasks [default: copyright,insecure,deprecated]", items=True, choices=forget_task_names
    ),
    epochs: int | None = option(
        "Epochs per method [default: the model folder's unlearn_defaults.json, else the paper's]", min=1
    ),
    eval_points: int | None = option(
        "Evaluations per run, evenly spaced over its optimiser steps [default 5; quick: 4]", min=1
    ),
    seeds: int | None = option("Runs per method and task with different data orders [default 1]", min=1),
    lr: float | None = option(
        "One lr for all methods, as in the paper [default: each method's calibrated lr, else "
        "unlearn_defaults.json's, else the paper's]",
        gt=0,
    ),
    calibration: Path | None = option(
        "Calibrated lr table to read [default: the shipped one]; with --calibrate, a table to merge the result into",
        path="input-file",
    ),
    calibrate: bool = typer.Option(
        False,
        help="Pick each method's lr per task over a small grid (largest lr keeping "
        "utility within 10 %); writes OUT/calibration.json",
    ),
    lr_grid: str | None = option(
        "Comma-separated lr grid for --calibrate [default 1e-5,2e-5,5e-5,1e-4,2e-4,5e-4]",
        items=True,
        needs=lambda p: p["calibrate"],
        needs_text="without --calibrate (it is the grid of the calibration)",
    ),
    rule: str = typer.Option(
        "utility",
        callback=B(choices=("utility", "forget")),
        help="Which lrs: utility (matched utility: the largest lr keeping utility "
        "within 10 %) | forget (matched forgetting: the smallest lr closing "
        "--target of the gap to the retain model); with --calibrate, the rule "
        "that fills the table",
    ),
    target: float = typer.Option(
        0.9,
        callback=B(gt=0, max=1, needs=lambda p: p["rule"] == "forget", needs_text="unless --rule is forget"),
        help="--rule forget: share of the original -> retain-model gap to close",
    ),
    retain_model: str | None = retain_model_option("scored and attacked beside every method", "for the embedded model"),
    utility: str | None = option(
        "Utility axis for PDR: a utility task (health, ppl, humaneval) [default health; quick: ppl]",
        choices=utility_task_names,
    ),
    max_items: int | None = option("First N items of each task [default: all; quick 16; 0 = all]", min=0),
    attacks: str | None = option(
        "Attacks on the copyright task's final models: comma-separated "
        "kinds of prefix,relearn,transform,quantize,mia, 'all' or "
        "'none' [default prefix,mia (~6 min on 2 cores); "
        "quick: prefix,mia]",
        items=True,
    ),
    model: str | None = option("Model [default: the embedded model]", path="model"),
    device: str = DEVICE,
    overwrite: bool = typer.Option(False, help="Discard the folder's cells and runs and start afresh"),
    executor: str = typer.Option(
        "local",
        callback=B(choices=("local", "ray")),
        help="Where the units run: local (one after another) | ray (a Ray cluster: "
        "RAY_ADDRESS, else a local one; one GPU per unit where there are GPUs; "
        "pip install 'prod-unlearn[ray]')",
    ),
):
    """Methods x tasks: unlearn, evaluate points along training, attack, PDR with bootstrap intervals;
    writes report.md/json and PNGs (or, with --calibrate, the calibrated lr table)."""

    def go():
        from prod_unlearn import api
        from prod_unlearn.attacks.bench import parse_kinds

        check_options(lambda: _bench_checks(lr_grid, rule, retain_model, device, calibration, model))
        try:
            attack_kinds = parse_kinds(attacks)
        except ValueError as e:
            fail(str(e))
        kw = dict(
            methods=methods.split(",") if methods else None,
            tasks=tasks.split(",") if tasks else None,
            epochs=epochs,
            eval_points=eval_points,
            seeds=seeds,
            lr=lr,
            utility=utility,
            max_items=max_items,
            model=model,
            device=device,
            lr_grid=[float(x) for x in lr_grid.split(",")] if lr_grid else None,
            calibration=str(calibration) if calibration and not calibrate else None,
            attacks=attack_kinds,
            rule=rule,
            target=target,
            retain_model=retain_model,
        )
        if calibrate:
            table = api.benchmark(
                out, quick=quick, calibrate=True, overwrite=overwrite, calibration_out=calibration, **kw
            )
            prof = next(p for p in table["profiles"] if p.get("rule", "utility") == rule)
            console.print(
                f"calibrated table: {out / 'calibration.json'}"
                + (f" (merged into {calibration})" if calibration else "")
                + f"; {out / 'calibration.md'}"
            )
            console.print({t: e["lr"] for t, e in prof["tasks"].items()})
            return
        res = api.benchmark(out, quick=quick, overwrite=overwrite, executor=executor, **kw)
        console.print(f"report: {out / 'report.md'}")
        console.print({"pdr": res["pdr"]})

    run_or_fail(go)


def _bench_checks(lr_grid, rule, retain_model, device, calibration, model) -> None:
    chk.float_list("--lr-grid", lr_grid)
    if rule == "forget" and retain_model and retain_model.lower() == "none":
        raise UsageError(
            "--rule forget: needs a retain model (the floor the gap is measured to), not --retain-model none"
        )
    chk.device("--device", device)
    if calibration is not None and calibration.exists():
        chk.input_path("--calibration", calibration, kind="file")
    chk.hub_model("--model", model)


@command()
def report(
    out: Path = typer.Option(
        Path("runs/bench"),
        callback=B(path="output", owner="bench", adopt="results.json"),
        help="A bench folder holding results.json",
    ),
):
    """Rebuild report.md / report.json / PNGs from a bench folder's results.json."""

    def go():
        from prod_unlearn.report.bench import write_report

        path = out / "results.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file (run `prod-unlearn bench --out {out}` first)")
        check_options(lambda: chk.input_path("--out", path, kind="file"))
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            fail(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); rerun `prod-unlearn bench --out {out}`")
        except (RecursionError, UnicodeDecodeError) as e:
            fail(f"{path}: not a bench results file ({type(e).__name__}); rerun `prod-unlearn bench --out {out}`")
        if not isinstance(results, dict) or not {"config", "cells"} <= set(results):
            fail(
                f"{path}: not a bench results file (expected an object with 'config' and 'cells'); rerun "
                f"`prod-unlearn bench --out {out}`"
            )
        try:
            write_report(results, out)
        except (KeyError, TypeError, AttributeError, IndexError, ZeroDivisionError) as e:
            fail(
                f"{path}: malformed bench results ({type(e).__name__}: {str(e)[:120]}); rerun "
                f"`prod-unlearn bench --out {out}`"
            )
        console.print(f"report: {out / 'report.md'}")

    run_or_fail(go)
