"""`pretrain`, `distill`: the commands that build a model (the embedded one and its references, or a
student distilled from an unlearned teacher)."""

from __future__ import annotations

from pathlib import Path

import typer

from prod_unlearn.cli import checks as chk
from prod_unlearn.cli.app import (
    DEVICE,
    REPORT_TO,
    check_options,
    command,
    data_options,
    excludable_sets,
    option,
    preset_names,
    run_or_fail,
)
from prod_unlearn.cli.guard import bound as B
from prod_unlearn.errors import UsageError
from prod_unlearn.progress import console


@command()
def pretrain(
    preset: str = typer.Option(
        "gpu",
        callback=B(choices=preset_names),
        help="gpu: the shipped model, from scratch (3 min on one GPU; hours on "
        "CPU) | cpu, then cpu-memorise: the CPU fallback, continues --init "
        "(31 + 21 min on 2 cores) | tiny (test)",
    ),
    source: Path | None = option("Corpus root [default: this Python's standard library]", path="input-folder"),
    out: Path | None = option(
        "Output root (writes OUT/model and OUT/data) [default: runs/pretrain]",
        path="output",
        default=lambda p: Path("runs/pretrain"),
    ),
    init: str | None = option(
        "Start from this model's weights and vocabulary (required by the cpu presets; 'embedded' = the shipped model)",
        path="model",
    ),
    exclude: str | None = option(
        "Train a retain model: these sets (comma-separated: copyright, "
        "insecure, deprecated) are neither replayed nor in the corpus; "
        "the embedded model's vocabulary is kept",
        items=True,
        choices=excludable_sets,
    ),
    evaluate: bool = typer.Option(True, help="Measure memorisation and held-out bits per byte at the end"),
    device: str = DEVICE,
    seed: int = typer.Option(0, callback=B(min=0, max=2**32 - 1)),
    report_to: str = REPORT_TO,
):
    """Train the embedded code LM (reproduces the shipped model; its recipe: docs/embedded-model.md)."""

    def go():
        from prod_unlearn.models.pretrain import config_for
        from prod_unlearn.models.pretrain import pretrain as run_pretrain
        from prod_unlearn.tasks.memorisation import memorisation_report, monitor

        excluded = tuple(x.strip() for x in (exclude or "").split(",") if x.strip())

        def checks():
            data_options("prompt", "completion", report_to)
            chk.device("--device", device)
            chk.hub_model("--init", init)

        check_options(checks)
        cfg = config_for(
            preset,
            source=str(source) if source else None,
            out=str(out) if out else None,
            init=init,
            device=device,
            seed=seed,
            exclude=excluded or None,
        )
        final = (lambda m, t, split: memorisation_report(m, t)) if evaluate else None
        rec = run_pretrain(cfg, monitor=monitor, final_eval=final, report_to=report_to)
        console.print(rec["metrics"])

    run_or_fail(go)


@command()
def distill(
    teacher: str = typer.Option(..., callback=B(path="model"), help="The unlearned model to distil (folder or hub id)"),
    out: Path = typer.Option(..., callback=B(path="output"), help="Output model folder (+ distill.json)"),
    noise: float = typer.Option(
        0.5,
        callback=B(min=0, max=1),
        help="Share of a fresh initialisation mixed into the student before distilling (0 = a copy, 1 = fresh)",
    ),
    tokens: int = typer.Option(
        2_000_000,
        callback=B(min=1),
        help="Distillation budget in tokens (the embedded model on 2 CPU cores: ~3 s per 2,048; 2 M ~ 50 min)",
    ),
    lr: float = typer.Option(3e-4, callback=B(gt=0), help="AdamW peak learning rate (cosine to 0)"),
    batch_size: int = typer.Option(8, callback=B(min=1), help="Windows per step"),
    context: int = typer.Option(256, callback=B(min=2), help="Tokens per window"),
    data: Path | None = option(
        "General code to distil on (JSONL, table or folder) [default: this "
        "Python's standard library training split, the default sets cut out]",
        path="input",
    ),
    forget: Path | None = option("The forget set: any data document holding one of its items is dropped", path="input"),
    device: str = DEVICE,
    seed: int = typer.Option(0, callback=B(min=0, max=2**32 - 1)),
):
    """Robustify an unlearned model (UNDO): perturb a copy toward a fresh initialisation, then distil the
    unlearned model's outputs into it on general code, so that relearning no longer finds the old weights."""

    def go():
        from prod_unlearn import api
        from prod_unlearn.training.distill import DistillConfig

        def checks():
            chk.device("--device", device)
            chk.hub_model("--teacher", teacher)
            cfg = DistillConfig(noise=noise, tokens=tokens, lr=lr, batch_size=batch_size, context=context, seed=seed)
            try:
                cfg.validate()
            except ValueError as e:
                raise UsageError(str(e)) from None
            return cfg

        cfg = check_options(checks)
        rec = api.distill(teacher, out, cfg, data=data, forget=forget, device=device)
        console.print(
            f"saved: {out} (Hugging Face model folder + distill.json; {rec['tokens']:,} tokens, "
            f"{rec['train_seconds']:.0f} s)"
        )

    run_or_fail(go)
