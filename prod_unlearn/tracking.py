"""``--report-to``: training curves in TensorBoard, W&B or MLflow through Accelerate's trackers.

Offline by default: TensorBoard event files and MLflow's file store go into the run folder
(``OUT/tensorboard``, ``OUT/mlruns``), W&B runs in offline mode unless ``WANDB_MODE`` says
otherwise. The trackers are optional extras (``pip install 'prod-unlearn[tensorboard]'``), never
needed for ``none``. Only the main process logs.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_report_to(value: str) -> str | None:
    """None when usable, else the one-line problem (an unknown name or a tracker not installed)."""
    if value not in REPORT_TO:
        return f"--report-to {value}: expected one of {', '.join(REPORT_TO)}"
    if value != "none" and importlib.util.find_spec(_PACKAGE[value]) is None:
        return (
            f"--report-to {value}: the {_PACKAGE[value]} package is not installed (pip install 'prod-unlearn[{value}]')"
        )
    return None


class Tracker:
    """One run's tracker; every method is a no-op for ``none`` and on non-main processes."""

    def __init__(self, report_to: str, out: str | Path, run_name: str, config: dict, main_process: bool = True):
        self.tracker = None
        if report_to == "none" or not main_process:
            return
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        out = Path(out)
        kw: dict[str, str | Path]
        if report_to == "tensorboard":
            kw = {"logging_dir": out / "tensorboard"}
        elif report_to == "mlflow":
            kw = {"logging_dir": str(out / "mlruns")}
        else:
            os.environ.setdefault("WANDB_MODE", "offline")
            kw = {"dir": str(out)}
        self.tracker = LOGGER_TYPE_TO_CLASS[report_to](run_name, **kw)
        self.tracker.start()
        self.tracker.store_init_configuration(_flat(config))

    def log(self, values: dict, step: int) -> None:
        """Numbers only (nested dicts flattened with '/'); NaN and inf are dropped, not plotted."""
        if self.tracker is None:
            return
        flat = {
            k: float(v)
            for k, v in _flat(values).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        if flat:
            self.tracker.log(flat, step=step)

    def finish(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested dicts to 'a/b' keys; lists and None become strings (hyperparameter stores want scalars)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "/"))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out
