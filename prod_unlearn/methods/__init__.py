"""Unlearning methods, one module each (see base.py for the contract), listed explicitly below.

Adding a method = one module defining ``METHOD = Method(...)`` plus its entry in ``METHODS``.
"""

from prod_unlearn.methods import dpo, flat, ga, npo, prod, rmu, sft, simnpo, undial
from prod_unlearn.methods.base import Method, make_params

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        prod.METHOD,
        ga.METHOD,
        npo.METHOD,
        dpo.METHOD,
        flat.METHOD,
        undial.METHOD,
        simnpo.METHOD,
        rmu.METHOD,
        sft.METHOD,
    )
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"--method {name}: unknown method (expected one of {', '.join(sorted(METHODS))})")
    return METHODS[name]


__all__ = ["METHODS", "Method", "get_method", "make_params"]
