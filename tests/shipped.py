"""Run a conformance property in-process exactly as the shipped run does.

The default run (``pytest -n auto``) applies ``profiles.shipped_settings()`` to every property
and wraps its body for the item's ledger (``profiles.ship``), skips an implementation lacking a
capability the property requires (``@requires``), and calls it with the implementation fixture
inside an active ledger (whose error/bound ratios steer Hypothesis' targeting) and
``profiles.same_examples_everywhere()`` (no local constants). ``run`` does exactly
that with an implementation object: the property from ``conformance/test_*.py``, called with
the implementation as its only argument (whatever else the property draws, Hypothesis draws), so
it meets the shipped run's examples in the shipped order, anchors first.

Two differences, neither of which changes an example before the first failure: no shrink phase
(generation stops at the first failure, which is the example the shipped run would then start
shrinking) and ``report_multiple_bugs=False`` (the first failing anchor ends the explicit phase
where the shipped run would try the remaining anchors too). ``tests/test_catches_faults.py``
checks both claims against real runs.

Properties are found by their ``@pytest.mark.clause`` marker; parametrised plain tests (VAL) are
called once per parameter set, in order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import inspect
import itertools
import pkgutil
import sys
import time

import numpy as np
import pytest
from hypothesis import Phase, settings

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

from rmsnorm_conformance import conformance
from rmsnorm_conformance.conformance import clauses, ledger, marks, profiles
from rmsnorm_conformance.conformance.assertions import Nonconformance, missing_capability
from rmsnorm_conformance.conformance.profiles import DEFAULT as PROFILE, shipped_settings

#: The calls an implementation receives (counted, and recorded for the shipped-run check).
CALLS = ("rms_norm", "rms_norm_sequence", "vjp", "vjp_sequence", "jvp", "hvp", "module_info",
         "functional", "functional_vjp")


def property_modules():
    return [importlib.import_module(f"{conformance.__name__}.{m.name}")
            for m in pkgutil.iter_modules(conformance.__path__) if m.name.startswith("test_")]


_clause_of = marks.clause_of


def properties(clause: str | None = None) -> list:
    """The property functions of ``clause`` (every clause when None) taking an implementation,
    in module order."""
    found = []
    for module in property_modules():
        for name, fn in vars(module).items():
            if (name.startswith("test_") and callable(fn) and _clause_of(fn)
                    and impl_argument(fn) and clause in (None, _clause_of(fn))):
                found.append(fn)
    return found


def clause_of(fn) -> str:
    return _clause_of(fn)


def level(clause: str) -> str:
    spec = clauses.load()
    return spec[clause].level if clause in spec else "MUST"


def impl_argument(fn) -> str | None:
    return "impl" if "impl" in inspect.signature(fn).parameters else None


def requirements(fn) -> list[dict]:
    """The capabilities ``@requires`` asks for, on the function and its module."""
    return marks.requirements_of(fn, importlib.import_module(fn.__module__))


def parameter_sets(fn) -> list[dict]:
    """The keyword arguments of each pytest parametrisation of ``fn`` ([{}] when none)."""
    axes = []
    for mark in getattr(fn, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names, values = mark.args[0], mark.args[1]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        rows = []
        for v in values:
            v = v.values if hasattr(v, "values") and not isinstance(v, np.ndarray) else v
            rows.append(dict(zip(names, v if len(names) > 1 else (v,))))
        axes.append(rows)
    return [dict(kv for part in combo for kv in part.items())
            for combo in itertools.product(*axes)] or [{}]


def shipped(shrink: bool) -> settings:
    """The shipped run's settings; without ``shrink``, no shrink phase and the first failure
    reported alone."""
    chosen = shipped_settings(PROFILE)
    if shrink:
        return chosen
    return settings(chosen, phases=[p for p in chosen.phases if p is not Phase.shrink],
                    report_multiple_bugs=False)


@contextlib.contextmanager
def as_shipped(fn, shrink: bool = True):
    """Within the block, ``fn`` runs as the plugin runs it: shipped (``profiles.ship``: settings
    and the ledger's wrapper, once, as the plugin does at collection), with a ledger active (an
    enclosing one, or a fresh one) and no local constants; its settings are ``shipped(shrink)``
    for the block only (the settings object is swapped where ``settings(...)(fn)`` put it:
    applying settings twice is an error)."""
    book = ledger.current() or ledger.Ledger()
    if not hasattr(fn, "hypothesis"):
        with ledger.active(book), profiles.same_examples_everywhere():
            yield
        return
    if getattr(fn, "_rmsnorm_profile", None) is None:
        profiles.ship(fn)
    saved = fn._hypothesis_internal_use_settings
    fn._hypothesis_internal_use_settings = shipped(shrink)
    try:
        with ledger.active(book), profiles.same_examples_everywhere():
            yield
    finally:
        fn._hypothesis_internal_use_settings = saved


def run_shipped(fn, **kwargs):
    """Call a conformance property exactly as the default run does (the shipped settings, the
    same examples, a ledger steering hypothesis.target as in a run), e.g.
    ``run_shipped(test_acc.test_error_bound_whole_range, impl=adapter)``. An enclosing ledger
    (``ledger.active``) is used if open."""
    with as_shipped(fn):
        return fn(**kwargs)


@dataclasses.dataclass
class Outcome:
    """How one property went for one implementation."""

    clause: str
    prop: str
    status: str              # "killed", "survived", "skipped", "error"
    message: str = ""
    #: Hypothesis test cases that called the implementation: anchors, generated examples and
    #: the final replay of a failing one
    examples: int = 0
    calls: int = 0
    seconds: float = 0.0
    error: BaseException | None = None


class _Instrument:
    """Counts (and optionally records digests of) the implementation's calls, by wrapping the
    bound methods on the instance itself: the property still receives the same object."""

    def __init__(self, impl, record: bool = False):
        self.impl, self.record = impl, record
        self.calls, self.contexts, self.log = 0, set(), []

    def __enter__(self):
        for name in CALLS:
            if hasattr(self.impl, name):
                setattr(self.impl, name, self._wrap(name, getattr(self.impl, name)))
        return self

    def __exit__(self, *exc):
        for name in CALLS:
            self.impl.__dict__.pop(name, None)

    def _wrap(self, name, method):
        def call(*args):
            from hypothesis.control import current_build_context

            self.calls += 1
            try:
                ctx = current_build_context()
                final = bool(ctx.is_final)
                self.contexts.add(id(ctx.data))
            except Exception:   # noqa: BLE001 - outside Hypothesis (plain tests)
                final = False
            if self.record:
                self.log.append((name, digest(args), final))
            return method(*args)
        return call


def digest(value) -> str:
    """A short digest of call arguments (arrays by dtype, shape and bytes)."""
    h = hashlib.sha1()

    def feed(v):
        if isinstance(v, np.ndarray):
            h.update(f"{v.dtype.str}{v.shape}".encode())
            h.update(np.ascontiguousarray(v).tobytes())
        elif isinstance(v, (list, tuple)):
            h.update(b"(")
            for item in v:
                feed(item)
            h.update(b")")
        elif dataclasses.is_dataclass(v):
            feed(tuple(getattr(v, f.name) for f in dataclasses.fields(v)))
        else:
            h.update(repr(v).encode())
    feed(value)
    return h.hexdigest()[:16]


def run(fn, impl, shrink: bool = False, record: bool = False) -> tuple[Outcome, list]:
    """Run property ``fn`` for ``impl`` as shipped; returns the outcome and, with ``record``,
    the (call, argument digest, is-final-replay) log of the implementation's calls."""
    arg = impl_argument(fn)
    outcome = Outcome(clause_of(fn), fn.__name__, "survived")
    start = time.perf_counter()
    why = next(filter(None, (missing_capability(impl.capabilities, **need)
                             for need in requirements(fn))), None)
    if why:
        outcome.status, outcome.message = "skipped", f"{impl.id} {why}"
        return outcome, []
    with ledger.active(ledger.Ledger(clause=clause_of(fn))), _Instrument(impl, record) as inst, \
            as_shipped(fn, shrink):
        try:
            for params in parameter_sets(fn):
                fn(**{arg: impl}, **params)
        except Nonconformance as e:
            outcome.status, outcome.message, outcome.error = "killed", str(e), e
        except pytest.skip.Exception as e:
            outcome.status, outcome.message = "skipped", str(e)
        except BaseExceptionGroup as group:      # several failures (report_multiple_bugs)
            first = _leaves(group)[0]
            if all(isinstance(e, Nonconformance) for e in _leaves(group)):
                outcome.status, outcome.message, outcome.error = "killed", str(first), first
            else:
                outcome.status, outcome.error = "error", group
                outcome.message = "; ".join(f"{type(e).__name__}: {e}" for e in _leaves(group))
        except BaseException as e:   # noqa: BLE001 - anything else is not the clause's failure
            if isinstance(e, KeyboardInterrupt):
                raise
            outcome.status, outcome.message, outcome.error = "error", f"{type(e).__name__}: " \
                f"{e}", e
    outcome.seconds = time.perf_counter() - start
    outcome.examples, outcome.calls = len(inst.contexts), inst.calls
    return outcome, inst.log


