"""SPEC.md section DTY: output dtypes (the values are ACC's business)."""

from hypothesis import given

from rmsnorm_conformance.conformance import strategies as cs
from rmsnorm_conformance.conformance.assertions import forward
from rmsnorm_conformance.conformance.judges import judge
from rmsnorm_conformance.conformance.marks import clause, judges_values, requires
from rmsnorm_conformance.conformance.strategies import anchor, anchors

SMALL = dict(max_d=40, max_dims=1, elementwise=False)


@judge("DTY-1", "DTY-2", "DTY-3", "DTY-4")
def declared_output_dtype(impl, case):
    """The output has the dtype the implementation's declared convention gives these inputs
    (``Capabilities.output_dtype``)."""
    forward(impl, case)


@clause("DTY-1")
@judges_values(False)
@given(plan=cs.plans(weights=("ones", "random"), **SMALL))
@anchors([anchor(t, 8) for t in cs.ALL_DTYPES])
def test_same_dtype_output(impl, plan):
    """x and weight of one dtype (float32, float16, bfloat16) give that dtype."""
    declared_output_dtype(impl, plan.build(impl.capabilities))


@clause("DTY-2")
@judges_values(False)
@requires(mixed="promote")
@given(plan=cs.plans(mixed="only", weights=("ones", "random"), **SMALL))
@anchors([anchor(x, 8, w_dtype=w) for x, w in cs.MIXED_PAIRS])
def test_mixed_dtype_output(impl, plan):
    """MLX profile: mixed x/weight dtypes give the promoted type (float32 with anything is
    float32, float16 with bfloat16 is float32)."""
    declared_output_dtype(impl, plan.build(impl.capabilities))


@clause("DTY-3")
@judges_values(False)
@requires(weight_none=True)
@given(plan=cs.plans(weights=("none",), **SMALL))
@anchors([anchor(t, 8, weight="none") for t in cs.ALL_DTYPES])
def test_weight_none_output(impl, plan):
    """weight=None gives x's dtype."""
    declared_output_dtype(impl, plan.build(impl.capabilities))


@clause("DTY-4")
@judges_values(False)
@requires(dtypes="float64")
@given(plan=cs.plans(dtypes=("float64",), mixed=True, weights=("ones", "random", "none"),
                     **SMALL))
@anchors([anchor("float64", 8)] + [anchor(x, 8, w_dtype=w) for x, w in cs.FLOAT64_PAIRS])
def test_float64_output(impl, plan):
    """float64 x and weight give float64; a float64 paired with another dtype gives what the
    declared mixed convention says (promote: float64)."""
    declared_output_dtype(impl, plan.build(impl.capabilities))
