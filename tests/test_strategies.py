"""The strategies themselves (conformance/strategies.py): arguments validated when a strategy is
built, with messages that say what to pass; plans independent of the implementation and mapped
onto what it declares; capability skips decided before anything is drawn (COV-1)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.errors import InvalidArgument

from rmsnorm_conformance.conformance import strategies as cs, test_dty, test_met, test_mod
from rmsnorm_conformance.protocol import Capabilities, Implementation, ModuleInfo
from rmsnorm_conformance.conformance.marks import clause
from tests import shipped

pytestmark = clause("COV-1")


@pytest.mark.parametrize("build, message", [
    (lambda: cs.plans(dtypes=("float128",)), "dtypes must be a non-empty subset of"),
    (lambda: cs.plans(dtypes=()), "pass e.g. dtypes="),
    (lambda: cs.plans(weights=("half",)), "weights must be a non-empty subset of"),
    (lambda: cs.plans(min_d=0), "need integers 1 <= min_d <= max_d <= 65536"),
    (lambda: cs.plans(min_d=9, max_d=4), "min_d=9, max_d=4"),
    (lambda: cs.plans(regime="huge"), "pass one of ('informative'"),
    (lambda: cs.plans(spread=99), "0 <= spread <= 40"),
    (lambda: cs.plans(min_rows=4, min_d=65536), "exceeds max_elements"),
    (lambda: cs.leading_shapes(8, max_dims=5), "max_dims must be an integer 0..3"),
    (lambda: cs.leading_shapes(65536, min_rows=3, max_elements=65536), "lower min_rows"),
    (lambda: cs.eps_values(0.0), "need 0 < min_eps <= max_eps"),
    (lambda: cs.dtype_pairs(("float32",), mixed="only"), "mixed='only' needs two of"),
    (lambda: cs.axis_lengths(5, 2), "min_d=5, max_d=2"),
])
def test_bad_arguments_fail_when_the_strategy_is_built(build, message):
    """Validated at build time (not at the first draw), naming what to pass instead."""
    with pytest.raises(InvalidArgument, match=None) as info:
        build()
    assert message in str(info.value), str(info.value)


def test_plans_are_plain_values_that_rebuild_exactly():
    """A plan rebuilds the same arrays (the repro of a large case is its plan)."""
    caps = Capabilities(dtypes=("float32", "float16", "bfloat16"), mixed="promote",
                        weight_none=True)
    plans = []

    @settings(max_examples=30, derandomize=True, database=None, deadline=None)
    @given(plan=cs.plans())
    def collect(plan):
        plans.append(plan)

    collect()
    for plan in plans:
        a, b = plan.build(caps), eval("cs." + repr(plan)).build(caps)
        assert a.x.tobytes() == b.x.tobytes() and a.x.dtype == b.x.dtype
        assert (a.weight is None) == (b.weight is None)
        assert a.weight is None or a.weight.tobytes() == b.weight.tobytes()


@pytest.mark.parametrize("dtypes", [("float64",), ("float32", "float16")])
def test_a_mixed_pair_always_has_a_weight(dtypes):
    """A mixed pair with no weight would be a plain example of x's dtype (a float64 clause would
    judge a float32 case): every mixed plan draws a weight, and a weightless-only strategy
    draws no mixed pairs."""
    seen = []

    @settings(max_examples=60, derandomize=True, database=None, deadline=None)
    @given(plan=cs.plans(dtypes=dtypes, mixed="only", max_elements=64))
    def collect(plan):
        seen.append(plan)

    collect()
    assert seen and all(p.weight != "none" and p.w_dtype is not None for p in seen)

    @settings(max_examples=20, derandomize=True, database=None, deadline=None)
    @given(plan=cs.plans(dtypes=dtypes, mixed="only", weights=("none",), max_elements=64))
    def unweighted(plan):
        assert plan.w_dtype is None

    unweighted()


def test_undeclared_dtypes_and_capabilities_map_onto_declared_ones():
    """A generated plan of a dtype, mixed pair or None weight the implementation does not
    declare becomes one it does; an anchor is dropped instead (hypothesis.assume)."""
    caps = Capabilities(dtypes=("bfloat16",))
    plan = cs.Plan(x_dtype="float16", w_dtype="float32", d=8, lead=(2,), weight="none")
    case = plan.build(caps)
    assert case.x.dtype.name == "bfloat16" and case.weight.dtype.name == "bfloat16"
    from hypothesis.errors import UnsatisfiedAssumption
    with pytest.raises(UnsatisfiedAssumption):
        cs.anchor("float16", 8).build(caps)
    # the nearest precision: a half-precision clause's example stays half precision
    two = Capabilities(dtypes=("float32", "float16"))
    assert cs.Plan(x_dtype="bfloat16", d=8, lead=(2,)).build(two).x.dtype.name == "float16"
    assert cs.Plan(x_dtype="float64", d=8, lead=(2,)).build(two).x.dtype.name == "float32"


def test_mapped_plans_keep_their_regime_and_stay_finite():
    """A plan mapped to a declared dtype is never cast to infinity (no overflow warning): its
    exponent moves into that dtype's range. Where the nearest declared dtype cannot hold the
    plan's regime (float16 holds neither an overflowing float32 accumulator nor squares
    underflowing it), the plan goes to the nearest that can."""
    half = Capabilities(dtypes=("float16",))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for plan in (cs.Plan(x_dtype="float32", d=8, lead=(3,), exp=50, spread=4),
                     cs.Plan(x_dtype="float32", d=8, lead=(3,), exp=40, kind="exact"),
                     cs.Plan(x_dtype="bfloat16", d=8, lead=(3,), exp=100, kind="spike",
                             spike_exp=110, regime="any")):
            x = plan.build(half).x.astype(np.float64)
            assert plan.build(half).x.dtype.name == "float16" and np.all(np.isfinite(x))
            assert np.any(x != 0)
    two = Capabilities(dtypes=("float32", "float16"))
    over = cs.Plan(x_dtype="bfloat16", d=29, lead=(4,), exp=99, spread=0, regime="overflow")
    x = over.build(two).x.astype(np.float64)
    assert over.build(two).x.dtype.name == "float32" and np.all(np.isfinite(x))
    assert np.all(np.sum(x * x, axis=-1) > np.finfo(np.float32).max)
    under = cs.Plan(x_dtype="bfloat16", d=33, lead=(2,), exp=-100, regime="underflow")
    x = under.build(two).x.astype(np.float64)
    assert under.build(two).x.dtype.name == "float32" and np.all(np.any(x != 0, axis=-1))
    assert np.max(np.abs(x)) < 2.0 ** -75
    assert cs.Plan(x_dtype="bfloat16", d=8, lead=(2,)).build(two).x.dtype.name == "float16"
    assert [cs.regime_reachable(r, "float16", 65536) for r in ("overflow", "underflow")] \
        == [False, False]


def test_compiled_implementations_get_the_anchors_shapes():
    """For compiles_per_shape, a generated plan takes an anchor's axis length, rows and a common
    eps (a bounded number of programs to compile); anchors and other implementations are
    unchanged."""
    compiled = Capabilities(compiles_per_shape=True)
    plan = cs.Plan(x_dtype="float32", d=300, lead=(5, 7), eps=3.3e-7)
    snapped = plan.for_caps(compiled)
    assert (snapped.d, snapped.lead, snapped.eps) == (1024, (3,), 1e-6)
    assert plan.for_caps(Capabilities()) is plan
    anchor = cs.anchor("float32", 300, lead=(5, 7))
    assert anchor.for_caps(compiled) is anchor


class OneDtype(Implementation):
    """Declares a single dtype, mixed promotion, a module and two layouts only."""

    id = "one-dtype"
    capabilities = Capabilities(dtypes=("bfloat16",), mixed="promote", module=True,
                                layouts=("strided", "broadcast"))

    def __init__(self):
        self.layouts_seen = set()

    def rms_norm(self, x, weight, eps, layout=None):
        from rmsnorm_conformance import reference
        if layout is not None:
            self.layouts_seen.add(layout.kind)
            x, weight = layout.view(x, weight, np.asarray, np.swapaxes, np.broadcast_to)
        out = self.capabilities.output_dtype(x.dtype, None if weight is None else weight.dtype)
        return reference.rms_norm(x, weight, eps).astype(out)

    def module_info(self, dims, eps=None):
        return ModuleInfo(eps=1e-5, parameters={"w": np.ones(dims, np.float32)})


@pytest.mark.parametrize("fn", [test_dty.test_mixed_dtype_output,
                                test_mod.test_default_module_promotes_half_input])
def test_an_adapter_with_one_dtype_works(fn):
    """DTY-2 and MOD-5 once raised InvalidArgument (sampling from no pairs) for an adapter with
    one dtype; they run, mapped onto what it declares."""
    shipped.run_shipped(fn, impl=OneDtype())


def test_layouts_are_drawn_among_the_declared_ones():
    """MET-7 once drew a layout the adapter did not declare and skipped the whole property; it
    draws only declared layouts, and reaches each."""
    impl = OneDtype()
    shipped.run_shipped(test_met.test_layout_independence, impl=impl)
    assert impl.layouts_seen == {"strided", "broadcast"}


def test_informative_exponents_keep_rows_informative():
    """The informative range: mean square at least eps/16, float32 sum at least 2**10 below
    overflow, elements normal in the dtype, for every dtype, d and eps decade."""
    for dtype in cs.ALL_DTYPES:
        for d in cs.D_TARGETS:
            for eps in (1e-12, 1e-5, 1.0):
                lo, hi = cs.informative_exponents(dtype, d, eps)
                assert lo <= hi, (dtype, d, eps)
                x = cs.Plan(x_dtype=dtype, d=d, lead=(2,), exp=hi, eps=eps, spread=0,
                            seed=1).x_values(dtype).astype(np.float64)
                assert np.all(np.isfinite(x))
                assert np.sum(x * x, axis=-1).max() < 2.0 ** 118
                rows = min(64, max(2, 2 ** 16 // d))     # 64 rows, or at least 2**16 values
                low = cs.Plan(x_dtype=dtype, d=d, lead=(rows,), exp=lo, eps=eps, spread=0,
                              seed=1).x_values(dtype).astype(np.float64)
                assert np.mean(low * low) >= eps / 16 * 0.5, (dtype, d, eps)
