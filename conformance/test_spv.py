"""SPEC.md section SPV: zeros, NaN, inf, subnormals, zero weights, and rows never affecting each
other."""

import numpy as np
from hypothesis import given

from rmsnorm_conformance.conformance import strategies as cs
from rmsnorm_conformance.conformance.assertions import assert_bitwise, assert_within, fail, forward
from rmsnorm_conformance.conformance.cases import Case
from rmsnorm_conformance.conformance.dtypes import INFO
from rmsnorm_conformance.conformance.strategies import anchor, anchors
from rmsnorm_conformance.conformance.tolerance import forward_bound
from rmsnorm_conformance.conformance.marks import clause, requires

#: batches of several rows, informative, moderate sizes (each row is poisoned or checked)
BATCH = dict(min_rows=2, max_d=4096, max_elements=1 << 15, weights=("ones", "random"))
BATCH_ANCHORS = [anchor(t, d, lead=(3,)) for t in cs.ALL_DTYPES for d in (1, 33, 257, 4097)]


def _poisoned(plan, impl, value):
    """The plan's batch with one element (row and column from the plan's seed) set to value."""
    case = plan.build(impl.capabilities)
    rows = case.x.reshape(-1, case.d).copy()
    rng = np.random.default_rng([plan.seed, 7])
    r, c = int(rng.integers(rows.shape[0])), int(rng.integers(case.d))
    rows[r, c] = value
    return Case(rows, case.weight, case.eps, case.recipe + f"; x[{r}, {c}] = {value}"), r, c


def _check_other_rows(impl, case, got, row):
    keep = np.arange(case.x.shape[0]) != row
    fb = forward_bound(case.x[keep], case.weight, case.eps, got.dtype)
    assert_within(impl, case, got[keep], fb, context=f"rows other than the poisoned row {row}")


@clause("SPV-1")
@given(plan=cs.plans(**BATCH))
@anchors(BATCH_ANCHORS)
def test_zero_rows_give_zero(impl, plan):
    """With eps > 0 an all-zero row gives an all-zero output row; the others are unaffected."""
    case = plan.build(impl.capabilities)
    x = case.x.reshape(-1, case.d).copy()
    x[0] = 0
    zeroed = Case(x, case.weight, case.eps, case.recipe + "; row 0 zeroed")
    got = forward(impl, zeroed)
    if np.any(got[0].astype(np.float64) != 0):
        fail(impl, zeroed, f"zero row gave {got[0][:8]}")
    _check_other_rows(impl, zeroed, got, 0)


@clause("SPV-2")
@requires(nonpositive_eps=True)
def test_zero_row_zero_eps_is_nan(impl):
    """SHOULD: with eps = 0 an all-zero row is NaN (0/0), as in MLX."""
    case = Case(np.zeros((2, 4), np.float32), np.ones(4, np.float32), 0.0)
    got = forward(impl, case)
    if not np.all(np.isnan(got)):
        fail(impl, case, f"eps = 0 zero rows gave {got.ravel()[:8]}, expected NaN")


@clause("SPV-3")
@given(plan=cs.plans(**BATCH))
@anchors(BATCH_ANCHORS)
def test_nan_propagates_to_its_row_only(impl, plan):
    """A NaN in x makes its whole output row NaN; the other rows stay within ACC-1's bound."""
    case, row, col = _poisoned(plan, impl, np.nan)
    got = forward(impl, case)
    if not np.all(np.isnan(got[row].astype(np.float64))):
        fail(impl, case, f"NaN at ({row}, {col}) but output row {row} is {got[row][:8]}")
    _check_other_rows(impl, case, got, row)


@clause("SPV-4")
@given(plan=cs.plans(**BATCH))
@anchors(BATCH_ANCHORS)
def test_inf_gives_nan_at_inf_and_zero_or_nan_elsewhere(impl, plan):
    """An infinity in x (either sign): NaN at its position; every other element of the row is 0
    or NaN (MLX: 0); the other rows are unaffected."""
    sign = 1.0 if plan.seed % 2 else -1.0
    case, row, col = _poisoned(plan, impl, sign * np.inf)
    got = forward(impl, case)
    r = got[row].astype(np.float64)
    others = np.delete(r, col)
    if not np.isnan(r[col]) or not np.all((others == 0) | np.isnan(others)):
        fail(impl, case, f"inf at ({row}, {col}): output row is {got[row][:8]}")
    _check_other_rows(impl, case, got, row)