def _leaves(group) -> list:
    out = []
    for e in group.exceptions:
        out += _leaves(e) if isinstance(e, BaseExceptionGroup) else [e]
    return out


def run_clause(clause: str, impl) -> Outcome:
    """Every property of ``clause`` as shipped, until one kills ``impl`` (or errs)."""
    fns = properties(clause)
    if not fns:
        return Outcome(clause, "", "survived", f"no property checks {clause} in this checkout")
    outcomes = []
    for fn in fns:
        outcome, _ = run(fn, impl)
        if outcome.status in ("killed", "error"):
            return outcome
        outcomes.append(outcome)
    statuses = {o.status for o in outcomes}
    result = outcomes[0] if len(outcomes) == 1 else Outcome(
        clause, ",".join(o.prop for o in outcomes),
        "skipped" if statuses == {"skipped"} else "survived",
        "; ".join(o.message for o in outcomes if o.message))
    result.seconds = sum(o.seconds for o in outcomes)
    result.examples = sum(o.examples for o in outcomes)
    result.calls = sum(o.calls for o in outcomes)
    return result


def problem_with_kill(outcome: Outcome, impl) -> str | None:
    """None when ``outcome`` is the clause's own failure: a ``Nonconformance`` with a one-line
    summary and, where it describes a case, a repro; else what is wrong with it. (The message
    does not name the implementation: the report and the results file do, per test item.)"""
    if outcome.status != "killed":
        return f"{impl.id} not killed by {outcome.clause} ({outcome.status}: {outcome.message})"
    message = outcome.message
    if not getattr(outcome.error, "summary", "").strip():
        return f"the failure has no one-line summary:\n{message}"
    if "case:" in message and not ("repro:" in message
                                   and ("decode(" in message or "load(" in message)):
        return f"the failure describes a case but carries no repro:\n{message}"
    return None
