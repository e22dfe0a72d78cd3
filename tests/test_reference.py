"""The float64 reference (``reference/``) is itself checked here, so the suite's tolerances rest on
something verified rather than assumed.

REF-1: the forward pass agrees with an exact oracle (rational mean of squares, 120-digit decimal
square root; ``reference/exact.py``) within ``reference_error(d)`` relative, for float32, float16
and bfloat16 inputs over their whole finite range.

REF-2: the VJP and JVP agree with central finite differences of the forward pass, with each other
(the adjoint identity), and satisfy the closed-form identities of RMSNorm's derivative.

REF-3: dx, the tangent and H v are within 8 * 2**-53 of their exact values (the oracles of
``reference/exact.py``: rational row sums, 120-digit square roots), however much their terms
cancel; dweight within 2**-53 |dweight| + (3 * 2**-53 + gamma_{R-1}) sum|g x n|.

REF-4: float64 inputs: the double-double forward and VJP within 2**-96 of the exact values
(dweight: of sum|g x n|), their float64 parts within 2**-53 (1 + 2**-40); float32, float16 and
bfloat16 inputs give the same forward results as before float64 was added, bit for bit.
"""

from __future__ import annotations

import math
import warnings

import ml_dtypes
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from rmsnorm_conformance.reference import (
    gamma,
    rms_norm_hvp,
    inv_rms,
    mean_square,
    reference_error,
    rms_norm,
    rms_norm_jvp,
    rms_norm_vjp,
)
from rmsnorm_conformance.reference import BOUND_REL, _grad, rms_norm_dd, rms_norm_vjp_dd
from rmsnorm_conformance.reference import exact as oracle
from rmsnorm_conformance.reference.exact import rms_norm_row
from rmsnorm_conformance.conformance.marks import clause

# ---------------------------------------------------------------------------------------------
# dtypes and their finite ranges

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": BF16}
BF16_MAX = 3.3895313892515355e38
assert float(ml_dtypes.finfo(ml_dtypes.bfloat16).max) == BF16_MAX

#: name -> (largest finite, smallest positive normal, smallest positive subnormal)
RANGES = {
    "float32": (float(np.finfo(np.float32).max), 2.0 ** -126, 2.0 ** -149),
    "float16": (65504.0, 2.0 ** -14, 2.0 ** -24),
    "bfloat16": (BF16_MAX, 2.0 ** -126, 2.0 ** -133),
}

#: Absolute slack of the REF-1 comparison: none is needed. Every non-zero output is
#: |x_i| * n * |w_i| with |x_i|, |w_i| >= 2**-149 (the smallest float32/bfloat16 subnormal) and
#: n = 1/sqrt(mean(x**2) + eps) >= 1/(2**128 * 2) (eps <= 1), so |y| >= 2**-427: far above the
#: float64 subnormal range (2**-1022), and |y| <= sqrt(d) * max|w| < 2**132 is far below overflow.
#: No float64 operation of the reference underflows or overflows on these inputs (squares lie in
#: [2**-298, 2**256]), so the purely relative bound is the whole story; zero outputs are compared
#: with zero, which the relative term already allows.
ATOL_FORWARD = 0.0


_BITS = {"float32": (np.uint32, np.float32), "float16": (np.uint16, np.float16),
         "bfloat16": (np.uint16, BF16)}


def _from_bits(name: str):
    utype, ftype = _BITS[name]
    nbits = 8 * np.dtype(utype).itemsize

    def convert(b: int) -> float:
        return float(np.array(b, dtype=utype).view(ftype))

    return st.integers(0, 2 ** nbits - 1).map(convert).filter(math.isfinite)


def finite_values(name: str):
    """Scalars exactly representable in ``name``, spanning its whole finite range: subnormals,
    every binade, and the extremes (which are also sampled explicitly so each run sees them).
    Raw bit patterns are mixed in so that every binade, subnormals included, is drawn with fair
    probability, not only the values Hypothesis' float strategy favours."""
    big, tiny, sub = RANGES[name]
    specials = st.sampled_from([big, -big, tiny, -tiny, sub, -sub, 0.0, -0.0, 1.0, -1.0])
    if name in ("float32", "float16"):
        # explicit bounds: unbounded floats(width=16) rejects most of its draws (overflow in the
        # downcast), which costs seconds under the derandomized profile
        base = st.floats(-big, big, width=32 if name == "float32" else 16)
    else:
        # float32 values bounded by the bfloat16 max, rounded to bfloat16 by the array cast
        # (round to nearest even cannot carry a value <= BF16_MAX past it).
        base = st.floats(-BF16_MAX, BF16_MAX, width=32)
    return st.one_of(base, _from_bits(name), specials)


def dtype_array(name: str, shape):
    """An array of dtype ``name`` (bfloat16 built by casting a float32 array)."""
    storage = np.float16 if name == "float16" else np.float32
    strat = arrays(storage, shape, elements=finite_values(name))
    if name == "bfloat16":
        strat = strat.map(lambda a: a.astype(BF16))
    return strat


#: eps: exactly 0 (rows that are all zero then give nan, and are skipped), the usual 1e-5, or
#: log-uniform over [1e-12, 1].
EPS = st.one_of(
    st.just(0.0),
    st.just(1e-5),
    st.floats(-12.0, 0.0).map(lambda e: 10.0 ** e),
)


