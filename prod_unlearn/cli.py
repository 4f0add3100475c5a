"""`prod-unlearn`: one Typer app. Every user-facing error is one line on stderr, exit code 2."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from prod_unlearn.progress import console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make a code LLM forget specific code without forgetting how to program (PROD and baselines).")

# The embedded model is tiny and was memorised hard, so the main job's defaults differ from the
# paper's 7B settings (lr 5e-6, 10 epochs); measured in README ("Main job").
EMBEDDED_DEFAULTS = {"lr": 2e-5, "epochs": 1, "max_length": 1536}


def _fail(msg: str) -> None:
    console.print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _run(fn):
    """Turn expected user errors into one line; real bugs keep their traceback."""
    from prod_unlearn.data.examples import DataError
    from prod_unlearn.models.loading import ModelError
    try:
        return fn()
    except (DataError, ModelError, ValueError, FileNotFoundError) as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


def _parse_params(items: list[str]) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            _fail(f"--param {it}: expected KEY=VALUE")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _lora(use: bool, r: int, merge: bool):
    from prod_unlearn.models.loading import LoraOptions
    return LoraOptions(r=r, alpha=2 * r, merge=merge) if use else None


@app.command()
def unlearn(
    model: str = typer.Option(None, help="Local folder or hub id of any causal LM [default: the embedded model]"),
    forget: Path = typer.Option(None, help="Forget set: JSONL (prompt, completion[, id, meta]) or a folder of source files "
                                           "[default: the embedded copyright set]"),
    method: str = typer.Option("prod", help="Unlearning method (see `prod-unlearn methods`)"),
    out: Path = typer.Option(None, help="Output folder (model, checkpoints, run.json) [default: runs/<method>]"),
    param: List[str] = typer.Option([], "--param", "-p", help="Method parameter KEY=VALUE, e.g. -p p=0.8 -p alpha=0"),
    epochs: Optional[int] = typer.Option(None, help="Epochs [default: 10, or 1 on the embedded model]"),
    lr: Optional[float] = typer.Option(None, help="AdamW learning rate [default: 5e-6 (paper), or 2e-5 on the embedded model]"),
    batch_size: int = typer.Option(1, help="Examples per device per micro-batch"),
    grad_accum: int = typer.Option(1, help="Gradient accumulation steps"),
    max_length: Optional[int] = typer.Option(None, help="Max tokens per example [default: 1024, or 1536 on the embedded model]"),
    scheduler: str = typer.Option("constant", help="constant | linear | cosine"),
    seed: int = typer.Option(0, help="Random seed (data order, init of LoRA)"),
    save_steps: int = typer.Option(0, help="Also save a resumable state every N optimiser steps"),
    retain: Optional[Path] = typer.Option(None, help="Retain set (same formats) for the optional retain term"),
    retain_loss: str = typer.Option("nll", help="Retain term: nll | kl"),
    retain_weight: float = typer.Option(1.0, help="Weight of the retain term"),
    refusals: Optional[Path] = typer.Option(None, help="Refusal texts (one per line) for dpo/flat [default: shipped]"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16"),
    gradient_checkpointing: bool = typer.Option(False, help="Trade compute for memory (large models)"),
    lora: bool = typer.Option(False, help="Train a LoRA adapter (peft) instead of all weights"),
    lora_r: int = typer.Option(16, help="LoRA rank"),
    lora_merge: bool = typer.Option(True, help="Merge the adapter into the saved model (else save the adapter)"),
    evaluate: bool = typer.Option(True, help="Print forget BLEU and held-out perplexity before and after"),
    eval_each_epoch: bool = typer.Option(False, help="Evaluate every epoch (slower) and record it in run.json"),
):
    """Unlearn a forget set from a model. With no arguments: PROD on the embedded model's copyright set."""
    def go():
        from prod_unlearn.data.examples import load_examples
        from prod_unlearn.evaluation.suite import default_forget_sets, evaluate as run_eval
        from prod_unlearn.methods import get_method
        from prod_unlearn.models.loading import DEFAULT_MODEL, load_model
        from prod_unlearn.training.loop import TrainConfig, unlearn as run_unlearn
        from prod_unlearn.methods.refusals import load_refusals

        embedded = model is None
        name = str(DEFAULT_MODEL) if embedded else model
        m = get_method(method)
        forget_path = forget or default_forget_sets()["copyright"]
        forget_set = load_examples(forget_path)
        retain_set = load_examples(retain) if retain else None
        cfg = TrainConfig(
            epochs=epochs or (EMBEDDED_DEFAULTS["epochs"] if embedded else 10),
            lr=lr or (EMBEDDED_DEFAULTS["lr"] if embedded else 5e-6),
            batch_size=batch_size, grad_accum=grad_accum,
            max_length=max_length or (EMBEDDED_DEFAULTS["max_length"] if embedded else 1024),
            scheduler=scheduler, seed=seed, save_steps=save_steps, retain_weight=retain_weight,
            retain_loss=retain_loss, method_params=_parse_params(param))
        mdl, tok = load_model(name, device, dtype, gradient_checkpointing, _lora(lora, lora_r, lora_merge))
        outdir = out or Path("runs") / method
        ev = (lambda mm, ep: run_eval(mm, tok, examples=forget_set)) if eval_each_epoch else None
        before = run_eval(mdl, tok, examples=forget_set) if evaluate and not eval_each_epoch else None
        run = run_unlearn(mdl, tok, forget_set, m, cfg, outdir, retain=retain_set,
                          refusals=load_refusals(refusals), model_name=name, evaluate=ev, merge_lora=lora_merge)
        if evaluate:
            before = run.get("before", before)
            after = run["epochs"][-1]["eval"] if eval_each_epoch and run["epochs"] else run_eval(mdl, tok, examples=forget_set)
            _print_before_after(before, after)
            run["before"], run["after"] = before, after
            from prod_unlearn.io import atomic_write_json
            atomic_write_json(outdir / "run.json", run)
        console.print(f"saved: {outdir} (Hugging Face model folder + run.json; per-epoch checkpoints in "
                      f"{outdir / 'checkpoints'})")
    _run(go)


