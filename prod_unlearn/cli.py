"""`prod-unlearn`: one Typer app. Every user-facing error is one line on stderr, exit code 2.

Each command is its options (their bounds declared beside their defaults: cli_guard.py), the checks
that need several options, and one call into the Python API (api.py); the guard, config files and
the error boundary are shared by all. Long (~800 lines) on purpose: one command reads top to bottom.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import click
import typer
from typer.core import TyperCommand, TyperGroup

from prod_unlearn import cli_checks as chk
from prod_unlearn.cli_guard import bound as B, guard, load_config
from prod_unlearn.progress import console

_DEBUG = {"on": False}


def _say_error(msg: str) -> None:
    """``error: msg`` on one line; the message is plain text (no rich markup or emoji codes in paths)."""
    from rich.text import Text
    line = str(msg).strip().replace("\r", "\\r").replace("\n", "\\n") or "error"   # a path may hold a newline
    console.print(Text.assemble(("error:", "red"), " ", line), highlight=False, soft_wrap=True, emoji=False)


def _debug() -> bool:
    return _DEBUG["on"] or os.environ.get("PROD_UNLEARN_DEBUG", "") in ("1", "true", "yes")


class _Group(TyperGroup):
    """The CLI boundary: option-parsing errors and any exception a command lets out become one line
    (``error: ...``; exit 2 for user-caused errors, 1 for internal ones). ``--debug`` re-raises."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                standalone_mode=False, **extra)
        _DEBUG["on"] = False                      # set by the --debug callback below
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                              **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            e.show()
            sys.exit(e.exit_code)
        except click.ClickException as e:
            _say_error(e.format_message())
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            _say_error("aborted")
            sys.exit(1)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            if _debug():
                raise
            msg, code = chk.error_line(e)
            _say_error(msg)
            sys.exit(code)
        sys.exit(rv if isinstance(rv, int) else 0)