def _check_rows_against_oracle(x, w, eps):
    """Compare ``rms_norm`` with the exact oracle row by row (x is 2-D)."""
    d = x.shape[-1]
    ref = rms_norm(x, w, eps)
    assert ref.shape == x.shape and ref.dtype == np.float64
    bound = float(reference_error(d))
    checked = 0
    for r in range(x.shape[0]):
        oracle = np.array(rms_norm_row(x[r], w, eps), dtype=np.float64)
        if np.isnan(oracle).any():
            # Only eps == 0 with an all-zero row: 0/0. The reference must agree (nan), then skip.
            assert eps == 0.0 and not np.any(x[r].astype(np.float64))
            assert np.isnan(ref[r]).all()
            continue
        assert np.isfinite(oracle).all()
        err = np.abs(ref[r] - oracle)
        allowed = bound * np.abs(oracle) + ATOL_FORWARD
        bad = err > allowed
        if bad.any():
            i = int(np.argmax(np.where(bad, err - allowed, -np.inf)))
            pytest.fail(
                f"row {r}, element {i}: ref={ref[r, i]!r} oracle={oracle[i]!r} "
                f"err={err[i]!r} allowed={allowed[i]!r} (d={d}, eps={eps!r}, "
                f"dtype={x.dtype}, x_i={x[r, i]!r}, w_i={None if w is None else w[i]!r})"
            )
        checked += 1
    return checked


# ---------------------------------------------------------------------------------------------
# REF-1: forward vs exact oracle


@st.composite
def eps_scale_array(draw, name, shape):
    """Values |v| <= 2**k with 2**k in [2**-20, 2**4]: rows whose mean square is comparable to
    eps, so that eps visibly matters (whole-range rows are mostly dominated by huge values).
    Drawn in float32, scaled by a power of two, then rounded to the dtype."""
    a = draw(arrays(np.float32, shape, elements=st.floats(-1.0, 1.0, width=32)))
    k = draw(st.integers(-20, 4))
    return (a.astype(np.float64) * 2.0 ** k).astype(DTYPES[name])


@st.composite
def forward_case(draw, name):
    rows = draw(st.integers(1, 3))
    d = draw(st.integers(1, 64))
    whole_range = draw(st.booleans())
    x = draw(dtype_array(name, (rows, d)) if whole_range else eps_scale_array(name, (rows, d)))
    w = draw(st.one_of(st.none(), dtype_array(name, (d,))))
    eps = draw(EPS)
    return x, w, eps


@clause("REF-1")
@pytest.mark.parametrize("name", list(DTYPES))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_forward_matches_exact_oracle(name, data):
    """REF-1: rms_norm (float64) is within reference_error(d) * |exact| of the exact rational /
    120-digit oracle, element by element, for float32/float16/bfloat16 inputs anywhere in the
    dtype's finite range (subnormals and near-max included; half the draws use rows scaled so
    that mean(x**2) is comparable to eps), weight None or of either sign, and
    eps in {0} U {1e-5} U log-uniform[1e-12, 1]. The oracle is itself rounded once to float64
    (relative error <= 2**-53); the reference's true error is about (d/2 + 6) * 2**-53 (the float64
    squares of <= 24-bit inputs are exact), so gamma_{2d+6} absorbs the oracle's rounding too."""
    x, w, eps = data.draw(forward_case(name))
    assert x.dtype == DTYPES[name] and (w is None or w.dtype == DTYPES[name])
    _check_rows_against_oracle(x, w, eps)


def _bulk(rng: np.random.Generator, name: str, shape) -> np.ndarray:
    """A long array of dtype ``name`` drawn in bulk from ``rng``, in one of three regimes."""
    dt = DTYPES[name]
    big, _, sub = RANGES[name]
    n = int(np.prod(shape))
    mode = int(rng.integers(3))
    if mode == 0:
        # uniform over bit patterns: every binade equally, subnormals and near-max included
        nbits = 8 * dt.itemsize
        bits = rng.integers(0, 2 ** nbits, size=n, dtype=np.uint64).astype(f"u{dt.itemsize}")
        with np.errstate(invalid="ignore"):  # nan bit patterns
            a = bits.view(dt).astype(np.float64)
        a[~np.isfinite(a)] = 0.0
    elif mode == 1:
        # a realistic activation row: normal values at a random overall scale
        k = int(rng.integers(math.floor(math.log2(sub)) + 10, math.floor(math.log2(big)) - 4))
        a = rng.standard_normal(n) * 2.0 ** k
    else:
        # log-uniform magnitudes across the whole range, random signs
        e = rng.uniform(math.log2(sub), math.log2(big), size=n)
        a = np.exp2(e) * rng.choice([-1.0, 1.0], size=n)
    a = np.clip(a, -big, big)
    # make sure the extremes occur
    idx = rng.integers(0, n, size=2)
    a[idx[0]] = big * rng.choice([-1.0, 1.0])
    a[idx[1]] = sub * rng.choice([-1.0, 1.0])
    if rng.integers(4) == 0:
        a[rng.integers(0, n)] = big  # a second huge value in a quarter of the cases
    out = a.astype(dt).reshape(shape)
    assert np.isfinite(out.astype(np.float64)).all()
    return out


@clause("REF-1")
@settings(max_examples=5, deadline=None)
@given(
    name=st.sampled_from(list(DTYPES)),
    d=st.sampled_from([1000, 4099]),
    rows=st.integers(1, 2),
    seed=st.integers(0, 2 ** 32 - 1),
    weighted=st.booleans(),
    eps=EPS,
)
def test_forward_matches_exact_oracle_long_rows(name, d, rows, seed, weighted, eps):
    """REF-1 on long rows (d = 1000 and 4099, where gamma_{2d+6} is largest and the float64 sum
    has many terms): rms_norm vs the exact oracle within reference_error(d) relative, with inputs
    drawn in bulk from a numpy seed over the dtype's whole finite range."""
    rng = np.random.default_rng(seed)
    x = _bulk(rng, name, (rows, d))
    w = _bulk(rng, name, (d,)) if weighted else None
    _check_rows_against_oracle(x, w, eps)


# ---------------------------------------------------------------------------------------------
# REF-2: gradients. Inputs are float32 values of moderate magnitude (|v| <= 8 before a power-of-two
# scaling), so float64 arithmetic is far from under/overflow and finite differences are meaningful.

MODERATE = st.floats(-8.0, 8.0, width=32)
SMALL_EPS = st.floats(-3.0, 0.0).map(lambda e: 10.0 ** e)  # log-uniform [1e-3, 1]


