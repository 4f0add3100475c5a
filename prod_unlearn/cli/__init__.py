"""`prod-unlearn`: one Typer app (app.py), its commands one module per concern (train.py,
models.py, evaluate.py, bench.py, tools.py). Each command is its options (their bounds declared beside their
defaults: guard.py), the checks that need several options, and one call into the Python API
(api.py); the guard, config files and the error boundary (app.py) are shared by all."""

from prod_unlearn.cli import bench, evaluate, models, tools, train  # noqa: F401  (each registers its commands)
from prod_unlearn.cli.app import app

__all__ = ["app"]
