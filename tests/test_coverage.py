"""COV-1: the default run's examples are informative and reach every region SPEC.md promises.

Every conformance property is run exactly as shipped (``tests/shipped.py``: the default
profile, its seeds and anchors) against ``Recorder``, an implementation that declares every
capability and answers with the float64 reference rounded to the output type (so it passes every
clause and each property runs all its examples). ``conformance.coverage`` classifies what the
properties sent. The same analysis backs ``pytest --rmsnorm-coverage``.

``test_restricted_implementations_get_informative_examples`` holds the informative share for
restricted declarations too (a few dtypes, no weight=None, the example plug-in's), whose plans
are mapped to what they declare; both check every case the plans build (``generator_checked``).

The check would fail if a strategy regressed: ``test_a_narrowed_strategy_fails_the_check`` runs
ACC-1's body under deliberately narrowed strategies and shows the check failing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
import pathlib
import warnings

import numpy as np
import pytest
from hypothesis import given

from rmsnorm_conformance import reference
from rmsnorm_conformance.conformance import coverage, ledger, strategies as cs
from rmsnorm_conformance.conformance import test_acc
from rmsnorm_conformance.conformance.assertions import missing_capability
from rmsnorm_conformance.protocol import DTYPES, LAYOUTS, Capabilities, Implementation, ModuleInfo
from rmsnorm_conformance.conformance.marks import clause
from tests import shipped

pytestmark = clause("COV-1")

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Recorder(Implementation):
    """Declares every capability; answers with the float64 reference, rounded once to the
    declared output type (the properties record what they send through the ledger)."""

    id = "recorder"
    capabilities = Capabilities(dtypes=tuple(DTYPES), mixed="promote", weight_none=True,
                                nonpositive_eps=True, validation=True, module=True, functional=True,
                                mlx_module=True, layouts=LAYOUTS,
                                gradients=("vjp", "jvp", "hvp"))

    def _out(self, x, w):
        return self.capabilities.output_dtype(x.dtype, None if w is None else w.dtype)

    def rms_norm(self, x, weight, eps, layout=None):
        if layout is not None:
            x, weight = layout.view(x, weight, np.asarray, np.swapaxes, np.broadcast_to)
        with np.errstate(all="ignore"):
            return reference.rms_norm(x, weight, eps).astype(self._out(x, weight))

    def vjp(self, x, weight, eps, g):
        dx, dw = reference.rms_norm_vjp(x, weight, eps, g)
        with np.errstate(all="ignore"):
            return dx.astype(x.dtype), (None if dw is None else dw.astype(weight.dtype))

    def jvp(self, x, weight, eps, tx, tweight):
        with np.errstate(all="ignore"):
            return reference.rms_norm_jvp(x, weight, eps, tx, tweight).astype(
                self._out(x, weight))

    def hvp(self, x, weight, eps, g, v):
        with np.errstate(all="ignore"):
            return reference.rms_norm_hvp(x, weight, eps, g, v).astype(x.dtype)

    def module_info(self, dims, eps=None):
        if eps is not None and not eps > 0:
            raise ValueError("eps must be positive")
        return ModuleInfo(eps=1e-5 if eps is None else eps,
                          parameters={"weight": np.ones(dims, np.float32)})

    def functional(self, x, weight, eps):
        return self.rms_norm(x, weight, eps)

    def functional_vjp(self, x, weight, eps, g):
        return self.vjp(x, weight, eps, g)


def properties():
    """Every Hypothesis property of the conformance section modules (found as the shipped run
    finds them: ``shipped.properties``, over ``shipped.property_modules``) with its clause."""
    found = [(shipped.clause_of(fn), fn) for fn in shipped.properties()
             if hasattr(fn, "hypothesis")]
    return sorted(found, key=lambda t: t[0])


def record(fn, impl) -> dict:
    """Run one property as shipped against ``impl``; its recorded calls as a coverage summary."""
    book = ledger.Ledger(record_calls=True)
    with ledger.active(book):
        shipped.run_shipped(fn, impl=impl)
    return coverage.summarise(book)


@dataclasses.dataclass
class Replay:
    """What replaying every property against one implementation gave (``replay``)."""

    #: {(clause, implementation id): [coverage summary]} of the properties that ran
    summaries: dict = dataclasses.field(default_factory=dict)
    #: the clauses skipped for a capability the implementation lacks
    skipped: list = dataclasses.field(default_factory=list)
    #: the plans ``generator_checked`` found at fault, each with its clause
    bad: list = dataclasses.field(default_factory=list)
    #: how many cases were built from a plan mapped to the implementation's declaration
    mapped: int = 0


@contextlib.contextmanager
def generator_checked(result: Replay):
    """Within the block every case a plan builds (``Plan.build``: the suite's own generator, the
    mapping to the implementation's declared dtypes and weights included) is checked: no
    RuntimeWarning (NumPy's "overflow encountered in cast"), a finite x and weight (no plan asks
    for a non-finite value: the clauses about inf and NaN put theirs in afterwards), and a plan
    mapped to another dtype keeps its regime (``kept_regime``). Offending plans go to
    ``result.bad``; ``result.mapped`` counts the cases of mapped plans."""
    build = cs.Plan.build

    def checked(plan, caps):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            case = build(plan, caps)
        arrays = [case.x] + ([] if case.weight is None else [case.weight])
        why = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        why += ["non-finite x or weight"] if not all(
            np.all(np.isfinite(a.astype(np.float64))) for a in arrays) else []
        sent = plan.for_caps(caps)
        result.mapped += sent is not plan
        if sent.x_dtype != plan.x_dtype:
            why += kept_regime(build(plan, Recorder.capabilities), case)
        if why:
            result.bad.append(f"{plan!r} sent as {sent!r}: {'; '.join(why)}")
        return case

    cs.Plan.build = checked
    try:
        yield result
    finally:
        cs.Plan.build = build


def kept_regime(drawn, sent) -> list[str]:
    """What a plan mapped to another dtype lost (``sent``; ``drawn``: the plan's case in its own
    dtype), as ``coverage.features`` classifies the rows: an informative row, an overflowing
    float32 accumulator (the overflow regime's point), or an x not all zero. (Single rows may
    change class, since a dtype's own limits differ: a bfloat16 row constant where its float16
    image is not.)"""
    had, has = (coverage.features("rms_norm", c) for c in (drawn, sent))
    lost = [what for what, before, after in (
        ("an informative row", had["informative_row"], has["informative_row"]),
        ("its overflowing rows", "overflow" in had["degenerate"], "overflow" in has["degenerate"]),
        ("a nonzero x", "zero_x" not in had["degenerate"], "zero_x" not in has["degenerate"]))
        if before and not after]
    return [f"mapped to {sent.x.dtype.name}, lost {', '.join(lost)}"] if lost else []


def replay(impl, every: bool = False) -> Replay:
    """Every property replayed as shipped against ``impl``, skipping those that need a
    capability ``impl`` lacks (``every``: none, as for the full Recorder, which runs ACC-9 too
    although it does not declare that clause's rounding convention), under
    ``generator_checked``."""
    result = Replay()
    with generator_checked(result):
        for cid, fn in properties():
            if not every and any(missing_capability(impl.capabilities, **need)
                                 for need in shipped.requirements(fn)):
                result.skipped.append(cid)
                continue
            seen = len(result.bad)
            try:
                result.summaries.setdefault((cid, impl.id), []).append(record(fn, impl))
            except pytest.skip.Exception:
                result.skipped.append(cid)
            result.bad[seen:] = [f"{cid}: {b}" for b in result.bad[seen:]]
    return result


def weak_properties(summaries: dict) -> dict:
    """The numerical properties less than 80% informative: clause -> "informative of examples"."""
    weak = {}
    for (cid, _), runs in summaries.items():
        stats = coverage.property_stats(cid, runs)
        if stats["numerical"] and stats["informative"] < 0.8 * stats["examples"]:
            weak[cid] = f"{stats['informative']} of {stats['examples']}"
    return weak


@pytest.mark.slow_self_test
def test_the_shipped_run_is_informative_and_reaches_every_region():
    """One test (the replay is the expensive part): every property replayed, every numerical
    property at least 80% informative, every region of SPEC.md's list reached, every case the
    plans built finite (``generator_checked``)."""
    run = replay(Recorder(), every=True)
    assert not run.skipped and len(run.summaries) == len(properties()) >= 50
    assert all(s["examples"] for runs in run.summaries.values() for s in runs), \
        [k for k, runs in run.summaries.items() if not all(s["examples"] for s in runs)]
    assert not weak_properties(run.summaries)
    assert not run.bad and not run.mapped, (run.mapped, run.bad[:5])
    assert coverage.missing(run.summaries) == {}


def _example_plugin_capabilities() -> Capabilities:
    """The shipped example plug-in's declaration (float32 only; weight=None, any eps, every
    layout; no gradients, no module), read from this checkout's copy."""
    path = ROOT / "examples" / "rmsnorm-example-plugin" / "rmsnorm_example_plugin" / "adapter.py"
    spec = importlib.util.spec_from_file_location("rmsnorm_example_adapter", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.adapter.capabilities


#: Restricted declarations: Recorder's other capabilities, fewer dtypes or no weight=None.
RESTRICTED = {
    "float32-only": dict(dtypes=("float32",), mixed=None),
    "float16-only": dict(dtypes=("float16",), mixed=None),
    "float32-float16": dict(dtypes=("float32", "float16"), mixed="promote"),
    "no-weight-none": dict(weight_none=False),
    "example-plugin": None,
}


@pytest.mark.slow_self_test
@pytest.mark.parametrize("name", RESTRICTED)
def test_restricted_implementations_get_informative_examples(name):
    """COV-1 for restricted implementations (float32 only, float16 only, float32 and float16, no
    weight=None, and the shipped example plug-in's declaration): a generated plan for a dtype the
    implementation does not declare is mapped to the nearest declared one that can hold its
    regime, with exponents valid there (an informative row stays informative, an overflowing
    one overflows, never cast to infinity); a mixed pair it cannot take becomes x's dtype; a
    weight of None becomes ones; an anchor asking for what it lacks is skipped, as Hypothesis
    skips it, and is no example. So every numerical property that applies (not skipped for a
    missing capability) is still at least 80% informative, and ``generator_checked`` finds no
    plan at fault. Region reach (``coverage.missing``) is not asked: the regions are listed per
    dtype and dtype pair (and rows above 65535 in float32), and an implementation that does not
    declare a dtype, or mixed pairs, cannot be sent their regions; the full-capability test
    above holds reach."""
    caps = (_example_plugin_capabilities() if RESTRICTED[name] is None
            else dataclasses.replace(Recorder.capabilities, **RESTRICTED[name]))
    assert not caps.problems()
    impl = Recorder()
    impl.id, impl.capabilities = f"recorder-{name}", caps
    run = replay(impl)
    assert run.summaries and len(run.summaries) + len(run.skipped) == len(properties())
    assert run.mapped, "no plan was mapped: the check would be vacuous"
    assert not weak_properties(run.summaries)
    assert not run.bad, (len(run.bad), run.bad[:5])


def test_a_narrowed_strategy_fails_the_check():
    """The check is not vacuous: ACC-1's own body run under narrowed strategies (short rows
    only; zero weights) misses the regions and the informative share it must reach."""
    body = inspect.unwrap(test_acc.test_error_bound_whole_range.hypothesis.inner_test)
    impl = Recorder()

    @given(plan=cs.plans(max_d=16))
    def short_rows_only(impl, plan):
        body(impl=impl, plan=plan)

    @given(plan=cs.plans(weights=("zeros",), max_d=64))
    def zero_weights(impl, plan):
        body(impl=impl, plan=plan)

    short = {("ACC-1", impl.id): [record(short_rows_only, impl)]}
    lacking = coverage.missing(short)
    assert {"float32 forward d=65536", "bfloat16 backward d=1"} <= set(lacking["axis lengths"])
    zeros = [record(zero_weights, impl)]
    stats = coverage.property_stats("ACC-1", zeros)
    assert stats["informative"] == 0 < stats["examples"]