@st.composite
def moderate_array(draw, shape, row_shift=0, shift=0):
    """float32 array, |v| <= 8, each row (or the whole array) scaled by a power of two 2**k with
    |k| <= row_shift (per row) or shift (global). Rounding after scaling keeps it float32."""
    a = draw(arrays(np.float32, shape, elements=MODERATE)).astype(np.float64)
    if row_shift:
        ks = draw(arrays(np.int64, shape[:-1] + (1,), elements=st.integers(-row_shift, row_shift)))
        a = a * np.exp2(ks.astype(np.float64))
    if shift:
        a = a * 2.0 ** draw(st.integers(-shift, shift))
    return a.astype(np.float32)


@st.composite
def grad_case(draw, row_shift=20, shift=20, eps=SMALL_EPS, max_d=16, max_rows=3):
    rows = draw(st.integers(1, max_rows))
    d = draw(st.integers(1, max_d))
    x = draw(moderate_array((rows, d), row_shift=row_shift))
    w = draw(st.one_of(st.none(), moderate_array((d,), shift=shift)))
    g = draw(moderate_array((rows, d), shift=shift))
    e = draw(eps)
    return x, w, e, g


# Finite-difference error budget used below (float64, unit roundoff u = 2**-53 ~ 1.1e-16).
# Per row, the function has a natural length scale s = sqrt(mean(x**2) + eps) = 1/n: each
# derivative of n (and of y = x * n * w) costs a factor ~1/s. With step h = 1e-6 * s:
#   * truncation of the central difference: h**2 / 6 * |F'''| ~ 1e-12 * (constant of order 10)
#     times the derivative's own scale (F''' ~ F' / s**2)  ->  ~1e-11 relative;
#   * cancellation: F is evaluated with relative error ~(d + 10) u over its summed terms, divided
#     by h -> ~(d + 10) u / 1e-6 ~ 3e-9 relative to the derivative's scale (d <= 16).
# A tolerance of 1e-6 relative to the size of the terms leaves a margin of >= 300x on both.
FD_REL = 1e-6
FD_STEP = 1e-6


@clause("REF-2")
@settings(max_examples=30, deadline=None)
@given(case=grad_case())
def test_vjp_matches_central_differences(case):
    """REF-2: rms_norm_vjp's dx and dweight equal central finite differences of
    F = sum(g * rms_norm(x, w, eps)) (float64), within 1e-6 relative to the size of the terms
    (FD truncation O(h**2) ~ 1e-11, cancellation O(u64 / h) ~ 1e-9 relative), with and without
    a weight."""
    x, w, eps, g = case
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    rows, d = x.shape
    dx, dw = rms_norm_vjp(x, w, eps, g)
    assert dx.shape == x.shape and dx.dtype == np.float64
    assert (dw is None) == (w is None)
    w64 = np.ones(d) if w is None else w.astype(np.float64)
    gw = g64 * w64
    n = inv_rms(x, eps)[:, 0]

    # dx, one row at a time (only that row's terms enter F, so no unrelated rounding noise)
    for r in range(rows):
        h = FD_STEP / n[r]  # 1e-6 * s
        # |dx_i| <= n |gw_i| + |x_i| n**3 |mean(gw x)| <= 2 n sum|gw|, and the FD cancellation
        # error is ~ u sum|g y| / h <= u sqrt(d) n sum|gw| / 1e-6: both scale with n * sum|gw|.
        tol = FD_REL * n[r] * np.sum(np.abs(gw[r]))

        def f_row(xr):
            return float(np.sum(g64[r] * rms_norm(xr, w, eps)))

        for i in range(d):
            xp, xm = x64[r].copy(), x64[r].copy()
            xp[i] += h
            xm[i] -= h
            fd = (f_row(xp) - f_row(xm)) / (2 * h)
            assert abs(dx[r, i] - fd) <= tol, (r, i, dx[r, i], fd, tol)

    if w is None:
        return
    assert dw.shape == (d,) and dw.dtype == np.float64
    # F is linear in w, so the central difference has no truncation error; only cancellation,
    # ~ (rows*d + 10) u sum|g x n w| / h with h = 1e-6 * max|w|, i.e. <= 1e-8 * sum|g x n|.
    wscale = float(np.max(np.abs(w64))) or 1.0
    h = FD_STEP * wscale
    tol = FD_REL * float(np.sum(np.abs(g64 * x64 * n[:, None])))

    def f_all(wv):
        return float(np.sum(g64 * rms_norm(x, wv, eps)))

    for j in range(d):
        wp, wm = w64.copy(), w64.copy()
        wp[j] += h
        wm[j] -= h
        fd = (f_all(wp) - f_all(wm)) / (2 * h)
        assert abs(dw[j] - fd) <= tol, (j, dw[j], fd, tol)


@st.composite
def tangent_case(draw):
    x, w, eps, g = draw(grad_case())
    rows, d = x.shape
    tx = draw(moderate_array((rows, d), row_shift=20))
    tw = None if w is None else draw(st.one_of(st.none(), moderate_array((d,), shift=20)))
    return x, w, eps, g, tx, tw


