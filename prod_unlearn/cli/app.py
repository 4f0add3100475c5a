"""The Typer app every command registers on: the error boundary (one line, exit 2 for a user's
error), ``--config`` and the guard on every command (guard.py), and the options and helpers that
several commands share."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import rich.markup
import typer
from typer.core import TyperCommand, TyperGroup

from prod_unlearn.cli import checks as chk
from prod_unlearn.cli.guard import bound as B
from prod_unlearn.cli.guard import guard, load_config
from prod_unlearn.errors import UsageError
from prod_unlearn.progress import console


def error_line(e: BaseException) -> tuple[str, int]:
    """One line for any exception and the exit code: 2 for user-caused errors, 1 for internal ones."""
    from prod_unlearn.data.examples import DataError
    from prod_unlearn.models.loading import ModelError

    sandbox_unavailable: type[Exception]
    try:
        from prod_unlearn.sandbox import SandboxUnavailable

        sandbox_unavailable = SandboxUnavailable
    except Exception:  # pragma: no cover
        sandbox_unavailable = RuntimeError
    first = (str(e).strip().splitlines() or [""])[0]
    if getattr(e, "errno", None) == 28 or "No space left on device" in str(e) or "os error 28" in str(e):
        return "out of disk space while writing (free some space, or choose an --out on another disk)", 2
    if isinstance(e, RecursionError):
        return "input nested too deeply to parse (e.g. JSON with thousands of nested brackets)", 2
    if isinstance(e, (UsageError, DataError, ModelError, sandbox_unavailable)):  # one line by construction:
        return str(e).strip() or type(e).__name__, 2  # a newline is from a path
    if isinstance(e, FloatingPointError):
        return first or "a loss or metric became NaN/inf", 2
    if isinstance(e, UnicodeError):
        return f"not valid UTF-8 text ({first})", 2
    if isinstance(e, OSError):
        if e.filename is not None and e.strerror:
            return f"{e.filename}: {e.strerror}", 2
        return first or type(e).__name__, 2
    if isinstance(e, MemoryError):
        return "out of memory (try a smaller --batch-size or --max-length)", 1
    if isinstance(e, ValueError):
        return first or type(e).__name__, 2
    return (
        f"internal error: {type(e).__name__}: {first} (rerun with --debug, or PROD_UNLEARN_DEBUG=1, for the traceback)"
    ), 1


_DEBUG = {"on": False}


def _say_error(msg: str) -> None:
    """``error: msg`` on one line; the message is plain text (no rich markup or emoji codes in paths)."""
    from rich.text import Text

    line = str(msg).strip().replace("\r", "\\r").replace("\n", "\\n") or "error"  # a path may hold a newline
    console.print(Text.assemble(("error:", "red"), " ", line), highlight=False, soft_wrap=True, emoji=False)


def _debug() -> bool:
    return _DEBUG["on"] or os.environ.get("PROD_UNLEARN_DEBUG", "") in ("1", "true", "yes")


class _Group(TyperGroup):
    """The CLI boundary: option-parsing errors and any exception a command lets out become one line
    (``error: ...``; exit 2 for user-caused errors, 1 for internal ones). ``--debug`` re-raises."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(
                args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra
            )
        _DEBUG["on"] = False  # set by the --debug callback below
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
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
            msg, code = error_line(e)
            _say_error(msg)
            sys.exit(code)
        sys.exit(rv if isinstance(rv, int) else 0)


