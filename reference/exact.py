"""An exact oracle for the reference: rational arithmetic for the mean of squares plus eps,
and a 120-digit decimal square root. Slow (pure Python); used only by tests/."""

from __future__ import annotations

import decimal
from fractions import Fraction

import numpy as np

_CTX = decimal.Context(prec=120)


def _dec(fr: Fraction) -> decimal.Decimal:
    return _CTX.divide(decimal.Decimal(fr.numerator), decimal.Decimal(fr.denominator))


def rms_norm_row(x_row, weight, eps) -> list[float]:
    """Exact-to-120-digits RMSNorm of one row, rounded once to float64 at the end."""
    xs = [Fraction(float(v)) for v in np.asarray(x_row, dtype=np.float64)]
    d = len(xs)
    q = sum(v * v for v in xs) / d + Fraction(float(eps))
    root = _CTX.sqrt(_dec(q))
    ws = [1.0] * d if weight is None else [float(v) for v in np.asarray(weight, np.float64)]
    out = []
    for v, w in zip(xs, ws):
        num = _CTX.multiply(_dec(v), decimal.Decimal(w))
        out.append(float(_CTX.divide(num, root)) if root != 0 else float("nan"))
    return out


# ---------------------------------------------------------------------------------------------
# Gradients (REF-3) and float64 inputs (REF-4): rational row sums, a 120-digit square root, and
# results kept as Decimals (to 120 digits) so that tests can measure errors far below float64's.

def _frac(v) -> Fraction:
    return Fraction(float(v))


def _row(values):
    return [_frac(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def _scale(xs, eps):
    """(Q, sqrt(d / Q) to 120 digits) for one row: Q = sum(x**2) + d eps, exactly."""
    d = len(xs)
    q = sum(v * v for v in xs) + d * _frac(eps)
    if q == 0:
        return q, None
    return q, _CTX.sqrt(_CTX.divide(decimal.Decimal(d * q.denominator),
                                    decimal.Decimal(q.numerator)))


def _times(fr: Fraction, dec: decimal.Decimal) -> decimal.Decimal:
    return _CTX.multiply(_dec(fr), dec)


def rms_norm_row_decimal(x_row, weight, eps) -> list[decimal.Decimal]:
    """The exact forward of one row to 120 digits (any float inputs, float64 included)."""
    xs = _row(x_row)
    ws = [Fraction(1)] * len(xs) if weight is None else _row(weight)
    _, sc = _scale(xs, eps)
    return [_times(v * w, sc) for v, w in zip(xs, ws)]


def vjp_decimal(x, weight, eps, g):
    """Exact VJP of a 2-D x (rows of the last axis): (dx rows, dweight) as Decimals (dweight None
    without weight). dx_i = n (a_i - x_i <a, x>/Q) with Q = d (mean(x**2) + eps), a = g w;
    dweight_j = sum over rows of g x n."""
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[-1]
    ws = [Fraction(1)] * d if weight is None else _row(weight)
    dx, dw = [], [decimal.Decimal(0)] * d
    for xr, gr in zip(x.reshape(-1, d), np.asarray(g, dtype=np.float64).reshape(-1, d)):
        xs, gs = _row(xr), _row(gr)
        a = [gi * wi for gi, wi in zip(gs, ws)]
        q, sc = _scale(xs, eps)
        p = sum(ai * xi for ai, xi in zip(a, xs))
        dx.append([_times(ai - xi * p / q, sc) for ai, xi in zip(a, xs)])
        dw = [_CTX.add(acc, _times(gi * xi, sc)) for acc, gi, xi in zip(dw, gs, xs)]
    return dx, (None if weight is None else dw)


def jvp_decimal(x, weight, eps, tx, tweight=None):
    """Exact JVP rows: ty_i = n (w_i tx_i + x_i tw_i - w_i x_i <x, tx>/Q)."""
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[-1]
    ws = [Fraction(1)] * d if weight is None else _row(weight)
    tws = [Fraction(0)] * d if tweight is None else _row(tweight)
    out = []
    for xr, tr in zip(x.reshape(-1, d), np.asarray(tx, dtype=np.float64).reshape(-1, d)):
        xs, ts = _row(xr), _row(tr)
        q, sc = _scale(xs, eps)
        t = sum(xi * ti for xi, ti in zip(xs, ts))
        out.append([_times(wi * ti + xi * twi - wi * xi * t / q, sc)
                    for xi, ti, wi, twi in zip(xs, ts, ws, tws)])
    return out


def hvp_decimal(x, weight, eps, g, v):
    """Exact H v rows: -n/Q (S a_i + P v_i + x_i (R - 3 S P / Q)), S = <x, v>, P = <a, x>,
    R = <a, v> (the reference's HVP, REF-2, in exact arithmetic)."""
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[-1]
    ws = [Fraction(1)] * d if weight is None else _row(weight)
    out = []
    rows = zip(x.reshape(-1, d), np.asarray(g, dtype=np.float64).reshape(-1, d),
               np.asarray(v, dtype=np.float64).reshape(-1, d))
    for xr, gr, vr in rows:
        xs, vs = _row(xr), _row(vr)
        a = [gi * wi for gi, wi in zip(_row(gr), ws)]
        q, sc = _scale(xs, eps)
        s = sum(xi * vi for xi, vi in zip(xs, vs))
        p = sum(ai * xi for ai, xi in zip(a, xs))
        r = sum(ai * vi for ai, vi in zip(a, vs))
        psi = r - 3 * s * p / q
        out.append([-_times((s * ai + p * vi + xi * psi) / q, sc)
                    for ai, vi, xi in zip(a, vs, xs)])
    return out
