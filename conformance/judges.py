"""One judgement per clause on one case: the function a clause's property calls on every example
it draws, and ``rmsnorm-conformance check`` calls on a printed repro, so that their verdicts
cannot differ.

A judge lives beside its property, in the clause's section module (``conformance/test_acc.py``
holds ACC's), registered with ``@judge("ACC-1")``: ``judge_fn(impl, case)`` returns when the
clause holds on ``case`` and raises ``Nonconformance`` when it does not. Everything the judgement
needs is in the case (its arrays, and ``case.params`` for a scale exponent, a layout, a poisoned
row); drawing happens in the property, never in the judge.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

_JUDGES: dict[str, Callable] = {}


class NotApplicable(Exception):
    """The case is not one this clause can judge (e.g. FWD-4 on d != 1): ``check`` says so."""


def judge(*clauses: str):
    """Register the decorated function as the judgement on one case of each of ``clauses``."""
    def register(fn):
        for clause in clauses:
            known = _JUDGES.get(clause)
            if known is not None and known.__qualname__ != fn.__qualname__:
                raise ValueError(f"{clause} has two judges: {known.__qualname__} and "
                                 f"{fn.__qualname__}")
            _JUDGES[clause] = fn
        return fn
    return register


def section_modules() -> list:
    """The section modules (``conformance/test_<section>.py``), imported."""
    from rmsnorm_conformance import conformance

    return [importlib.import_module(f"{conformance.__name__}.{m.name}")
            for m in pkgutil.iter_modules(conformance.__path__) if m.name.startswith("test_")]


def all_judges() -> dict[str, Callable]:
    """Every registered judge, by clause id (importing the section modules that define them)."""
    section_modules()
    return dict(_JUDGES)


def requirements(clause: str) -> list[dict]:
    """The capabilities the clause's property requires (its ``@requires`` and its module's)."""
    from rmsnorm_conformance.conformance.marks import clause_of, requirements_of

    for module in section_modules():
        for fn in vars(module).values():
            if callable(fn) and clause_of(fn) == clause:
                return requirements_of(fn, module)
    return []
