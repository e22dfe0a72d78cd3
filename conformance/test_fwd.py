"""SPEC.md section FWD: the formula, the axis, shapes, and calls in sequence."""

import numpy as np
from hypothesis import given

from rmsnorm_conformance.conformance import strategies as cs
from rmsnorm_conformance.conformance.assertions import assert_within, call, check_accuracy, check_result, fail, \
    forward
from rmsnorm_conformance.conformance.cases import Case
from rmsnorm_conformance.conformance.cases import sequence_case
from rmsnorm_conformance.conformance.strategies import anchor, anchors, regime_anchors, sequences
from rmsnorm_conformance.conformance.supervisor import time_limit
from rmsnorm_conformance.conformance.tolerance import forward_bound
from rmsnorm_conformance.conformance.marks import clause

EMPTY_AXIS_SECONDS = 5.0


@clause("FWD-1")
@given(plan=cs.plans(max_d=64, min_rows=0, max_elements=4096))
@anchors([anchor("float32", 8, lead=lead) for lead in
          [(), (0,), (1,), (3, 0), (2, 0, 4), (1, 1, 1), (2, 3, 4), (0, 5, 1)]])
def test_output_shape_any_leading_shape(impl, plan):
    """Output is an array of x's shape for 0 to 3 leading dims, zero-size ones included."""
    forward(impl, plan.build(impl.capabilities))   # checks type, shape and dtype


@clause("FWD-2")
@given(plan=cs.plans(min_rows=2, row_spread=40, weights=("ones", "random", "none")))
@anchors(regime_anchors(d_values=(7, 256, 1024, 4097, 16385), lead=(4,), row_spread=20))
def test_normalises_last_axis_only(impl, plan):
    """Each row (last axis) is normalised by its own statistic: batches whose rows differ in
    scale by up to 2**40 (as far as each dtype's range allows) match the reference row by
    row."""
    check_accuracy(impl, plan.build(impl.capabilities))


@clause("FWD-3")
@given(plan=cs.plans(magnitudes="eps_comparable", spread=0, weights=("ones", "random")))
@anchors([anchor(t, d, exp=e, eps=eps, spread=0) for t in cs.ALL_DTYPES
          for d, e, eps in ((1, -9, 1e-5), (257, -18, 1e-12), (4097, -3, 1e-3),
                            (65536, 0, 1.0))])
def test_eps_inside_square_root(impl, plan):
    """y = x / sqrt(mean(x^2) + eps): rows whose mean square is within a factor 8 of eps,
    where eps outside the root, ignored, or added to the sum instead of the mean is far off;
    axis lengths up to 65536."""
    check_accuracy(impl, plan.build(impl.capabilities))


@clause("FWD-4")
@given(plan=cs.plans(min_d=1, max_d=1, weights=("ones", "random", "none")))
@anchors([anchor(t, 1, lead=(5,), weight=w) for t in cs.ALL_DTYPES for w in ("random", "none")])
def test_axis_length_one(impl, plan):
    """d = 1: y = x / sqrt(x^2 + eps) * w."""
    check_accuracy(impl, plan.build(impl.capabilities))


@clause("FWD-5")
def test_empty_normalised_axis(impl):
    """d = 0: an array of shape (..., 0) comes back empty with the same shape, promptly (there is
    no work: a call over EMPTY_AXIS_SECONDS is reported as timed out)."""
    with time_limit(impl, EMPTY_AXIS_SECONDS, "FWD-5's limit for a call with no work"):
        for shape in [(0,), (3, 0), (2, 0, 0)]:
            forward(impl, Case(np.zeros(shape, np.float32), np.ones(0, np.float32), 1e-5))


def _sequence_anchor(t):
    return tuple(anchor(t, d, lead=lead, seed=i)
                 for i, (d, lead) in enumerate([(7, (3,)), (4097, (1,)), (256, (2, 2)),
                                                (7, (3,))]))


@clause("FWD-6")
@given(plan=sequences())
@anchors([_sequence_anchor(t) for t in cs.ALL_DTYPES])
def test_calls_in_sequence(impl, plan):
    """Forward calls made one after another on one function (a compiled function reused across
    shapes): each result within ACC-1's bound, whatever the calls before it."""
    built = [p.build(impl.capabilities) for p in plan]
    calls = [(c.x, c.weight, c.eps) for c in built]
    head = sequence_case(plan, built)
    outs = call(impl, head, impl.rms_norm_sequence, calls, what="rms_norm_sequence")
    if not isinstance(outs, (list, tuple)) or len(outs) != len(calls):
        fail(impl, head, f"rms_norm_sequence returned {type(outs).__name__} "
                         f"{'of length ' + str(len(outs)) if hasattr(outs, '__len__') else ''}"
                         f", expected a list of {len(calls)} arrays")
    for i, (case, out) in enumerate(zip(built, outs)):
        want = impl.capabilities.output_dtype(case.x.dtype, None if case.weight is None
                                              else case.weight.dtype)
        check_result(impl, case, out, case.x.shape, want, what=f"call {i} of the sequence")
        fb = forward_bound(case.x, case.weight, case.eps, out.dtype)
        assert_within(impl, head, out, fb, context=f"call {i} of {len(calls)} in the sequence "
                      f"(shapes {[c.x.shape for c in built]})")
