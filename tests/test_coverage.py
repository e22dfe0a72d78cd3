"""COV-1: the default run's examples are informative and reach every region SPEC.md promises.

Every conformance property is run exactly as shipped (``tests/shipped.py``: the default
profile, its seeds and anchors) against ``Recorder``, an implementation that declares every
capability and answers with the float64 reference rounded to the output type (so it passes every
clause and each property runs all its examples). ``conformance.coverage`` classifies what the
properties sent. The same analysis backs ``pytest --rmsnorm-coverage``.

The check would fail if a strategy regressed: ``test_a_narrowed_strategy_fails_the_check`` runs
ACC-1's body under deliberately narrowed strategies and shows the check failing.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import given

from rmsnorm_conformance import reference
from rmsnorm_conformance.conformance import coverage, ledger, strategies as cs
from rmsnorm_conformance.conformance import test_acc, test_dty, test_fwd, test_grad, test_met, test_mod, test_spv
from rmsnorm_conformance.protocol import DTYPES, LAYOUTS, Capabilities, Implementation, ModuleInfo
from rmsnorm_conformance.conformance.marks import CLAUSE, clause
from tests import shipped

pytestmark = clause("COV-1")

MODULES = (test_fwd, test_dty, test_acc, test_mod, test_spv, test_met, test_grad)


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
    """Every Hypothesis property of the conformance modules with its clause."""
    found = []
    for module in MODULES:
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("test_") and hasattr(fn, "hypothesis") \
                    and fn.__module__ == module.__name__:
                marks = [m for m in getattr(fn, "pytestmark", []) if m.name == CLAUSE]
                found.append((marks[0].args[0], fn))
    return sorted(found, key=lambda t: t[0])


def record(fn, impl) -> dict:
    """Run one property as shipped against ``impl``; its recorded calls as a coverage summary."""
    book = ledger.Ledger(record_calls=True)
    with ledger.active(book):
        shipped.run_shipped(fn, impl=impl)
    return coverage.summarise(book)


@pytest.mark.slow_self_test
def test_the_shipped_run_is_informative_and_reaches_every_region():
    """One test (the replay is the expensive part): every property replayed, every numerical
    property at least 80% informative, every region of SPEC.md's list reached."""
    impl = Recorder()
    shipped = {(cid, impl.id): [record(fn, impl)] for cid, fn in properties()}
    assert len(shipped) == len(properties()) >= 50
    assert all(s[0]["examples"] for s in shipped.values()), \
        [k for k, s in shipped.items() if not s[0]["examples"]]
    weak = {}
    for (cid, _), summaries in shipped.items():
        stats = coverage.property_stats(cid, summaries)
        if stats["numerical"] and stats["informative"] < 0.8 * stats["examples"]:
            weak[cid] = f"{stats['informative']} of {stats['examples']}"
    assert not weak, weak
    assert coverage.missing(shipped) == {}


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
