"""SPEC.md section DTY: output dtypes (the values are ACC's business)."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conformance import strategies as cs
from conformance.assertions import forward, require
from conformance.cases import Case
from impl.protocol import DTYPES


def _case(data, x_dt, w_dt):
    d = data.draw(st.integers(1, 40), label="d")
    x = data.draw(cs.inputs(x_dt, (2, d), full_range=False), label="x")[0]
    w = None if w_dt is None else np.ones(d, DTYPES[w_dt])
    return Case(x, w, 1e-5)


@pytest.mark.clause("DTY-1")
@given(data=st.data())
def test_same_dtype_output(impl, data):
    """x and weight of one dtype (float32, float16, bfloat16) give that dtype."""
    t = data.draw(st.sampled_from(list(impl.capabilities.dtypes)), label="dtype")
    forward(impl, _case(data, t, t))


@pytest.mark.clause("DTY-2")
@given(data=st.data())
def test_mixed_dtype_output(impl, data):
    """Mixed x/weight dtypes give the promoted type: float32 with anything is float32, float16
    with bfloat16 is float32."""
    require(impl, "mixed")
    pairs = [p for p in cs.MIXED_PAIRS if set(p) <= set(impl.capabilities.dtypes)]
    x_dt, w_dt = data.draw(st.sampled_from(pairs), label="dtypes")
    forward(impl, _case(data, x_dt, w_dt))


@pytest.mark.clause("DTY-3")
@given(data=st.data())
def test_weight_none_output(impl, data):
    """weight=None gives x's dtype."""
    require(impl, "weight_none")
    t = data.draw(st.sampled_from(list(impl.capabilities.dtypes)), label="dtype")
    forward(impl, _case(data, t, None))
