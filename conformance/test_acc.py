"""SPEC.md section ACC: accuracy against the float64 reference under the tolerance model.

ACC-1 to ACC-7 judge x and weight of one dtype; mixed dtypes are ACC-8's (under the declared
rounding convention) and ACC-9's (the output type's own precision).
"""

import numpy as np
from hypothesis import given

from rmsnorm_conformance.conformance import strategies as cs
from rmsnorm_conformance.conformance.assertions import accuracy_bound, assert_within, \
    check_accuracy, fail, forward
from rmsnorm_conformance.conformance.cases import Case
from rmsnorm_conformance.conformance.dtypes import round_to, ulp
from rmsnorm_conformance.conformance.judges import NotApplicable, judge
from rmsnorm_conformance.conformance.marks import about, clause, requires
from rmsnorm_conformance.conformance.strategies import anchor, anchors, regime_anchors
from rmsnorm_conformance.conformance.tolerance import rounding_candidates

HALVES = ("float16", "bfloat16")
SHAPE_ANCHORS = [anchor("float32", 33, lead=()), anchor("bfloat16", 257, lead=(2, 3)),
                 anchor("float16", 31, lead=(2, 2, 3), weight="none")]


def exact_sum(x: np.ndarray) -> bool:
    """Whether x = k * 2**e for one e and integers k with sum(k^2) < 2**24 in every row (ACC-3's
    inputs: every float32 partial sum of squares is then exact, in any order)."""
    v = x.astype(np.float64)
    nz = v[v != 0]
    if nz.size == 0 or not np.all(np.isfinite(v)):
        return False
    frac, exp = np.frexp(np.abs(nz))
    mant = np.ldexp(frac, 53).astype(np.int64)            # exact: the inputs have <= 24 bits
    trailing = np.array([(int(m) & -int(m)).bit_length() - 1 for m in mant])
    e = int(np.min(exp - 53 + trailing))                    # the lowest set bit of any element
    k = np.ldexp(v, -e)
    return bool(np.all(np.sum(k * k, axis=-1) < 2.0 ** 24))


def _mixed(case) -> bool:
    return case.weight is not None and case.weight.dtype != case.x.dtype


def _exact(case) -> bool:
    """One dtype, and a float32 sum of squares that is exact (the plan says so, or x shows it)."""
    return not _mixed(case) and bool(case.params.get("exact_sum") or exact_sum(case.x))


# ``check`` without a clause judges accuracy on every case: ACC-8 for mixed dtypes, ACC-3 where
# the float32 sum of squares is exact, else ACC-1.
@judge("ACC-1", by_default=lambda impl, case: not _mixed(case) and not _exact(case))
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


@judge("ACC-3", by_default=lambda impl, case: _exact(case))
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
@about("overflow")
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
@about("overflow")
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
@about("eps_dominated")
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
                 + [anchor(x, 65536, w_dtype="float32", lead=(2,)) for x in HALVES]
                 + [anchor(x, d, w_dtype=w) for x, w in cs.FLOAT64_PAIRS for d in (33, 4097)])
MIXED = dict(mixed="only", kinds=("normal", "spike", "exact"), weights=("ones", "random"))


@judge("ACC-8", by_default=lambda impl, case: _mixed(case))
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


def exact_normalised_value(impl, case: Case):
    """For a tie case (q rounds to a power of four in float32): the exact x n, if the
    implementation's own float32 result for the same values with a unit weight is exactly that
    (its rsqrt exact there); else None, and ties are judged like any other element."""
    if not case.params.get("tie") or "float32" not in impl.capabilities.dtypes:
        return None
    x64 = case.x.astype(np.float64)
    t = x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True))    # exact: q is 4**k
    x32 = case.x.astype(np.float32)
    unit = None if case.weight is None and impl.capabilities.weight_none else np.ones(case.d)
    probe = Case(x32, None, case.eps, case.recipe + "; float32, unit weight",
                 weight_offset=case.weight_offset)
    if unit is not None:
        probe = probe.with_applied(unit.astype(np.float32), "unit weight") \
            if probe.weight is not None else probe.derived(
                "unit weight", weight=(unit - case.weight_offset).astype(np.float32))
    got = forward(impl, probe).astype(np.float64)
    return t if np.array_equal(got, t) else None


def _described(value: float, dtype) -> str:
    return f"{value!r} ({np.asarray(value, np.float64).astype(dtype)!r})"


