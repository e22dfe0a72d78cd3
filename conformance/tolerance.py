"""The error-bound tolerance model: the one place every property gets its bounds from.

Each constant below is derived in SPEC.md, section TOL ("The tolerance model"); the names match
the symbols used there. A bound is per element, in float64, and is reported in ulps of the
output dtype so that one number means the same thing for every dtype.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rmsnorm_conformance import reference
from rmsnorm_conformance.conformance.dtypes import F32, info, ulp
from rmsnorm_conformance.reference import gamma

U32 = F32.u            # unit roundoff of the float32 accumulator
TAU = F32.tiny         # float32's smallest normal: the flush-to-zero threshold (SPEC.md, TOL)
C_RSQRT = 4            # rsqrt within 2 ulp = 4u (GPU approximations); sqrt+divide costs 2u
K_FIXED = 4            # roundings in q besides the sum: 1/d (2: reciprocal and product), eps (2)
ETA_Q = 3 * TAU        # absolute error of q from flushed/underflowed squares, sums and eps
UNCHECKABLE = 0.5      # relative error of q at or above which no output value can be bounded


@dataclasses.dataclass
class Bound:
    """Reference values and per-element bounds for one computed array.

    ref:        float64 reference output.
    bound:      per-element absolute error bound (inf where nothing can be bounded).
    zero_ok:    elements that may also be exactly zero (rows whose float32 sum of squares may
                overflow: ACC-4; never for gradients).
    out_dtype:  the output dtype the bound is stated for.
    nonfinite_ok: elements that may also be inf or NaN (gradients: an intermediate term of the
                computation exceeds the range of the least precise type involved); None: none.
    ref_name:   what ``ref`` is, in messages: the float64 reference, or (self-comparisons) the
                implementation's own other output, e.g. "f(x, eps)".
    truth:      for self-comparisons, the float64 reference of the same quantity (printed
                beside, never judged against); None otherwise.
    """

    ref: np.ndarray
    bound: np.ndarray
    zero_ok: np.ndarray
    out_dtype: np.dtype
    nonfinite_ok: np.ndarray | None = None
    ref_name: str = "float64 reference"
    truth: np.ndarray | None = None

    def without_zero_ok(self) -> "Bound":
        """The same bound with no exactly-zero allowance (ACC-5)."""
        return dataclasses.replace(self, zero_ok=np.zeros(self.ref.shape, bool))


def sum_roundings(d: int, x_dtype, exact_sum: bool) -> int:
    """Roundings in q = fl(mean(x^2) + eps): d-1 additions and, for float32 inputs, the square
    itself (squares of half types are exact in float32); none of those when the float32 sum of
    squares is exact (ACC-3); plus K_FIXED."""
    if exact_sum:
        return K_FIXED
    return max(d - 1, 0) + (1 if info(x_dtype).name == "float32" else 0) + K_FIXED


def accumulator_may_overflow(ms, d: int, k: int) -> np.ndarray:
    """ACC-4: rows whose float32 sum of squares may overflow (it certainly does above F32.max);
    ms is the float64 mean of squares, k the roundings of q (``sum_roundings``)."""
    return ms * d * (1.0 + gamma(k, U32)) >= F32.max


def output_roundings(weight_dtype, out_dtype) -> int:
    """Roundings into the output type T: the normalised value and the product with the weight
    (MLX), or one (PyTorch) within that; one more where the weight is wider than T and is rounded
    into it before the product (the "input" convention for mixed dtypes, PyTorch's)."""
    if weight_dtype is not None and info(weight_dtype).p > info(out_dtype).p:
        return 3
    return 2


def forward_bound(x: np.ndarray, weight: np.ndarray | None, eps: float, out_dtype,
                  exact_sum: bool = False, flush_allowed: bool = True,
                  normalised_dtype=None) -> Bound:
    """The ACC-1 bound for ``rms_norm(x, weight, eps)`` (``weight``: the weight applied);
    ACC-3's with ``exact_sum``; without the allowance for inputs flushed to zero (SPV-6) when
    not ``flush_allowed``. ``normalised_dtype``: a type narrower than the output's that the
    normalised value is rounded to before the weight (the declared convention
    ``normalised_in_input_dtype``: one more rounding, of that type's unit roundoff)."""
    d = x.shape[-1]
    out = info(out_dtype)
    r_out = output_roundings(None if weight is None else weight.dtype, out_dtype)
    u_norm = (info(normalised_dtype).u if normalised_dtype is not None
              and info(normalised_dtype).u > out.u else 0.0)
    x64 = x.astype(np.float64)
    w64 = np.ones(d) if weight is None else weight.astype(np.float64)
    ref = reference.rms_norm(x, weight, eps)
    ms = reference.mean_square(x)
    q = ms + np.float64(eps)
    k = sum_roundings(d, x.dtype, exact_sum)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        theta_q = gamma(k, U32) + ETA_Q / q                      # relative error of q
        rho = theta_q / (2.0 * (1.0 - theta_q))                  # of 1/sqrt(q), before rsqrt
        rel = ((1.0 + rho) * (1.0 + U32) ** (C_RSQRT + 1) * (1.0 + out.u) ** r_out
               * (1.0 + u_norm) - 1.0 + reference.reference_error(d))
        absolute = (1.0 + 2.0 * np.abs(w64)) * _sigma(out_dtype)
        if u_norm:      # the normalised value rounded below the narrower type's normal range
            absolute = absolute + np.abs(w64) * _sigma(normalised_dtype)
        flushed = np.where(flush_allowed & (np.abs(x64) < TAU), np.abs(ref), 0.0)
        bound = rel * np.abs(ref) + absolute + flushed
    bound = np.where(theta_q >= UNCHECKABLE, np.inf, bound)
    bound = np.where(np.isnan(bound), np.inf, bound)
    zero_ok = np.broadcast_to(accumulator_may_overflow(ms, d, k), ref.shape).copy()
    return Bound(ref=ref, bound=bound, zero_ok=zero_ok, out_dtype=np.dtype(out_dtype))



# ---------------------------------------------------------------------------------------------
# Gradients (SPEC.md, TOL section, "Gradients").

K_ELEM = 8          # elementwise roundings allowed in the least precise type involved
Q_MAX = 2.0 ** 80   # rows with mean(x^2) + eps above this leave float32's range in n^3 (GRAD-10/11)
Q_MAX_HVP = 2.0 ** 48   # ... and above this n^5, which second order forms (GRAD-12)


def _weight_dtype(weight, weight_dtype):
    """The dtype the implementation is given the weight in (and returns dweight in)."""
    if weight is None:
        return None
    return np.dtype(weight_dtype) if weight_dtype is not None else weight.dtype


def _u_compute(*dtypes) -> float:
    """Unit roundoff of the least precise of the types involved (elementwise steps may round
    in any of them)."""
    return max(info(t).u for t in dtypes if t is not None)


def _sigma(*dtypes) -> float:
    """Absolute error of one rounding below the normal range, in the least precise of the types
    (half float16's smallest subnormal; TAU for float32/bfloat16, whose flush-to-zero is allowed)."""
    return max(TAU if info(t).name != "float16" else info(t).min_subnormal / 2
               for t in dtypes if t is not None)


def _max_c(*dtypes) -> float:
    """Largest finite value of the least precise of the types (where intermediates may live)."""
    return min(info(t).max for t in dtypes if t is not None)


def _row_terms(x, weight, eps, beyond_range=False, exact=False, q_max=Q_MAX):
    """float64 x, weight (ones for None), n, and the relative error bound eps_n of a float32 n
    (with an exact float32 sum of squares where ``exact``)."""
    d = x.shape[-1]
    x64 = x.astype(np.float64)
    w64 = np.ones(d) if weight is None else weight.astype(np.float64)
    ms = reference.mean_square(x)
    q = ms + np.float64(eps)
    k = sum_roundings(d, x.dtype, exact)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        n = 1.0 / np.sqrt(q)
        theta_q = gamma(k, U32) + ETA_Q / q
        eps_n = theta_q / (2.0 * (1.0 - theta_q)) + C_RSQRT * U32
    # rows whose float32 sum of squares may overflow are ACC-4's business (n may be 0)
    known = (theta_q < UNCHECKABLE) & ~accumulator_may_overflow(ms, d, k)
    checkable = known & ((q <= q_max) | beyond_range)
    return x64, w64, n, eps_n, checkable, known


def _finish(ref, bound, checkable, out_dtype, overflow=None):
    """A gradient Bound: infinite where not checkable; ``overflow`` marks elements where an
    intermediate term exceeds the range of the type it may be formed in (inf or NaN accepted)."""
    bound = np.where(checkable, bound, np.inf)
    bound = np.where(np.isnan(bound), np.inf, bound)
    return Bound(ref=ref, bound=bound, zero_ok=np.zeros(ref.shape, bool),
                 out_dtype=np.dtype(out_dtype),
                 nonfinite_ok=None if overflow is None else np.broadcast_to(overflow,
                                                                            ref.shape).copy())


def vjp_bounds(x, weight, eps, g, beyond_range=False, exact=False, weight_dtype=None):
    """Bounds for (dx, dweight) of the VJP with cotangent g (dweight None without weight).
    ``weight`` is the weight applied; ``weight_dtype`` the parameter's dtype where it differs
    (a parametrised weight, capability weight_offset: dweight comes back in it).

    dx = n a - x n^3 p (a = g w, p = <a, x>/d) is judged against the size of the two terms it
    subtracts, M_i = n |a_i| + |x_i| n^3 <|a|, |x|>/d, not against the (possibly cancelled) result.
    ``exact``: the float32 sum of squares and the dot product <a, x> are exact (GRAD-15), so
    neither reduction contributes a rounding error.
    """
    d = x.shape[-1]
    wdt = _weight_dtype(weight, weight_dtype)
    x64, w64, n, eps_n, ok, known = _row_terms(x, weight, eps, beyond_range, exact)
    g64 = g.astype(np.float64)
    uc = _u_compute(x.dtype, g.dtype, wdt)
    dx_ref, dw_ref = reference.rms_norm_vjp(x, weight, eps, g)
    with np.errstate(invalid="ignore", over="ignore"):
        a = np.abs(g64 * w64)
        p_abs = np.sum(a * np.abs(x64), axis=-1, keepdims=True) / max(d, 1)
        m = n * a + np.abs(x64) * n ** 3 * p_abs
        rel = (3 * eps_n + gamma(2 if exact else d + 2, U32) + K_ELEM * uc
               + reference.reference_error(d))
        top = _max_c(x.dtype, g.dtype, wdt)
        overflow = (m > top) | (a > top)
        # a rounding below the normal range (sigma_c) of an intermediate is scaled by what
        # multiplies it afterwards: g w by n, x n by n^2 p, the result and the difference by 1;
        # float32 intermediates feeding x_i (n^3 p, n^2 p) by |x_i| (1 + n)
        sc = _sigma(x.dtype, g.dtype, wdt)
        absolute = sc * (2 + n + n ** 2 * p_abs) + TAU * np.abs(x64) * (1 + n)
        flushed = np.where(np.abs(x64) < TAU, m, 0.0)
        dx_b = _finish(dx_ref, rel * m + info(x.dtype).u * np.abs(dx_ref) + absolute + flushed,
                       ok, x.dtype, overflow)
        if weight is None:
            return dx_b, None
        terms = np.abs(g64 * x64 * n).reshape(-1, d)
        rows = terms.shape[0]
        # dweight needs n only (not n^3): every row whose q is known counts
        eps_max = np.max(np.where(known, eps_n, 0.0)) if eps_n.size else 0.0
        rel_w = eps_max + gamma(rows, U32) + K_ELEM * uc + reference.reference_error(d)
        total = np.sum(terms, axis=0)
        row_ok = np.all(known) if known.size else True
        # per row: x n rounded (sigma_c, then scaled by |g|) and the product g (x n) (sigma_c)
        low = np.sum((sc * (1 + np.abs(g64))).reshape(-1, d), axis=0)
        dw_bound = (rel_w * total + info(wdt).u * np.abs(dw_ref) + _sigma(wdt) + low)
        dw_b = _finish(dw_ref, dw_bound, np.broadcast_to(row_ok, dw_ref.shape), wdt,
                       total > top)
    return dx_b, dw_b


def jvp_bound(x, weight, eps, tx, tweight, out_dtype, beyond_range=False, weight_dtype=None):
    """Bound for the tangent ty = (tx n + x dn) w + x n tw, dn = -n^3 <x, tx>/d, against the size
    of its terms (``weight``, ``weight_dtype``: as for ``vjp_bounds``)."""
    d = x.shape[-1]
    wdt = _weight_dtype(weight, weight_dtype)
    x64, w64, n, eps_n, ok, known = _row_terms(x, weight, eps, beyond_range)
    tx64 = np.abs(tx.astype(np.float64))
    tw64 = np.zeros(d) if tweight is None else np.abs(tweight.astype(np.float64))
    ref = reference.rms_norm_jvp(x, weight, eps, tx, tweight)
    uc = _u_compute(x.dtype, out_dtype, wdt)
    with np.errstate(invalid="ignore", over="ignore"):
        s_abs = np.sum(np.abs(x64) * tx64, axis=-1, keepdims=True) / max(d, 1)
        pre = tx64 * n + np.abs(x64) * n ** 3 * s_abs          # the tangent before the weight
        m = pre * np.abs(w64) + np.abs(x64) * n * tw64
        overflow = (pre > _max_c(x.dtype, out_dtype)) | (m > _max_c(x.dtype, out_dtype))
        rel = 3 * eps_n + gamma(d + 2, U32) + K_ELEM * uc + reference.reference_error(d)
        sc = _sigma(x.dtype, out_dtype, wdt)
        # tx n and x n rounded (scaled by |w| + |tw| and n^2 s |w|), the products and the sum
        absolute = (sc * (3 + (np.abs(w64) + tw64) * (1 + n ** 2 * s_abs) + np.abs(w64))
                    + TAU * np.abs(x64) * (1 + n) * (1 + np.abs(w64)))
        bound = rel * m + info(out_dtype).u * np.abs(ref) + absolute
    return _finish(ref, bound, ok, out_dtype, overflow)


def hvp_bound(x, weight, eps, g, v, beyond_range=False, weight_dtype=None):
    """Bound for the second-order product H v (reference.rms_norm_hvp), against the size of its
    four terms; the second-order graph has about twice the roundings of the first, so the
    constants double (5 eps_n for n^5, two reductions, 2 K_ELEM)."""
    d = x.shape[-1]
    wdt = _weight_dtype(weight, weight_dtype)
    x64, w64, n, eps_n, ok, known = _row_terms(x, weight, eps, beyond_range, q_max=Q_MAX_HVP)
    a = np.abs(g.astype(np.float64) * w64)
    v64 = np.abs(v.astype(np.float64))
    ref = reference.rms_norm_hvp(x, weight, eps, g, v)
    uc = _u_compute(x.dtype, g.dtype, wdt)
    dd = max(d, 1)
    with np.errstate(invalid="ignore", over="ignore"):
        ax = np.abs(x64)
        s = np.sum(ax * v64, axis=-1, keepdims=True) / dd
        p = np.sum(a * ax, axis=-1, keepdims=True) / dd
        t = np.sum(a * v64, axis=-1, keepdims=True) / dd
        m = n ** 3 * s * a + n ** 3 * p * v64 + 3 * n ** 5 * s * p * ax + n ** 3 * t * ax
        rel = (5 * eps_n + 2 * gamma(d + 2, U32) + 2 * K_ELEM * uc
               + reference.reference_error(d))
        sc = _sigma(x.dtype, g.dtype, wdt)
        # as for dx, with the extra factors of the second order (n^2 s, n^2 t, 3 n^4 s p)
        absolute = (sc * (4 + n + n ** 2 * (p + s + t) + 3 * n ** 4 * s * p)
                    + TAU * (ax + v64) * (1 + n) ** 3)
        bound = rel * m + info(x.dtype).u * np.abs(ref) + absolute
        overflow = m > _max_c(x.dtype, g.dtype, wdt)
    return _finish(ref, bound, ok, x.dtype, overflow)


# ---------------------------------------------------------------------------------------------
# Self-comparisons (SPEC.md, TOL section, "Self-comparisons"; MET-2, MET-4, MET-7).

def self_bound(ref: np.ndarray, weight: np.ndarray | None, out_dtype) -> np.ndarray:
    """How far two evaluations by one correct implementation of cases with the *same exact
    float32 sum of squares* (up to exact scaling by a power of four) may differ, per element of
    the reference output ``ref``: their q agree exactly, so only an approximate rsqrt that is not
    scale-exact (C_RSQRT u each, 2 C_RSQRT u apart), the product x n (u each) and the roundings
    into the output type (at most 2 ulp of T apart: two roundings of nearly equal values) can
    separate them; results below the normal range add the absolute term twice."""
    out = info(out_dtype)
    w = 1.0 if weight is None else np.abs(weight.astype(np.float64))
    sigma = TAU if out.name != "float16" else out.min_subnormal / 2
    a = np.abs(ref)
    return (2 * (C_RSQRT + 1) * U32 * a + 2 * ulp(ref, out_dtype)
            + 2 * (1.0 + 2.0 * w) * sigma)