def _print_before_after(before: dict | None, after: dict) -> None:
    from rich.table import Table
    t = Table(title="copyright task")
    t.add_column("metric")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    for k in ("bleu", "forget_quality", "heldout_ppl"):
        t.add_row(k, f"{before[k]:.4f}" if before else "-", f"{after[k]:.4f}")
    if before:
        t.add_row("perplexity change", "", f"{100 * (after['heldout_ppl'] / before['heldout_ppl'] - 1):+.1f} %")
    console.print(t)


@app.command("eval")
def eval_cmd(
    model: str = typer.Option(None, help="Model folder or hub id [default: the embedded model]"),
    task: str = typer.Option("copyright", help="copyright | insecure | deprecated (forget tasks) or a utility "
                                               "task: humaneval | health | ppl"),
    data: Optional[Path] = typer.Option(None, help="Forget set in the task's format [default: the task's default set]"),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (keys documented in the README)"),
    max_new_tokens: Optional[int] = typer.Option(None, help="Generation budget per continuation [default: the "
                                                            "task's own: copyright 512, humaneval 256, ...]"),
    batch_size: int = typer.Option(16, help="Generation batch size"),
    device: str = typer.Option("auto"),
    dtype: str = typer.Option("auto"),
):
    """Evaluate a model on a task; prints forget quality (forget tasks) or utility figures."""
    def go():
        from prod_unlearn.evaluation.suite import evaluate as run_eval
        from prod_unlearn.models.loading import DEFAULT_MODEL, load_model
        mdl, tok = load_model(model or str(DEFAULT_MODEL), device, dtype)
        kw = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
        res = run_eval(mdl, tok, task=task, data=data, batch_size=batch_size, **kw)
        res["model"] = model or str(DEFAULT_MODEL)
        if json_out:
            sys.stdout.write(json.dumps(res) + "\n")
        else:
            console.print(res)
    _run(go)