@clause("REF-2")
@settings(max_examples=30, deadline=None)
@given(case=tangent_case())
def test_jvp_matches_central_differences(case):
    """REF-2: rms_norm_jvp(x, w, eps, tx, tw) equals the central finite difference of rms_norm
    along (tx, tw), element by element, within 1e-6 relative to the size of the tangent's terms
    plus the O(u64 |y| / h) cancellation allowance."""
    x, w, eps, _, tx, tw = case
    x64, tx64 = x.astype(np.float64), tx.astype(np.float64)
    rows, d = x.shape
    ty = rms_norm_jvp(x, w, eps, tx, tw)
    assert ty.shape == x.shape and ty.dtype == np.float64
    w64 = np.ones(d) if w is None else w.astype(np.float64)
    tw64 = np.zeros(d) if tw is None else tw.astype(np.float64)
    n = inv_rms(x, eps)[:, 0]
    for r in range(rows):
        t_inf = float(np.max(np.abs(tx64[r])))
        # step so that the x-perturbation h*tx is 1e-6 of the row's length scale s = 1/n; with
        # tx == 0 the function is linear in h (only w moves), so any step is exact: take 1.
        h = FD_STEP / (n[r] * t_inf) if t_inf > 0 else 1.0

        def y_at(t):
            wt = None if w is None and tw is None else w64 + t * tw64
            return rms_norm(x64[r] + t * tx64[r], wt, eps)

        fd = (y_at(h) - y_at(-h)) / (2 * h)
        y = rms_norm(x64[r], None if w is None else w64, eps)
        xn = np.abs(x64[r]) * n[r]
        # size of the tangent's terms: n |w_i| |tx| (1 + |x_i| n) bounds |tx_i n w_i| and
        # |x_i dn w_i| (|dn| <= n**2 |tx|_inf mean|x| <= n |tx|_inf); |x_i| n |tw_i| the w part.
        # The product of the two perturbations, (x_i + t tx_i) n(t) * t tw_i, is even in t up to
        # its t**3 term: it leaves h**2 * O(n**2 |tx|_inf**2 (1 + |x_i| n)) |tw_i| ~ 1e-12 *
        # (1 + |x_i| n) |tw_i| in the difference, hence (1 + |x_i| n) on the w part.
        scale = n[r] * np.abs(w64) * t_inf * (1.0 + xn) + (1.0 + xn) * np.abs(tw64)
        # rounding of the two evaluations of y (~30 u |y_i| for d <= 16) divided by the step
        cancel = 1e-13 * np.abs(y) / h
        tol = FD_REL * scale + cancel
        bad = np.abs(ty[r] - fd) > tol
        assert not bad.any(), (r, np.flatnonzero(bad), ty[r], fd, tol)


@clause("REF-2")
@settings(max_examples=30, deadline=None)
@given(case=tangent_case())
def test_jvp_vjp_adjoint_identity(case):
    """REF-2: the JVP and VJP are adjoint: sum(g * jvp(tx, tw)) == sum(tx * dx) + sum(tw * dw)
    with (dx, dw) = rms_norm_vjp(x, w, eps, g), within 1e-12 relative to the summed magnitudes of
    all the terms (float64 rounding is ~(2d + 20) u ~ 6e-15 of that for d <= 16)."""
    x, w, eps, g, tx, tw = case
    x64, g64, tx64 = (a.astype(np.float64) for a in (x, g, tx))
    d = x.shape[-1]
    ty = rms_norm_jvp(x, w, eps, tx, tw)
    dx, dw = rms_norm_vjp(x, w, eps, g)
    lhs = float(np.sum(g64 * ty))
    rhs = float(np.sum(tx64 * dx))
    if tw is not None:
        rhs += float(np.sum(tw.astype(np.float64) * dw))

    n = inv_rms(x, eps)
    w64 = np.ones(d) if w is None else w.astype(np.float64)
    tw64 = np.zeros(d) if tw is None else tw.astype(np.float64)
    gw = g64 * w64
    dn_abs = n ** 3 * np.sum(np.abs(x64 * tx64), axis=-1, keepdims=True) / d
    proj_abs = np.sum(np.abs(gw * x64), axis=-1, keepdims=True) / d
    mag = (
        np.sum(np.abs(g64) * (np.abs(tx64 * n * w64) + np.abs(x64 * w64) * dn_abs
                              + np.abs(x64 * n * tw64)))
        + np.sum(np.abs(tx64) * (n * np.abs(gw) + np.abs(x64) * n ** 3 * proj_abs))
        + np.sum(np.abs(tw64) * np.sum(np.abs(g64 * x64 * n), axis=0))
    )
    assert abs(lhs - rhs) <= 1e-12 * mag, (lhs, rhs, mag)


# ---------------------------------------------------------------------------------------------
# REF-2: closed-form identities


@st.composite
def identity_case(draw):
    # wider magnitudes (2**-40 .. 2**43) and eps down to 0; still far from float64 limits
    x, w, eps, g = draw(grad_case(row_shift=40, shift=40, eps=EPS))
    assume(not (eps == 0.0 and np.any(mean_square(x) == 0.0)))
    return x, w, eps, g


@clause("REF-2")
@settings(max_examples=40, deadline=None)
@given(case=identity_case())
def test_vjp_radial_identity(case):
    """REF-2: per row, <x, dx> = eps * n**3 * <g*w, x> with n = inv_rms(x, eps) (the radial part
    of dx only sees eps; with eps = 0, dx is orthogonal to x). Compared within 1e-12 relative to
    the summed absolute terms of both sides, since <x, dx> cancels almost completely when eps is
    small relative to mean(x**2)."""
    x, w, eps, g = case
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    d = x.shape[-1]
    dx, _ = rms_norm_vjp(x, w, eps, g)
    n = inv_rms(x, eps)[:, 0]
    gw = g64 * (1.0 if w is None else w.astype(np.float64))
    lhs = np.sum(x64 * dx, axis=-1)
    rhs = eps * n ** 3 * np.sum(gw * x64, axis=-1)
    proj_abs = np.sum(np.abs(gw * x64), axis=-1) / d
    mag = (np.sum(np.abs(x64) * (n[:, None] * np.abs(gw)
                                 + np.abs(x64) * (n ** 3 * proj_abs)[:, None]), axis=-1)
           + eps * n ** 3 * np.sum(np.abs(gw * x64), axis=-1))
    assert np.all(np.abs(lhs - rhs) <= 1e-12 * mag), (lhs, rhs, mag)


@st.composite
def dweight_case(draw):
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    d = draw(st.integers(1, 16))
    x = draw(moderate_array(lead + (d,), row_shift=40))
    w = draw(moderate_array((d,), shift=40))
    g = draw(moderate_array(lead + (d,), shift=40))
    eps = draw(EPS)
    assume(not (eps == 0.0 and np.any(mean_square(x) == 0.0)))
    return x, w, eps, g


