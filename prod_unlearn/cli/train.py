"""`unlearn`, `learn`: the commands that train a model to forget (or first to memorise)."""

from __future__ import annotations

from pathlib import Path

import typer

from prod_unlearn.cli import checks as chk
from prod_unlearn.cli.app import (
    COMPLETION_COLUMN,
    DEFAULT_HELP,
    DEVICE,
    PROMPT_COLUMN,
    REPORT_TO,
    check_options,
    command,
    data_options,
    dtype_names,
    fail,
    load_set,
    lora_options,
    method_names,
    option,
    run_or_fail,
    train_config,
    until_rule_on,
)
from prod_unlearn.cli.guard import bound as B
from prod_unlearn.errors import UsageError
from prod_unlearn.progress import console

# the stopping rule's options (until.py): an error with --epochs
RULE_ONLY = dict(
    needs=until_rule_on, needs_text="with --epochs (a fixed budget); leave out --epochs to train until forgotten"
)


@command()
def unlearn(
    model: str = option("Local folder or hub id of any causal LM [default: the embedded model]", path="model"),
    forget: Path = option(
        "Forget set: JSONL (prompt, completion[, id, meta]) or a folder of source files "
        "[default: the embedded copyright set]",
        path="input",
    ),
    method: str = typer.Option(
        "prod", callback=B(choices=method_names), help="Unlearning method (see `prod-unlearn methods`)"
    ),
    out: Path = option(
        "Output folder (model, checkpoints, run.json) [default: runs/<method>]",
        path="output",
        default=lambda p: Path("runs") / p["method"],
    ),
    param: list[str] = typer.Option(
        [], "--param", "-p", callback=B(), help="Method parameter KEY=VALUE, e.g. -p p=0.8 -p alpha=0"
    ),
    epochs: int | None = option(
        "Train exactly this many epochs (turns the stopping rule off) [default: train until forgotten]", min=1
    ),
    until_bleu: float | None = option(
        "Stop once line-cut BLEU on the forget set is at most this, at every cut [default: 0.10]",
        min=0,
        max=1,
        **RULE_ONLY,
    ),
    until_auc: float | None = option(
        "Also require Min-K%++ membership AUC of the forget files against the held-out files (--heldout) to be "
        "at most this, e.g. 0.5 (README: when a file must really be gone) [default: not scored]",
        min=0,
        max=1,
        **RULE_ONLY,
    ),
    max_utility_loss: float | None = option(
        "Stop before held-out bits per byte rise by more than this share (0.10 = 10 %) [default: 0.10]",
        gt=0,
        **RULE_ONLY,
    ),
    max_steps: int | None = option(f"Optimiser-step budget of the stopping rule {DEFAULT_HELP}", min=1, **RULE_ONLY),
    check_every: int | None = option(
        "Optimiser steps between checks [default: from the forget set's size, 5 to 25]", min=1, **RULE_ONLY
    ),
    heldout: Path | None = option(
        "Held-out code for the utility guard and the figures (JSONL or folder) [default: the shipped held-out files]",
        path="input",
    ),
    lr: float | None = option(f"AdamW learning rate {DEFAULT_HELP}", gt=0),
    batch_size: int | None = option(f"Examples per device per micro-batch {DEFAULT_HELP}", min=1),
    grad_accum: int | None = option(f"Gradient accumulation steps {DEFAULT_HELP}", min=1),
    max_length: int | None = option(f"Max tokens per example {DEFAULT_HELP}", min=1),
    scheduler: str | None = option(
        f"constant | linear | cosine {DEFAULT_HELP}", choices=("constant", "linear", "cosine")
    ),
    seed: int | None = option(f"Random seed (data order, init of LoRA) {DEFAULT_HELP}", min=0, max=2**32 - 1),
    save_steps: int | None = option(
        "Also save a resumable state every N optimiser steps [default: 0, per epoch only]", min=0
    ),
    retain: Path | None = option(
        "Retain set (same formats) for the retain term [default: training "
        "until forgotten, 64 files of this Python's standard library with "
        "the KL term; with --epochs, none]",
        path="input",
    ),
    sam: float | None = option(
        "Sharpness-aware unlearning, any method: take each step's "
        "gradient at the worst weights within this radius (e.g. 0.01; "
        f"2x a step) {DEFAULT_HELP}",
        min=0,
    ),
    retain_loss: str | None = option(
        f"Retain term: nll | kl [default: kl on the rule's own retain set] {DEFAULT_HELP}", choices=("nll", "kl")
    ),
    retain_weight: float | None = option(f"Weight of the retain term (0: none) {DEFAULT_HELP}", min=0),
    refusals: Path | None = option("Refusal texts (one per line) for dpo/flat [default: shipped]", path="input-file"),
    device: str = DEVICE,
    dtype: str = typer.Option(
        "auto", callback=B(choices=dtype_names), help="auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16"
    ),
    gradient_checkpointing: bool = typer.Option(False, help="Trade compute for memory (large models)"),
    lora: bool = typer.Option(False, help="Train a LoRA adapter (peft) instead of all weights"),
    lora_r: int = typer.Option(16, callback=B(min=1), help="LoRA rank"),
    lora_merge: bool = typer.Option(True, help="Merge the adapter into the saved model (else save the adapter)"),
    evaluate: bool = typer.Option(
        True,
        help="Print forget BLEU and held-out perplexity before and after (the "
        "stopping rule checks as it trains either way)",
    ),
    eval_each_epoch: bool = typer.Option(False, help="Evaluate every epoch (slower) and record it in run.json"),
    overwrite: bool = typer.Option(False, help="Discard the run already in --out (only a run folder) and start afresh"),
    report_to: str = REPORT_TO,
    prompt_column: str = PROMPT_COLUMN,
    completion_column: str = COMPLETION_COLUMN,
):
    """Unlearn a forget set from a model. With no arguments: PROD on the embedded model's copyright set.

    By default it trains until forgotten (line-cut BLEU <= --until-bleu) within a utility guard and a
    step budget; exit status 3 when the run ended above the target (the model is saved all the same).
    """

    def go():
        from prod_unlearn import api
        from prod_unlearn.methods import get_method

        def checks():
            data_options(prompt_column, completion_column, report_to)
            if sam and grad_accum not in (None, 1):
                raise UsageError(f"--sam {sam:g}: needs --grad-accum 1 (the perturbation comes from one batch)")
            chk.device("--device", device)
            chk.hub_model("--model", model)
            return chk.method_params(get_method(method), param)

        params = check_options(checks)
        train = dict(
            lr=lr,
            batch_size=batch_size,
            grad_accum=grad_accum,
            max_length=max_length,
            scheduler=scheduler,
            seed=seed,
            save_steps=save_steps,
            retain_weight=retain_weight,
            retain_loss=retain_loss,
            sam=sam,
        )
        try:
            res = api.unlearn(
                model,
                forget,
                method,
                out,
                params=params,
                epochs=epochs,
                until_bleu=until_bleu,
                until_auc=until_auc,
                max_utility_loss=max_utility_loss,
                max_steps=max_steps,
                check_every=check_every,
                heldout=heldout,
                retain=retain,
                refusals=refusals,
                device=device,
                dtype=dtype,
                gradient_checkpointing=gradient_checkpointing,
                lora=lora,
                lora_r=lora_r,
                lora_merge=lora_merge,
                evaluate=evaluate,
                eval_each_epoch=eval_each_epoch,
                report_to=report_to,
                **{k: v for k, v in train.items() if v is not None},
            )
        except RecursionError:
            fail(f"--forget {forget}: JSON nested too deeply to parse (expected one flat object a line)")
        if res.after:
            _print_before_after(res.before, res.after)
        console.print(
            f"saved: {res.out} (Hugging Face model folder + run.json; per-epoch checkpoints in "
            f"{res.out / 'checkpoints'})"
        )
        if res.verdict:
            from rich.text import Text

            from prod_unlearn.training.until import EXIT_NOT_FORGOTTEN

            console.print(Text(res.verdict, style="yellow"), highlight=False, soft_wrap=True, emoji=False)
            return EXIT_NOT_FORGOTTEN

    return run_or_fail(go)