@app.command()
def attack(
    model: str = typer.Option(None, help="Model folder or hub id [default: the embedded model]"),
    data: Optional[Path] = typer.Option(None, help="Forget set (copyright format) [default: the embedded copyright set]"),
    k: List[int] = typer.Option([0, 8, 16, 32, 64], "--k", help="Prefix lengths (repeat the flag)"),
    max_new_tokens: int = typer.Option(128, help="Generation budget per continuation"),
    png: Optional[Path] = typer.Option(None, help="Also write the bar chart (mean, min-max) here"),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object"),
    device: str = typer.Option("auto"),
):
    """Prefix-injection attack: append the first k true tokens of the hidden half; report the BLEU gain."""
    def go():
        from prod_unlearn.data.examples import load_examples
        from prod_unlearn.evaluation.attack import prefix_attack
        from prod_unlearn.evaluation.pareto import plot_attack
        from prod_unlearn.evaluation.suite import default_forget_sets
        from prod_unlearn.models.loading import DEFAULT_MODEL, load_model
        mdl, tok = load_model(model or str(DEFAULT_MODEL), device, "auto")
        res = prefix_attack(mdl, tok, load_examples(data or default_forget_sets()["copyright"]), k, max_new_tokens)
        if png:
            plot_attack({Path(model or "embedded").name: {kk: g for kk, g in res["gain"].items() if kk}}, png)
        summary = {key: res[key] for key in ("bleu", "gain_mean", "gain_min", "gain_max")}
        if json_out:
            sys.stdout.write(json.dumps(summary) + "\n")
        else:
            console.print(summary)
    _run(go)


@app.command()
def bench(
    out: Path = typer.Option(Path("runs/bench"), help="Report folder (resumable: rerun to continue)"),
    quick: bool = typer.Option(False, help="Under 10 min on 2 cores: prod/ga/npo, 2 epochs, 12 items a task"),
    methods: Optional[str] = typer.Option(None, help="Comma-separated methods [default: all six]"),
    tasks: Optional[str] = typer.Option(None, help="Comma-separated tasks [default: copyright,insecure,deprecated]"),
    epochs: Optional[int] = typer.Option(None, help="Epochs per method [default 2]"),
    lr: Optional[float] = typer.Option(None, help="Learning rate shared by all methods [default 3e-5]"),
    utility: Optional[str] = typer.Option(None, help="Utility axis for PDR: health | ppl | humaneval [default health; quick: ppl]"),
    max_items: Optional[int] = typer.Option(None, help="First N items of each task [default 12; 0 = all]"),
    model: Optional[str] = typer.Option(None, help="Model [default: the embedded model]"),
    device: str = typer.Option("auto"),
):
    """Methods x tasks: unlearn, evaluate every epoch, attack, PDR; writes report.md/json and PNGs."""
    def go():
        from prod_unlearn.bench import BenchConfig, run_bench
        kw = dict(methods=methods.split(",") if methods else None, tasks=tasks.split(",") if tasks else None,
                  epochs=epochs, lr=lr, utility=utility, max_items=max_items, model=model, device=device)
        kw = {k_: v for k_, v in kw.items() if v is not None}
        cfg = BenchConfig.quick(**kw) if quick else BenchConfig(**kw)
        res = run_bench(cfg, out)
        console.print(f"report: {out / 'report.md'}")
        console.print({"pdr": res["pdr"]})
    _run(go)


@app.command()
def report(out: Path = typer.Option(Path("runs/bench"), help="A bench folder holding results.json")):
    """Rebuild report.md / report.json / PNGs from a bench folder's results.json."""
    def go():
        from prod_unlearn.bench import write_report
        path = out / "results.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file (run `prod-unlearn bench --out {out}` first)")
        write_report(json.loads(path.read_text()), out)
        console.print(f"report: {out / 'report.md'}")
    _run(go)


