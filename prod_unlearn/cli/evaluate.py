"""`eval`, `attack`, `audit`: the commands that measure a model."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from prod_unlearn.cli import checks as chk
from prod_unlearn.cli.app import (
    COMPLETION_COLUMN,
    DEVICE,
    PROMPT_COLUMN,
    RELEARN_STEPS,
    check_options,
    command,
    control_option,
    data_options,
    dtype_names,
    fail,
    kind_names,
    option,
    retain_model_option,
    run_or_fail,
    task_names,
)
from prod_unlearn.cli.guard import bound as B
from prod_unlearn.errors import UsageError
from prod_unlearn.progress import console


@command("eval")
def eval_cmd(
    model: str = option("Model folder or hub id [default: the embedded model]", path="model"),
    task: str = typer.Option(
        "copyright",
        callback=B(choices=task_names),
        help="copyright | insecure | deprecated (forget tasks) or a utility task: humaneval | health | ppl",
    ),
    data: Path | None = option(
        "Forget set in the task's format [default: the task's default set]; "
        "for ppl and health: the held-out code (JSONL or folder)",
        path="input",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (keys documented in the README)"),
    max_new_tokens: int | None = option(
        "Generation budget per continuation [default: the task's own: "
        "copyright 256, insecure 128, deprecated 16, humaneval 256]",
        min=1,
    ),
    batch_size: int | None = option(
        "Generation batch size [default: the generator's own, chosen by measurement]", min=1
    ),
    retain_model: str | None = retain_model_option("also scored (forget tasks; cached)"),
    device: str = DEVICE,
    dtype: str = typer.Option("auto", callback=B(choices=dtype_names)),
    prompt_column: str = PROMPT_COLUMN,
    completion_column: str = COMPLETION_COLUMN,
):
    """Evaluate a model on a task; prints forget quality (forget tasks) or utility figures."""

    def go():
        from prod_unlearn import api

        def checks():
            data_options(prompt_column, completion_column)
            chk.device("--device", device)
            chk.hub_model("--model", model)

        check_options(checks)
        res = api.evaluate(
            model,
            task,
            data,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            retain_model=retain_model,
            device=device,
            dtype=dtype,
        )
        if json_out:
            sys.stdout.write(json.dumps(res) + "\n")
        else:
            console.print(res)

    run_or_fail(go)


@command()
def attack(
    model: str = option("Model folder or hub id [default: the embedded model]", path="model"),
    data: Path | None = option("Forget set (copyright format) [default: the embedded copyright set]", path="input"),
    k: list[int] = typer.Option([0, 8, 16, 32, 64], "--k", callback=B(min=0), help="Prefix lengths (repeat the flag)"),
    max_new_tokens: int | None = option(
        "Generation budget per continuation [default: 128 for prefix, 64 for the other kinds]", min=1
    ),
    png: Path | None = option("Also write the bar chart (mean, min-max) here", path="output-file", suffixes=(".png",)),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object"),
    device: str = DEVICE,
    kind: str = typer.Option(
        "prefix", callback=B(choices=kind_names), help="prefix | relearn | transform | quantize | mia"
    ),
    original: str | None = option("The model before unlearning, attacked the same way alongside", path="model"),
    max_items: int | None = option("First N items of the forget set [default: all]", min=1),
    steps: list[int] = RELEARN_STEPS,
    lr: float = typer.Option(1e-4, callback=B(gt=0), help="relearn: AdamW learning rate"),
    seed: int = typer.Option(0, callback=B(min=0, max=2**32 - 1), help="Seed (relearn split and batches, bootstrap)"),
    control: Path | None = control_option(
        lambda p: p["kind"] == "mia", "--kind is mia (only the membership attack reads control files)"
    ),
    retain_model: str | None = retain_model_option(
        "attacked identically", "for a default set; not for the paper's prefix summary, i.e. prefix without --original"
    ),
    prompt_column: str = PROMPT_COLUMN,
    completion_column: str = COMPLETION_COLUMN,
):
    """Attack the forgetting: prefix injection (default), relearning, code transformation, quantisation, MIA."""

    def go():
        from prod_unlearn import api
        from prod_unlearn.attacks import get_attack, markdown_section, prefix, public
        from prod_unlearn.attacks.prefix import prefix_attack
        from prod_unlearn.data.examples import load_examples
        from prod_unlearn.models.loading import DEFAULT_MODEL, load_model
        from prod_unlearn.report.pareto import plot_attack
        from prod_unlearn.tasks import default_forget_sets

        def checks():
            data_options(prompt_column, completion_column)
            if kind == "prefix" and not any(kk > 0 for kk in k):
                raise UsageError(
                    f"--k {' '.join(map(str, k)) or '(none)'}: expected at least one prefix length "
                    f"> 0 (k = 0 is the baseline every gain is measured against)"
                )
            chk.device("--device", device)
            chk.hub_model("--model", model)
            chk.hub_model("--original", original)

        check_options(checks)
        get_attack(kind)  # an unknown kind fails before the model loads
        mdl, tok = load_model(model or str(DEFAULT_MODEL), device, "auto")
        examples = load_examples(data or default_forget_sets()["copyright"])
        if kind == "prefix" and original is None and retain_model is None:  # the paper's attack, output unchanged
            budget = max_new_tokens or prefix.Settings.max_new_tokens
            res = prefix_attack(mdl, tok, examples[:max_items] if max_items else examples, k, budget)
            empty = [kk for kk, g in res["gain"].items() if kk and not g]
            if empty:
                fail(
                    f"--k {', '.join(map(str, empty))}: no item of the set is long enough for a prefix of that "
                    f"many tokens (use a smaller --k)"
                )
            if png:
                plot_attack({Path(model or "embedded").name: {kk: g for kk, g in res["gain"].items() if kk}}, png)
            summary = {key: res[key] for key in ("bleu", "gain_mean", "gain_min", "gain_max")}
            if json_out:
                sys.stdout.write(json.dumps(summary) + "\n")
            else:
                console.print(summary)
            return
        settings = dict(
            max_items=max_items,
            ks=tuple(k),
            steps=tuple(steps),
            lr=lr,
            seed=seed,
            control_path=str(control) if control else None,
        )
        attack_mod, res = api.attack_result(
            (mdl, tok),
            kind,
            examples,
            original,
            retain_model,
            device,
            {**settings, **({"max_new_tokens": max_new_tokens} if max_new_tokens else {})},
        )
        if png:
            attack_mod.plot(res, png)
        if json_out:
            sys.stdout.write(json.dumps(public(res)) + "\n")
        else:
            console.print("\n".join(markdown_section(res)), highlight=False, soft_wrap=True)

    run_or_fail(go)


@command()
def audit(
    model: str = option("The unlearned model: folder or hub id [default: the embedded model]", path="model"),
    forget: Path = option(
        "The takedown request's forget set: JSONL or a folder of source files [default: the embedded copyright set]",
        path="input",
    ),
    original: str | None = option(
        "The model before unlearning (same tokenizer): extraction, membership and utility are compared with it",
        path="model",
    ),
    out: Path = typer.Option(
        Path("runs/audit"), callback=B(path="output"), help="Report folder: report.md, report.json and PNG charts"
    ),
    kinds: str | None = option(
        "Comma-separated attacks [default: prefix,relearn,transform,quantize,mia]", items=True, choices=kind_names
    ),
    max_new_tokens: int = typer.Option(
        48, callback=B(min=1), help="Tokens generated and scored per file, every section"
    ),
    max_items: int | None = option(
        "Files attacked by the kinds whose audit preset caps them (0 = all) [default: 20 files for prefix, "
        "transform and quantize]",
        min=0,
    ),
    steps: list[int] | None = typer.Option(
        None,
        "--steps",
        callback=B(min=1),
        help="relearn: fine-tuning step budgets (repeat the flag) [default: 5, 10, 25]",
    ),
    control: Path | None = control_option(
        lambda p: p["kinds"] is None or "mia" in p["kinds"].split(","), "--kinds includes mia"
    ),
    retain_model: str | None = retain_model_option("put through every section"),
    device: str = DEVICE,
    prompt_column: str = PROMPT_COLUMN,
    completion_column: str = COMPLETION_COLUMN,
):
    """Run every attack against one takedown request; write one report (Markdown + JSON + charts) to attach to it."""

    def go():
        from prod_unlearn import api

        check_options(lambda: data_options(prompt_column, completion_column))
        rep = api.audit(
            model,
            forget,
            original,
            out,
            kinds=kinds,
            retain_model=retain_model,
            device=device,
            max_new_tokens=max_new_tokens,
            max_items=max_items,
            steps=tuple(steps) if steps else None,
            control=control,
        )
        for r in rep["recovery"]:
            console.print(
                f"{r['attack']}: {r['condition']} BLEU {r['baseline_bleu']:.3f} -> {r['bleu']:.3f} ({r['verdict']})",
                highlight=False,
            )
        console.print(f"report: {out / 'report.html'} (and report.md, report.json; {rep['timings']['total']:.0f} s)")
        if model is not None:
            from prod_unlearn.report.model_card import add_audit

            card = add_audit(Path(os.path.expanduser(model)), out)
            if card:
                console.print(f"model card updated with the audit: {card}")

    run_or_fail(go)
