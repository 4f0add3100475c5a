"""Moved: the prefix-injection attack lives in ``prod_unlearn.attacks.prefix`` (with the other
attacks); this import keeps ``from prod_unlearn.evaluation.attack import prefix_attack`` working."""
from __future__ import annotations

from prod_unlearn.attacks.prefix import DEFAULT_KS, prefix_attack

__all__ = ["DEFAULT_KS", "prefix_attack"]