class _Command(TyperCommand):
    """Every command: ``--config FILE`` (its options' defaults from a config.toml), and the guard
    (cli_guard.py: cross-option checks, inputs, outputs claimed and locked) runs once all options
    are parsed and before the body; the claimed folders are released after it."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.params.append(click.Option(["--config"], metavar="FILE", is_eager=True, expose_value=False,
                                        callback=load_config, help="Read the options from a config.toml "
                                        "(every output folder has one; flags given here win)"))

    def invoke(self, ctx):
        claims = guard(ctx, self.name)
        ok = False
        try:
            rv = super().invoke(ctx)
            ok = True
            return rv
        finally:
            for c in claims:
                c.release(ok)


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make a code LLM forget specific code without forgetting how to program (PROD and baselines).")


def _command(*args, **kw):
    return app.command(*args, cls=_Command, **kw)


# Registries read when an option is parsed (not at import: `prod-unlearn --help` stays light)
def _methods():
    from prod_unlearn.methods import METHODS
    return sorted(METHODS)


def _tasks():
    from prod_unlearn.tasks import FORGET_TASKS, UTILITY_TASKS
    return [*FORGET_TASKS, *UTILITY_TASKS]


def _forget_tasks():
    from prod_unlearn.tasks import FORGET_TASKS
    return list(FORGET_TASKS)


def _excludable():
    from prod_unlearn.models.pretrain import EXCLUDABLE
    return list(EXCLUDABLE)


def _kinds():
    from prod_unlearn.attacks import KINDS
    return list(KINDS)


def _presets():
    from prod_unlearn.models.pretrain import PRESETS
    return list(PRESETS)


def _dtypes():
    from prod_unlearn.models.loading import DTYPES
    return ["auto", *sorted(DTYPES)]


def _until(p: dict) -> bool:
    return p["epochs"] is None       # the stopping rule is on unless --epochs fixes the budget


@app.callback()
def _main_options(debug: bool = typer.Option(False, "--debug", envvar="PROD_UNLEARN_DEBUG",
                                             help="Show the full traceback of any error (for developers)")):
    """Make a code LLM forget specific code without forgetting how to program (PROD and baselines)."""
    _DEBUG["on"] = _DEBUG["on"] or debug
    _quiet_libraries()


def _quiet_libraries() -> None:
    """Drop the per-checkpoint "Removed shared tensor" warnings (tied embeddings, harmless) and the
    shard-loading / download progress bars that flood logs; other warnings stay."""
    import logging

    class _Drop(logging.Filter):
        def filter(self, record):
            return "Removed shared tensor" not in str(record.getMessage())

    for name in ("accelerate.utils.other", "transformers.modeling_utils"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in lg.filters):
            lg.addFilter(_Drop())
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as tlog
        tlog.disable_progress_bar()
    except Exception:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars
        disable_progress_bars()
    except Exception:
        pass

# Training options left out are None: `training.defaults.resolve_train_config` fills them from the
# model folder's unlearn_defaults.json (the embedded model ships one), else the paper's settings.
_DEFAULT = "[default: the model folder's unlearn_defaults.json, else the paper's; README 'Defaults']"


def _train_config(model_name: str | None, purpose: str, method_params: dict | None = None, **options):
    """The resolved TrainConfig; a bad value (option or model file) is a one-line usage error."""
    from prod_unlearn.training.defaults import resolve_train_config
    try:
        cfg = resolve_train_config(model_name, purpose, **options)
    except ValueError as e:                       # ConfigError, or an unreadable unlearn_defaults.json
        raise chk.UsageError(str(e)) from None
    cfg.method_params = dict(method_params or {})
    return cfg


def _fail(msg: str) -> None:
    _say_error(msg)
    raise typer.Exit(2)


def _run(fn):
    """Turn any error into one line (exit 2 if user-caused, 1 if internal); --debug keeps the traceback."""
    if _debug():
        return fn()
    try:
        return fn()
    except (typer.Exit, click.exceptions.Exit, click.ClickException, KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        msg, code = chk.error_line(e)
        _say_error(msg)
        raise typer.Exit(code)


def _check(fn):
    """Run option checks; a bad value is one line naming the option (exit 2)."""
    try:
        return fn()
    except chk.UsageError as e:
        _fail(str(e))


def _load_set(opt: str, path: Path):
    """load_examples with the option named on errors no loader message covers."""
    from prod_unlearn.data.examples import load_examples
    _check(lambda: chk.input_path(opt, path))
    try:
        return load_examples(path)
    except RecursionError:
        _fail(f"{opt} {path}: JSON nested too deeply to parse (expected one flat object a line)")


# options shared by several commands (one declaration each)
_REPORT_TO = typer.Option("none", callback=B(choices=("none", "tensorboard", "wandb", "mlflow")),
                          help="Training curves through Accelerate's trackers: tensorboard | wandb | mlflow "
                               "| none (offline: TensorBoard event files in OUT/tensorboard)")
_PROMPT_COLUMN = typer.Option("prompt", callback=B(nonempty=True),
                              help="Field or column holding the prompt (JSONL, Parquet, CSV, datasets folder)")
_DEVICE = typer.Option("auto", callback=B(pattern=r"auto|cpu|cuda(:\d+)?|mps"), help="auto | cpu | cuda | cuda:N | mps")
_RELEARN_STEPS = typer.Option([5, 10, 25], "--steps", callback=B(min=1),
                              help="relearn: fine-tuning step budgets (repeat the flag)")
_COMPLETION_COLUMN = typer.Option("completion", callback=B(nonempty=True),
                                  help="Field or column holding the code (the completion)")


def _data_options(prompt_column: str, completion_column: str, report_to: str | None = None) -> None:
    """Apply the shared data options (one-line error on a bad value)."""
    from prod_unlearn.data.examples import DataError, use_columns
    from prod_unlearn.tracking import check_report_to
    try:
        use_columns(prompt_column, completion_column)
    except DataError as e:
        raise chk.UsageError(str(e)) from None
    problem = check_report_to(report_to) if report_to is not None else None
    if problem:
        raise chk.UsageError(problem)


def _lora(use: bool, r: int, merge: bool):
    from prod_unlearn.models.loading import LoraOptions
    return LoraOptions(r=r, alpha=2 * r, merge=merge) if use else None


@_command()
def unlearn(
    model: str = typer.Option(None, callback=B(path="model"),
                              help="Local folder or hub id of any causal LM [default: the embedded model]"),
    forget: Path = typer.Option(None, callback=B(path="input"),
                                help="Forget set: JSONL (prompt, completion[, id, meta]) or a folder of source files "
                                     "[default: the embedded copyright set]"),
    method: str = typer.Option("prod", callback=B(choices=_methods),
                               help="Unlearning method (see `prod-unlearn methods`)"),
    out: Path = typer.Option(None, callback=B(path="output", default=lambda p: Path("runs") / p["method"]),
                             help="Output folder (model, checkpoints, run.json) [default: runs/<method>]"),
    param: List[str] = typer.Option([], "--param", "-p", callback=B(),
                                    help="Method parameter KEY=VALUE, e.g. -p p=0.8 -p alpha=0"),
    epochs: Optional[int] = typer.Option(None, callback=B(min=1),
                                         help="Train exactly this many epochs (turns the stopping rule off) "
                                              "[default: train until forgotten]"),
    until_bleu: Optional[float] = typer.Option(None, callback=B(min=0, max=1, needs=_until, needs_text="with --epochs (a fixed budget); leave out --epochs to train until forgotten"),
                                               help="Stop once line-cut BLEU on the forget set is at most "
                                                    "this, at every cut [default: 0.10]"),
    max_utility_loss: Optional[float] = typer.Option(None, callback=B(gt=0, needs=_until, needs_text="with --epochs (a fixed budget); leave out --epochs to train until forgotten"),
                                                     help="Stop before held-out bits per byte rise by more "
                                                          "than this share (0.10 = 10 %) [default: 0.10]"),
    max_steps: Optional[int] = typer.Option(None, callback=B(min=1, needs=_until, needs_text="with --epochs (a fixed budget); leave out --epochs to train until forgotten"),
                                            help=f"Optimiser-step budget of the stopping rule {_DEFAULT}"),
    check_every: Optional[int] = typer.Option(None, callback=B(min=1, needs=_until, needs_text="with --epochs (a fixed budget); leave out --epochs to train until forgotten"),
                                              help="Optimiser steps between checks [default: from the "
                                                   "forget set's size, 5 to 25]"),
    heldout: Optional[Path] = typer.Option(None, callback=B(path="input"),
                                           help="Held-out code for the utility guard and the figures "
                                                "(JSONL or folder) [default: the shipped held-out files]"),
    lr: Optional[float] = typer.Option(None, callback=B(gt=0), help=f"AdamW learning rate {_DEFAULT}"),
    batch_size: Optional[int] = typer.Option(None, callback=B(min=1),
                                             help=f"Examples per device per micro-batch {_DEFAULT}"),
    grad_accum: Optional[int] = typer.Option(None, callback=B(min=1), help=f"Gradient accumulation steps {_DEFAULT}"),
    max_length: Optional[int] = typer.Option(None, callback=B(min=1), help=f"Max tokens per example {_DEFAULT}"),
    scheduler: Optional[str] = typer.Option(None, callback=B(choices=("constant", "linear", "cosine")),
                                            help=f"constant | linear | cosine {_DEFAULT}"),
    seed: Optional[int] = typer.Option(None, callback=B(min=0, max=2**32 - 1),
                                       help=f"Random seed (data order, init of LoRA) {_DEFAULT}"),
    save_steps: Optional[int] = typer.Option(None, callback=B(min=0),
                                             help="Also save a resumable state every N optimiser steps "
                                                  "[default: 0, per epoch only]"),
    retain: Optional[Path] = typer.Option(None, callback=B(path="input"),
                                          help="Retain set (same formats) for the optional retain term"),
    sam: Optional[float] = typer.Option(None, callback=B(min=0),
                                        help="Sharpness-aware unlearning, any method: take each step's "
                                             "gradient at the worst weights within this radius (e.g. 0.01; "
                                             f"2x a step) {_DEFAULT}"),
    retain_loss: Optional[str] = typer.Option(None, callback=B(choices=("nll", "kl")),
                                              help=f"Retain term: nll | kl {_DEFAULT}"),
    retain_weight: Optional[float] = typer.Option(None, callback=B(min=0),
                                                  help=f"Weight of the retain term {_DEFAULT}"),
    refusals: Optional[Path] = typer.Option(None, callback=B(path="input-file"),
                                            help="Refusal texts (one per line) for dpo/flat [default: shipped]"),
    device: str = _DEVICE,
    dtype: str = typer.Option("auto", callback=B(choices=_dtypes),
                              help="auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16"),
    gradient_checkpointing: bool = typer.Option(False, help="Trade compute for memory (large models)"),
    lora: bool = typer.Option(False, help="Train a LoRA adapter (peft) instead of all weights"),
    lora_r: int = typer.Option(16, callback=B(min=1), help="LoRA rank"),
    lora_merge: bool = typer.Option(True, help="Merge the adapter into the saved model (else save the adapter)"),
    evaluate: bool = typer.Option(True, help="Print forget BLEU and held-out perplexity before and after (the "
                                             "stopping rule checks as it trains either way)"),
    eval_each_epoch: bool = typer.Option(False, help="Evaluate every epoch (slower) and record it in run.json"),
    overwrite: bool = typer.Option(False, help="Discard the run already in --out (only a run folder) and start afresh"),
    report_to: str = _REPORT_TO,
    prompt_column: str = _PROMPT_COLUMN,
    completion_column: str = _COMPLETION_COLUMN,
):
    """Unlearn a forget set from a model. With no arguments: PROD on the embedded model's copyright set.

    By default it trains until forgotten (line-cut BLEU <= --until-bleu) within a utility guard and a
    step budget; exit status 3 when the run ended above the target (the model is saved all the same).
    """
    def go():
        from prod_unlearn import api
        from prod_unlearn.methods import get_method

        def checks():
            _data_options(prompt_column, completion_column, report_to)
            if sam and grad_accum not in (None, 1):
                raise chk.UsageError(f"--sam {sam:g}: needs --grad-accum 1 (the perturbation comes from one batch)")
            chk.device("--device", device)
            chk.hub_model("--model", model)
            return chk.method_params(get_method(method), param)
        params = _check(checks)
        train = dict(lr=lr, batch_size=batch_size, grad_accum=grad_accum, max_length=max_length, scheduler=scheduler,
                     seed=seed, save_steps=save_steps, retain_weight=retain_weight, retain_loss=retain_loss, sam=sam)
        try:
            res = api.unlearn(model, forget, method, out, params=params, epochs=epochs, until_bleu=until_bleu,
                              max_utility_loss=max_utility_loss, max_steps=max_steps, check_every=check_every,
                              heldout=heldout, retain=retain, refusals=refusals, device=device, dtype=dtype,
                              gradient_checkpointing=gradient_checkpointing, lora=lora, lora_r=lora_r,
                              lora_merge=lora_merge, evaluate=evaluate, eval_each_epoch=eval_each_epoch,
                              report_to=report_to, **{k: v for k, v in train.items() if v is not None})
        except RecursionError:
            _fail(f"--forget {forget}: JSON nested too deeply to parse (expected one flat object a line)")
        if res.after:
            _print_before_after(res.before, res.after)
        console.print(f"saved: {res.out} (Hugging Face model folder + run.json; per-epoch checkpoints in "
                      f"{res.out / 'checkpoints'})")
        if res.verdict:
            from rich.text import Text
            from prod_unlearn.training.until import EXIT_NOT_FORGOTTEN
            console.print(Text(res.verdict, style="yellow"), highlight=False, soft_wrap=True, emoji=False)
            return EXIT_NOT_FORGOTTEN
    return _run(go)


def _print_before_after(before: dict | None, after: dict) -> None:
    from rich.table import Table
    t = Table(title="copyright task")
    t.add_column("metric")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    keys = [k for k in ("bleu", "bleu_cut25", "bleu_cut50", "bleu_cut75", "exact_next5", "forget_quality",
                        "heldout_ppl", "heldout_bpb") if k in after]

    def cell(fig, k):
        ci = fig.get(f"{k}_ci")
        return f"{fig[k]:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    for k in keys:
        t.add_row(k + (" [95 % CI]" if f"{k}_ci" in after else ""), cell(before, k) if before and k in before else "-",
                  cell(after, k))
    if before and "heldout_bpb" in before and "heldout_bpb" in after:
        t.add_row("bits-per-byte change", "", f"{100 * (after['heldout_bpb'] / before['heldout_bpb'] - 1):+.1f} %")
    console.print(t)


@_command("eval")
def eval_cmd(
    model: str = typer.Option(None, callback=B(path="model"),
                              help="Model folder or hub id [default: the embedded model]"),
    task: str = typer.Option("copyright", callback=B(choices=_tasks),
                             help="copyright | insecure | deprecated (forget tasks) or a utility "
                                  "task: humaneval | health | ppl"),
    data: Optional[Path] = typer.Option(None, callback=B(path="input"),
                                        help="Forget set in the task's format [default: the task's default set]; "
                                             "for ppl and health: the held-out code (JSONL or folder)"),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (keys documented in the README)"),
    max_new_tokens: Optional[int] = typer.Option(None, callback=B(min=1),
                                                 help="Generation budget per continuation [default: the "
                                                      "task's own: copyright 512, humaneval 256, ...]"),
    batch_size: Optional[int] = typer.Option(None, callback=B(min=1),
                                             help="Generation batch size [default: the generator's own, "
                                                  "chosen by measurement]"),
    retain_model: Optional[str] = typer.Option(None, callback=B(path="model"),
                                               help="Forget tasks: also score a model never trained on the set "
                                                    "(same tokenizer; cached), the floor ('none' to skip) "
                                                    "[default: the shipped retain model for a default set]"),
    device: str = _DEVICE,
    dtype: str = typer.Option("auto", callback=B(choices=_dtypes)),
    prompt_column: str = _PROMPT_COLUMN,
    completion_column: str = _COMPLETION_COLUMN,
):
    """Evaluate a model on a task; prints forget quality (forget tasks) or utility figures."""
    def go():
        from prod_unlearn import api

        def checks():
            _data_options(prompt_column, completion_column)
            chk.device("--device", device)
            chk.hub_model("--model", model)
        _check(checks)
        res = api.evaluate(model, task, data, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           retain_model=retain_model, device=device, dtype=dtype)
        if json_out:
            sys.stdout.write(json.dumps(res) + "\n")
        else:
            console.print(res)
    _run(go)


@_command()
def attack(
    model: str = typer.Option(None, callback=B(path="model"),
                              help="Model folder or hub id [default: the embedded model]"),
    data: Optional[Path] = typer.Option(None, callback=B(path="input"),
                                        help="Forget set (copyright format) [default: the embedded copyright set]"),
    k: List[int] = typer.Option([0, 8, 16, 32, 64], "--k", callback=B(min=0), help="Prefix lengths (repeat the flag)"),
    max_new_tokens: Optional[int] = typer.Option(None, callback=B(min=1),
                                                 help="Generation budget per continuation [default: 128 for "
                                                      "prefix, 64 for the other kinds]"),
    png: Optional[Path] = typer.Option(None, callback=B(path="output-file", suffixes=(".png",)),
                                       help="Also write the bar chart (mean, min-max) here"),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object"),
    device: str = _DEVICE,
    kind: str = typer.Option("prefix", callback=B(choices=_kinds),
                             help="prefix | relearn | transform | quantize | mia"),
    original: Optional[str] = typer.Option(None, callback=B(path="model"),
                                           help="The model before unlearning, attacked the same way alongside"),
    max_items: Optional[int] = typer.Option(None, callback=B(min=1),
                                            help="First N items of the forget set [default: all]"),
    steps: List[int] = _RELEARN_STEPS,
    lr: float = typer.Option(1e-4, callback=B(gt=0), help="relearn: AdamW learning rate"),
    seed: int = typer.Option(0, callback=B(min=0, max=2**32 - 1), help="Seed (relearn split and batches, bootstrap)"),
    control: Optional[Path] = typer.Option(None, callback=B(path="input", needs=lambda p: p["kind"] == "mia", needs_text="unless --kind is mia (only the membership attack reads control files)"),
                                           help="mia: non-member files never trained on (JSONL or a folder "
                                                "of source files) [default: the shipped control set]"),
    retain_model: Optional[str] = typer.Option(None, callback=B(path="model"),
                                               help="A model never trained on the set (same tokenizer), "
                                                    "attacked identically: the floor ('none' to skip) [default: "
                                                    "the shipped retain model for a default set; not for the "
                                                    "paper's prefix summary, i.e. prefix without --original]"),
    prompt_column: str = _PROMPT_COLUMN,
    completion_column: str = _COMPLETION_COLUMN,
):
    """Attack the forgetting: prefix injection (default), relearning, code transformation, quantisation, MIA."""
    def go():
        from prod_unlearn import api
        from prod_unlearn.attacks import get_attack, markdown_section, public
        from prod_unlearn.data.examples import load_examples
        from prod_unlearn.attacks.prefix import prefix_attack
        from prod_unlearn.report.pareto import plot_attack
        from prod_unlearn.tasks import default_forget_sets
        from prod_unlearn.models.loading import DEFAULT_MODEL, load_model

        def checks():
            _data_options(prompt_column, completion_column)
            if kind == "prefix" and not any(kk > 0 for kk in k):
                raise chk.UsageError(f"--k {' '.join(map(str, k)) or '(none)'}: expected at least one prefix length "
                                     f"> 0 (k = 0 is the baseline every gain is measured against)")
            chk.device("--device", device)
            chk.hub_model("--model", model)
            chk.hub_model("--original", original)
        _check(checks)
        get_attack(kind)                        # an unknown kind fails before the model loads
        mdl, tok = load_model(model or str(DEFAULT_MODEL), device, "auto")
        examples = load_examples(data or default_forget_sets()["copyright"])
        if kind == "prefix" and original is None and retain_model is None:  # the paper's attack, output unchanged
            res = prefix_attack(mdl, tok, examples[:max_items] if max_items else examples, k, max_new_tokens or 128)
            empty = [kk for kk, g in res["gain"].items() if kk and not g]
            if empty:
                _fail(f"--k {', '.join(map(str, empty))}: no item of the set is long enough for a prefix of that "
                      f"many tokens (use a smaller --k)")
            if png:
                plot_attack({Path(model or "embedded").name: {kk: g for kk, g in res["gain"].items() if kk}}, png)
            summary = {key: res[key] for key in ("bleu", "gain_mean", "gain_min", "gain_max")}
            if json_out:
                sys.stdout.write(json.dumps(summary) + "\n")
            else:
                console.print(summary)
            return
        settings = dict(max_items=max_items, ks=tuple(k), steps=tuple(steps), lr=lr, seed=seed,
                        control_path=str(control) if control else None)
        attack_mod, res = api._attack((mdl, tok), kind, examples, original, retain_model, device,
                                      {**settings, **({"max_new_tokens": max_new_tokens} if max_new_tokens else {})})
        if png:
            attack_mod.plot(res, png)
        if json_out:
            sys.stdout.write(json.dumps(public(res)) + "\n")
        else:
            console.print("\n".join(markdown_section(res)), highlight=False, soft_wrap=True)
    _run(go)


@_command()
def audit(
    model: str = typer.Option(None, callback=B(path="model"),
                              help="The unlearned model: folder or hub id [default: the embedded model]"),
    forget: Path = typer.Option(None, callback=B(path="input"),
                                help="The takedown request's forget set: JSONL or a folder of source files "
                                     "[default: the embedded copyright set]"),
    original: Optional[str] = typer.Option(None, callback=B(path="model"),
                                           help="The model before unlearning (same tokenizer): extraction, "
                                                "membership and utility are compared with it"),
    out: Path = typer.Option(Path("runs/audit"), callback=B(path="output"),
                             help="Report folder: report.md, report.json and PNG charts"),
    kinds: Optional[str] = typer.Option(None, callback=B(items=True, choices=_kinds),
                                        help="Comma-separated attacks [default: prefix,relearn,transform,quantize,mia]"),
    max_new_tokens: int = typer.Option(48, callback=B(min=1),
                                       help="Tokens generated and scored per file, every section"),
    max_items: int = typer.Option(20, callback=B(min=0),
                                  help="Files attacked by prefix / transform / quantize (0 = all)"),
    steps: List[int] = _RELEARN_STEPS,
    control: Optional[Path] = typer.Option(None, callback=B(path="input", needs=lambda p: p["kinds"] is None or "mia" in p["kinds"].split(","), needs_text="unless --kinds includes mia"),
                                           help="mia: non-member files never trained on (JSONL or a folder "
                                                "of source files) [default: the shipped control set]"),
    retain_model: Optional[str] = typer.Option(None, callback=B(path="model"),
                                               help="A model never trained on the forget set (same tokenizer), "
                                                    "put through every section: the floor ('none' to skip) "
                                                    "[default: the shipped retain model when --forget is a "
                                                    "default set and the tokenizer is the embedded one]"),
    device: str = _DEVICE,
    prompt_column: str = _PROMPT_COLUMN,
    completion_column: str = _COMPLETION_COLUMN,
):
    """Run every attack against one takedown request; write one report (Markdown + JSON + charts) to attach to it."""
    def go():
        from prod_unlearn import api
        _check(lambda: _data_options(prompt_column, completion_column))
        rep = api.audit(model, forget, original, out, kinds=kinds, retain_model=retain_model, device=device,
                        max_new_tokens=max_new_tokens, max_items=max_items, steps=tuple(steps), control=control)
        for r in rep["recovery"]:
            console.print(f"{r['attack']}: {r['condition']} BLEU {r['baseline_bleu']:.3f} -> {r['bleu']:.3f} "
                          f"({r['verdict']})", highlight=False)
        console.print(f"report: {out / 'report.html'} (and report.md, report.json; {rep['timings']['total']:.0f} s)")
        if model is not None:
            from prod_unlearn.report.model_card import add_audit
            card = add_audit(Path(os.path.expanduser(model)), out)
            if card:
                console.print(f"model card updated with the audit: {card}")
    _run(go)


@_command()
def bench(
    out: Path = typer.Option(Path("runs/bench"), callback=B(path="output", adopt="results.json"),
                             help="Report folder (resumable: rerun to continue)"),
    quick: bool = typer.Option(False, help="~10 min on 2 cores: prod/ga/npo, 1 epoch, 16 items a task, 4 points, ppl axis"),
    methods: Optional[str] = typer.Option(None, callback=B(items=True, choices=_methods),
                                          help="Comma-separated methods [default: all six]"),
    tasks: Optional[str] = typer.Option(None, callback=B(items=True, choices=_forget_tasks),
                                        help="Comma-separated tasks [default: copyright,insecure,deprecated]"),
    epochs: Optional[int] = typer.Option(None, callback=B(min=1), help="Epochs per method [default: the model folder's "
                                                     "unlearn_defaults.json, else the paper's]"),
    eval_points: Optional[int] = typer.Option(None, callback=B(min=1),
                                              help="Evaluations per run, evenly spaced over its optimiser steps [default 5; quick: 4]"),
    seeds: Optional[int] = typer.Option(None, callback=B(min=1),
                                        help="Runs per method and task with different data orders [default 1]"),
    lr: Optional[float] = typer.Option(None, callback=B(gt=0),
                                       help="One learning rate shared by all methods (the paper's setting) "
                                            "[default: each method's calibrated lr, else the model's recommended "
                                            "lr (unlearn_defaults.json), else the paper's]"),
    calibration: Optional[Path] = typer.Option(None, callback=B(path="input-file"),
                                               help="Calibrated lr table to read [default: the shipped one]; "
                                                    "with --calibrate, a table to merge the result into"),
    calibrate: bool = typer.Option(False, help="Pick each method's lr per task over a small grid (largest lr keeping "
                                               "utility within 10 %); writes OUT/calibration.json"),
    lr_grid: Optional[str] = typer.Option(None, callback=B(items=True, needs=lambda p: p["calibrate"],
                                                           needs_text="without --calibrate (it is the grid of the "
                                                                      "calibration)"),
                                          help="Comma-separated lr grid for --calibrate [default 1e-5,2e-5,5e-5,1e-4,"
                                               "2e-4,5e-4]"),
    rule: str = typer.Option("utility", callback=B(choices=("utility", "forget")),
                             help="Which lrs: utility (matched utility: the largest lr keeping utility "
                                  "within 10 %) | forget (matched forgetting: the smallest lr closing "
                                  "--target of the gap to the retain model); with --calibrate, the rule "
                                  "that fills the table"),
    target: float = typer.Option(0.9, callback=B(gt=0, max=1, needs=lambda p: p["rule"] == "forget",
                                                 needs_text="unless --rule is forget"),
                                 help="--rule forget: share of the original -> retain-model gap to close"),
    retain_model: Optional[str] = typer.Option(None, callback=B(path="model"),
                                               help="A model never trained on the tasks' sets (same tokenizer), "
                                                    "scored and attacked beside every method: the floor ('none' to "
                                                    "skip) [default: the shipped retain model for the embedded model]"),
    utility: Optional[str] = typer.Option(None, callback=B(choices=("health", "ppl", "humaneval")),
                                          help="Utility axis for PDR: health | ppl | humaneval [default health; quick: ppl]"),
    max_items: Optional[int] = typer.Option(None, callback=B(min=0),
                                            help="First N items of each task [default: all; quick 16; 0 = all]"),
    attacks: Optional[str] = typer.Option(None, callback=B(items=True),
                                          help="Attacks on the copyright task's final models: comma-separated "
                                               "kinds of prefix,relearn,transform,quantize,mia, 'all' or "
                                               "'none' [default prefix,mia (~6 min on 2 cores); "
                                               "quick: prefix,mia]"),
    model: Optional[str] = typer.Option(None, callback=B(path="model"), help="Model [default: the embedded model]"),
    device: str = _DEVICE,
    overwrite: bool = typer.Option(False, help="Discard the folder's cells and runs and start afresh"),
    executor: str = typer.Option("local", callback=B(choices=("local", "ray")),
                                 help="Where the units run: local (one after another) | ray (a Ray cluster: "
                                      "RAY_ADDRESS, else a local one; one GPU per unit where there are GPUs; "
                                      "pip install 'prod-unlearn[ray]')"),
):
    """Methods x tasks: unlearn, evaluate points along training, attack, PDR with bootstrap intervals;
    writes report.md/json and PNGs (or, with --calibrate, the calibrated lr table)."""
    def go():
        from prod_unlearn import api
        from prod_unlearn.attacks.bench import parse_kinds
        _check(lambda: _bench_checks(out, methods, tasks, epochs, eval_points, seeds, lr, lr_grid, utility, max_items,
                                     model, device, calibration, rule, retain_model, executor))
        try:
            attack_kinds = parse_kinds(attacks)
        except ValueError as e:
            _fail(str(e))
        kw = dict(methods=methods.split(",") if methods else None, tasks=tasks.split(",") if tasks else None,
                  epochs=epochs, eval_points=eval_points, seeds=seeds, lr=lr, utility=utility, max_items=max_items,
                  model=model, device=device, lr_grid=[float(x) for x in lr_grid.split(",")] if lr_grid else None,
                  calibration=str(calibration) if calibration and not calibrate else None, attacks=attack_kinds,
                  rule=rule, target=target, retain_model=retain_model)
        if calibrate:
            table = api.benchmark(out, quick=quick, calibrate=True, overwrite=overwrite, calibration_out=calibration, **kw)
            prof = next(p for p in table["profiles"] if p.get("rule", "utility") == rule)
            console.print(f"calibrated table: {out / 'calibration.json'}" +
                          (f" (merged into {calibration})" if calibration else "") + f"; {out / 'calibration.md'}")
            console.print({t: e["lr"] for t, e in prof["tasks"].items()})
            return
        res = api.benchmark(out, quick=quick, overwrite=overwrite, executor=executor, **kw)
        console.print(f"report: {out / 'report.md'}")
        console.print({"pdr": res["pdr"]})
    _run(go)


def _bench_checks(out, methods, tasks, epochs, eval_points, seeds, lr, lr_grid, utility, max_items, model, device,
                  calibration, rule, retain_model, executor) -> None:
    chk.float_list("--lr-grid", lr_grid)
    if rule == "forget" and retain_model and retain_model.lower() == "none":
        raise chk.UsageError("--rule forget: needs a retain model (the floor the gap is measured to), not --retain-model none")
    chk.device("--device", device)
    if calibration is not None and calibration.exists():
        chk.input_path("--calibration", calibration, kind="file")
    chk.hub_model("--model", model)


@_command()
def report(out: Path = typer.Option(Path("runs/bench"), callback=B(path="output", owner="bench", adopt="results.json"),
                                    help="A bench folder holding results.json")):
    """Rebuild report.md / report.json / PNGs from a bench folder's results.json."""
    def go():
        from prod_unlearn.report.bench import write_report
        path = out / "results.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file (run `prod-unlearn bench --out {out}` first)")
        _check(lambda: chk.input_path("--out", path, kind="file"))
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            _fail(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); rerun `prod-unlearn bench --out {out}`")
        except (RecursionError, UnicodeDecodeError) as e:
            _fail(f"{path}: not a bench results file ({type(e).__name__}); rerun `prod-unlearn bench --out {out}`")
        if not isinstance(results, dict) or not {"config", "cells"} <= set(results):
            _fail(f"{path}: not a bench results file (expected an object with 'config' and 'cells'); rerun "
                  f"`prod-unlearn bench --out {out}`")
        try:
            write_report(results, out)
        except (KeyError, TypeError, AttributeError, IndexError, ZeroDivisionError) as e:
            _fail(f"{path}: malformed bench results ({type(e).__name__}: {str(e)[:120]}); rerun "
                  f"`prod-unlearn bench --out {out}`")
        console.print(f"report: {out / 'report.md'}")
    _run(go)


