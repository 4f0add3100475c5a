"""Run folders: every folder a command writes, and the configuration a resumable run belongs to.

The output guard (cli/guard.py) marks a folder as ours (``MARKER``), locks it while a run writes
(``LOCK``) and stores the resolved options (``CONFIG``). A resumable run (``unlearn``) also keeps
its key (``RUN_KEY``: method, data hashes, optimisation settings, weights fingerprint): a rerun with
another key is refused, naming each difference, so two configurations never mix in one folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prod_unlearn.errors import UsageError

RUN_KEY = "run_key.json"
MARKER = ".prod-unlearn.json"  # in every output folder: which command wrote it (cli/guard.py, Claim)
LOCK = ".prod-unlearn.lock"  # held by the run writing the folder
CONFIG = "config.toml"  # the command's resolved options: `--config OUT/config.toml` replays it
OURS = (MARKER, LOCK, CONFIG)  # what the guard writes into a folder before the command does


def key_differences(old: dict, new: dict, skip: tuple[str, ...] = ()) -> list[str]:
    """Readable differences between two keys (nested dicts, ``a.b: old -> new``), ``skip``: dotted
    names compared elsewhere."""

    def flat(d: dict, prefix: str = "") -> dict:
        out: dict = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(old), flat(new)
    return [
        f"{k}: {a.get(k, '(none)')} -> {b.get(k, '(none)')}"
        for k in sorted(set(a) | set(b))
        if k not in skip and a.get(k) != b.get(k)
    ]


def file_hash(path: Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def prepare_run_folder(opt: str, out: Path, key: dict) -> dict | None:
    """Before loading the model: refuse a folder holding a run of another configuration.

    Returns the stored key (None for a new run). The output guard (cli/guard.py) has already checked
    that the folder is this command's and cleared it for --overwrite."""
    if not out.exists() or not [p for p in out.iterdir() if p.name not in OURS]:
        return None
    path = out / RUN_KEY
    if not path.exists():
        raise UsageError(
            f"{opt} {out}: holds no run key (an interrupted start, or a run from an older version); use "
            f"--overwrite to start afresh there, or another --out"
        )
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{opt} {out}: unreadable {RUN_KEY} ({e}); use --overwrite to start afresh") from None
    if not isinstance(stored, dict):
        raise UsageError(
            f"{opt} {out}: {RUN_KEY} is not a run key (expected an object); use --overwrite to start afresh"
        )
    diff = key_differences(stored, key, skip=("model_fingerprint", "model"))  # weights compared after loading
    if diff:
        raise UsageError(
            f"{opt} {out}: holds a run with other settings ({'; '.join(diff)}); use --overwrite to "
            f"start afresh, or another --out"
        )
    return stored


def check_fingerprint(opt: str, out: Path, stored: dict | None, fingerprint: str) -> None:
    if stored and stored.get("model_fingerprint") not in (None, fingerprint):
        raise UsageError(
            f"{opt} {out}: holds a run of other model weights (fingerprint "
            f"{stored['model_fingerprint']} -> {fingerprint}); use --overwrite to start afresh, "
            f"or another --out"
        )


def weights_fingerprint(model) -> str:
    """``model_fingerprint`` of the weights a run starts from: a LoRA adapter's fresh (random) matrices left out."""
    from prod_unlearn.models.loading import model_fingerprint

    class _View:
        def __init__(self, m):
            self.m = m

        def state_dict(self):
            return {k: v for k, v in self.m.state_dict().items() if "lora_" not in k}

    return model_fingerprint(_View(model))


def write_run_key(out: Path, key: dict) -> None:
    from prod_unlearn.io import atomic_write_json

    atomic_write_json(out / RUN_KEY, key)


def unlearn_key(
    method: str,
    params: dict,
    model: str,
    forget: list,
    retain: list | None,
    refusals,
    views,
    dtype: str,
    lora: dict | None,
    cfg,
    rule,
    heldout,
) -> dict:
    """What an unlearning run folder belongs to (run_key.json): a rerun with other settings is
    refused, naming each difference. ``rule``: the stopping rule (None with fixed epochs)."""
    from prod_unlearn.data.examples import examples_hash

    return {
        "method": method,
        "params": params,
        "model": model,
        "forget_hash": examples_hash(forget)[:16],
        "retain_hash": examples_hash(retain)[:16] if retain else None,
        "refusals_hash": file_hash(Path(refusals)) if refusals and "refusal" in views else None,
        "dtype": dtype,
        "lora": lora,
        "optimisation": {
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
            "grad_accum": cfg.grad_accum,
            "max_length": cfg.max_length,
            "scheduler": cfg.scheduler,
            "seed": cfg.seed,
            "retain_loss": cfg.retain_loss if retain else None,
            "retain_weight": cfg.retain_weight if retain else None,
            "sam_rho": cfg.sam_rho or None,
            # with a constant lr more epochs extend a run; otherwise they reshape it
            "epochs": cfg.epochs if cfg.scheduler != "constant" and rule is None else None,
        },
        "until": {
            # (an unscored membership target is left out: a run saved before it existed keeps its key)
            **{k: v for k, v in vars(rule).items() if not (k == "until_auc" and v is None)},
            "max_steps": cfg.max_steps,
            "heldout_hash": file_hash(Path(heldout)) if heldout else None,
        }
        if rule is not None
        else None,
    }
