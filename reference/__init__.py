"""Float64 NumPy reference of RMSNorm (forward, VJP, JVP, HVP).

``y = x / sqrt(mean(x**2, axis=-1) + eps) * weight`` evaluated in float64 from the exact values of
the (float32/float16/bfloat16) inputs. Its own error is bounded by ``reference_error(d)`` relative
to |y| (SPEC.md REF-1): the float64 sum of d squares, the division by d, the eps addition, the
square root, the division and the weight product, each rounded once in float64 with unit
roundoff 2**-53. tests/test_reference.py checks that bound against an exact rational oracle.

The gradients are right to 8 * 2**-53 of the result itself, however much their terms cancel
(REF-3; ``_grad``). Inputs holding float64 values (any argument of dtype float64; issue 18) take
a double-double path whose own error is at most 2**-96 of the result (REF-4): ``rms_norm_dd`` and
``rms_norm_vjp_dd`` return its (hi, lo) pairs, ``rms_norm`` the float64 hi, which is the
correctly rounded result up to that 2**-96; ``rms_norm_vjp`` stays within 8 * 2**-53 for them
(REF-3), and the bounds of a float64 computation (GRAD-20) take ``rms_norm_vjp_dd``.

The public functions are kept per process by their arguments' values (``memo.by_value``, REF-5):
every implementation is judged on the same examples; their results are read-only arrays.
"""

from __future__ import annotations

import numpy as np

from . import _grad
from .memo import by_value


def _has_bf16() -> bool:
    try:
        import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy)
        return True
    except ImportError:
        return False

U64 = 2.0 ** -53


def gamma(k, u):
    """Higham's gamma_k = k u / (1 - k u): the relative error bound of k chained roundings."""
    k = np.asarray(k, dtype=np.float64)
    return k * u / (1.0 - k * u)


#: The accuracy the tolerance model asks of the double-double reference (float64 inputs): far
#: below float64's own 2**-53, so that it is negligible in every float64 bound, and within
#: what the double-double path certifies without falling back to exact arithmetic (measured
#: up to 2**-93 with a weight at d = 8193).
BOUND_REL = 2.0 ** -80


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


def _is_narrow(*arrays) -> bool:
    """True when every given array is float32, float16 or bfloat16: values of at most 24
    significant bits, whose float64 squares and pairwise products are exact."""
    for a in arrays:
        if a is not None and getattr(a, "dtype", None) not in _NARROW:
            if np.asarray(a).dtype not in _NARROW:
                return False
    return True


_NARROW = frozenset([np.dtype(np.float32), np.dtype(np.float16)]
                    + [np.dtype(t) for t in ("bfloat16",) if _has_bf16()])


@by_value
def rms_norm(x, weight, eps):
    """Forward pass in float64. ``weight=None`` means no scaling. float64 inputs: the hi part
    of ``rms_norm_dd`` to ``BOUND_REL`` (REF-4: within 2**-53 (1 + 2**-26) of exact)."""
    if not _is_narrow(x, weight):
        return rms_norm_dd(x, weight, eps, rel=BOUND_REL)[0]
    x64 = _f64(x)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        y = x64 * inv_rms(x, eps)
        if weight is not None:
            y = y * _f64(weight)
    return y


def _rows(a, shape, to_f64=True):
    """a (float64 unless not to_f64) as a 2-D array of rows of the last axis (d = 0 and empty
    leading axes too)."""
    a = _f64(a) if to_f64 else np.asarray(a)
    return a.reshape(int(np.prod(shape[:-1], dtype=np.int64)), shape[-1])


@by_value
def rms_norm_dd(x, weight, eps, rel=2.0 ** -96):
    """Forward pass in double-double for inputs of any float dtype (REF-4): (hi, lo), float64
    arrays of x's shape with |hi + lo - y| <= rel |y| (+ float64 underflow; rel 2**-96 unless
    a caller needs less: the tolerance model asks for 2**-80, ``BOUND_REL``), hi the float64
    nearest to hi + lo. Per row: Q = sum(x**2) + d eps from exact products (two_prod) summed by
    extraction, n = sqrt(d/Q) by one double-double Newton step, then x w n in double-double;
    elements whose error bound is not certified (magnitudes outside 2**-240..2**240, or
    cancellation) are computed exactly (rational Q, 60-digit square root)."""
    x64 = _f64(x)
    shape = x64.shape
    xr = _rows(x64, shape)
    w = _f64(weight)
    hi = np.empty_like(xr)
    lo = np.zeros_like(xr)
    if xr.size:
        _grad.forward_dd(xr, w, eps, hi, lo, rel)
    return hi.reshape(shape), lo.reshape(shape)


