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