@clause("REF-2")
@settings(max_examples=40, deadline=None)
@given(case=dweight_case())
def test_dweight_is_sum_of_g_times_normalized_x(case):
    """REF-2: dweight == sum over all leading axes of g * rms_norm(x, None, eps), for one or two
    leading axes. The two sides differ only in rounding order ((g*x)*n vs g*(x*n)), so they agree
    within 1e-13 relative to sum|g * x * n| (the rounding is ~(rows + 4) u ~ 1.5e-15 of it)."""
    x, w, eps, g = case
    d = x.shape[-1]
    _, dw = rms_norm_vjp(x, w, eps, g)
    assert dw.shape == (d,) and dw.dtype == np.float64
    yn = rms_norm(x, None, eps)
    g64 = g.astype(np.float64)
    expect = np.sum((g64 * yn).reshape(-1, d), axis=0)
    mag = np.sum(np.abs(g64 * yn).reshape(-1, d), axis=0)
    assert np.all(np.abs(dw - expect) <= 1e-13 * mag), (dw, expect, mag)


# ---------------------------------------------------------------------------------------------
# Edge cases


@clause("REF-1")
@pytest.mark.parametrize("name", list(DTYPES))
def test_empty_leading_dims(name):
    """REF-1: shape (0, 5) gives an empty (0, 5) float64 result from the forward pass, the JVP
    and the VJP (dweight then is zeros(5)), without warnings."""
    x = np.zeros((0, 5), DTYPES[name])
    w = np.ones(5, DTYPES[name])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rms_norm(x, None, 1e-5).shape == (0, 5)
        assert rms_norm(x, w, 1e-5).shape == (0, 5)
        assert rms_norm_jvp(x, w, 1e-5, x, w).shape == (0, 5)
        dx, dw = rms_norm_vjp(x, w, 1e-5, x)
    assert dx.shape == (0, 5)
    np.testing.assert_array_equal(dw, np.zeros(5))