@by_value
def rms_norm_vjp(x, weight, eps, g):
    """Vector-Jacobian product: (dx, dweight) for cotangent g (dweight None without weight).

    With n = 1/sqrt(mean(x**2) + eps), a = g * weight and Q = sum(x**2) + d eps:
      dx = n * a - x * n**3 * mean(a * x) = n * (a - x <a, x>/Q)   (mean over the last axis)
      dweight = sum over all leading axes of g * x * n
    dx is within 8 * 2**-53 of its exact value (REF-3), computed as ``_grad`` says; dweight
    within 2**-53 |dweight| + (3 * 2**-53 + gamma_{R-1}) sum over the R rows of |g x n|.
    Inputs holding float64 values take the same certified path in float64 arithmetic (their
    products split exactly; within 8 * 2**-53 too); ``rms_norm_vjp_dd`` is the double-double
    result, for bounds that need more (GRAD-20).
    """
    if not _is_narrow(x, weight, g):
        x64, g64 = _f64(x), _f64(g)
        shape = x64.shape
        dx, dw = _grad.vjp(_rows(x64, shape), _rows(g64, shape), _f64(weight), eps,
                           narrow=False)
        return dx.reshape(shape), dw
    # x and g keep their dtypes: _grad converts them block by block (a 1 MB float64 temporary
    # costs more in page faults than the arithmetic on it)
    x, g = np.asarray(x), np.asarray(g)
    shape = x.shape
    dx, dw = _grad.vjp(_rows(x, shape, False), _rows(g, shape, False), _f64(weight), eps,
                       narrow=True)
    return dx.reshape(shape), dw


@by_value
def rms_norm_vjp_dd(x, weight, eps, g, rel=2.0 ** -96):
    """The VJP in double-double (REF-4): ((dx_hi, dx_lo), (dw_hi, dw_lo) or None), with
    |dx_hi + dx_lo - dx| <= rel |dx| (2**-96 unless asked for less) and |dw_hi + dw_lo - dw|
    <= 2**-96 sum|g x n| (+ float64 underflow)."""
    x64, g64 = _f64(x), _f64(g)
    shape = x64.shape
    w = _f64(weight)
    narrow = _is_narrow(x, weight, g)
    (hi, lo), dw = _grad.vjp(_rows(x64, shape), _rows(g64, shape), w, eps, narrow=narrow,
                             dd=True, dd_rel=rel)
    return (hi.reshape(shape), lo.reshape(shape)), dw


@by_value
def rms_norm_jvp(x, weight, eps, tx, tweight=None):
    """Jacobian-vector product: the tangent of y for tangents tx (and tweight),
    ty = (tx n - x n**3 <x, tx>/d) w + x n tw = n (w tx + x tw - w x <x, tx>/Q),
    within 8 * 2**-53 of its exact value (REF-3)."""
    x64, tx64 = _f64(x), _f64(tx)
    shape = x64.shape
    narrow = _is_narrow(x, weight, tx, tweight)
    ty = _grad.jvp_ty(_rows(x64, shape), _f64(weight), eps, _rows(tx64, shape),
                      _f64(tweight), narrow)
    return ty.reshape(shape)


@by_value
def rms_norm_hvp(x, weight, eps, g, v):
    """Second order: the derivative of the VJP's dx (cotangent g fixed) along the direction v,
    i.e. H v for H the Hessian of L(x) = <g, rms_norm(x, weight, eps)>.

    With a = g * weight, p = <a, x>/d, s = <x, v>/d, t = <a, v>/d:
      H v = -n^3 s a - n^3 p v + 3 n^5 s p x - n^3 t x
    computed as -n/Q (d s a + d p v + x (d t - 3 d^2 s p / Q)), within 8 * 2**-53 of its exact
    value (REF-3); v may hold any float64 values.
    """
    x64, g64, v64 = _f64(x), _f64(g), _f64(v)
    shape = x64.shape
    narrow = _is_narrow(x, weight, g)
    out = _grad.hvp(_rows(x64, shape), _rows(g64, shape), _f64(weight), eps,
                    _rows(v64, shape), narrow)
    return out.reshape(shape)
