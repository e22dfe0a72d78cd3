"""One judgement per clause on one case: the function a clause's property calls on every example
it draws, and ``rmsnorm-conformance check`` calls on a printed repro, so that their verdicts
cannot differ.

A judge lives beside its property, in the clause's section module (``conformance/test_acc.py``
holds ACC's), registered with ``@judge("ACC-1")``: ``judge_fn(impl, case)`` returns when the
clause holds on ``case`` and raises ``Nonconformance`` when it does not. Everything the judgement
needs is in the case (its arrays, and ``case.params`` for a scale exponent, a layout, a poisoned
row); drawing happens in the property, never in the judge.

Two facts about a clause that ``rmsnorm-conformance check`` needs are declared here too, on the
judge: ``by_default``, whether ``check`` asked for no clause judges the clause on a case (True,
or a predicate ``(impl, case) -> bool``), and ``params``, the ``case.params`` the judge reads
with the value a case without them gets (``{"k": 1}``: a scale exponent).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Callable

_JUDGES: dict[str, Callable] = {}
#: clause -> when ``check`` without a clause judges it: a predicate (impl, case) -> bool
_BY_DEFAULT: dict[str, Callable] = {}
#: clause -> the ``case.params`` its judge reads, with the value a case lacking one is given
_PARAMS: dict[str, dict] = {}


class NotApplicable(Exception):
    """The case is not one this clause can judge (e.g. FWD-4 on d != 1): ``check`` says so."""


def judge(*clauses: str, by_default=False, params: dict | None = None):
    """Register the decorated function as the judgement on one case of each of ``clauses``.

    by_default: whether ``check`` without a clause judges it: False (only when asked), True
                (every case) or a predicate ``(impl, case) -> bool``.
    params:     the ``case.params`` the judge reads, with the value ``check`` gives a case that
                lacks one (e.g. ``{"k": 1}``)."""
    when = by_default if callable(by_default) else (lambda impl, case: True) if by_default \
        else None
    def register(fn):
        for clause in clauses:
            known = _JUDGES.get(clause)
            if known is not None and known.__qualname__ != fn.__qualname__:
                raise ValueError(f"{clause} has two judges: {known.__qualname__} and "
                                 f"{fn.__qualname__}")
            _JUDGES[clause] = fn
            _PARAMS[clause] = dict(params or {})
            if when is None:
                _BY_DEFAULT.pop(clause, None)
            else:
                _BY_DEFAULT[clause] = when
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


def default_judged() -> list[str]:
    """Every clause ``check`` may judge when asked for none (whose judge has ``by_default``),
    in SPEC.md's order."""
    from rmsnorm_conformance.conformance.clauses import sort_key

    section_modules()
    return sorted(_BY_DEFAULT, key=sort_key)


def judged_by_default(impl, case) -> list[str]:
    """The clauses ``check`` judges on ``case`` when asked for none (their judges'
    ``by_default``), in SPEC.md's order."""
    from rmsnorm_conformance.conformance.clauses import sort_key

    section_modules()
    return sorted((cid for cid, when in _BY_DEFAULT.items() if when(impl, case)), key=sort_key)


def param_defaults(clause: str) -> dict:
    """The ``case.params`` the clause's judge reads, with the value a case lacking one gets."""
    section_modules()
    return dict(_PARAMS.get(clause, {}))


def properties(clause: str) -> list[tuple[Callable, object]]:
    """The section modules' tests of ``clause`` (a property, or a plain test), each with its
    module."""
    from rmsnorm_conformance.conformance.marks import clause_of

    return [(fn, module) for module in section_modules() for fn in vars(module).values()
            if callable(fn) and clause_of(fn) == clause]


@functools.lru_cache(maxsize=None)
def numerical(clause: str) -> bool:
    """Whether the clause judges values: False where its property carries
    ``@judges_values(False)`` (shapes, dtypes, argument validation, module defaults)."""
    from rmsnorm_conformance.conformance.marks import judges_values_of

    return all(judges_values_of(fn) for fn, _ in properties(clause))


def requirements(clause: str) -> list[dict]:
    """The capabilities the clause's property requires (its ``@requires`` and its module's)."""
    from rmsnorm_conformance.conformance.marks import requirements_of

    found = properties(clause)
    return requirements_of(*found[0]) if found else []
