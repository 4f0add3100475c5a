"""The Python API: what each command does, as a function (the CLI is a thin layer over these).

    import prod_unlearn as pu
    forget = pu.load_forget_set("takedown.jsonl")
    res = pu.unlearn("my-coder", forget, method="prod", out="runs/takedown")   # until forgotten
    print(res.forgotten, res.after["bleu"])
    print(pu.evaluate(res.out, task="copyright", data="takedown.jsonl")["forget_quality"])
    report = pu.audit(res.out, forget="takedown.jsonl", original="my-coder", out="runs/takedown-audit")

Every function takes model names (a folder or a hub id) or loaded models and returns what the
command prints with ``--json``; it writes where it is told (the output guard is the CLI's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prod_unlearn.data.examples import Example


@dataclass
class UnlearnResult:
    """What `unlearn` leaves: the model (in memory and saved in ``out``), its record and figures."""

    out: Path  # a Hugging Face model folder (+ run.json, checkpoints/, config of the run)
    model: Any
    tokenizer: Any
    run: dict  # run.json: settings, per-epoch losses, the stopping rule's curve
    before: dict | None  # forget BLEU (+ CIs) and held-out bits per byte before ...
    after: dict | None  # ... and after
    verdict: str | None  # one sentence when the run ended above the target, else None

    @property
    def forgotten(self) -> bool | None:
        """True when the stopping rule reached its target (None with a fixed --epochs budget)."""
        until = self.run.get("until")
        return None if not until else bool(until.get("forgotten"))


def load_forget_set(
    path: str | Path | None = None, prompt_column: str | None = None, completion_column: str | None = None
) -> list[Example]:
    """A forget set: JSONL, Parquet, CSV, a `datasets` folder or a folder of source files
    (README "Forget sets"); None = the embedded copyright set. The column names, when given, hold
    for every set read after (as --prompt-column / --completion-column)."""
    from prod_unlearn.data.examples import use_columns

    if prompt_column or completion_column:
        use_columns(prompt_column or "prompt", completion_column or "completion")
    return _examples(path)[0]


def _examples(data, default=None) -> tuple[list[Example], str]:
    """(examples, name): a loaded list as is, else a path loaded."""
    if isinstance(data, list):
        return data, "<examples>"
    from prod_unlearn.data.examples import load_examples
    from prod_unlearn.tasks import default_forget_sets

    path = data or default or default_forget_sets()["copyright"]
    return load_examples(path), str(path)


def _model(model, device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer, name) from a name/path (None = the embedded model) or a (model, tokenizer) pair."""
    from prod_unlearn.models.loading import DEFAULT_MODEL, load_model

    if isinstance(model, tuple):
        return model[0], model[1], getattr(model[0], "name_or_path", "<model>")
    name = str(model) if model is not None else str(DEFAULT_MODEL)
    m, tok = load_model(name, device, dtype)
    return m, tok, name


