"""Float64 NumPy reference of RMSNorm (forward, VJP, JVP).

``y = x / sqrt(mean(x**2, axis=-1) + eps) * weight`` evaluated in float64 from the exact values of
the (float32/float16/bfloat16) inputs. Its own error is bounded by ``reference_error(d)`` relative
to |y| (SPEC.md, TOL section): the float64 sum of d squares, the division by d, the eps addition,
the square root, the division and the weight product, each rounded once in float64 with unit
roundoff 2**-53. tests/test_reference.py checks that bound against an exact rational oracle.
"""

from __future__ import annotations

import numpy as np

U64 = 2.0 ** -53


def gamma(k, u):
    """Higham's gamma_k = k u / (1 - k u): the relative error bound of k chained roundings."""
    k = np.asarray(k, dtype=np.float64)
    return k * u / (1.0 - k * u)


def reference_error(d: int):
    """Relative error bound of ``rms_norm`` against exact arithmetic for axis length d.

    The sum of d squares costs gamma_{2d-1} in the worst case (d squares and d-1 additions,
    order independent for non-negative terms); mean, eps addition and sqrt add 3 roundings, but the
    sqrt halves the relative error of its argument; the division and the weight product add 2.
    Bounding generously: gamma_{2d+6}."""
    return gamma(2 * d + 6, U64)


def _f64(a):
    return None if a is None else np.asarray(a).astype(np.float64)


def mean_square(x):
    """float64 mean of squares over the last axis, keepdims (0 for an empty axis)."""
    x64 = _f64(x)
    if x64.shape[-1] == 0:
        return np.zeros(x64.shape[:-1] + (1,))
    return np.mean(x64 * x64, axis=-1, keepdims=True)


def inv_rms(x, eps):
    """n = 1 / sqrt(mean(x**2) + eps), keepdims, float64."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / np.sqrt(mean_square(x) + np.float64(eps))


def rms_norm(x, weight, eps):
    """Forward pass in float64. ``weight=None`` means no scaling."""
    x64 = _f64(x)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        y = x64 * inv_rms(x, eps)
        if weight is not None:
            y = y * _f64(weight)
    return y


def rms_norm_vjp(x, weight, eps, g):
    """Vector-Jacobian product: (dx, dweight) for cotangent g (dweight None without weight).

    With n = inv_rms(x, eps) and gw = g * weight:
      dx = n * gw - x * n**3 * mean(gw * x)      (mean over the last axis)
      dweight = sum over all leading axes of g * x * n
    """
    x64, g64 = _f64(x), _f64(g)
    n = inv_rms(x, eps)
    gw = g64 if weight is None else g64 * _f64(weight)
    d = x64.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        proj = np.sum(gw * x64, axis=-1, keepdims=True) / max(d, 1)
        dx = n * gw - x64 * n ** 3 * proj
        dw = None
        if weight is not None:
            dw = np.sum(g64 * x64 * n, axis=tuple(range(x64.ndim - 1)))
    return dx, dw


def rms_norm_jvp(x, weight, eps, tx, tweight=None):
    """Jacobian-vector product: the tangent of y for tangents tx (and tweight)."""
    x64, tx64 = _f64(x), _f64(tx)
    n = inv_rms(x, eps)
    d = x64.shape[-1]
    w = np.ones(d) if weight is None else _f64(weight)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        dn = -n ** 3 * np.sum(x64 * tx64, axis=-1, keepdims=True) / max(d, 1)
        ty = (tx64 * n + x64 * dn) * w
        if tweight is not None:
            ty = ty + x64 * n * _f64(tweight)
    return ty


def rms_norm_hvp(x, weight, eps, g, v):
    """Second order: the derivative of the VJP's dx (cotangent g fixed) along the direction v,
    i.e. H v for H the Hessian of L(x) = <g, rms_norm(x, weight, eps)>.

    With a = g * weight, p = <a, x>/d, s = <x, v>/d, t = <a, v>/d:
      H v = -n^3 s a - n^3 p v + 3 n^5 s p x - n^3 t x
    """
    x64, g64, v64 = _f64(x), _f64(g), _f64(v)
    n = inv_rms(x, eps)
    a = g64 if weight is None else g64 * _f64(weight)
    d = max(x64.shape[-1], 1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        p = np.sum(a * x64, axis=-1, keepdims=True) / d
        s = np.sum(x64 * v64, axis=-1, keepdims=True) / d
        t = np.sum(a * v64, axis=-1, keepdims=True) / d
        return -n ** 3 * s * a - n ** 3 * p * v64 + 3 * n ** 5 * s * p * x64 - n ** 3 * t * x64