@clause("REF-1")
@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_empty_last_axis(eps):
    """REF-1: d = 0 (shape (3, 0)) gives (3, 0) from the forward pass, the JVP and the weightless
    VJP, with no warnings (mean of an empty axis is defined as 0 there)."""
    x = np.zeros((3, 0), np.float32)
    w = np.zeros((0,), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rms_norm(x, None, eps).shape == (3, 0)
        assert rms_norm(x, w, eps).shape == (3, 0)
        assert rms_norm_jvp(x, w, eps, x, w).shape == (3, 0)
        dx, dw = rms_norm_vjp(x, None, eps, x)
    assert dx.shape == (3, 0) and dw is None


@clause("REF-2")
def test_empty_last_axis_weighted_vjp():
    """REF-2: d = 0 with a weight: the VJP gives dx of shape (3, 0) and dweight of shape (0,)."""
    x = np.zeros((3, 0), np.float32)
    dx, dw = rms_norm_vjp(x, np.zeros((0,), np.float32), 1e-5, x)
    assert dx.shape == (3, 0) and dw.shape == (0,)


@clause("REF-1")
def test_eps_zero_zero_row_is_nan():
    """REF-1: eps = 0 and an all-zero row gives nan for every element of that row (0/0), and the
    other rows are unaffected; the exact oracle agrees."""
    x = np.array([[0.0, 0.0, -0.0], [1.0, 2.0, 3.0]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = rms_norm(x, None, 0.0)
    assert np.isnan(y[0]).all()
    assert np.isfinite(y[1]).all()
    assert np.isnan(rms_norm_row(x[0], None, 0.0)).all()


@clause("REF-1")
@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("inf", [np.inf, -np.inf])
@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_row_with_inf(name, inf, eps):
    """REF-1: a row holding an infinity normalizes to nan at the infinity (inf * 0) and to
    (signed) zero at every finite element (mean(x**2) = inf, so n = 0), with or without weight."""
    x = np.array([[1.0, inf, -2.0, 0.0], [1.0, 2.0, 3.0, 4.0]]).astype(DTYPES[name])
    w = np.array([3.0, -1.0, 0.5, 2.0]).astype(DTYPES[name])
    for wt in (None, w):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y = rms_norm(x, wt, eps)
        assert np.isnan(y[0, 1])
        np.testing.assert_array_equal(y[0, [0, 2, 3]], 0.0)
        assert np.isfinite(y[1]).all()


@clause("REF-2")
@settings(max_examples=30, deadline=None)
@given(case=grad_case(), vseed=st.integers(0, 2 ** 32 - 1))
def test_hvp_matches_central_differences_of_the_vjp(case, vseed):
    """REF-2: rms_norm_hvp(x, w, eps, g, v) equals the central difference of the VJP's dx along
    v, (dx(x + h v) - dx(x - h v)) / 2h, per row within 1e-6 of the size of H v's terms (the
    same finite-difference budget as above, one derivative order up: step h = 1e-6 * s / |v|)."""
    x, w, eps, g = case
    v = np.random.default_rng(vseed).standard_normal(x.shape)
    hv = rms_norm_hvp(x, w, eps, g, v)
    x64 = x.astype(np.float64)
    n = inv_rms(x, eps)
    a = np.abs(g.astype(np.float64) * (1.0 if w is None else w.astype(np.float64)))
    d = x.shape[-1]
    ax, av = np.abs(x64), np.abs(v)
    s, p, t = (np.sum(ax * av, -1, keepdims=True) / d, np.sum(a * ax, -1, keepdims=True) / d,
               np.sum(a * av, -1, keepdims=True) / d)
    size = n ** 3 * (s * a + p * av + 3 * n ** 2 * s * p * ax + t * ax)   # H v's four terms
    h = FD_STEP / (n * np.max(av, axis=-1, keepdims=True))
    fd = (rms_norm_vjp(x64 + h * v, w, eps, g)[0] - rms_norm_vjp(x64 - h * v, w, eps, g)[0]) \
        / (2 * h)
    # plus the cancellation of the dx differences: u |dx| / h ~ 1e-10 n^2 |a| |v|, far below
    # 1e-6 n^2 max|a| for |v| of order 1
    scale = np.max(size, axis=-1, keepdims=True) + n ** 2 * np.max(a, axis=-1, keepdims=True)
    assert np.all(np.abs(hv - fd) <= FD_REL * scale), np.max(np.abs(hv - fd) / scale)


# ---------------------------------------------------------------------------------------------
# REF-3: gradients right to a relative accuracy of the result itself

import decimal  # noqa: E402

U = 2.0 ** -53
#: REF-3's stated accuracy of dx, the tangent and H v, relative to the exact value.
GRAD_REL = 8 * U
#: Half float64's smallest subnormal: a result in the subnormal range is rounded to a multiple of
#: 2**-1074 (REF-3's underflow slack).
SUBNORMAL_SLACK = decimal.Decimal(2) ** -1075


#: Exact values at least this large round to infinity in float64 (DBL_MAX + half its ulp).
OVERFLOW = decimal.Decimal(2) ** 1024 - decimal.Decimal(2) ** 970


def _overflows(got, ex) -> bool:
    """An exact value beyond float64's range, and the infinity of its sign."""
    if abs(ex) < OVERFLOW:
        return False
    assert np.isinf(got) and (got > 0) == (ex > 0), (got, ex)
    return True


def _assert_rel(ref, exact_rows, rel, what, slack=SUBNORMAL_SLACK):
    """Every element of ``ref`` (rows of float64) within rel |exact| + slack of the Decimal
    ``exact_rows``; an exact zero must be matched exactly, a value beyond float64's range by the
    infinity of its sign."""
    ref = np.asarray(ref, dtype=np.float64).reshape(len(exact_rows), -1)
    for r, (got_row, exact_row) in enumerate(zip(ref, exact_rows)):
        for i, (got, ex) in enumerate(zip(got_row, exact_row)):
            if _overflows(got, ex):
                continue
            err = abs(decimal.Decimal(float(got)) - ex)
            allowed = decimal.Decimal(rel) * abs(ex) + slack
            assert err <= allowed, (
                f"{what}[{r}, {i}] = {float(got)!r}, exact {ex:.20e}: error {err:.3e} > "
                f"allowed {allowed:.3e} ({float(err / abs(ex)) / U if ex else float('inf'):.3g} U)")


@st.composite
def cancelling_case(draw, dtypes=tuple(DTYPES)):
    """Gradient inputs whose terms cancel, often completely: the cotangent (and the tangent, and
    the second-order direction) drawn parallel to x (times a power of two, or plus a small
    perturbation), with eps from 0 and tiny relative to mean(x**2) up to 1, d from 1 (where dx =
    n a eps/(x**2 + eps) is all cancellation) to 40; or independent draws of whole-range values."""
    name = draw(st.sampled_from(dtypes))
    dt = DTYPES[name]
    shift = 6 if name == "float16" else 30     # |x| 2**(k+4) within the dtype's range
    rows = draw(st.integers(1, 3))
    d = draw(st.sampled_from([1, 1, 2, 3, 5, 8, 17, 40]))
    mode = draw(st.sampled_from(["parallel", "perturbed", "independent", "whole", "spike"]))
    if mode == "whole":
        x = draw(dtype_array(name, (rows, d)))
    elif mode == "spike":
        # one element per row far above the others (the suite's "spike" plans): dx, the tangent
        # and H v cancel there by about x_i**2 / (the rest of Q)
        small = draw(moderate_array((rows, d))).astype(np.float64) * 2.0 ** -draw(
            st.integers(4, 14 if name == "float16" else 40))
        small[np.arange(rows), draw(st.integers(0, d - 1))] = 2.0 ** draw(
            st.integers(0, 14 if name == "float16" else 60)) * draw(st.sampled_from([1, -1.5]))
        x = small.astype(dt)
    else:
        x = draw(eps_scale_array(name, (rows, d))) if draw(st.booleans()) else \
            draw(moderate_array((rows, d), row_shift=shift)).astype(dt)
    x64 = x.astype(np.float64)

    def along_x():
        k = draw(st.integers(-4, 4))
        v = x64 * 2.0 ** k
        if mode == "perturbed":
            v = v + draw(arrays(np.float32, (rows, d), elements=st.floats(-1, 1, width=32))) \
                * np.max(np.abs(x64)) * 2.0 ** -draw(st.integers(6, 20))
        return v.astype(dt)

    if mode in ("parallel", "perturbed"):
        g, tx = along_x(), along_x()
        w = None if draw(st.booleans()) else np.full(d, 2.0 ** draw(st.integers(-2, 2)), dt)
        tw = None if w is None or draw(st.booleans()) else np.zeros(d, dt)
    else:
        g = draw(dtype_array(name, (rows, d))) if mode == "whole" else \
            draw(moderate_array((rows, d), shift=shift)).astype(dt)
        tx = draw(moderate_array((rows, d), row_shift=shift)).astype(dt)
        w = draw(st.one_of(st.none(), moderate_array((d,), shift=4).map(lambda a: a.astype(dt))))
        tw = None if w is None else draw(st.one_of(st.none(),
                                                   moderate_array((d,)).map(lambda a: a.astype(dt))))
    eps = draw(st.one_of(EPS, st.floats(-30.0, -12.0).map(lambda e: 10.0 ** e)))
    v = tx.astype(np.float64) if draw(st.booleans()) else \
        np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1))).standard_normal((rows, d))
    assume(not (eps == 0.0 and np.any(np.all(x64 == 0, axis=-1))))
    assume(all(np.all(np.isfinite(np.asarray(a, np.float64))) for a in (g, tx, w, tw) if a is not None))
    return x, w, eps, g, tx, tw, v