def _print_before_after(before: dict | None, after: dict) -> None:
    from rich.table import Table

    t = Table(title="copyright task")
    t.add_column("metric")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    keys = [
        k
        for k in (
            "bleu",
            "bleu_cut25",
            "bleu_cut50",
            "bleu_cut75",
            "exact_next5",
            "forget_quality",
            "heldout_ppl",
            "heldout_bpb",
        )
        if k in after
    ]

    def cell(fig, k):
        ci = fig.get(f"{k}_ci")
        return f"{fig[k]:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    for k in keys:
        t.add_row(
            k + (" [95 % CI]" if f"{k}_ci" in after else ""),
            cell(before, k) if before and k in before else "-",
            cell(after, k),
        )
    if before and "heldout_bpb" in before and "heldout_bpb" in after:
        t.add_row("bits-per-byte change", "", f"{100 * (after['heldout_bpb'] / before['heldout_bpb'] - 1):+.1f} %")
    console.print(t)


@command()
def learn(
    data: Path = typer.Option(
        ..., callback=B(path="input"), help="Code to memorise: JSONL or a folder of source files"
    ),
    out: Path = typer.Option(..., callback=B(path="output"), help="Output model folder"),
    model: str = option("Model to fine-tune [default: the embedded model]", path="model"),
    replay: Path | None = option(
        "General code replayed each step so utility survives [default: 200 training files of this Python's stdlib]",
        path="input",
    ),
    epochs: int | None = option("Epochs [default: the memorisation recipe's, README 'Defaults']", min=1),
    lr: float | None = option(
        "Peak learning rate, decayed to 0 (cosine) [default: the memorisation recipe's; ~1e-5 for 7B models]", gt=0
    ),
    batch_size: int | None = option("[default: the memorisation recipe's]", min=1),
    max_length: int | None = option("[default: the memorisation recipe's]", min=1),
    seed: int | None = option("[default: the memorisation recipe's]", min=0, max=2**32 - 1),
    device: str = DEVICE,
    dtype: str = typer.Option("auto", callback=B(choices=dtype_names)),
    lora: bool = typer.Option(False, help="Train a LoRA adapter (merged on save)"),
    report_to: str = REPORT_TO,
    prompt_column: str = PROMPT_COLUMN,
    completion_column: str = COMPLETION_COLUMN,
):
    """Fine-tune a model until it reproduces DATA (the paper's setup before unlearning)."""

    def go():
        from prod_unlearn.models.loading import DEFAULT_MODEL, load_model
        from prod_unlearn.tasks.copyright import continuation_bleu
        from prod_unlearn.training.memorise import memorise

        def checks():
            data_options(prompt_column, completion_column, report_to)
            chk.device("--device", device)
            chk.hub_model("--model", model)
            return train_config(
                model, "memorise", epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, seed=seed
            )

        cfg = check_options(checks)
        examples = load_set("--data", data)
        replay_set = load_set("--replay", replay) if replay else None
        mdl, tok = load_model(model or str(DEFAULT_MODEL), device, dtype, lora=lora_options(lora, 16, True))
        ev = lambda mm, ep: {"memorisation_bleu": round(continuation_bleu(mm, tok, examples)["bleu"], 4)}  # noqa: E731
        run = memorise(
            mdl,
            tok,
            examples,
            out,
            cfg=cfg,
            replay=replay_set,
            model_name=model or str(DEFAULT_MODEL),
            evaluate=ev,
            report_to=report_to,
        )
        from prod_unlearn.io import atomic_write_json
        from prod_unlearn.report.model_card import write_model_card

        run["data_name"] = str(data)
        atomic_write_json(out / "run.json", run)
        write_model_card(out, run, str(data))
        for e in run["epochs"]:
            console.print(
                f"epoch {e['epoch']}: loss {e['loss']:.4f}, memorisation BLEU {e['eval']['memorisation_bleu']}"
            )

    run_or_fail(go)