@_command()
def learn(
    data: Path = typer.Option(..., callback=B(path="input"),
                              help="Code to memorise: JSONL or a folder of source files"),
    out: Path = typer.Option(..., callback=B(path="output"), help="Output model folder"),
    model: str = typer.Option(None, callback=B(path="model"), help="Model to fine-tune [default: the embedded model]"),
    replay: Optional[Path] = typer.Option(None, callback=B(path="input"),
                                          help="General code replayed each step so utility survives "
                                               "[default: 200 training files of this Python's stdlib]"),
    epochs: Optional[int] = typer.Option(None, callback=B(min=1),
                                         help="Epochs [default: the memorisation recipe's, README 'Defaults']"),
    lr: Optional[float] = typer.Option(None, callback=B(gt=0),
                                       help="Peak learning rate, decayed to 0 (cosine) [default: the "
                                            "memorisation recipe's, tuned on the embedded model; use ~1e-5 "
                                            "for 7B models]"),
    batch_size: Optional[int] = typer.Option(None, callback=B(min=1), help="[default: the memorisation recipe's]"),
    max_length: Optional[int] = typer.Option(None, callback=B(min=1), help="[default: the memorisation recipe's]"),
    seed: Optional[int] = typer.Option(None, callback=B(min=0, max=2**32 - 1),
                                       help="[default: the memorisation recipe's]"),
    device: str = _DEVICE,
    dtype: str = typer.Option("auto", callback=B(choices=_dtypes)),
    lora: bool = typer.Option(False, help="Train a LoRA adapter (merged on save)"),
    report_to: str = _REPORT_TO,
    prompt_column: str = _PROMPT_COLUMN,
    completion_column: str = _COMPLETION_COLUMN,
):
    """Fine-tune a model until it reproduces DATA (the paper's setup before unlearning)."""
    def go():
        from prod_unlearn.tasks.copyright import continuation_bleu
        from prod_unlearn.models.loading import DEFAULT_MODEL, load_model
        from prod_unlearn.training.memorise import memorise

        def checks():
            _data_options(prompt_column, completion_column, report_to)
            chk.device("--device", device)
            chk.hub_model("--model", model)
            return _train_config(model, "memorise", epochs=epochs, lr=lr, batch_size=batch_size,
                                 max_length=max_length, seed=seed)
        cfg = _check(checks)
        examples = _load_set("--data", data)
        replay_set = _load_set("--replay", replay) if replay else None
        mdl, tok = load_model(model or str(DEFAULT_MODEL), device, dtype, lora=_lora(lora, 16, True))
        ev = lambda mm, ep: {"memorisation_bleu": round(continuation_bleu(mm, tok, examples)["bleu"], 4)}  # noqa: E731
        run = memorise(mdl, tok, examples, out, cfg=cfg, replay=replay_set, model_name=model or str(DEFAULT_MODEL),
                       evaluate=ev, report_to=report_to)
        from prod_unlearn.io import atomic_write_json
        from prod_unlearn.report.model_card import write_model_card
        run["data_name"] = str(data)
        atomic_write_json(out / "run.json", run)
        write_model_card(out, run, str(data))
        for e in run["epochs"]:
            console.print(f"epoch {e['epoch']}: loss {e['loss']:.4f}, memorisation BLEU {e['eval']['memorisation_bleu']}")
    _run(go)


