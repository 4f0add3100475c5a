"""Unlearning methods, one module each, registered by name (see base.py for the contract)."""
from prod_unlearn.methods import dpo, flat, ga, npo, prod, sft, undial  # noqa: F401  (import registers)
from prod_unlearn.methods.base import METHODS, Method, get_method, make_params, register  # noqa: F401
