"""SPEC.md section FWD: the formula, the axis, shapes, and calls in sequence.

x and weight share one dtype in every FWD property: mixed dtypes are judged by DTY-2, ACC-8 and
ACC-9, so that a deviation of the mixed-dtype convention is reported there alone.
"""

import numpy as np
from hypothesis import given

from rmsnorm_conformance.conformance import strategies as cs
from rmsnorm_conformance.conformance.assertions import assert_within, call, check_accuracy, \
    check_result, fail, forward, output_dtype
from rmsnorm_conformance.conformance.cases import Case, sequence_case
from rmsnorm_conformance.conformance.judges import NotApplicable, judge
from rmsnorm_conformance.conformance.marks import clause, judges_values
from rmsnorm_conformance.conformance.strategies import anchor, anchors, many_rows_anchors, \
    regime_anchors, sequences
from rmsnorm_conformance.conformance.supervisor import time_limit
from rmsnorm_conformance.conformance.tolerance import forward_bound

EMPTY_AXIS_SECONDS = 5.0


@judge("FWD-1", by_default=True)
def output_shape(impl, case):
    """An array of x's shape and the declared output dtype."""
    forward(impl, case)            # checks type, shape and dtype


@clause("FWD-1")
@judges_values(False)
@given(plan=cs.plans(max_d=64, min_rows=0, max_elements=4096))
@anchors([anchor("float32", 8, lead=lead) for lead in
          [(), (0,), (1,), (3, 0), (2, 0, 4), (1, 1, 1), (2, 3, 4), (0, 5, 1)]])
def test_output_shape_any_leading_shape(impl, plan):
    """Output is an array of x's shape for 0 to 3 leading dims, zero-size ones included."""
    output_shape(impl, plan.build(impl.capabilities))


@judge("FWD-2")
def rows_normalised_alone(impl, case):
    """Every row within the TOL bound of its own normalisation."""
    check_accuracy(impl, case)


@clause("FWD-2")
@given(plan=cs.plans(min_rows=2, row_spread=40, weights=("ones", "random", "none")))
@anchors(regime_anchors(d_values=(7, 256, 1024, 4097, 16385), lead=(4,), row_spread=20)
         + many_rows_anchors())
def test_normalises_last_axis_only(impl, plan):
    """Each row (last axis) is normalised by its own statistic: batches whose rows differ in
    scale by up to 2**40 (as far as each dtype's range allows) match the reference row by
    row, and batches of more than 65535 rows (a GPU grid's limit in y) have every row
    normalised."""
    rows_normalised_alone(impl, plan.build(impl.capabilities))


@judge("FWD-3")
def eps_inside_root(impl, case):
    """Rows whose mean square is comparable to eps within the TOL bound."""
    check_accuracy(impl, case)


@clause("FWD-3")
@given(plan=cs.plans(regime="eps_comparable", spread=0, weights=("ones", "random")))
@anchors([anchor(t, d, exp=e, eps=eps, spread=0, regime="eps_comparable")
          for t in cs.ALL_DTYPES
          for d, e, eps in ((1, -9, 1e-5), (257, -18, 1e-12), (4097, -3, 1e-3),
                            (65536, 0, 1.0))])
def test_eps_inside_square_root(impl, plan):
    """y = x / sqrt(mean(x^2) + eps): rows whose mean square is within a factor 8 of eps,
    where eps outside the root, ignored, or added to the sum instead of the mean is far off;
    axis lengths up to 65536."""
    eps_inside_root(impl, plan.build(impl.capabilities))


@judge("FWD-4")
def axis_length_one(impl, case):
    """d = 1: x / sqrt(x^2 + eps) * w within the TOL bound."""
    if case.d != 1:
        raise NotApplicable(f"FWD-4 judges d = 1, not d = {case.d}")
    check_accuracy(impl, case)


@clause("FWD-4")
@given(plan=cs.plans(min_d=1, max_d=1, weights=("ones", "random", "none")))
@anchors([anchor(t, 1, lead=(5,), weight=w) for t in cs.ALL_DTYPES for w in ("random", "none")])
def test_axis_length_one(impl, plan):
    """d = 1: y = x / sqrt(x^2 + eps) * w."""
    axis_length_one(impl, plan.build(impl.capabilities))


@judge("FWD-5")
def empty_axis(impl, case):
    """An empty normalised axis returns an empty array of x's shape, promptly (there is no
    work: a call over EMPTY_AXIS_SECONDS is reported as timed out)."""
    with time_limit(impl, EMPTY_AXIS_SECONDS, "FWD-5's limit for a call with no work"):
        forward(impl, case)


@clause("FWD-5")
@judges_values(False)
def test_empty_normalised_axis(impl):
    """d = 0: an array of shape (..., 0) comes back empty with the same shape."""
    for shape in [(0,), (3, 0), (2, 0, 0)]:
        empty_axis(impl, Case(np.zeros(shape, np.float32), np.ones(0, np.float32), 1e-5))


def _sequence_anchor(t):
    return tuple(anchor(t, d, lead=lead, seed=i)
                 for i, (d, lead) in enumerate([(7, (3,)), (4097, (1,)), (256, (2, 2)),
                                                (7, (3,))]))


@clause("FWD-6")
@given(plan=sequences())
@anchors([_sequence_anchor(t) for t in cs.ALL_DTYPES])
def test_calls_in_sequence(impl, plan):
    """Forward calls made one after another on one function (a compiled function reused across
    shapes): each result within ACC-1's bound, whatever the calls before it. (Not judged on one
    case: the sequence is the input.)"""
    built = [p.build(impl.capabilities) for p in plan]
    calls = [(c.x, c.weight, c.eps) for c in built]
    head = sequence_case(plan, built)
    outs = call(impl, head, impl.rms_norm_sequence, calls, what="rms_norm_sequence")
    if not isinstance(outs, (list, tuple)) or len(outs) != len(calls):
        fail(impl, head, f"rms_norm_sequence returned {type(outs).__name__} "
                         f"{'of length ' + str(len(outs)) if hasattr(outs, '__len__') else ''}"
                         f", expected a list of {len(calls)} arrays")
    for i, (case, out) in enumerate(zip(built, outs)):
        check_result(impl, case, out, case.x.shape, output_dtype(impl, case),
                     what=f"call {i} of the sequence")
        fb = forward_bound(case.x, case.applied, case.eps, out.dtype)
        assert_within(impl, head, out, fb, context=f"call {i} of {len(calls)} in the sequence "
                      f"(shapes {[c.x.shape for c in built]})")
