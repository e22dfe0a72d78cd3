"""Gradients of RMSNorm to a stated relative accuracy of the result itself (SPEC.md REF-3, REF-4).

Per row, with Q = d q = sum(x**2) + d eps and n = 1/sqrt(q) = sqrt(d/Q):

    dx_i = n B_i,        B_i = a_i - x_i P/Q,                     a = g w, P = <a, x>
    ty_i = n C_i,        C_i = w_i tx_i + x_i tw_i - w_i x_i T/Q,  T = <x, tx>
    Hv_i = -n H_i / Q,   H_i = S a_i + P v_i + x_i (R - 3 S P/Q),  S = <x, v>, R = <a, v>

(the textbook forms n a - x n^3 <a, x>/d etc. rearranged: n^3/d = n/Q). The brackets B, C, H are
where terms cancel. Their rational ingredients, the row sums P, Q, T, S, R of exact products of
the inputs, are summed with error-free transformations (``_eft.extract_rows``, ``block_sum``:
exact up to at most 2**-71 of the largest term at d = 65536 with one extraction pass, below
2**-110 of the terms' sum with the two used where double-double accuracy is claimed), and each
bracket is formed from exact products with a double-double ratio (``_eft``), with a rigorous
bound E_i on its own error. Where E_i <= 3 U
|bracket| (U = 2**-53), the element is *certified*: with n's relative error <= 1.5 U + rho/2
(Q.hi within rho <= 2 U of Q, one division and one square root) and the final product's U, the
result is within 6 U (1 + 2**-40) of the exact value. dx elements not certified get a second
chance in the leave-one-out form (``_second_chance``: rows where one element dominates); the
rest (cancellation deeper than about 2**25 for dx, 2**40 for the others, or magnitudes outside
the vectorised range) take the exact path: exact row sums (extraction repeated until nothing is
left, ``_eft.exact_sum_of_products``), a rational bracket and a 60-digit decimal square root,
rounded once (error <= U (1 + 10**-50)). For d = 1 the brackets are formed from their
closed forms (B = a eps/Q, C = w tx eps/Q + x tw, H = 3 a x v eps/Q), which have no cancellation
of the eps-free terms. Hence REF-3's 8 U.

Rows with a non-finite input, eps < 0 or non-finite, or Q = 0 (eps = 0 and an all-zero row) keep
the plain float64 formulas (``naive_*``, the reference's formulas before REF-3): no accuracy is
claimed there, and nan and inf propagate as before.

``dd=True`` (float64 inputs, REF-4) returns double-double results (hi, lo) with n from one
Newton step in double-double arithmetic; an element is certified when the bound on
|hi + lo - exact| is at most 2**-96 |hi|, and takes the exact path otherwise.
"""

from __future__ import annotations

import decimal
import functools
from fractions import Fraction

import numpy as np

from ._eft import (DD, HUGE, TINY, U, bracket, col_blocks, exact_sum_of_products, extract_rows,
                   finish_sum, row_blocks, row_sum, row_sums, split, two_prod, two_sum)

#: REF-3: |ref - exact| <= GRAD_C * U * |exact| (+ 2**-1075 where the result is subnormal).
GRAD_C = 8
#: REF-4: |hi + lo - exact| <= DD_REL * |exact| for the double-double results of float64 inputs.
DD_REL = 2.0 ** -96
#: An element is certified when its bracket's error bound is at most ACCEPT * U of it.
ACCEPT = 3.0 * (1.0 - 4.0 * U)
#: float64 inputs take the vectorised path where every non-zero magnitude lies in
#: [F64_LOW, F64_HIGH] and eps in {0} U [F64_LOW**2, F64_HIGH**2]: then every product and square
#: formed below, and every two_prod error term, is a normal float64 far from overflow.
F64_LOW, F64_HIGH = 2.0 ** -240, 2.0 ** 240

_DEC = decimal.Context(prec=60)


# ---------------------------------------------------------------------------------------------
# The plain float64 formulas (rows outside the accurate domain)

def naive_n(x64, eps):
    d = x64.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ms = (np.mean(x64 * x64, axis=-1, keepdims=True) if d
              else np.zeros(x64.shape[:-1] + (1,)))
        return 1.0 / np.sqrt(ms + np.float64(eps))


def naive_dx(x64, a, eps):
    n = naive_n(x64, eps)
    d = x64.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        proj = np.sum(a * x64, axis=-1, keepdims=True) / max(d, 1)
        return n * a - x64 * n ** 3 * proj


def naive_ty(x64, w64, eps, tx64, tw64):
    n = naive_n(x64, eps)
    d = x64.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        dn = -n ** 3 * np.sum(x64 * tx64, axis=-1, keepdims=True) / max(d, 1)
        ty = (tx64 * n + x64 * dn) * w64
        if tw64 is not None:
            ty = ty + x64 * n * tw64
    return ty