def unlearn(
    model: str | None = None,
    forget: str | Path | list[Example] | None = None,
    method: str = "prod",
    out: str | Path | None = None,
    *,
    params: dict | None = None,
    epochs: int | None = None,
    until_bleu: float | None = None,
    until_auc: float | None = None,
    max_utility_loss: float | None = None,
    max_steps: int | None = None,
    check_every: int | None = None,
    heldout: str | Path | None = None,
    retain: str | Path | None = None,
    refusals: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    gradient_checkpointing: bool = False,
    lora: bool = False,
    lora_r: int = 16,
    lora_merge: bool = True,
    evaluate: bool = True,
    eval_each_epoch: bool = False,
    report_to: str = "none",
    **train,
) -> UnlearnResult:
    """Unlearn ``forget`` from ``model`` (``prod-unlearn unlearn``). With ``epochs`` None it trains
    until forgotten (line-cut BLEU <= ``until_bleu`` within the utility guard and ``max_steps``);
    ``train``: lr, batch_size, grad_accum, max_length, scheduler, seed, save_steps, retain_weight,
    retain_loss, sam (README "Defaults"). Re-running on the same ``out`` resumes; other settings
    there are refused, naming each difference."""
    from prod_unlearn import runs
    from prod_unlearn.io import atomic_write_json
    from prod_unlearn.methods import get_method, make_params
    from prod_unlearn.methods.base import resolved_params
    from prod_unlearn.methods.refusals import load_refusals
    from prod_unlearn.models.loading import DEFAULT_MODEL, LoraOptions, load_model
    from prod_unlearn.report.model_card import write_model_card
    from prod_unlearn.tasks import evaluate as run_eval
    from prod_unlearn.tasks.copyright import POINT_CUTS
    from prod_unlearn.training.defaults import resolve_train_config
    from prod_unlearn.training.loop import unlearn as run_unlearn

    name = str(model) if model is not None else str(DEFAULT_MODEL)
    m = get_method(method)
    params = dict(params or {})
    typed = make_params(m, params)  # a bad parameter fails before anything loads
    outdir = Path(out) if out is not None else Path("runs") / method
    forget_set, forget_name = _examples(forget)
    if "sam" in train:
        train["sam_rho"] = train.pop("sam")
    cfg = resolve_train_config(name, "unlearn", epochs=epochs, max_steps=max_steps, **train)
    cfg.method_params = params
    until = epochs is None
    if heldout is not None:
        load_forget_set(heldout)
    rule = None
    if until:
        from prod_unlearn.training.until import plan

        rule = plan(
            cfg,
            len(forget_set),
            until_bleu=until_bleu,
            until_auc=until_auc,
            max_utility_loss=max_utility_loss,
            check_every=check_every,
        )
    retain_set = _examples(retain)[0] if retain is not None else None
    if until and retain_set is None and cfg.retain_weight > 0:  # the rule's own retain term (until.py)
        from prod_unlearn.training.until import default_retain

        retain_set = default_retain()
        cfg.retain_loss = train.get("retain_loss", "kl")
    key = runs.unlearn_key(
        method,
        resolved_params(m, params),
        name,
        forget_set,
        retain_set,
        refusals,
        m.views,
        dtype,
        {"r": lora_r, "merge": lora_merge} if lora else None,
        cfg,
        rule,
        heldout,
    )
    stored = runs.prepare_run_folder("--out", outdir, key)
    mdl, tok = load_model(
        name,
        device,
        dtype,
        gradient_checkpointing,
        LoraOptions(r=lora_r, alpha=2 * lora_r, merge=lora_merge) if lora else None,
    )
    key["model_fingerprint"] = runs.weights_fingerprint(mdl)
    runs.check_fingerprint("--out", outdir, stored, key["model_fingerprint"])
    runs.write_run_key(outdir, key)
    # the before-evaluation is cached by content; one prompt per file (the 50 % line cut) at each check
    quick: dict[str, Any] = {"token_half": False, "cuts": POINT_CUTS, "heldout": heldout}
    ev = (lambda mm, ep: run_eval(mm, tok, examples=forget_set, cache=ep == 0, **quick)) if eval_each_epoch else None
    before = run_eval(mdl, tok, examples=forget_set, cache=True, **quick) if evaluate and not eval_each_epoch else None
    stopper = None
    if until:
        from prod_unlearn.attacks.mia import heldout_auc
        from prod_unlearn.training.until import UntilForgotten

        assert rule is not None  # planned above when until
        stopper = UntilForgotten(
            rule,
            mdl,
            tok,
            forget_set,
            cfg.max_steps,
            heldout,
            retain=bool(retain_set) and cfg.retain_weight > 0,
            membership=heldout_auc(tok, forget_set, heldout) if rule.until_auc is not None else None,
            params=typed,
            on_stall=m.on_stall,
        )
    run = run_unlearn(
        mdl,
        tok,
        forget_set,
        m,
        cfg,
        outdir,
        retain=retain_set,
        refusals=load_refusals(refusals),
        model_name=name,
        evaluate=ev,
        merge_lora=lora_merge,
        step_evaluate=stopper,
        report_to=report_to,
    )
    verdict, after = None, None
    if stopper is not None and stopper.curve:
        run["until"], verdict = stopper.record(), stopper.verdict()
    if evaluate:
        before = run.get("before", before)
        after = (
            run["epochs"][-1]["eval"]
            if eval_each_epoch and run["epochs"]
            else run_eval(mdl, tok, examples=forget_set, **quick)
        )
        run["before"], run["after"] = before, after
    run["data_name"] = forget_name
    atomic_write_json(outdir / "run.json", run)
    write_model_card(outdir, run, forget_name)
    return UnlearnResult(outdir, mdl, tok, run, before, after, verdict)