class _Command(TyperCommand):
    """Every command: ``--config FILE`` (its options' defaults from a config.toml), and the guard
    (guard.py: cross-option checks, inputs, outputs claimed and locked) runs once all options
    are parsed and before the body; the claimed folders are released after it."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        for p in self.params:  # "[default: ...]" in a help text is text, not rich markup (rich dropped it)
            if isinstance(p, click.Option) and p.help:
                p.help = rich.markup.escape(p.help)
        self.params.append(
            click.Option(
                ["--config"],
                metavar="FILE",
                is_eager=True,
                expose_value=False,
                callback=load_config,
                help="Read the options from a config.toml (every output folder has one; flags given here win)",
            )
        )

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


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Make a code LLM forget specific code without forgetting how to program (PROD and baselines).",
)


def command(*args, **kw):
    return app.command(*args, cls=_Command, **kw)


# Registries read when an option is parsed (not at import: `prod-unlearn --help` stays light)
def method_names():
    from prod_unlearn.methods import METHODS

    return sorted(METHODS)


def task_names():
    from prod_unlearn.tasks import FORGET_TASKS, UTILITY_TASKS

    return [*FORGET_TASKS, *UTILITY_TASKS]


def forget_task_names():
    from prod_unlearn.tasks import FORGET_TASKS

    return list(FORGET_TASKS)


def utility_task_names():
    from prod_unlearn.tasks import UTILITY_TASKS

    return list(UTILITY_TASKS)


def excludable_sets():
    from prod_unlearn.models.recipe_data import EXCLUDABLE

    return list(EXCLUDABLE)


def kind_names():
    from prod_unlearn.attacks import KINDS

    return list(KINDS)


def preset_names():
    from prod_unlearn.models.pretrain import PRESETS

    return list(PRESETS)


def dtype_names():
    from prod_unlearn.models.loading import DTYPES

    return ["auto", *sorted(DTYPES)]


def until_rule_on(p: dict) -> bool:
    return p["epochs"] is None  # the stopping rule is on unless --epochs fixes the budget


@app.callback()
def _main_options(
    debug: bool = typer.Option(
        False, "--debug", envvar="PROD_UNLEARN_DEBUG", help="Show the full traceback of any error (for developers)"
    ),
):
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
DEFAULT_HELP = "[default: the model folder's unlearn_defaults.json, else the paper's; README 'Defaults']"


def train_config(model_name: str | None, purpose: str, method_params: dict | None = None, **options):
    """The resolved TrainConfig; a bad value (option or model file) is a one-line usage error."""
    from prod_unlearn.training.defaults import resolve_train_config

    try:
        cfg = resolve_train_config(model_name, purpose, **options)
    except ValueError as e:  # ConfigError, or an unreadable unlearn_defaults.json
        raise UsageError(str(e)) from None
    cfg.method_params = dict(method_params or {})
    return cfg


def fail(msg: str) -> None:
    _say_error(msg)
    raise typer.Exit(2)


def run_or_fail(fn):
    """Turn any error into one line (exit 2 if user-caused, 1 if internal); --debug keeps the traceback."""
    if _debug():
        return fn()
    try:
        return fn()
    except (typer.Exit, click.exceptions.Exit, click.ClickException, KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        msg, code = error_line(e)
        _say_error(msg)
        raise typer.Exit(code) from None


def check_options(fn):
    """Run option checks; a bad value is one line naming the option (exit 2)."""
    try:
        return fn()
    except UsageError as e:
        fail(str(e))


def load_set(opt: str, path: Path):
    """load_examples with the option named on errors no loader message covers."""
    from prod_unlearn.data.examples import load_examples

    check_options(lambda: chk.input_path(opt, path))
    try:
        return load_examples(path)
    except RecursionError:
        fail(f"{opt} {path}: JSON nested too deeply to parse (expected one flat object a line)")


# options shared by several commands (one declaration each)
REPORT_TO = typer.Option(
    "none",
    callback=B(choices=("none", "tensorboard", "wandb", "mlflow")),
    help="Training curves through Accelerate's trackers: tensorboard | wandb | mlflow "
    "| none (offline: TensorBoard event files in OUT/tensorboard)",
)
PROMPT_COLUMN = typer.Option(
    "prompt",
    callback=B(nonempty=True),
    help="Field or column holding the prompt (JSONL, Parquet, CSV, datasets folder)",
)
DEVICE = typer.Option("auto", callback=B(pattern=r"auto|cpu|cuda(:\d+)?|mps"), help="auto | cpu | cuda | cuda:N | mps")
RELEARN_STEPS = typer.Option(
    [5, 10, 25], "--steps", callback=B(min=1), help="relearn: fine-tuning step budgets (repeat the flag)"
)
COMPLETION_COLUMN = typer.Option(
    "completion", callback=B(nonempty=True), help="Field or column holding the code (the completion)"
)


def option(help: str, **bound):
    """An option that is None unless given, with the bounds the guard checks at parse time
    (``guard.Bound``: min, gt, choices, path=model / input / output ..., needs ...)."""
    return typer.Option(None, callback=B(**bound), help=help)


def retain_model_option(use: str, default: str = "for a default set and the embedded tokenizer"):
    """--retain-model of eval, attack, audit and bench; ``use`` says what the command does with it."""
    return option(
        f"A model never trained on the forget set (same tokenizer), {use}: the floor ('none' "
        f"to skip) [default: the shipped retain model {default}]",
        path="model",
    )


def control_option(needs, when: str):
    """--control of attack and audit (the membership attack's non-members)."""
    return option(
        "mia: non-member files never trained on (JSONL or a folder of source files) [default: the shipped control set]",
        path="input",
        needs=needs,
        needs_text=f"unless {when}",
    )


def data_options(prompt_column: str, completion_column: str, report_to: str | None = None) -> None:
    """Apply the shared data options (one-line error on a bad value)."""
    from prod_unlearn.data.examples import DataError, use_columns
    from prod_unlearn.tracking import check_report_to

    try:
        use_columns(prompt_column, completion_column)
    except DataError as e:
        raise UsageError(str(e)) from None
    problem = check_report_to(report_to) if report_to is not None else None
    if problem:
        raise UsageError(problem)


def lora_options(use: bool, r: int, merge: bool):
    from prod_unlearn.models.loading import LoraOptions

    return LoraOptions(r=r, alpha=2 * r, merge=merge) if use else None
