"""prod-unlearn: precise unlearning of source code in LLMs (PROD, baselines, benchmark).

The Python API (``prod_unlearn/api.py``): ``unlearn``, ``evaluate``, ``attack``, ``audit``, ``benchmark``
(``bench`` is the subpackage), ``distill``, ``load_forget_set``, ``UnlearnResult``; imported on first
use, so ``import prod_unlearn`` stays light.
"""

from prod_unlearn.version import __version__

API = ("unlearn", "evaluate", "attack", "audit", "benchmark", "distill", "load_forget_set", "UnlearnResult")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        from prod_unlearn import api

        return getattr(api, name)
    raise AttributeError(f"module 'prod_unlearn' has no attribute {name!r}")