def evaluate(
    model=None,
    task: str = "copyright",
    data: str | Path | None = None,
    *,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    retain_model: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> dict:
    """``prod-unlearn eval --json``: forget quality (forget tasks; with the retain model's floor
    under ``retain``) or utility figures (humaneval, health, ppl)."""
    from prod_unlearn import tasks as registry
    from prod_unlearn.tasks import evaluate as run_eval
    from prod_unlearn.tasks import load_retain_model

    utility = registry.check_request(task, data)
    if data is not None and utility is not None:
        load_forget_set(data)  # malformed held-out code fails before the model loads
    mdl, tok, name = _model(model, device, dtype)
    kw: dict[str, Any] = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    if data is not None and utility is not None:
        kw["heldout"] = data
    res = run_eval(mdl, tok, task=task, data=None if utility is not None else data, batch_size=batch_size, **kw)
    if utility is None and not res.get("n"):
        raise ValueError(
            f"--data {data or registry.FORGET_TASKS[task].default_data}: no item could be evaluated for "
            f"--task {task} (is the set in that task's format?)"
        )
    res["model"] = name
    if utility is None:
        spec = registry.FORGET_TASKS[task]
        retain_name, ret = load_retain_model(
            retain_model, spec.load(Path(data) if data else spec.default_data)[1], tok, device, dtype
        )
        if ret is not None:  # the floor: what a model that never saw the set scores (cached by content)
            floor = run_eval(ret, tok, task=task, data=data, batch_size=batch_size, cache=True, **kw)
            res["retain"] = {k: v for k, v in floor.items() if k not in ("task", "cached", "seconds")}
            res["retain_model"] = retain_name
    return res


def attack(
    model=None,
    kind: str = "prefix",
    data: str | Path | list[Example] | None = None,
    *,
    original: str | None = None,
    retain_model: str | None = None,
    device: str = "auto",
    **settings,
) -> dict:
    """``prod-unlearn attack --kind KIND --json``: one attack (prefix, relearn, transform, quantize,
    mia) on the model, beside ``original`` and the retain model when given (or shipped for a
    default set). ``settings``: fields of the kind's ``Settings`` (its module; e.g. max_new_tokens,
    max_items, ks, steps, lr, seed, control_path). Returns the attack's rows with their intervals."""
    from prod_unlearn.attacks import public

    return public(attack_result(model, kind, data, original, retain_model, device, settings)[1])


def attack_result(model, kind, data, original, retain_model, device, settings):
    """(the attack's module, its full result with per-item scores)."""
    from prod_unlearn.attacks import get_attack, with_floor
    from prod_unlearn.attacks import settings as kind_settings
    from prod_unlearn.models.loading import load_companion
    from prod_unlearn.tasks import load_retain_model

    attack_mod = get_attack(kind)
    mdl, tok, _ = _model(model, device)
    examples, _ = _examples(data)
    orig = load_companion("--original", original, tok, device) if original else None
    cfg = kind_settings(kind, **settings)
    res = attack_mod.run(mdl, tok, examples, original=orig, cfg=cfg)
    _, ret = load_retain_model(retain_model, examples, tok, device)
    if ret is not None:
        with_floor(res, attack_mod, ret, tok, examples, cfg)
    return attack_mod, res


def audit(
    model=None,
    forget: str | Path | None = None,
    original: str | None = None,
    out: str | Path = "runs/audit",
    *,
    kinds: str | None = None,
    retain_model: str | None = None,
    device: str = "auto",
    max_new_tokens: int | None = None,
    max_items: int | None = None,
    steps: tuple[int, ...] | None = None,
    control: str | Path | None = None,
) -> dict:
    """``prod-unlearn audit``: every attack against one takedown request; writes OUT/report.md,
    report.html, report.json and charts and returns report.json's contents. Options left None keep
    ``AuditBudget``'s defaults and each attack's ``AUDIT`` preset (``max_items``: 0 = every file)."""
    from prod_unlearn.attacks.audit import AuditBudget, audit_kinds, run_audit
    from prod_unlearn.data.examples import examples_hash
    from prod_unlearn.models.loading import DEFAULT_MODEL, load_companion
    from prod_unlearn.tasks import load_retain_model
    from prod_unlearn.version import __version__

    chosen = audit_kinds(kinds)
    examples, forget_name = _examples(forget)
    mdl, tok, name = _model(model, device)
    orig = load_companion("--original", original, tok, device) if original else None
    retain_name, ret = load_retain_model(retain_model, examples, tok, device)
    budget = AuditBudget(
        max_items=max_items,
        steps=tuple(steps) if steps else None,
        control_path=str(control) if control else None,
    )
    if max_new_tokens:
        budget.max_new_tokens = max_new_tokens
    request = {
        "model": name if model is not None else str(DEFAULT_MODEL),
        "original": original,
        "retain_model": retain_name,
        "forget": forget_name,
        "forget_sha256": examples_hash(examples),
        "prod_unlearn": __version__,
    }
    return run_audit(mdl, tok, examples, orig, Path(out), budget, chosen, request, retain=ret)


def distill(
    teacher,
    out: str | Path,
    cfg=None,
    *,
    data: str | Path | None = None,
    forget: str | Path | list[Example] | None = None,
    device: str = "auto",
) -> dict:
    """``prod-unlearn distill`` (UNDO): a perturbed copy of the unlearned ``teacher`` distilled on
    general code (``data``, default: the stdlib training split without the default sets); documents
    holding an item of ``forget`` are dropped. Saves the student in ``out``; returns distill.json."""
    from prod_unlearn.training.distill import distill as run_distill

    texts = [e.prompt + e.completion for e in load_forget_set(data)] if data is not None else None
    forget_set = _examples(forget)[0] if forget is not None else None
    mdl, tok, name = _model(teacher, device)
    return run_distill(mdl, tok, out, cfg, texts, teacher_name=name, forget=forget_set)[1]


def benchmark(
    out: str | Path = "runs/bench",
    *,
    quick: bool = False,
    calibrate: bool = False,
    overwrite: bool = False,
    calibration_out: str | Path | None = None,
    executor: str = "local",
    **config,
) -> dict:
    """``prod-unlearn bench``: methods x tasks with intervals (``config``: BenchConfig fields, e.g.
    methods, tasks, epochs, lr, utility, attacks, rule, retain_model). With ``calibrate``: the
    calibrated lr table (merged into ``calibration_out`` when given) instead of a bench. ``executor``:
    local, or ray (a Ray cluster runs the units; the same results.json)."""
    from prod_unlearn.bench import BenchConfig, run_bench
    from prod_unlearn.bench.calibration import run_calibration

    config = {k: v for k, v in config.items() if v is not None}
    cfg = BenchConfig.quick(**config) if quick else BenchConfig(**config)
    if calibrate:
        return run_calibration(cfg, out, table_out=calibration_out, overwrite=overwrite)
    return run_bench(cfg, out, overwrite=overwrite, executor=executor)