@_command()
def pretrain(
    preset: str = typer.Option("gpu", callback=B(choices=_presets),
                               help="gpu: the shipped model, from scratch (3 min on one GPU; hours on "
                                    "CPU) | cpu, then cpu-memorise: the CPU fallback, continues --init "
                                    "(31 + 21 min on 2 cores) | tiny (test)"),
    source: Optional[Path] = typer.Option(None, callback=B(path="input-folder"),
                                          help="Corpus root [default: this Python's standard library]"),
    out: Optional[Path] = typer.Option(None, callback=B(path="output", default=lambda p: Path("runs/pretrain")),
                                       help="Output root (writes OUT/model and OUT/data) [default: runs/pretrain]"),
    init: Optional[str] = typer.Option(None, callback=B(path="model"),
                                       help="Start from this model's weights and vocabulary (required by "
                                            "the cpu presets; 'embedded' = the shipped model)"),
    exclude: Optional[str] = typer.Option(None, callback=B(items=True, choices=_excludable),
                                          help="Train a retain model: these sets (comma-separated: copyright, "
                                               "insecure, deprecated) are neither replayed nor in the corpus; "
                                               "the embedded model's vocabulary is kept"),
    evaluate: bool = typer.Option(True, help="Measure memorisation and held-out bits per byte at the end"),
    device: str = _DEVICE,
    seed: int = typer.Option(0, callback=B(min=0, max=2**32 - 1)),
    report_to: str = _REPORT_TO,
):
    """Train the embedded code LM (reproduces the shipped model; its recipe: docs/embedded-model.md)."""
    def go():
        from prod_unlearn.tasks.memorisation import memorisation_report, monitor
        from prod_unlearn.models.pretrain import config_for, pretrain as run_pretrain
        excluded = tuple(x.strip() for x in (exclude or "").split(",") if x.strip())

        def checks():
            _data_options("prompt", "completion", report_to)
            chk.device("--device", device)
            chk.hub_model("--init", init)
        _check(checks)
        cfg = config_for(preset, source=str(source) if source else None, out=str(out) if out else None,
                         init=init, device=device, seed=seed, exclude=excluded or None)
        final = (lambda m, t, split: memorisation_report(m, t)) if evaluate else None
        rec = run_pretrain(cfg, monitor=monitor, final_eval=final, report_to=report_to)
        console.print(rec["metrics"])
    _run(go)


