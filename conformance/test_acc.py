"""SPEC.md section ACC: accuracy against the float64 reference under the tolerance model.

ACC-1 to ACC-7 judge x and weight of one dtype; mixed dtypes are ACC-8's (under the declared
rounding convention) and ACC-9's (the output type's own precision).
"""

from hypothesis import given

from rmsnorm_conformance.conformance import strategies as cs
from rmsnorm_conformance.conformance.assertions import accuracy_bound, assert_within, \
    check_accuracy, forward
from rmsnorm_conformance.conformance.judges import judge
from rmsnorm_conformance.conformance.marks import clause, requires
from rmsnorm_conformance.conformance.strategies import anchor, anchors, regime_anchors

HALVES = ("float16", "bfloat16")
SHAPE_ANCHORS = [anchor("float32", 33, lead=()), anchor("bfloat16", 257, lead=(2, 3)),
                 anchor("float16", 31, lead=(2, 2, 3), weight="none")]


@judge("ACC-1")
def within_bound(impl, case):
    """Every element within the TOL bound of the float64 reference."""
    check_accuracy(impl, case)


@clause("ACC-1")
@given(plan=cs.plans(weights=("ones", "random", "none")))
@anchors(regime_anchors() + SHAPE_ANCHORS)
def test_error_bound_whole_range(impl, plan):
    """Every element within the ACC-1 bound: all dtypes, axis lengths 1..65536 (every kernel
    regime anchored for every dtype), magnitudes over the informative range of each dtype,
    every weight kind and eps."""
    within_bound(impl, plan.build(impl.capabilities))


@judge("ACC-2")
def half_squares_overflowing(impl, case):
    """float16 inputs whose squares overflow float16, within the TOL bound."""
    check_accuracy(impl, case)


@clause("ACC-2")
@requires(dtypes="float16")
@given(plan=cs.plans(dtypes=("float16",), regime="half_overflow", spread=3,
                     weights=("ones", "random")))
@anchors([anchor("float16", d, exp=e, spread=3, regime="half_overflow")
          for d in (1, 257, 4097, 65536) for e in (9, 14)])
def test_half_squares_overflowing_half_type(impl, plan):
    """float16 inputs whose squares overflow float16 (|x| from 512 up to 65504) still normalise
    within ACC-1's bound: the squares are formed in float32. (bfloat16 has float32's range: its
    squares overflow float32 too, which is ACC-4.)"""
    half_squares_overflowing(impl, plan.build(impl.capabilities))


@judge("ACC-3")
def tight_where_sum_exact(impl, case):
    """Inputs k * 2**e with an exact float32 sum of squares: the bound without the summation
    term."""
    check_accuracy(impl, case, exact_sum=True)


@clause("ACC-3")
@given(plan=cs.plans(kinds=("exact",), weights=("ones", "random", "ints", "none")))
@anchors(regime_anchors(kind="exact"))
def test_exact_sum_of_squares_tight_bound(impl, plan):
    """Inputs k * 2**e with sum(k^2) < 2**24: every float32 partial sum is exact in any order,
    so only the few fixed roundings remain and the bound is a few ulps at every axis length."""
    tight_where_sum_exact(impl, plan.build(impl.capabilities))


OVERFLOW = dict(dtypes=("float32", "bfloat16"), regime="overflow", spread=0,
                weights=("ones", "random"), max_elements=1 << 15)
OVERFLOW_ANCHORS = [anchor(t, d, exp=e, spread=0, regime="overflow")
                    for t in ("float32", "bfloat16") for d, e in ((1, 66), (257, 62), (4097, 126))]


@judge("ACC-4")
def zero_or_accurate_beyond_accumulator(impl, case):
    """Where the float32 sum of squares overflows: within the TOL bound or exactly zero."""
    check_accuracy(impl, case)


@clause("ACC-4")
@requires(dtypes=("float32", "bfloat16"))
@given(plan=cs.plans(**OVERFLOW))
@anchors(OVERFLOW_ANCHORS)
def test_accumulator_out_of_range(impl, plan):
    """Where the float32 sum of squares overflows (single squares or only their sum), each
    output is within ACC-1's bound or exactly zero (MLX gives zeros); NaN, inf or other values
    fail."""
    zero_or_accurate_beyond_accumulator(impl, plan.build(impl.capabilities))


@judge("ACC-5")
def accurate_beyond_accumulator(impl, case):
    """Where the float32 sum of squares overflows: within the TOL bound (no zeros)."""
    got = forward(impl, case)
    assert_within(impl, case, got, accuracy_bound(impl, case, got.dtype).without_zero_ok())