def naive_hv(x64, a, eps, v64):
    n = naive_n(x64, eps)
    d = max(x64.shape[-1], 1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        p = np.sum(a * x64, axis=-1, keepdims=True) / d
        s = np.sum(x64 * v64, axis=-1, keepdims=True) / d
        t = np.sum(a * v64, axis=-1, keepdims=True) / d
        return -n ** 3 * s * a - n ** 3 * p * v64 + 3 * n ** 5 * s * p * x64 - n ** 3 * t * x64


# ---------------------------------------------------------------------------------------------
# Domains

def _claimed_rows(eps, x, *others):
    """Rows where accuracy is claimed: every value finite, eps finite and >= 0, Q > 0."""
    ok = np.full(x.shape[0], bool(np.isfinite(eps) and eps >= 0))
    for a in (x,) + others:
        if a is not None:
            good = np.isfinite(a)
            if good.all():
                continue
            ok &= np.all(good, axis=-1) if a.ndim == 2 else False
    if not eps > 0:
        ok &= np.any(x != 0, axis=-1)
    return ok


def _vector_rows(narrow, eps, x, *others):
    """Rows the vectorised path may certify: narrow inputs always (their squares and products
    lie in [2**-447, 2**385]); float64 inputs where the magnitudes are moderate (F64_LOW..)."""
    ok = np.ones(x.shape[0], bool)
    if narrow:
        return ok & (eps < HUGE)
    if eps != 0 and not (F64_LOW ** 2 <= eps <= F64_HIGH ** 2):
        ok[:] = False
    for a in (x,) + others:
        if a is None:
            continue
        m = np.abs(a)
        good = (m == 0) | ((m >= F64_LOW) & (m <= F64_HIGH))
        ok &= np.all(good, axis=-1) if a.ndim == 2 else bool(np.all(good))
    return ok


# ---------------------------------------------------------------------------------------------
# Shared pieces

def _dot(u, v, exact_products: bool, passes: int = 2) -> DD:
    """Row sums of u * v (2-D arrays, or 1-D ones applying to every row) as a DD; the products
    are exact float64 values when ``exact_products`` (factors of at most 26 and 27 significant
    bits), else split by two_prod. ``passes``: 2 where double-double accuracy is claimed, 1
    where 8 U is (block_sum)."""
    shape = np.broadcast_shapes(np.shape(u), np.shape(v))
    pick = _picker
    if exact_products:
        return row_sum(lambda rs, cs: pick(u, rs, cs) * pick(v, rs, cs), shape, passes=passes)
    p, e = row_sums(lambda rs, cs: list(two_prod(pick(u, rs, cs), pick(v, rs, cs))), shape, 2,
                    passes=passes)
    return p + e


def _picker(a, rs, cs):
    return a[cs] if a.ndim == 1 else a[rs, cs]


def _dot_parts(parts, v, exact_products, passes: int = 2) -> DD:
    total = None
    for part in parts:
        term = _dot(part, v, exact_products, passes)
        total = term if total is None else total + term
    return total


@functools.lru_cache(maxsize=256)
def _d_eps(d: int, eps: float):
    """d eps as an exact pair of floats (two_prod; d <= 2**26 and eps a float64)."""
    hi, lo = two_prod(np.float64(d), np.float64(eps))
    return float(hi), float(lo)


def _q_and_n(x, eps, narrow, s=None, passes: int = 2):
    """Q = sum(x**2) + d eps as a DD (from the row sums s of the squares when given), n =
    sqrt(d/Q) in float64, and rho, the bound on the relative error of Q.hi."""
    d = x.shape[-1]
    de = DD(*_d_eps(d, float(eps))) if np.isfinite(eps) else \
        DD.exact_prod(np.float64(d), np.float64(eps))
    q = (_dot(x, x, narrow, passes) if s is None else s) + de
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.abs(q.lo) + q.err
        rho = off / (q.hi - off)
        n = np.sqrt(d / q.hi)
    return q, n, rho


def n_dd(q: DD, d: int) -> DD:
    """n = 1/sqrt(Q/d) in double-double: one Newton step y1 = y0 + y0 (1 - z y0**2)/2 from the
    float64 y0 (relative error e0 <= 2 U + rho), whose own error is 3/2 e0**2 (< 2**-100 for
    e0 <= 4 U), plus the DD roundings and Q's error propagated by the DD arithmetic."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        y0 = np.sqrt(d / q.hi)
        z = q / DD(np.full_like(q.hi, float(d)))
        resid = DD(np.ones_like(y0)) - z * DD.exact_prod(y0, y0)
        y1 = DD(y0) + DD(0.5 * y0) * resid
        off = np.abs(q.lo) + q.err
        e0 = 2 * U + off / (q.hi - off)
        y1.err = y1.err + 1.5 * e0 * e0 * y0 * (1 + 2 * e0)
    return y1


def _certified(value, err, accept=ACCEPT):
    ok = err <= accept * U * np.abs(value)
    return ok & ((np.abs(value) >= TINY) | (err == 0))


def _certified_dd(res: DD, rel: float = DD_REL):
    return (res.err <= rel * np.abs(res.hi)) & ((np.abs(res.hi) >= TINY) | (res.err == 0))


def _a_parts(g, w, narrow):
    """a = g w as a list of arrays whose sum is exact: the product itself for narrow inputs
    (24 + 24 bits), else two_prod's pair."""
    if w is None:
        return [g]
    if narrow:
        return [g * w]
    return list(two_prod(g, w))


# ---------------------------------------------------------------------------------------------
# Exact path (Python integers and 60-digit decimals), element by element

def _exact_scale(q: Fraction, d: int) -> decimal.Decimal:
    """sqrt(d / Q) to 60 digits."""
    ratio = _DEC.divide(decimal.Decimal(d * q.denominator), decimal.Decimal(q.numerator))
    return _DEC.sqrt(ratio)


def _to_decimal(f: Fraction, scale: decimal.Decimal) -> decimal.Decimal:
    if f == 0:
        return decimal.Decimal(0)
    num = _DEC.divide(decimal.Decimal(f.numerator), decimal.Decimal(f.denominator))
    return _DEC.multiply(num, scale)


def _split_decimal(v: decimal.Decimal):
    """(hi, lo): hi = float(v) (correctly rounded), lo = float(v - hi)."""
    hi = float(v)
    if not np.isfinite(hi) or hi == 0:
        return hi, 0.0
    return hi, float(_DEC.subtract(v, decimal.Decimal(hi)))


def _row_q(xr, eps):
    return exact_sum_of_products(xr, xr) + len(xr) * Fraction(float(eps))


def _prod(values):
    out = Fraction(1)
    for v in values:
        out *= Fraction(float(v))
    return out


def exact_dx_row(xr, a_factors, eps, idx):
    """Exact dx (as Decimals) at indices ``idx`` of one row; a = prod(a_factors)."""
    d = len(xr)
    q = _row_q(xr, eps)
    p = exact_sum_of_products(xr, *a_factors)
    scale = _exact_scale(q, d)
    return [_to_decimal(_prod(f[i] for f in a_factors) - Fraction(float(xr[i])) * p / q, scale)
            for i in idx]


def exact_ty_row(xr, wr, eps, txr, twr, idx):
    d = len(xr)
    q = _row_q(xr, eps)
    t = exact_sum_of_products(xr, txr)
    scale = _exact_scale(q, d)
    out = []
    for i in idx:
        xi, wi, ti = (Fraction(float(v[i])) for v in (xr, wr, txr))
        c = wi * ti - wi * xi * t / q
        if twr is not None:
            c += xi * Fraction(float(twr[i]))
        out.append(_to_decimal(c, scale))
    return out


def exact_hv_row(xr, a_factors, eps, vr, idx):
    d = len(xr)
    q = _row_q(xr, eps)
    p = exact_sum_of_products(xr, *a_factors)
    s = exact_sum_of_products(xr, vr)
    r = exact_sum_of_products(vr, *a_factors)
    scale = _exact_scale(q, d)
    psi = r - 3 * s * p / q
    out = []
    for i in idx:
        h = (s * _prod(f[i] for f in a_factors) + p * Fraction(float(vr[i]))
             + Fraction(float(xr[i])) * psi)
        out.append(-_to_decimal(h / q, scale))
    return out


def _fill_exact(out, out_lo, bad, fn):
    """Elements of the boolean 2-D mask ``bad`` from fn(row, [indices]) (Decimals): rounded
    once into ``out``, and their remainders into ``out_lo`` when given."""
    for r in np.flatnonzero(np.any(bad, axis=-1)):
        idx = [int(i) for i in np.flatnonzero(bad[r])]
        for i, v in zip(idx, fn(int(r), idx)):
            hi, lo = _split_decimal(v)
            out[r, i] = hi
            if out_lo is not None:
                out_lo[r, i] = lo


def _finish(out, out_lo, ok, claimed, exact_fn, naive_fn):
    """Exact path for the claimed elements not certified, the naive formulas for the rows
    outside the claimed domain."""
    if np.all(ok):
        return
    bad = ~ok & claimed[:, None]
    if np.any(bad):
        _fill_exact(out, out_lo, bad, exact_fn)
    if not np.all(claimed):
        rows = ~claimed
        out[rows] = naive_fn(rows)
        if out_lo is not None:
            out_lo[rows] = 0.0


# ---------------------------------------------------------------------------------------------
# VJP

def vjp(x, g, w, eps, narrow, dd=False, want_dw=True, dd_rel=DD_REL):
    """(dx, dweight) for 2-D float64 x, g (values of the input dtypes), w 1-D or None
    (dweight None then, or when not ``want_dw``). ``narrow``: every input has at most 24
    significant bits. With ``dd`` each result is a (hi, lo) pair."""
    rows, d = x.shape
    out = np.empty(x.shape)
    out_lo = np.zeros(x.shape) if dd else None
    ok = np.zeros(x.shape, bool)
    n_all = np.empty((rows, 1))
    nn_all = [] if dd else None
    claimed = _claimed_rows(eps, x, g, w)
    vec = claimed & _vector_rows(narrow, eps, x, g, w)
    fast = narrow and not dd
    keep = {} if fast and d > 1 else None       # Q and P per row, for _second_chance
    with np.errstate(all="ignore"):
        for rs in row_blocks(rows, d) if x.size else []:
            xb, gb = _f64(x[rs]), _f64(g[rs])
            if fast and d == 1:
                _vjp_d1_block(xb, gb, w, eps, rs, out, ok, vec, n_all)
                continue
            if fast and d > 1:
                # the squares and the products a x (a = g w split in 26-bit halves, so that
                # both products with the 24-bit x are exact), stacked, extracted block by block
                k = 2 if w is None else 3
                nb = xb.shape[0]
                taus, rhos, errs = [], 0.0, 0.0
                for cs in col_blocks(d):
                    xc = xb[:, cs]
                    t = np.empty((k, nb, cs.stop - cs.start))
                    np.multiply(xc, xc, out=t[0])
                    if w is None:
                        np.multiply(gb[:, cs], xc, out=t[1])
                    else:
                        ah, al = split(gb[:, cs] * w[cs])
                        np.multiply(ah, xc, out=t[1])
                        np.multiply(al, xc, out=t[2])
                    tau, rho_, err_ = extract_rows(t.reshape(k * nb, -1), nonneg=nb)
                    taus.append(tau)
                    new = rhos + rho_
                    errs = errs + err_ + U * np.abs(new)
                    rhos = new
                sums = finish_sum(np.concatenate(taus, axis=1), rhos, errs)
                parts = [DD(sums.hi[i * nb:(i + 1) * nb], _part(sums.lo, i, nb),
                            _part(sums.err, i, nb)) for i in range(k)]
                s_ = parts[0]
                p = parts[1] if w is None else parts[1] + parts[2]
                q, n, rho = _q_and_n(xb, eps, narrow, s_)
            else:
                q, n, rho = _q_and_n(xb, eps, narrow)
            n_all[rs] = n
            vb = vec[rs] & (q.hi[:, 0] >= TINY) & (rho[:, 0] <= 2 * U)
            nn = n_dd(q, d) if dd else None
            if dd:
                nn_all.append(nn)
            if d == 1:
                # B = a eps / Q exactly: a times the DD ratio eps/Q, no cancellation
                ratio = DD(np.full_like(q.hi, np.float64(eps))) / q
                if fast:
                    a = gb if w is None else gb * w
                    b = a * ratio.hi
                    err = np.abs(a) * (np.abs(ratio.lo) + ratio.err) + U * np.abs(b)
                    ok[rs] = _certified(b, err) & vb[:, None]
                    out[rs] = n * b
                    continue
                c = None
                for part in _a_parts(gb, w, narrow):
                    term = DD.exact_prod(part, ratio.hi) + DD(
                        part * ratio.lo, None, np.abs(part) * (U * np.abs(ratio.lo) + ratio.err))
                    c = term if c is None else c + term
                _store(out, out_lo, ok, rs, slice(None), c, n, nn, vb, dd, dd_rel)
            elif fast:
                keep[rs.start] = (rs, q, p)
                r = p / q
                vb &= (np.abs(r.hi[:, 0]) >= 2.0 ** -800) | (r.hi[:, 0] == 0)
                r1, r2 = split(r.hi)                        # x r1 exact (x: 24 bits)
                rho2 = r2 + r.lo
                # b = fl(fl(a - x r1) - fl(x rho2)) differs from B = a - x P/Q by at most
                # 2U(1 + 2U)|b| + |x| K, K = (3U|rho2| + r.err)(1 + 2**-40)/(1 - U) (module
                # docstring of _fast_bound): certified (<= ACCEPT U |b|) when |x| c <= |b|
                c = _fast_c(rho2, r.err)
                vb_all = bool(vb.all())
                for cs in col_blocks(d):
                    xv = xb[:, cs]
                    b = gb[:, cs] * (1.0 if w is None else w[cs])
                    b -= xv * r1
                    b -= xv * rho2
                    xc = np.abs(xv)
                    xc *= c
                    # (no TINY test: for narrow inputs no step here underflows; a subnormal
                    # difference is exact, and n b below 2**-1022 is REF-3's underflow slack)
                    good = xc <= np.abs(b)
                    ok[rs, cs] = good if vb_all else good & vb[:, None]
                    np.multiply(b, n, out=out[rs, cs])
            else:
                parts = _split_parts(_a_parts(gb, w, narrow), narrow)
                r = _dot_parts(parts, xb, narrow) / q
                for cs in col_blocks(d):
                    xc = xb[:, cs]
                    pp, pe = two_prod(xc, r.hi)
                    lo = xc * r.lo
                    c, _ = bracket([pt[:, cs] for pt in parts] + [-pp, -pe], [-lo],
                                   U * np.abs(lo) + np.abs(xc) * r.err)
                    _store(out, out_lo, ok, rs, cs, c, n, nn, vb, dd, dd_rel)
    if keep and not np.all(ok):
        _second_chance(x, g, w, out, ok, vec, n_all, keep)
    factors = (lambda r_: [g[r_]]) if w is None else (lambda r_: [g[r_], w])
    _finish(out, out_lo, ok, claimed,
            lambda r_, idx: exact_dx_row(x[r_], factors(r_), eps, idx),
            lambda rows_: naive_dx(_f64(x[rows_]), _f64(g[rows_]) * (1.0 if w is None else w),
                                   eps))
    dx = (out, out_lo) if dd else out
    if w is None or not want_dw:
        return dx, None
    return dx, _dweight(x, g, eps, narrow, dd, claimed, vec, n_all, nn_all)


def _vjp_d1_block(xb, gb, w, eps, rs, out, ok, vec, n_all):
    """dx for a block of rows of length 1 (narrow inputs): Q = x**2 + eps exactly as a two_sum
    (x**2 exact), B = a eps / Q with the DD ratio eps / Q, no cancellation; n = sqrt(1/Q.hi)."""
    sq = xb * xb
    qh, ql = two_sum(sq, np.float64(eps))
    q = DD(qh, ql)
    with np.errstate(divide="ignore", invalid="ignore"):
        n = np.sqrt(1.0 / qh)
    n_all[rs] = n
    vb = vec[rs] & (qh[:, 0] >= TINY)
    ratio = DD(np.full_like(qh, np.float64(eps))) / q
    a = gb if w is None else gb * w
    b = a * ratio.hi
    err = np.abs(a) * (np.abs(ratio.lo) + ratio.err) + U * np.abs(b)
    ok[rs] = _certified(b, err) & vb[:, None]
    out[rs] = n * b


def _second_chance(x, g, w, out, ok, vec, n_all, keep):
    """Uncertified dx elements of the fast path, again in the leave-one-out form
    B_i = (a_i (Q - x_i**2) - x_i (P - a_i x_i)) / Q, in DD arithmetic (errors propagated): the
    form that keeps its accuracy where x_i dominates its row (a spike: B_i's terms then cancel
    by about (x_i**2 / Q_rest), far beyond the ratio form's reach). Elements certified here
    (DD error <= ACCEPT U |B|) are kept; the rest go to the exact path."""
    rows = x.shape[0]
    qh, ql, qe, ph, pl, pe = (np.zeros(rows) for _ in range(6))
    for rs, q, p in keep.values():
        for dst, src in ((qh, q.hi), (ql, q.lo), (qe, q.err), (ph, p.hi), (pl, p.lo),
                         (pe, p.err)):
            dst[rs] = np.broadcast_to(src, (rs.stop - rs.start, 1))[:, 0]
    r, c = np.nonzero(~ok & vec[:, None])
    if r.size == 0:
        return
    xi = _f64(x[r, c])
    ai = _f64(g[r, c]) * (1.0 if w is None else w[c])
    q = DD(qh[r], ql[r], qe[r])
    p = DD(ph[r], pl[r], pe[r])
    num = DD(ai) * (q - DD.exact_prod(xi, xi)) - DD(xi) * (p - DD.exact_prod(ai, xi))
    b, err = (num / q).rounded()
    good = _certified(b, err)
    if np.any(good):
        r, c = r[good], c[good]
        out[r, c] = n_all[r, 0] * b[good]
        ok[r, c] = True


def _part(a, i, nb):
    return a if np.ndim(a) == 0 else a[i * nb:(i + 1) * nb]


def _fast_c(rho2, r_err):
    """The certification factor of the fast narrow VJP (per row): with p1 = x r1 exact,
    s1 = fl(a - p1), t = fl(x rho2), b = fl(s1 - t) and |r_hi + r_lo - P/Q| <= r_err,
      |b - B| <= U|s1 - t| + U|a - p1| + 2U|x rho2| + |x| r_err (rho2's rounding and t's),
      |a - p1| <= |B| + |x|(|rho2|(1 + U) + r_err),  |s1 - t| <= |b|/(1 - U),
    so with E = |b - B|: E (1 - U) <= U|b| (2 + 2U) + |x| ((3 + U) U |rho2| + (1 + U) r_err), i.e.
    E <= 2U(1 + 2U)|b| + |x| K, K = (3U|rho2| + r_err)(1 + 2**-40)/(1 - U). Then E <= ACCEPT U |b|
    = 3U(1 - 4U)|b| holds when |x| K <= U(1 - 20U)|b|: c = K/(U(1 - 20U))."""
    k = (3 * U * np.abs(rho2) + r_err) * (1 + 2.0 ** -40) / (1 - U)
    return k / (U * (1 - 20 * U))


def _store(out, out_lo, ok, rs, cs, c, n, nn, vb, dd, dd_rel):
    """Write n * bracket into the block: float64 n times the bracket's rounding (certified to
    ACCEPT U), or the DD product (certified to ``dd_rel``, DD_REL unless asked for less)."""
    if dd:
        res = nn * c
        ok[rs, cs] = _certified_dd(res, dd_rel) & vb[:, None]
        out[rs, cs] = res.hi
        out_lo[rs, cs] = res.lo
    else:
        b, err = c.rounded()
        ok[rs, cs] = _certified(b, err) & vb[:, None]
        out[rs, cs] = n * b


def _f64(a):
    return a if a.dtype == np.float64 else a.astype(np.float64)


def _split_parts(parts, narrow):
    """For exact products with 24-bit x, split 48-bit narrow parts into 26-bit halves."""
    if not narrow:
        return parts
    out = []
    for p in parts:
        out.extend(split(p))
    return out


def _dweight(x, g, eps, narrow, dd, claimed, vec, n_all, nn_all):
    """dweight = sum over rows of g x n, relative to sum|g x n| (REF-3, REF-4). Narrow inputs:
    g x exact, times the float64 n (n within 2 U, one more rounding), summed over the rows in
    float64 (any order: gamma_{R-1}); so |dw - exact| <= (3 U + gamma_{R-1}) sum|g x n| + U |dw|
    (about 3 U for a few rows; the GRAD bounds allow gamma_R of float32 there); float64 inputs
    without ``dd`` the same with g x rounded (4 U), or exactly beyond the moderate range. With
    ``dd``: g x and n in double-double, the column sums by extraction (2**-96)."""
    rows, d = x.shape
    if rows == 0:
        z = np.zeros(d)
        return (z, z.copy()) if dd else z
    with np.errstate(all="ignore"):
        if not dd and (narrow or (np.all(vec) and np.all(np.isfinite(n_all)))):
            # float64 inputs in the moderate range: g x rounded once more (4 U in all)
            n = np.where(np.isfinite(n_all), n_all, naive_n(_f64(x), eps)) \
                if not np.all(vec) else n_all
            total = np.zeros(d)
            for rs in row_blocks(rows, d):
                total += np.sum(_f64(g[rs]) * _f64(x[rs]) * n[rs], axis=0)
            return total
        if not dd:                  # float64 inputs beyond it: the exact sums where claimed
            x, g = _f64(x), _f64(g)
            if np.all(claimed):
                return _exact_dweight(x, g, eps)[0]
            return np.sum(g * x * naive_n(x, eps), axis=0)
        if np.all(vec) and np.all(np.isfinite(n_all)):
            nn = DD(np.concatenate([v.hi for v in nn_all]), np.concatenate([v.lo for v in nn_all]))

            def part(k):
                def fn(r_, c_):
                    t = DD.exact_prod(_f64(g[r_, c_]), _f64(x[r_, c_])) * DD(nn.hi[r_], nn.lo[r_])
                    return t.hi if k == 0 else t.lo
                return fn

            s0, s1 = row_sums(lambda r_, c_: [part(0)(r_, c_), part(1)(r_, c_)], x.shape, 2,
                              axis=0)
            s = s0 + s1
            return s.hi[0], s.lo[0]
        x, g = _f64(x), _f64(g)
        if np.all(claimed):
            return _exact_dweight(x, g, eps)
        s = np.sum(g * x * naive_n(x, eps), axis=0)
        return s, np.zeros(d)


def _exact_dweight(x, g, eps):
    """Column sums of g x n with each row's n to 60 digits (rows outside the vectorised range)."""
    rows, d = x.shape
    acc = [decimal.Decimal(0)] * d
    for r in range(rows):
        scale = _exact_scale(_row_q(x[r], eps), d)
        for j in range(d):
            if g[r, j] != 0 and x[r, j] != 0:
                acc[j] = _DEC.add(acc[j], _to_decimal(_prod((g[r, j], x[r, j])), scale))
    pairs = [_split_decimal(v) for v in acc]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


# ---------------------------------------------------------------------------------------------
# JVP

def jvp_ty(x, w, eps, tx, tw, narrow):
    rows, d = x.shape
    out = np.empty_like(x)
    ok = np.zeros(x.shape, bool)
    w1 = np.ones(d) if w is None else w
    claimed = _claimed_rows(eps, x, tx, w, tw)
    vec = claimed & _vector_rows(narrow, eps, x, tx, w, tw)
    with np.errstate(all="ignore"):
        for rs in row_blocks(rows, d) if x.size else []:
            xb, tb = x[rs], tx[rs]
            if narrow and d > 1:
                _jvp_fast_block(xb, tb, w, tw, eps, rs, out, ok, vec)
                continue
            passes = 1 if narrow else 2
            q, n, rho = _q_and_n(xb, eps, narrow, passes=passes)
            vb = vec[rs] & (q.hi[:, 0] >= TINY) & (rho[:, 0] <= 2 * U)
            if d == 1:
                ratio = DD(np.full_like(q.hi, np.float64(eps))) / q
            else:
                s = _dot(xb, tb, narrow, passes) / q
            for cs in col_blocks(d):
                xc, tc, wc = xb[:, cs], tb[:, cs], w1[cs]
                rounded, rerr = [], 0.0
                wtx = [wc * tc] if narrow else list(two_prod(wc, tc))
                xtw = [] if tw is None else ([xc * tw[cs]] if narrow else
                                             list(two_prod(xc, tw[cs])))
                if d == 1:
                    # C = w tx eps/Q + x tw: the w tx parts times the DD ratio eps/Q
                    terms = list(xtw)
                    for term in wtx:
                        pp, pe = two_prod(term, ratio.hi)
                        terms += [pp, pe]
                        lo = term * ratio.lo
                        rounded.append(lo)
                        rerr = rerr + U * np.abs(lo) + np.abs(term) * ratio.err
                else:
                    terms = wtx + xtw
                    for part in ([wc * xc] if narrow else list(two_prod(wc, xc))):
                        pp, pe = two_prod(part, s.hi)
                        terms += [-pp, -pe]
                        lo = part * s.lo
                        rounded.append(-lo)
                        rerr = rerr + U * np.abs(lo) + np.abs(part) * s.err
                c, mx = bracket(terms, rounded, rerr, passes)
                value, err = c.rounded()
                ok[rs, cs] = _certified(value, err) & vb[:, None] & ((mx >= TINY) | (mx == 0))
                out[rs, cs] = n * value
    _finish(out, None, ok, claimed,
            lambda r_, idx: exact_ty_row(x[r_], w1, eps, tx[r_], tw, idx),
            lambda rows_: naive_ty(x[rows_], w1, eps, tx[rows_], tw))
    return out


def _jvp_fast_block(xb, tb, w, tw, eps, rs, out, ok, vec):
    """The tangent for a block of rows of narrow inputs (d > 1). With e1 = w tx, e2 = x tw and
    f = w x (exact products of 24-bit values) and s = T/Q a DD:
      A_hi + A_lo = e1 + e2 (two_sum, exact), F_hi + e_F = f s_hi (two_prod, exact),
      F_lo = fl(e_F + fl(f s_lo)), c1 = fl(A_hi - F_hi), c2 = fl(A_lo - F_lo), C = fl(c1 + c2).
    Its error: E <= U|c1| + U|c2| + U|C| + U|f s_lo|(1 + U) + U|F_lo| + |f| s.err, and with
    |c1| <= |C|/(1 - U) + |c2|: E <= 3U(1 - 4U)|C| (certified) when
      2|c2| + |F_lo| + |f| k <= (1 - 14U)|C|,  k = (U|s_lo|(1 + U) + s.err)/U."""
    d = xb.shape[1]
    nb = xb.shape[0]
    taus, rhos, errs = [], 0.0, 0.0
    for cs in col_blocks(d):
        xc = xb[:, cs]
        t = np.empty((2, nb, cs.stop - cs.start))
        np.multiply(xc, xc, out=t[0])
        np.multiply(xc, tb[:, cs], out=t[1])
        tau, rho_, err_ = extract_rows(t.reshape(2 * nb, -1), nonneg=nb)
        taus.append(tau)
        new = rhos + rho_
        errs = errs + err_ + U * np.abs(new)
        rhos = new
    sums = finish_sum(np.concatenate(taus, axis=1), rhos, errs)
    s_ = DD(sums.hi[:nb], _part(sums.lo, 0, nb), _part(sums.err, 0, nb))
    t_ = DD(sums.hi[nb:], _part(sums.lo, 1, nb), _part(sums.err, 1, nb))
    q, n, rho = _q_and_n(xb, eps, True, s_)
    vb = vec[rs] & (q.hi[:, 0] >= TINY) & (rho[:, 0] <= 2 * U)
    vb_all = bool(vb.all())
    s = t_ / q
    sh, sl_ = split(s.hi)
    k = (U * np.abs(s.lo) * (1 + U) + s.err) / U
    lim = 1 - 14 * U
    for cs in col_blocks(d):
        xc, tc = xb[:, cs], tb[:, cs]
        if w is None:
            f, e1 = xc, tc
        else:
            f, e1 = w[cs] * xc, w[cs] * tc
        if tw is None:
            a_hi, a_lo = e1, 0.0
        else:
            a_hi, a_lo = two_sum(e1, xc * tw[cs])
        # two_prod(f, s.hi) with s.hi's halves known
        p = f * s.hi
        fh, fl = split(f)
        e = ((fh * sh - p) + fh * sl_ + fl * sh) + fl * sl_
        f_lo = e + f * s.lo
        c1 = a_hi - p
        c2 = a_lo - f_lo
        c = c1 + c2
        bound = np.abs(c2)
        bound *= 2
        bound += np.abs(f_lo)
        bound += np.abs(f) * k
        good = bound <= lim * np.abs(c)
        ok[rs, cs] = good if vb_all else good & vb[:, None]
        np.multiply(c, n, out=out[rs, cs])


# ---------------------------------------------------------------------------------------------
# HVP

def hvp(x, g, w, eps, v, narrow):
    """H v for 2-D x, g, v (v of any float64 values; ``narrow`` concerns x, g, w)."""
    rows, d = x.shape
    out = np.empty_like(x)
    ok = np.zeros(x.shape, bool)
    claimed = _claimed_rows(eps, x, g, w, v)
    if narrow:
        vec = claimed & _vector_rows(False, 0.0, v) & (eps < HUGE)
    else:
        vec = claimed & _vector_rows(False, eps, x, g, w, v)
    with np.errstate(all="ignore"):
        for rs in row_blocks(rows, d) if x.size else []:
            xb, gb, vb_ = x[rs], g[rs], v[rs]
            passes = 1 if narrow else 2
            q, n, rho = _q_and_n(xb, eps, narrow, passes=passes)
            vb = vec[rs] & (q.hi[:, 0] >= TINY) & (rho[:, 0] <= 2 * U)
            a_parts = _a_parts(gb, w, narrow)
            if d == 1:
                # H = 3 a x v eps / Q: a product, in DD arithmetic throughout
                ratio = DD(np.full_like(q.hi, np.float64(eps))) / q
                three = DD(np.full_like(xb, 3.0))
                h = None
                for part in a_parts:
                    term = DD.exact_prod(part, xb) * DD(vb_) * three * ratio
                    h = term if h is None else h + term
                value, err = (h / q).rounded()
                ok[rs] = _certified(value, err) & vb[:, None]
                out[rs] = -(n * value)
                continue
            p = _dot_parts(a_parts, xb, False, passes)
            s = _dot(xb, vb_, False, passes)
            r = _dot_parts(a_parts, vb_, False, passes)
            psi = r - DD(np.full_like(q.hi, 3.0)) * s * p / q
            for cs in col_blocks(d):
                terms, rounded = [], []
                rerr = 0.0
                for arr, fac in [(pt[:, cs], s) for pt in a_parts] + [(vb_[:, cs], p),
                                                                      (xb[:, cs], psi)]:
                    pp, pe = two_prod(arr, fac.hi)
                    terms += [pp, pe]
                    lo = arr * fac.lo
                    rounded.append(lo)
                    rerr = rerr + U * np.abs(lo) + np.abs(arr) * fac.err
                h, mx = bracket(terms, rounded, rerr, passes)
                value, err = (h / q).rounded()
                ok[rs, cs] = (_certified(value, err) & vb[:, None]
                              & ((mx >= TINY) | (mx == 0)))
                out[rs, cs] = -(n * value)
    factors = (lambda r_: [g[r_]]) if w is None else (lambda r_: [g[r_], w])
    _finish(out, None, ok, claimed,
            lambda r_, idx: exact_hv_row(x[r_], factors(r_), eps, v[r_], idx),
            lambda rows_: naive_hv(x[rows_], g[rows_] * (1.0 if w is None else w), eps,
                                   v[rows_]))
    return out


# ---------------------------------------------------------------------------------------------
# Forward in double-double (REF-4)

def forward_dd(x, w, eps, hi, lo, rel=DD_REL):
    """y = x w n for 2-D float64 x (any values), w 1-D or None, into ``hi``/``lo``: within
    ``rel`` of exact (elements the double-double path cannot certify to it are computed
    exactly)."""
    rows, d = x.shape
    ok = np.zeros(x.shape, bool)
    claimed = _claimed_rows(eps, x, w)
    vec = claimed & _vector_rows(False, eps, x, w)
    with np.errstate(all="ignore"):
        for rs in row_blocks(rows, d) if x.size else []:
            xb = x[rs]
            q, _, rho = _q_and_n(xb, eps, False)
            vb = vec[rs] & (q.hi[:, 0] >= TINY) & (rho[:, 0] <= 2 * U)
            nn = n_dd(q, d)
            for cs in col_blocks(d):
                xc = xb[:, cs]
                y = (DD(xc) if w is None else DD.exact_prod(xc, w[cs])) * nn
                ok[rs, cs] = _certified_dd(y, rel) & vb[:, None]
                hi[rs, cs] = y.hi
                lo[rs, cs] = y.lo
    w1 = np.ones(d) if w is None else w

    def exact(r, idx):
        scale = _exact_scale(_row_q(x[r], eps), d)
        return [_to_decimal(_prod((x[r, i], w1[i])), scale) for i in idx]

    def naive(rows_mask):
        with np.errstate(all="ignore"):
            return x[rows_mask] * naive_n(x[rows_mask], eps) * w1

    _finish(hi, lo, ok, claimed, exact, naive)
