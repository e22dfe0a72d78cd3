"""SPEC.md section ACC: accuracy against the float64 reference under the tolerance model."""

from hypothesis import given

from rmsnorm_conformance.conformance import strategies as cs
from rmsnorm_conformance.conformance.assertions import assert_within, check_accuracy, forward
from rmsnorm_conformance.conformance.strategies import anchor, anchors, regime_anchors
from rmsnorm_conformance.conformance.tolerance import forward_bound
from rmsnorm_conformance.conformance.marks import clause, requires

HALVES = ("float16", "bfloat16")
MIXED_ANCHORS = [anchor(x, d, w_dtype=w) for x, w in cs.MIXED_PAIRS for d in (33, 4097)]
SHAPE_ANCHORS = [anchor("float32", 33, lead=()), anchor("bfloat16", 257, lead=(2, 3)),
                 anchor("float16", 31, lead=(2, 2, 3), weight="none")]


@clause("ACC-1")
@given(plan=cs.plans(weights=("ones", "random", "none")))
@anchors(regime_anchors() + MIXED_ANCHORS + SHAPE_ANCHORS)
def test_error_bound_whole_range(impl, plan):
    """Every element within the ACC-1 bound: all dtypes and mixed weights, axis lengths 1..65536
    (every kernel regime anchored for every dtype), magnitudes over the informative range of each
    dtype, every weight kind and eps."""
    check_accuracy(impl, plan.build(impl.capabilities))


@clause("ACC-2")
@requires(dtypes="float16")
@given(plan=cs.plans(dtypes=("float16",), magnitudes="half_overflow", spread=3,
                     weights=("ones", "random")))
@anchors([anchor("float16", d, exp=e, spread=3) for d in (1, 257, 4097, 65536)
          for e in (9, 14)])
def test_half_squares_overflowing_half_type(impl, plan):
    """float16 inputs whose squares overflow float16 (|x| from 512 up to 65504) still normalise
    within ACC-1's bound: the squares are formed in float32. (bfloat16 has float32's range: its
    squares overflow float32 too, which is ACC-4.)"""
    check_accuracy(impl, plan.build(impl.capabilities))


@clause("ACC-3")
@given(plan=cs.plans(kinds=("exact",), weights=("ones", "random", "ints", "none")))
@anchors(regime_anchors(kind="exact") + [anchor(x, d, kind="exact", w_dtype="float32")
                                         for x in HALVES for d in (1, 257, 4097, 65536)])
def test_exact_sum_of_squares_tight_bound(impl, plan):
    """Inputs k * 2**e with sum(k^2) < 2**24: every float32 partial sum is exact in any order,
    so only the few fixed roundings remain and the bound is a few ulps at every axis length,
    for half and float32 outputs."""
    check_accuracy(impl, plan.build(impl.capabilities), exact_sum=True)


OVERFLOW = dict(dtypes=("float32", "bfloat16"), magnitudes="overflow", spread=0,
                weights=("ones", "random"), max_elements=1 << 15)
OVERFLOW_ANCHORS = [anchor(t, d, exp=e, spread=0) for t in ("float32", "bfloat16")
                    for d, e in ((1, 66), (257, 62), (4097, 126))]


@clause("ACC-4")
@requires(dtypes=("float32", "bfloat16"))
@given(plan=cs.plans(**OVERFLOW))
@anchors(OVERFLOW_ANCHORS)
def test_accumulator_out_of_range(impl, plan):
    """Where the float32 sum of squares overflows (single squares or only their sum), each
    output is within ACC-1's bound or exactly zero (MLX gives zeros); NaN, inf or other values
    fail."""
    check_accuracy(impl, plan.build(impl.capabilities))


@clause("ACC-5")
@requires(dtypes=("float32", "bfloat16"))
@given(plan=cs.plans(**OVERFLOW))
@anchors(OVERFLOW_ANCHORS)
def test_accurate_beyond_float32_accumulator(impl, plan):
    """MAY: an implementation that rescales (for example by max|x|) stays accurate where the
    float32 sum of squares overflows."""
    case = plan.build(impl.capabilities)
    got = forward(impl, case)
    fb = forward_bound(case.x, case.weight, case.eps, got.dtype).without_zero_ok()
    assert_within(impl, case, got, fb)


@clause("ACC-6")
@given(plan=cs.plans(min_d=4096, max_d=65536, max_dims=2))
@anchors(regime_anchors(d_values=[d for d in cs.D_TARGETS if d >= 4096], lead=(2,))
         + [anchor(x, 65536, w_dtype="float32", lead=(2,)) for x in HALVES])
def test_long_rows(impl, plan):
    """Accuracy of float32 accumulation at long axes (4096..65536), all dtypes, one or
    several rows."""
    check_accuracy(impl, plan.build(impl.capabilities))


@clause("ACC-7")
@requires(dtypes=("float32", "bfloat16"))
@given(plan=cs.plans(dtypes=("float32", "bfloat16"), magnitudes="underflow",
                     weights=("ones", "random"), max_elements=1 << 15))
@anchors([anchor(t, d, exp=e, eps=eps) for t in ("float32", "bfloat16")
          for d, e, eps in ((1, -100, 1e-12), (257, -80, 1e-5), (4097, -120, 1.0))]
         + [anchor(t, 33, exp=-124, spread=0) for t in ("float32", "bfloat16")])   # near tiny
def test_underflowing_squares_with_eps(impl, plan):
    """Inputs so small that their squares underflow float32 (|x| < 2**-75) normalise to
    x / sqrt(eps) * w within ACC-1's bound when eps > 0."""
    check_accuracy(impl, plan.build(impl.capabilities))
