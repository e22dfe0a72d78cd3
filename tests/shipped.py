"""Run a conformance property in-process exactly as the shipped run does.

The default run (``pytest -n auto``) applies ``conformance.plugin.shipped_settings()`` to every
property (derandomised: Hypothesis seeds it from the property function itself) and calls it with
the implementation fixture. ``run`` does the same with an implementation object: the property
from ``conformance/test_*.py`` with the same settings object, called with the implementation as
its only argument (whatever else the property draws, Hypothesis draws), so it meets the shipped
run's examples in the shipped order. By default without the shrink phase: generation stops at
the first failure, whose example is the same as in the shipped run (shrinking only starts after
it); ``tests/test_catches_faults.py`` checks both claims.

Properties are found by their ``@pytest.mark.clause`` marker; parametrised plain tests (VAL) are
called once per parameter set, in order.

Importing this module imports every module of the suite (``tests/preload.py``): Hypothesis draws
some values from constants found in the loaded local modules, so the examples are the default
run's only with the default run's modules loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import inspect
import itertools
import pkgutil
import time

import numpy as np
import pytest
from hypothesis import Phase, settings

import conformance
import tests.preload  # noqa: F401 - the default run's pool of constants (see its docstring)
from conformance import clauses
from conformance.assertions import Nonconformance, require
from conformance.plugin import shipped_settings

#: The implementation fixtures of the properties, with the capability each fixture requires
#: (``conformance/test_mod.py``'s ``module_impl``, ``test_val.py``'s ``validating_impl``).
IMPL_ARGS = {"impl": None, "module_impl": "module", "validating_impl": "validation"}
#: The calls an implementation receives (counted, and recorded for the shipped-run check).
CALLS = ("rms_norm", "rms_norm_sequence", "vjp", "vjp_sequence", "jvp", "hvp", "module_info",
         "functional", "functional_vjp")


def property_modules():
    return [importlib.import_module(f"conformance.{m.name}")
            for m in pkgutil.iter_modules(conformance.__path__) if m.name.startswith("test_")]


def _clause_of(fn) -> str | None:
    for mark in getattr(fn, "pytestmark", []):
        if mark.name == "clause":
            return mark.args[0]
    return None


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
    names = [p for p in inspect.signature(fn).parameters if p in IMPL_ARGS]
    return names[0] if names else None


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
    """The shipped run's settings, with or without the shrink phase."""
    chosen = shipped_settings()
    if shrink:
        return chosen
    return settings(chosen, phases=[p for p in chosen.phases if p is not Phase.shrink])


@contextlib.contextmanager
def as_shipped(fn, shrink: bool = False):
    """Within the block, the Hypothesis property ``fn`` runs under ``shipped(shrink)``: the
    settings object is what ``settings(...)(fn)`` would attach (the plugin's way), attached for
    the block only, so the function is left as it was (the plugin may have applied the profile
    already, and applying settings twice is an error)."""
    if not hasattr(fn, "hypothesis"):
        yield
        return
    missing = object()
    saved = fn.__dict__.get("_hypothesis_internal_use_settings", missing)
    fn._hypothesis_internal_use_settings = shipped(shrink)
    try:
        yield
    finally:
        if saved is missing:
            del fn._hypothesis_internal_use_settings
        else:
            fn._hypothesis_internal_use_settings = saved


@dataclasses.dataclass
class Outcome:
    """How one property went for one implementation."""

    clause: str
    prop: str
    status: str              # "killed", "survived", "skipped", "error"
    message: str = ""
    examples: int = 0        # Hypothesis examples that called the implementation (the final
                             # replay of a failing one not counted again)
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
                if not final:
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
    with _Instrument(impl, record) as inst, as_shipped(fn, shrink):
        try:
            if IMPL_ARGS[arg]:
                require(impl, IMPL_ARGS[arg])
            for params in parameter_sets(fn):
                fn(**{arg: impl}, **params)
        except Nonconformance as e:
            outcome.status, outcome.message, outcome.error = "killed", str(e), e
        except pytest.skip.Exception as e:
            outcome.status, outcome.message = "skipped", str(e)
        except BaseException as e:   # noqa: BLE001 - anything else is not the clause's failure
            if isinstance(e, KeyboardInterrupt):
                raise
            outcome.status, outcome.message, outcome.error = "error", f"{type(e).__name__}: " \
                f"{e}", e
    outcome.seconds = time.perf_counter() - start
    outcome.examples, outcome.calls = len(inst.contexts), inst.calls
    return outcome, inst.log


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
    """None when ``outcome`` is the clause's own failure naming ``impl`` with a repro; else what
    is wrong with it."""
    if outcome.status != "killed":
        return f"{impl.id} not killed by {outcome.clause} ({outcome.status}: {outcome.message})"
    message = outcome.message
    if f"implementation: {impl.id}" not in message:
        return f"the failure does not name {impl.id}:\n{message}"
    if "case:" in message and not ("repro:" in message
                                   and ("decode(" in message or "load(" in message)):
        return f"the failure describes a case but carries no repro:\n{message}"
    return None