@_command()
def distill(
    teacher: str = typer.Option(..., callback=B(path="model"), help="The unlearned model to distil (folder or hub id)"),
    out: Path = typer.Option(..., callback=B(path="output"), help="Output model folder (+ distill.json)"),
    noise: float = typer.Option(0.5, callback=B(min=0, max=1), help="Share of a fresh initialisation mixed into the "
                                                                    "student before distilling (0 = a copy, 1 = fresh)"),
    tokens: int = typer.Option(2_000_000, callback=B(min=1), help="Distillation budget in tokens (the embedded model "
                                                                  "on 2 CPU cores: ~3 s per 2,048; 2 M ~ 50 min)"),
    lr: float = typer.Option(3e-4, callback=B(gt=0), help="AdamW peak learning rate (cosine to 0)"),
    batch_size: int = typer.Option(8, callback=B(min=1), help="Windows per step"),
    context: int = typer.Option(256, callback=B(min=2), help="Tokens per window"),
    data: Optional[Path] = typer.Option(None, callback=B(path="input"),
                                        help="General code to distil on (JSONL, table or folder) [default: this "
                                             "Python's standard library training split, the default sets cut out]"),
    forget: Optional[Path] = typer.Option(None, callback=B(path="input"),
                                          help="The forget set: any data document holding one of its items is dropped"),
    device: str = _DEVICE,
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
                raise chk.UsageError(str(e)) from None
            return cfg
        cfg = _check(checks)
        rec = api.distill(teacher, out, cfg, data=data, forget=forget, device=device)
        console.print(f"saved: {out} (Hugging Face model folder + distill.json; {rec['tokens']:,} tokens, "
                      f"{rec['train_seconds']:.0f} s)")
    _run(go)


@_command("build-task")
def build_task(
    name: str = typer.Argument(..., callback=B(choices=("insecure", "deprecated")), help="insecure | deprecated"),
    out: Optional[Path] = typer.Option(None, callback=B(path="output-file"),
                                       help="Where to write the set [default: the shipped file and its build record]"),
    model: Optional[str] = typer.Option(None, callback=B(path="model", needs=lambda p: p["name"] == "insecure", needs_text="unless NAME is insecure (the deprecated set is mined without a model)"),
                                        help="insecure: the model whose reproduction of each item is recorded "
                                             "[default: the embedded model]"),
):
    """Rebuild a default forget set from the embedded model's training corpus (how the shipped sets were made)."""
    def go():
        from prod_unlearn.build import build_task as run_build
        rec = run_build(name, out, model)
        console.print({k: v for k, v in rec.items() if k not in ("per_api", "still_valid", "before_all_candidates")})
    _run(go)


@_command()
def scan(
    files: Optional[List[Path]] = typer.Argument(None, callback=B(path="input-file"),
                                                 help="Files to scan [default: standard input]"),
    language: str = typer.Option("python", callback=B(nonempty=True),
                                 help="Language of the code (codeshield's names; py, js... accepted)"),
):
    """Run the Insecure Code Detector (codeshield regex + semgrep rules) on code and print each finding."""
    def go():
        from prod_unlearn.tasks.insecure import DetectorError, resolve_language, scan as run_scan
        try:
            resolve_language(language)
        except DetectorError as e:
            _fail(str(e))
        names = [str(f) for f in files] if files else ["-"]
        texts = [Path(n).read_text(encoding="utf-8", errors="replace") if n != "-" else sys.stdin.read() for n in names]
        for n, found in zip(names, run_scan(texts, language, all_matches=True)):
            for x in found:
                sys.stdout.write(f"{n}:{x.line}: {x.analyzer} {x.pattern_id} {x.cwe}\n")
    _run(go)


@_command()
def methods(json_out: bool = typer.Option(False, "--json", help="Machine-readable output")):
    """List the unlearning methods with their parameters and defaults."""
    from dataclasses import fields
    from prod_unlearn.methods import METHODS
    rows = {n: {"summary": m.summary, "params": {f.name: getattr(m.params(), f.name) for f in fields(m.params)}}
            for n, m in sorted(METHODS.items())}
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


@_command()
def info(json_out: bool = typer.Option(False, "--json", help="Machine-readable output")):
    """Where the embedded model and the default forget sets are."""
    from prod_unlearn import __version__
    from prod_unlearn.tasks import HELDOUT, default_forget_sets
    from prod_unlearn.models.loading import DEFAULT_MODEL, RETAIN_MODEL
    excluded = json.loads((RETAIN_MODEL / "pretrain.json").read_text())["excluded"]["sets"]
    res = {"version": __version__, "default_model": str(DEFAULT_MODEL),
           "default_forget_sets": {k: str(v) for k, v in default_forget_sets().items()}, "heldout": str(HELDOUT),
           "retain_models": {s: str(RETAIN_MODEL) for s in excluded}}
    if json_out:
        sys.stdout.write(json.dumps(res) + "\n")
    else:
        console.print(res)


if __name__ == "__main__":
    app()