@clause("REF-3")
@settings(max_examples=80, deadline=None)
@given(case=cancelling_case())
def test_gradients_within_8u_of_exact(case):
    """REF-3: rms_norm_vjp's dx, rms_norm_jvp's tangent and rms_norm_hvp's H v are within
    8 * 2**-53 of the exact values (plus 2**-1075 where those are subnormal), on inputs whose terms
    cancel (cotangent, tangent and direction parallel to x, eps down to 1e-30 and 0, d = 1 where
    dx is all cancellation, rows with one spike element) and on independent whole-range draws of
    every dtype."""
    x, w, eps, g, tx, tw, v = case
    dx, _ = rms_norm_vjp(x, w, eps, g)
    exact_dx, _ = oracle.vjp_decimal(x, w, eps, g)
    _assert_rel(dx, exact_dx, GRAD_REL, "dx")
    _assert_rel(rms_norm_jvp(x, w, eps, tx, tw), oracle.jvp_decimal(x, w, eps, tx, tw),
                GRAD_REL, "tangent")
    _assert_rel(rms_norm_hvp(x, w, eps, g, v), oracle.hvp_decimal(x, w, eps, g, v), GRAD_REL,
                "H v")


@clause("REF-3")
@pytest.mark.parametrize("x, eps, exact", [
    (1280.0, 1e-12, 4.768371582031249e-22),          # naive: -1.08e-19
    (1.25 * 2.0 ** 40, 1e-12, None),                  # naive: 0 or of the wrong sign
    (3.0, 0.0, 0.0),                                  # exactly zero (eps = 0, d = 1)
])
def test_tiny_dx_where_the_naive_formula_gets_the_sign_wrong(x, eps, exact):
    """REF-3, the case of issue 17: d = 1, g parallel to x and eps tiny relative to x**2, where
    dx = n g eps/(x**2 + eps) is tiny and the textbook formula n g - x n**3 g x cancels to noise
    (here of the wrong sign, or zero). The reference is within 8 U of the exact value, and has
    its sign."""
    xs = np.array([[x], [-x]], np.float32)
    g = np.array([[1.0], [1.0]], np.float32)
    dx, _ = rms_norm_vjp(xs, None, eps, g)
    exact_dx, _ = oracle.vjp_decimal(xs, None, eps, g)
    if exact is not None:
        assert float(exact_dx[0][0]) == pytest.approx(exact, rel=1e-15)
    _assert_rel(dx, exact_dx, GRAD_REL, "dx")
    naive = _grad.naive_dx(xs.astype(np.float64), g.astype(np.float64), eps)
    if exact:
        assert np.all(dx > 0)
        # the textbook formula is wrong there: of the wrong sign or off by orders of magnitude
        assert np.all((naive <= 0) | (np.abs(naive) > 100 * np.abs(dx)))


@clause("REF-3")
@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(list(DTYPES)), d=st.sampled_from([257, 1000, 4099]),
       seed=st.integers(0, 2 ** 32 - 1), parallel=st.booleans(), eps=EPS)
