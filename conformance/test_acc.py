"""SPEC.md section ACC: accuracy against the float64 reference under the tolerance model."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conformance import strategies as cs
from conformance.assertions import assert_within, check_accuracy, forward
from conformance.cases import Case
from conformance.tolerance import forward_bound


@pytest.mark.clause("ACC-1")
@given(data=st.data())
def test_error_bound_whole_range(impl, data):
    """Every element within the ACC-1 bound: all dtypes, mixed weights, axis lengths 1..65536,
    magnitudes over each dtype's whole finite range, every weight kind and eps."""
    case = data.draw(cs.cases(impl.capabilities), label="case")
    check_accuracy(impl, case)


@pytest.mark.clause("ACC-2")
@given(data=st.data())
def test_half_squares_overflowing_half_type(impl, data):
    """Half-precision inputs whose squares overflow the half type (float16 |x| > 256, up to
    65504) still normalise within ACC-1's bound: the squares are formed in float32."""
    halves = [t for t in ("float16", "bfloat16") if t in impl.capabilities.dtypes]
    if not halves:
        pytest.skip(f"{impl.id} declares no half-precision dtype")
    x_dt = data.draw(st.sampled_from(halves), label="dtype")
    d = data.draw(cs.axis_lengths(1, 65536), label="d")
    rows = data.draw(st.integers(1, max(1, 4096 // d)), label="rows")
    top = 15 if x_dt == "float16" else 127
    lo = data.draw(st.integers(9 if x_dt == "float16" else 65, top), label="lo")
    seed = data.draw(st.integers(0, 2 ** 32 - 1), label="seed")
    x = cs.bulk_array(x_dt, (rows, d), seed, "wide", lo, top)
    w = data.draw(cs.weights(d, x_dt, ("ones", "random")), label="weight")
    check_accuracy(impl, Case(x, w, data.draw(cs.eps_values(), label="eps"),
                              f"bulk_array({x_dt!r}, {(rows, d)}, {seed}, 'wide', {lo}, {top})"))


@pytest.mark.clause("ACC-3")
@given(data=st.data())
def test_exact_sum_of_squares_tight_bound(impl, data):
    """Inputs k * 2**e with sum(k^2) < 2**24: every float32 partial sum is exact in any order,
    so only the few fixed roundings remain and the bound is a few ulps at every axis length."""
    case = data.draw(cs.exact_sum_cases(impl.capabilities), label="case")
    check_accuracy(impl, case, exact_sum=True)


def _overflow_rows(data, impl):
    dts = [t for t in ("float32", "bfloat16") if t in impl.capabilities.dtypes]
    if not dts:
        pytest.skip(f"{impl.id} declares neither float32 nor bfloat16 (float16 squares cannot "
                    "overflow float32)")
    x_dt = data.draw(st.sampled_from(dts), label="dtype")
    d = data.draw(cs.axis_lengths(1, 4096), label="d")
    # some rows overflow only through the sum (2**63 each), some through single squares
    lo = data.draw(st.integers(63, 126), label="lo")
    seed = data.draw(st.integers(0, 2 ** 32 - 1), label="seed")
    x = cs.bulk_array(x_dt, (2, d), seed, "wide", lo, 127)
    return Case(x, np.ones(d, x.dtype), data.draw(cs.eps_values(), label="eps"),
                f"bulk_array({x_dt!r}, {(2, d)}, {seed}, 'wide', {lo}, 127)")


@pytest.mark.clause("ACC-4")
@given(data=st.data())
def test_accumulator_out_of_range(impl, data):
    """Where the float32 sum of squares overflows, each output is within ACC-1's bound or
    zero (MLX gives zeros); other values (NaN, inf, garbage) fail."""
    check_accuracy(impl, _overflow_rows(data, impl))


@pytest.mark.clause("ACC-5")
@given(data=st.data())
def test_accurate_beyond_float32_accumulator(impl, data):
    """MAY: an implementation that rescales (for example by max|x|) stays accurate where the
    float32 sum of squares overflows."""
    case = _overflow_rows(data, impl)
    got = forward(impl, case)
    fb = forward_bound(case.x, case.weight, case.eps, got.dtype)
    fb.zero_ok[...] = False
    assert_within(impl, case, got, fb)


@pytest.mark.clause("ACC-6")
@given(data=st.data())
def test_long_rows(impl, data):
    """Accuracy of float32 accumulation at long axes (4096..65536), all dtypes."""
    case = data.draw(cs.cases(impl.capabilities, min_d=4096, max_d=65536, max_dims=1,
                              allow_empty=False), label="case")
    check_accuracy(impl, case)


@pytest.mark.clause("ACC-7")
@given(data=st.data())
def test_underflowing_squares_with_eps(impl, data):
    """Inputs so small that their squares underflow float32 (|x| < 2**-75) normalise to
    x / sqrt(eps) * w within ACC-1's bound when eps > 0."""
    dts = [t for t in ("float32", "bfloat16") if t in impl.capabilities.dtypes]
    if not dts:
        pytest.skip(f"{impl.id} declares neither float32 nor bfloat16")
    x_dt = data.draw(st.sampled_from(dts), label="dtype")
    d = data.draw(cs.axis_lengths(1, 4096), label="d")
    hi = data.draw(st.integers(-125, -76), label="hi")
    seed = data.draw(st.integers(0, 2 ** 32 - 1), label="seed")
    x = cs.bulk_array(x_dt, (2, d), seed, "wide", -126, hi)
    check_accuracy(impl, Case(x, np.ones(d, x.dtype), data.draw(cs.eps_values(), label="eps"),
                              f"bulk_array({x_dt!r}, {(2, d)}, {seed}, 'wide', -126, {hi})"))