@clause("ACC-5")
@requires(dtypes=("float32", "bfloat16"))
@given(plan=cs.plans(**OVERFLOW))
@anchors(OVERFLOW_ANCHORS)
def test_accurate_beyond_float32_accumulator(impl, plan):
    """MAY: an implementation that rescales (for example by max|x|) stays accurate where the
    float32 sum of squares overflows."""
    accurate_beyond_accumulator(impl, plan.build(impl.capabilities))


@judge("ACC-6")
def long_rows(impl, case):
    """Rows of 4096..65536 elements within the TOL bound."""
    check_accuracy(impl, case)


@clause("ACC-6")
@given(plan=cs.plans(min_d=4096, max_d=65536, max_dims=2))
@anchors(regime_anchors(d_values=[d for d in cs.D_TARGETS if d >= 4096], lead=(2,)))
def test_long_rows(impl, plan):
    """Accuracy of float32 accumulation at long axes (4096..65536), all dtypes, one or
    several rows."""
    long_rows(impl, plan.build(impl.capabilities))


@judge("ACC-7")
def underflowing_squares(impl, case):
    """Squares that underflow float32, eps > 0: x / sqrt(eps) * w within the TOL bound."""
    check_accuracy(impl, case)


@clause("ACC-7")
@requires(dtypes=("float32", "bfloat16"))
@given(plan=cs.plans(dtypes=("float32", "bfloat16"), regime="underflow",
                     weights=("ones", "random"), max_elements=1 << 15))
@anchors([anchor(t, d, exp=e, eps=eps, regime="underflow") for t in ("float32", "bfloat16")
          for d, e, eps in ((1, -100, 1e-12), (257, -80, 1e-5), (4097, -120, 1.0))]
         + [anchor(t, 33, exp=-124, spread=0, regime="underflow")
            for t in ("float32", "bfloat16")])      # near tiny
def test_underflowing_squares_with_eps(impl, plan):
    """Inputs so small that their squares underflow float32 (|x| < 2**-75) normalise to
    x / sqrt(eps) * w within ACC-1's bound when eps > 0."""
    underflowing_squares(impl, plan.build(impl.capabilities))


#: Mixed x/weight dtypes: every pair at a short and a long axis, half x with a float32 weight
#: where the float32 sum of squares is exact (tight: a half-precision rounding of the
#: normalised value shows at once) and at the longest axis.
MIXED_ANCHORS = ([anchor(x, d, w_dtype=w) for x, w in cs.MIXED_PAIRS for d in (33, 4097)]
                 + [anchor(x, d, kind="exact", w_dtype="float32")
                    for x in HALVES for d in (1, 257, 4097, 65536)]
                 + [anchor(x, 65536, w_dtype="float32", lead=(2,)) for x in HALVES])
MIXED = dict(mixed="only", kinds=("normal", "spike", "exact"), weights=("ones", "random"))


@judge("ACC-8")
def mixed_within_declared_convention(impl, case):
    """A mixed-dtype case within the TOL bound of its declared convention (output type and
    rounding order); tight where the float32 sum of squares is exact."""
    check_accuracy(impl, case, exact_sum=bool(case.params.get("exact_sum")))


@clause("ACC-8")
@requires(mixed=("promote", "input", "weight"))
@given(plan=cs.plans(**MIXED))
@anchors(MIXED_ANCHORS)
def test_mixed_dtypes_within_declared_convention(impl, plan):
    """x and weight of different dtypes: every element within the TOL bound for the output
    type and the rounding order the implementation declares (mixed, normalised_in_input_dtype)."""
    mixed_within_declared_convention(impl, plan.build(impl.capabilities))


@judge("ACC-9")
def mixed_keeps_output_precision(impl, case):
    """A mixed-dtype case within the output type's own TOL bound (no narrower rounding of the
    normalised value)."""
    check_accuracy(impl, case, exact_sum=bool(case.params.get("exact_sum")), convention=False)


@clause("ACC-9")
@requires(normalised_in_input_dtype=True, mixed=("promote", "input", "weight"))
@given(plan=cs.plans(**MIXED))
@anchors(MIXED_ANCHORS)
def test_mixed_dtypes_keep_output_precision(impl, plan):
    """SHOULD: a wider weight gives an output as precise as its type, the normalised value
    not rounded to x's narrower dtype first (Hugging Face's LlamaRMSNorm does, and declares
    it; everyone else is held to this by ACC-8 already)."""
    mixed_keeps_output_precision(impl, plan.build(impl.capabilities))