def test_gradients_within_8u_long_rows(name, d, seed, parallel, eps):
    """REF-3 on long rows (the extraction's sub-blocks, several of them): dx and the tangent
    within 8 U of exact, for independent cotangents and for cotangents parallel to x (where every
    element cancels)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((2, d)) * 2.0 ** rng.integers(-20, 20)).astype(DTYPES[name])
    x64 = x.astype(np.float64)
    g = (x64 * 0.5).astype(x.dtype) if parallel else rng.standard_normal((2, d)).astype(x.dtype)
    w = rng.standard_normal(d).astype(x.dtype) if not parallel else None
    assume(not (eps == 0.0 and np.any(np.all(x64 == 0, axis=-1))))
    dx, _ = rms_norm_vjp(x, w, eps, g)
    _assert_rel(dx, oracle.vjp_decimal(x, w, eps, g)[0], GRAD_REL, "dx")
    _assert_rel(rms_norm_jvp(x, w, eps, g), oracle.jvp_decimal(x, w, eps, g), GRAD_REL, "tangent")


@clause("REF-3")
@settings(max_examples=30, deadline=None)
@given(case=dweight_case())
def test_dweight_within_its_bound_of_exact(case):
    """REF-3: dweight within 2**-53 |dweight| + (3 * 2**-53 + gamma_{R-1}) sum|g x n| of the exact
    column sums (R rows), the one gradient whose terms (each row with its own n) are stated
    against their magnitude."""
    x, w, eps, g = case
    d = x.shape[-1]
    _, dw = rms_norm_vjp(x, w, eps, g)
    _, exact_dw = oracle.vjp_decimal(x.reshape(-1, d), w, eps, g.reshape(-1, d))
    rows = x.size // d
    n = inv_rms(x.reshape(-1, d), eps)
    terms = np.sum(np.abs(g.reshape(-1, d).astype(np.float64) * x.reshape(-1, d) * n), axis=0)
    for j in range(d):
        err = abs(decimal.Decimal(float(dw[j])) - exact_dw[j])
        allowed = (decimal.Decimal(U) * abs(exact_dw[j])
                   + decimal.Decimal((3 * U + float(gamma(max(rows - 1, 0), U)) + 2 ** -60)
                                     * float(terms[j])))
        assert err <= allowed, (j, dw[j], exact_dw[j], err, allowed)


# ---------------------------------------------------------------------------------------------
# REF-4: float64 inputs

DD_REL = 2.0 ** -96


def _assert_dd(hi, lo, exact_rows, rel, what, scale_rows=None, hi_rel=U * (1 + 2 ** -40)):
    """hi + lo within rel |exact| (or rel * scale) of the Decimal values, and hi within
    hi_rel |exact| (default U (1 + 2**-40): correctly rounded; plus the subnormal slack)."""
    hi = np.asarray(hi, dtype=np.float64).reshape(len(exact_rows), -1)
    lo = np.asarray(lo, dtype=np.float64).reshape(hi.shape)
    ctx = decimal.Context(prec=120)
    for r, row in enumerate(exact_rows):
        for i, ex in enumerate(row):
            if _overflows(hi[r, i], ex):
                continue
            got = ctx.add(decimal.Decimal(float(hi[r, i])), decimal.Decimal(float(lo[r, i])))
            scale = abs(ex) if scale_rows is None else decimal.Decimal(float(scale_rows[r][i]))
            err = abs(got - ex)
            assert err <= decimal.Decimal(rel) * scale + 2 * SUBNORMAL_SLACK, (
                f"{what}[{r}, {i}]: hi + lo = {got:.30e}, exact {ex:.30e}, error {err:.3e}")
            err_hi = abs(decimal.Decimal(float(hi[r, i])) - ex)
            assert err_hi <= decimal.Decimal(hi_rel) * scale + SUBNORMAL_SLACK, (
                what, r, i, float(hi[r, i]), ex)


def _f64_array(shape, moderate):
    """float64 arrays: moderate magnitudes (the vectorised path), or the whole range, subnormals
    and near-max values included (the exact path)."""
    if moderate:
        return arrays(np.float64, shape, elements=st.floats(-1e3, 1e3).filter(
            lambda v: v == 0 or abs(v) > 1e-30))
    return arrays(np.float64, shape, elements=st.floats(-1e300, 1e300, allow_subnormal=True))


@st.composite
def f64_case(draw):
    rows, d = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 3, 7, 16, 33]))
    moderate = draw(st.booleans())
    x = draw(_f64_array((rows, d), moderate))
    w = draw(st.one_of(st.none(), _f64_array((d,), True)))
    g = draw(_f64_array((rows, d), True))
    eps = draw(EPS)
    assume(not (eps == 0.0 and np.any(np.all(x == 0, axis=-1))))
    return x, w, eps, g


@clause("REF-4")
@settings(max_examples=60, deadline=None)
@given(case=f64_case())
def test_float64_forward_and_vjp_in_double_double(case):
    """REF-4: for float64 inputs (moderate magnitudes, taking the vectorised double-double path,
    or anywhere in float64's range, subnormals and 1e300 included, taking the exact path),
    rms_norm_dd's hi + lo and rms_norm_vjp_dd's dx within 2**-96 of the exact values and dweight
    within 2**-96 sum|g x n| (and within BOUND_REL when asked for that); rms_norm within
    2**-53 (1 + 2**-26) of exact; rms_norm_vjp's float64 path within REF-3's 8 * 2**-53."""
    x, w, eps, g = case
    exact_y = [oracle.rms_norm_row_decimal(row, w, eps) for row in x]
    hi, lo = rms_norm_dd(x, w, eps)
    _assert_dd(hi, lo, exact_y, DD_REL, "y")
    y64 = rms_norm(x, w, eps)                   # hi to BOUND_REL: within U (1 + 2**-26)
    _assert_dd(y64, np.zeros_like(y64), exact_y, U * (1 + 2 ** -26), "y (float64)",
               hi_rel=U * (1 + 2 ** -26))
    hb, lb = rms_norm_dd(x, w, eps, rel=BOUND_REL)
    _assert_dd(hb, lb, exact_y, BOUND_REL, "y (BOUND_REL)", hi_rel=U * (1 + 2 ** -26))
    (dx_hi, dx_lo), dw = rms_norm_vjp_dd(x, w, eps, g)
    exact_dx, exact_dw = oracle.vjp_decimal(x, w, eps, g)
    _assert_dd(dx_hi, dx_lo, exact_dx, DD_REL, "dx")
    dx64, dw64 = rms_norm_vjp(x, w, eps, g)          # the float64 path: REF-3's 8 U
    _assert_dd(dx64, np.zeros_like(dx64), exact_dx, 8 * U, "dx (float64 path)", hi_rel=8 * U)
    if w is not None:
        terms = [_exact_terms(x, g, eps)]
        _assert_dd(dw[0], dw[1], [exact_dw], DD_REL, "dweight", scale_rows=terms)
        # 4 U of the terms, plus the float64 sum over the rows (gamma_{R-1})
        _assert_dd(dw64, np.zeros_like(dw64), [exact_dw], (4 + len(x)) * U,
                   "dweight (float64 path)", scale_rows=terms, hi_rel=(4 + len(x)) * U)


def _exact_terms(x, g, eps):
    """sum over rows of |g x n| per column, from the oracle's n (as floats, rounded up a little)."""
    total = [decimal.Decimal(0)] * x.shape[-1]
    for xr, gr in zip(x, g):
        _, sc = oracle._scale(oracle._row(xr), eps)
        total = [t + abs(decimal.Decimal(float(gi)) * decimal.Decimal(float(xi))) * sc
                 for t, gi, xi in zip(total, gr, xr)]
    return [float(t) * (1 + 1e-10) for t in total]


@clause("REF-4")
@settings(max_examples=30, deadline=None)
@given(case=f64_case())
def test_float64_jvp_and_hvp_within_8u(case):
    """REF-4: float64 inputs to rms_norm_jvp and rms_norm_hvp: within REF-3's 8 * 2**-53 of the
    exact values (they are float64 results; the double-double forward and VJP are REF-4's)."""
    x, w, eps, g = case
    tx = g[::-1].copy()
    tw = None if w is None else w[::-1].copy()
    _assert_rel(rms_norm_jvp(x, w, eps, tx, tw), oracle.jvp_decimal(x, w, eps, tx, tw), GRAD_REL,
                "tangent")
    _assert_rel(rms_norm_hvp(x, w, eps, g, tx), oracle.hvp_decimal(x, w, eps, g, tx), GRAD_REL,
                "H v")


def _old_forward(x, weight, eps):
    """The forward formula exactly as the reference had it before float64 inputs (REF-4 keeps
    it, bit for bit, for float32/float16/bfloat16)."""
    x64 = x.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        y = x64 * (1.0 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + np.float64(eps)))
        if weight is not None:
            y = y * weight.astype(np.float64)
    return y


@clause("REF-4")
@pytest.mark.parametrize("name", list(DTYPES))
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_narrow_forward_unchanged_bit_for_bit(name, data):
    """REF-4: float32, float16 and bfloat16 inputs take the float64 forward formula as before
    (bit-identical results, whole range, eps 0 included); only float64 inputs take the
    double-double path."""
    x, w, eps = data.draw(forward_case(name))
    np.testing.assert_array_equal(rms_norm(x, w, eps), _old_forward(x, w, eps))
