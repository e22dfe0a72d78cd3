"""SPEC.md section FWD: the formula, the axis, shapes."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conformance import strategies as cs
from conformance.assertions import check_accuracy, forward
from conformance.cases import Case
from conformance.supervisor import time_limit

EMPTY_AXIS_SECONDS = 5.0


@pytest.mark.clause("FWD-1")
@given(data=st.data())
def test_output_shape_any_leading_shape(impl, data):
    """Output is an array of x's shape for 0 to 3 leading dims, zero-size ones included."""
    d = data.draw(st.integers(1, 64), label="d")
    lead = data.draw(st.lists(st.integers(0, 3), max_size=3).map(tuple), label="leading")
    x_dt = data.draw(st.sampled_from(list(impl.capabilities.dtypes)), label="dtype")
    x = data.draw(cs.inputs(x_dt, lead + (d,), full_range=False), label="x")[0]
    case = Case(x, np.ones(d, x.dtype), 1e-5)
    forward(impl, case)   # checks type, shape and dtype


@pytest.mark.clause("FWD-2")
@given(data=st.data())
def test_normalises_last_axis_only(impl, data):
    """Each row (last axis) is normalised by its own statistic: batches whose rows differ in
    scale by up to 2**40 match the reference row by row."""
    case = data.draw(cs.cases(impl.capabilities, max_d=512, profiles=("row_scales",),
                              allow_empty=False, full_range=False), label="case")
    check_accuracy(impl, case)


@pytest.mark.clause("FWD-3")
@given(data=st.data())
def test_eps_inside_square_root(impl, data):
    """y = x / sqrt(mean(x^2) + eps): rows whose mean square is comparable to eps, where eps
    outside the root, or ignored, or added to the sum instead of the mean, is far off."""
    d = data.draw(cs.axis_lengths(1, 4096), label="d")
    eps = data.draw(cs.eps_values(), label="eps")
    ratio = data.draw(st.floats(-3, 3), label="log2(mean_sq/eps)")
    x_dt = data.draw(st.sampled_from(list(impl.capabilities.dtypes)), label="dtype")
    seed = data.draw(st.integers(0, 2 ** 32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((2, d))
    v *= np.sqrt(eps * 2.0 ** ratio / np.mean(v * v, axis=-1, keepdims=True))
    x = cs._cast(v, x_dt)
    case = Case(x, np.ones(d, x.dtype), eps, f"default_rng({seed}) rows scaled to mean_sq "
                                             f"= eps * 2**{ratio}")
    if not np.all(np.isfinite(x)) or np.all(x == 0):
        return
    check_accuracy(impl, case)


@pytest.mark.clause("FWD-4")
@given(data=st.data())
def test_axis_length_one(impl, data):
    """d = 1: y = x / sqrt(x^2 + eps) * w."""
    case = data.draw(cs.cases(impl.capabilities, min_d=1, max_d=1), label="case")
    check_accuracy(impl, case)


@pytest.mark.clause("FWD-5")
def test_empty_normalised_axis(impl):
    """d = 0: an array of shape (..., 0) comes back empty with the same shape, promptly (there is
    no work: a call over EMPTY_AXIS_SECONDS is reported as timed out)."""
    with time_limit(impl, EMPTY_AXIS_SECONDS):
        for shape in [(0,), (3, 0), (2, 0, 0)]:
            forward(impl, Case(np.zeros(shape, np.float32), np.ones(0, np.float32), 1e-5))