@app.command()
def learn(
    data: Path = typer.Option(..., help="Code to memorise: JSONL or a folder of source files"),
    out: Path = typer.Option(..., help="Output model folder"),
    model: str = typer.Option(None, help="Model to fine-tune [default: the embedded model]"),
    replay: Optional[Path] = typer.Option(None, help="General code replayed each step so utility survives "
                                                     "[default: 200 training files of this Python's stdlib]"),
    epochs: int = typer.Option(14, help="Epochs"),
    lr: float = typer.Option(1e-3, help="Peak learning rate, decayed to 0 (cosine); use ~1e-5 for 7B models"),
    batch_size: int = typer.Option(1),
    max_length: int = typer.Option(1024),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
    dtype: str = typer.Option("auto"),
    lora: bool = typer.Option(False, help="Train a LoRA adapter (merged on save)"),
):
    """Fine-tune a model until it reproduces DATA (the paper's setup before unlearning)."""
    def go():
        from prod_unlearn.data.examples import load_examples
        from prod_unlearn.evaluation.copyright import continuation_bleu
        from prod_unlearn.models.loading import DEFAULT_MODEL, load_model
        from prod_unlearn.training.memorise import memorise
        examples = load_examples(data)
        replay_set = load_examples(replay) if replay else None
        mdl, tok = load_model(model or str(DEFAULT_MODEL), device, dtype, lora=_lora(lora, 16, True))
        ev = lambda mm, ep: {"memorisation_bleu": round(continuation_bleu(mm, tok, examples)["bleu"], 4)}  # noqa: E731
        run = memorise(mdl, tok, examples, out, epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length,
                       seed=seed, replay=replay_set, model_name=model or str(DEFAULT_MODEL), evaluate=ev)
        for e in run["epochs"]:
            console.print(f"epoch {e['epoch']}: loss {e['loss']:.4f}, memorisation BLEU {e['eval']['memorisation_bleu']}")
    _run(go)


@app.command()
def pretrain(
    preset: str = typer.Option("cpu", help="cpu (~1 h on 2 cores) | gpu (minutes on one GPU) | tiny (pipeline test)"),
    source: Optional[Path] = typer.Option(None, help="Corpus root [default: this Python's standard library]"),
    out: Optional[Path] = typer.Option(None, help="Output root (writes OUT/model and OUT/data) [default: the package assets]"),
    device: str = typer.Option("auto"),
    seed: int = typer.Option(0),
):
    """Train the embedded code LM and its tokenizer from scratch (reproduces the shipped model)."""
    def go():
        from prod_unlearn.models.pretrain import config_for, pretrain as run_pretrain
        cfg = config_for(preset, source=str(source) if source else None, out=str(out) if out else None,
                         device=device, seed=seed)
        rec = run_pretrain(cfg)
        console.print(rec["metrics"])
    _run(go)


@app.command()
def methods(json_out: bool = typer.Option(False, "--json", help="Machine-readable output")):
    """List the unlearning methods with their parameters and defaults."""
    from dataclasses import fields
    from prod_unlearn.methods import METHODS, get_method
    get_method("prod")
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


@app.command()
def info(json_out: bool = typer.Option(False, "--json", help="Machine-readable output")):
    """Where the embedded model and the default forget sets are."""
    from prod_unlearn import __version__
    from prod_unlearn.evaluation.suite import HELDOUT, default_forget_sets
    from prod_unlearn.models.loading import DEFAULT_MODEL
    res = {"version": __version__, "default_model": str(DEFAULT_MODEL),
           "default_forget_sets": {k: str(v) for k, v in default_forget_sets().items()}, "heldout": str(HELDOUT)}
    if json_out:
        sys.stdout.write(json.dumps(res) + "\n")
    else:
        console.print(res)


if __name__ == "__main__":
    app()