@judge("ACC-10")
def rounded_to_nearest(impl, case):
    """Each element of a half-precision output is one of the values the accepted rounding
    orders give with round-to-nearest-even (TOL, "The last rounding")."""
    got = forward(impl, case)
    if got.dtype.itemsize >= 4:
        raise NotApplicable(f"ACC-10 judges float16 and bfloat16 outputs, not {got.dtype.name}")
    exact = exact_normalised_value(impl, case)
    cands = rounding_candidates(case.x, case.applied, case.eps, got.dtype,
                                exact_sum=bool(case.params.get("exact_sum")),
                                normalised_value=exact)
    g = got.astype(np.float64)
    with np.errstate(invalid="ignore"):
        accepted = np.any(cands.values == g[..., None], axis=-1) | ~cands.judged
    if accepted.all():
        return
    i = tuple(int(k) for k in np.argwhere(~accepted)[0])
    ref, values = cands.ref[i], sorted({float(v) for v in cands.values[i] if v == v})
    nearest = float(round_to(ref, got.dtype))
    how = ("toward zero" if abs(g[i]) < abs(nearest) else "away from zero") \
        if g[i] != nearest else "otherwise"
    tie = " (an exact tie: to even)" if exact is not None and float(
        round_to(ref, "float32")) == ref else ""
    fail(impl, case,
         f"{int((~accepted).sum())} of {int(cands.judged.sum())} judged elements not rounded to "
         f"nearest; first at {i}:\n  x = {float(case.x[i])!r}, exact result "
         f"{ref!r}{tie}\n  accepted {', '.join(_described(v, got.dtype) for v in values)}; got "
         f"{float(g[i])!r}, {abs(g[i] - ref) / float(ulp(ref, got.dtype)):.3g} ulp off, "
         f"rounded {how}",
         f"{int((~accepted).sum())} of {int(cands.judged.sum())} elements not rounded to nearest "
         f"{got.dtype.name}, rounded {how} ({cases_summary(case)})")


def cases_summary(case) -> str:
    w = "no weight" if case.weight is None else f"weight {case.weight.dtype.name}"
    return f"{case.x.dtype.name}{list(case.x.shape)}, {w}"


#: Ties: rows whose float32 q is exactly a power of four (x n exact) with weights of an odd last
#: bit, at the axis lengths that are multiples of 8; exact-sum rows at every other regime; with
#: and without a weight, for each half type.
ROUNDING_ANCHORS = (
    [anchor(t, d, kind="tie", weight=w, lead=(4,) if d < 4096 else (1,))
     for t in HALVES for d in (8, 256, 1024, 4096, 65536) for w in ("odd", "none")]
    + [anchor(t, d, kind="exact", weight=w) for t in HALVES for d in cs.D_TARGETS
       for w in ("random", "none")])


@clause("ACC-10")
@requires(dtypes=HALVES)
@given(plan=cs.plans(dtypes=HALVES, kinds=("exact", "tie"), weights=("ones", "random", "ints",
                                                                     "odd", "none"),
                     min_d=8))
@anchors(ROUNDING_ANCHORS)
def test_half_outputs_rounded_to_nearest(impl, plan):
    """float16 and bfloat16 outputs are the nearest representable value (ties to even) of what
    a correct float32 computation gives, by either accepted order of the weight; where that
    computation's error reaches near a midpoint, either neighbour."""
    rounded_to_nearest(impl, plan.build(impl.capabilities))


FLOAT64_ANCHORS = [anchor("float64", d) for d in cs.D_TARGETS] + [
    anchor("float64", d, kind="exact") for d in (1, 257, 65536)]


@judge("ACC-11")
def float64_at_least_float32_accuracy(impl, case):
    """float64 inputs within the float32 computation's TOL bound (x rounded into float32
    included), against a double-double reference."""
    check_accuracy(impl, case, exact_sum=bool(case.params.get("exact_sum")))


@clause("ACC-11")
@requires(dtypes="float64")
@given(plan=cs.plans(dtypes=("float64",), kinds=("normal", "spike", "exact")))
@anchors(FLOAT64_ANCHORS)
def test_float64_at_least_float32_accuracy(impl, plan):
    """float64 inputs are at least as accurate as a float32 computation: every element within
    the float32 TOL bound, every regime of d (float64 paired with another dtype: ACC-8)."""
    float64_at_least_float32_accuracy(impl, plan.build(impl.capabilities))


@judge("ACC-12")
def float64_accurate_to_float64(impl, case):
    """float64 results within the TOL bound of a float64 computation."""
    check_accuracy(impl, case, exact_sum=False, accumulator="float64")


@clause("ACC-12")
@requires(dtypes="float64")
@given(plan=cs.plans(dtypes=("float64",), kinds=("normal", "spike", "exact")))
@anchors(FLOAT64_ANCHORS)
def test_float64_accurate_to_float64(impl, plan):
    """SHOULD: float64 computed in float64: every element within the float64 model's bound
    (float64 sum of squares, rsqrt and products; MLX computes float64 in float32)."""
    float64_accurate_to_float64(impl, plan.build(impl.capabilities))
