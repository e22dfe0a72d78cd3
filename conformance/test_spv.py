"""SPEC.md section SPV: zeros, NaN, inf, subnormals, and rows never affecting each other."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conformance import strategies as cs
from conformance.assertions import assert_within, fail, forward, require
from conformance.cases import Case
from conformance.dtypes import INFO
from conformance.tolerance import forward_bound
from impl.protocol import DTYPES


def _base(data, impl, max_d=256, rows=(2, 6)):
    """A finite, moderate batch (rows x d) and a weight, from the implementation's dtypes."""
    case = data.draw(cs.cases(impl.capabilities, max_d=max_d, max_dims=0, full_range=False,
                              weight_kinds=("ones", "random")), label="row")
    n = data.draw(st.integers(*rows), label="rows")
    x = np.repeat(case.x[None, :], n, axis=0)
    return x, case


@pytest.mark.clause("SPV-1")
@given(data=st.data())
def test_zero_rows_give_zero(impl, data):
    """With eps > 0 an all-zero row gives an all-zero output row."""
    x, case = _base(data, impl)
    x[0] = 0
    got = forward(impl, Case(x, case.weight, case.eps))
    if np.any(got[0].astype(np.float64) != 0):
        fail(impl, Case(x, case.weight, case.eps), f"zero row gave {got[0][:8]}")


@pytest.mark.clause("SPV-2")
def test_zero_row_zero_eps_is_nan(impl):
    """SHOULD: with eps = 0 an all-zero row is NaN (0/0), as in MLX."""
    require(impl, "nonpositive_eps")
    case = Case(np.zeros((2, 4), np.float32), np.ones(4, np.float32), 0.0)
    got = forward(impl, case)
    if not np.all(np.isnan(got)):
        fail(impl, case, f"eps = 0 zero rows gave {got!r}, expected NaN")


def _poison(data, impl, value):
    x, case = _base(data, impl)
    row = data.draw(st.integers(0, x.shape[0] - 1), label="poisoned row")
    col = data.draw(st.integers(0, x.shape[1] - 1), label="poisoned column")
    x[row, col] = value
    return Case(x, case.weight, case.eps), row, col


@pytest.mark.clause("SPV-3")
@given(data=st.data())
def test_nan_propagates_to_its_row_only(impl, data):
    """A NaN in x makes its whole output row NaN; the other rows stay within ACC-1's bound."""
    case, row, col = _poison(data, impl, np.nan)
    got = forward(impl, case)
    if not np.all(np.isnan(got[row].astype(np.float64))):
        fail(impl, case, f"NaN at ({row}, {col}) but output row {row} is {got[row][:8]}")
    _check_other_rows(impl, case, got, row)


def _check_other_rows(impl, case, got, row):
    keep = np.arange(case.x.shape[0]) != row
    fb = forward_bound(case.x[keep], case.weight, case.eps, got.dtype)
    assert_within(impl, case, got[keep], fb, context=f"rows other than the poisoned row {row}:")


@pytest.mark.clause("SPV-4")
@given(data=st.data(), sign=st.sampled_from([1.0, -1.0]))
def test_inf_gives_nan_at_inf_and_zero_or_nan_elsewhere(impl, data, sign):
    """An infinity in x: NaN at its position; every other element of the row is 0 or NaN (MLX:
    0); the other rows are unaffected."""
    case, row, col = _poison(data, impl, sign * np.inf)
    got = forward(impl, case)
    r = got[row].astype(np.float64)
    others = np.delete(r, col)
    if not np.isnan(r[col]) or not np.all((others == 0) | np.isnan(others)):
        fail(impl, case, f"inf at ({row}, {col}): output row is {got[row][:8]}")
    _check_other_rows(impl, case, got, row)


@pytest.mark.clause("SPV-5")
@given(data=st.data(), sign=st.sampled_from([1.0, -1.0]))
def test_inf_row_exactly_as_mlx(impl, data, sign):
    """SHOULD: in a row with an infinity, the finite elements give exactly (signed) zero."""
    case, row, col = _poison(data, impl, sign * np.inf)
    got = forward(impl, case).astype(np.float64)
    others = np.delete(got[row], col)
    if not np.all(others == 0):
        fail(impl, case, f"inf at ({row}, {col}): finite positions gave {others[:8]}")


@pytest.mark.clause("SPV-6")
@given(data=st.data())
def test_subnormal_inputs_preserved(impl, data):
    """SHOULD: subnormal inputs are not flushed to zero: rows of float32/bfloat16 subnormals with
    eps >= 1e-12 normalise to x / sqrt(eps) * w within ACC-1's bound without its flush
    allowance."""
    dts = [t for t in ("float32", "bfloat16") if t in impl.capabilities.dtypes]
    if not dts:
        pytest.skip(f"{impl.id} declares neither float32 nor bfloat16")
    t = data.draw(st.sampled_from(dts), label="dtype")
    d = data.draw(st.integers(1, 64), label="d")
    fi = INFO[t]
    x = data.draw(cs.hnp.arrays(np.float32, (2, d), elements=st.floats(
        -fi.tiny, fi.tiny, width=32, exclude_min=True, exclude_max=True)), label="x")
    case = Case(x.astype(DTYPES[t]), np.ones(d, DTYPES[t]), data.draw(cs.eps_values(), "eps"))
    got = forward(impl, case)
    fb = forward_bound(case.x, case.weight, case.eps, got.dtype, flush_allowed=False)
    assert_within(impl, case, got, fb)


@pytest.mark.clause("SPV-7")
@given(data=st.data(), value=st.sampled_from([np.nan, np.inf, -np.inf, "max", 0.0]))
def test_rows_never_affect_each_other(impl, data, value):
    """Rows beside NaN, inf, zero or near-max rows stay within ACC-1's bound."""
    x, case = _base(data, impl, max_d=4096, rows=(2, 33))
    row = data.draw(st.integers(0, x.shape[0] - 1), label="poisoned row")
    x[row] = INFO[x.dtype.name].max if value == "max" else value
    poisoned = Case(x, case.weight, case.eps)
    got = forward(impl, poisoned)
    _check_other_rows(impl, poisoned, got, row)


@pytest.mark.clause("SPV-8")
@given(data=st.data())
def test_row_alone_equals_row_in_batch(impl, data):
    """SHOULD: a row's output is bit-identical whether computed alone or in a batch."""
    case = data.draw(cs.cases(impl.capabilities, max_d=4096, allow_empty=False,
                              full_range=False), label="case")
    got = forward(impl, case)
    rows = case.x.reshape(-1, case.d)
    flat = got.reshape(-1, case.d)
    for r in sorted({0, rows.shape[0] - 1}):
        alone = forward(impl, Case(rows[r:r + 1], case.weight, case.eps))
        if alone.tobytes() != flat[r:r + 1].tobytes():
            fail(impl, case, f"row {r}: alone {alone[0][:4]} vs in batch {flat[r][:4]}")