@clause("SPV-5")
@given(plan=cs.plans(**BATCH))
@anchors(BATCH_ANCHORS)
def test_inf_row_exactly_as_mlx(impl, plan):
    """SHOULD: in a row with an infinity, the finite elements give exactly (signed) zero."""
    sign = 1.0 if plan.seed % 2 else -1.0
    case, row, col = _poisoned(plan, impl, sign * np.inf)
    got = forward(impl, case).astype(np.float64)
    others = np.delete(got[row], col)
    if not np.all(others == 0):
        fail(impl, case, f"inf at ({row}, {col}): finite positions gave {others[:8]}")


@clause("SPV-6")
@given(plan=cs.plans(magnitudes="subnormal", spread=2, weights=("ones", "random"),
                     max_d=4096, max_elements=1 << 15))
@anchors([anchor(t, d, exp=cs.INFO[t].emin - 3, spread=2, eps=eps) for t in cs.ALL_DTYPES
          for d, eps in ((1, 1e-12), (257, 1e-5))])
def test_subnormal_inputs_preserved(impl, plan):
    """SHOULD: subnormal inputs are not flushed to zero: rows of subnormals (of the input's
    dtype) normalise to x / sqrt(eps) * w within ACC-1's bound without its flush allowance."""
    case = plan.build(impl.capabilities)
    got = forward(impl, case)
    fb = forward_bound(case.x, case.weight, case.eps, got.dtype, flush_allowed=False)
    assert_within(impl, case, got, fb)


def _rows_anchors():
    """Several rows in every band of axis lengths, and more than 65535 rows (a GPU grid's
    y-dimension limit)."""
    bands = [anchor(t, d, lead=(max(2, min(9, cs.MAX_ELEMENTS // d)),))
             for t in cs.ALL_DTYPES for d in cs.D_TARGETS]
    many = [anchor("float32", 2, lead=(65536,)), anchor("bfloat16", 1, lead=(65537,)),
            anchor("float16", 1, lead=(256, 300))]
    return bands + many


@clause("SPV-7")
@given(plan=cs.plans(min_rows=2, weights=("ones", "random")))
@anchors(_rows_anchors())
def test_rows_never_affect_each_other(impl, plan):
    """Rows beside a NaN, infinite, zero or near-maximum row stay within ACC-1's bound, in every
    band of axis lengths and with more than 65535 rows: a reduction shared between rows is
    caught."""
    poison = (np.nan, np.inf, -np.inf, "max", 0.0)[plan.seed % 5]
    case = plan.build(impl.capabilities)
    x = case.x.reshape(-1, case.d).copy()
    row = int(np.random.default_rng([plan.seed, 9]).integers(x.shape[0]))
    x[row] = INFO[x.dtype.name].max if poison == "max" else poison
    poisoned = Case(x, case.weight, case.eps, case.recipe + f"; row {row} set to {poison}")
    got = forward(impl, poisoned)
    _check_other_rows(impl, poisoned, got, row)


#: pinned: XLA on the CPU vectorises mean(x*x) differently for 207 rows of 27 than for one row
#: (docs/notes/frameworks.md, 7); generated plans for implementations that compile per shape
#: have 3 rows, so this shape is kept explicitly
PINNED_BATCH = [anchor("float32", 27, lead=(207,), spread=2)]


@clause("SPV-8")
@given(plan=cs.plans(min_rows=2, max_d=8193, max_elements=1 << 15))
@anchors([anchor(t, d, lead=(3,)) for t in cs.ALL_DTYPES for d in (7, 257, 4097)]
         + PINNED_BATCH)
def test_row_alone_equals_row_in_batch(impl, plan):
    """SHOULD: a row's output is bit-identical whether computed alone or in a batch."""
    case = plan.build(impl.capabilities)
    got = forward(impl, case)
    rows = case.x.reshape(-1, case.d)
    flat = got.reshape(-1, case.d)
    for r in sorted({0, rows.shape[0] - 1}):
        alone = forward(impl, Case(rows[r:r + 1], case.weight, case.eps, case.recipe))
        assert_bitwise(impl, case, alone[0], flat[r], f"row {r} alone vs in the batch")


@clause("SPV-9")
@given(plan=cs.plans(weights=("zeros",), max_elements=1 << 15))
@anchors([anchor(t, d, weight="zeros") for t in cs.ALL_DTYPES for d in (1, 257, 4097)])
def test_zero_weight_gives_zero(impl, plan):
    """A zero weight gives exactly zero (of either sign) at every finite input."""
    case = plan.build(impl.capabilities)
    got = forward(impl, case).astype(np.float64)
    if np.any(got != 0):
        i = tuple(int(k) for k in np.argwhere(got != 0)[0])
        fail(impl, case, f"weight 0 but output {float(got[i])!r} at {i}")
