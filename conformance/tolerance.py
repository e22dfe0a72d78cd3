"""The error-bound tolerance model: the one place every property gets its bounds from.

Each constant below is derived in SPEC.md, section TOL ("The tolerance model"); the names match
the symbols used there. A bound is per element, in float64, and is reported in ulps of the
output dtype so that one number means the same thing for every dtype.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rmsnorm_conformance import reference
from rmsnorm_conformance.conformance.dtypes import F32, info, representable, round_to, ulp
from rmsnorm_conformance.reference import gamma
from rmsnorm_conformance.reference.memo import by_value

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
    ref_lo: np.ndarray | None = None    # float64 inputs: the reference is ref + ref_lo

    def without_zero_ok(self) -> "Bound":
        """The same bound with no exactly-zero allowance (ACC-5)."""
        return dataclasses.replace(self, zero_ok=np.zeros(self.ref.shape, bool))


def sum_roundings(d: int, x_dtype, exact_sum: bool, accumulator="float32") -> int:
    """Roundings in q = fl(mean(x^2) + eps): d-1 additions and the square itself where it is
    not exact in the accumulator (float32 inputs in float32; half inputs' squares are exact),
    three for an input wider than the accumulator (x rounded into it, then squared); none of
    the sum's when the float32 sum of squares is exact (ACC-3); plus K_FIXED."""
    if exact_sum:
        return K_FIXED
    p_x, p_acc = info(x_dtype).p, info(accumulator).p
    squares = 3 if p_x > p_acc else (1 if 2 * p_x > p_acc else 0)
    return max(d - 1, 0) + squares + K_FIXED


def accumulator_may_overflow(ms, d: int, k: int, accumulator="float32") -> np.ndarray:
    """ACC-4: rows whose sum of squares may overflow the accumulator (float32 certainly does
    above its largest value); ms is the float64 mean of squares, k the roundings of q."""
    acc = info(accumulator)
    return ms * d * (1.0 + gamma(k, acc.u)) >= acc.max


def compose(*factors) -> np.ndarray:
    """The relative error of a chain of roundings, prod (1 + rel)**count - 1, for (rel, count)
    pairs, computed without losing them (1 + 2**-53 is 1 in float64): expm1 of the sum of the
    counts times log1p of the relative errors."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.expm1(sum(np.asarray(count) * np.log1p(rel) for rel, count in factors))


def _power_of_two(w: np.ndarray) -> np.ndarray:
    """Which weights are +-2**k: their products are exact scalings in every order."""
    m, _ = np.frexp(np.abs(w))
    return m == 0.5


def output_roundings(t: np.ndarray, w: np.ndarray | None, out_dtype, rel_t,
                     accumulator="float32") -> np.ndarray:
    """Per element, the roundings into the output type T a correct implementation may make
    (SPEC.md TOL, "Counting the roundings into the output type"). ``t`` is the exact normalised
    value x n, ``w`` the weight applied (None: none), ``rel_t`` the relative error of the
    implementation's own x n in the accumulator. Where T holds the accumulator's values (float32
    or float64 outputs of a float32 computation) the roundings are the accumulator's, counted
    there: 0. For a narrower T: one rounding, one more where the weight must itself be rounded
    into T (a wider weight, the "input" convention), and one more where MLX's order, T(T(x n) w),
    meets an inexact product for some value T(x n) the implementation's x n may round to (the
    weight-then-round order, T(x n w), rounds once into T whatever the weight)."""
    out, acc = info(out_dtype), info(accumulator)
    r = np.zeros(np.shape(t), np.int64)
    if out.p >= acc.p:
        return r
    r += 1
    if w is None:
        return r
    with np.errstate(invalid="ignore", over="ignore"):
        w_t = round_to(w, out_dtype)
        span = np.abs(t) * rel_t
        candidates = (round_to(t - span, out_dtype), round_to(t + span, out_dtype))
        exact = np.logical_and.reduce([representable(c * w_t, out_dtype) | ~np.isfinite(c)
                                       for c in candidates])
    return r + (w_t != w) + ~exact


@dataclasses.dataclass
class Normalised:
    """The exact normalised value t = x n of each element and how far a correct
    implementation's own t' (before the weight and the output type) may be from it."""

    t: np.ndarray             # float64 x n (reference)
    rel_t: np.ndarray         # |t' - t| <= rel_t |t| (plus the absolute terms of the bound)
    theta_q: np.ndarray       # relative error of q (per row)
    ms: np.ndarray            # float64 mean of squares (per row)
    k: int                    # roundings of q
    rho: np.ndarray


def normalised(x, eps, exact_sum=False, accumulator="float32") -> Normalised:
    """Steps 1 to 6 of the TOL model for ``x``, in the accumulator (float32, or float64 for
    ACC-12's float64 accuracy)."""
    d = x.shape[-1]
    acc = info(accumulator)
    ms = reference.mean_square(x)
    q = ms + np.float64(eps)
    k = sum_roundings(d, x.dtype, exact_sum, accumulator)
    eta = 3 * acc.tiny
    # x rounded into the accumulator costs one more rounding of x n
    steps = C_RSQRT + 1 + (1 if info(x.dtype).p > acc.p else 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        theta_q = gamma(k, acc.u) + eta / q                      # relative error of q
        rho = theta_q / (2.0 * (1.0 - theta_q))                  # of 1/sqrt(q), before rsqrt
        rel_t = compose((rho, 1), (acc.u, steps))
    return Normalised(reference.rms_norm(x, None, eps), rel_t, theta_q, ms, k, rho)


@by_value
def forward_bound(x: np.ndarray, weight: np.ndarray | None, eps: float, out_dtype,
                  exact_sum: bool = False, flush_allowed: bool = True,
                  normalised_dtype=None, accumulator="float32") -> Bound:
    """The ACC-1 bound for ``rms_norm(x, weight, eps)`` (``weight``: the weight applied);
    ACC-3's with ``exact_sum``; without the allowance for inputs flushed to zero (SPV-6) when
    not ``flush_allowed``. ``normalised_dtype``: a type narrower than the output's that the
    normalised value is rounded to before the weight (the declared convention
    ``normalised_in_input_dtype``: one more rounding, of that type's unit roundoff).
    ``accumulator``: the type the computation is held to (float64 for ACC-12)."""
    d = x.shape[-1]
    out, acc = info(out_dtype), info(accumulator)
    u_norm = (info(normalised_dtype).u if normalised_dtype is not None
              and info(normalised_dtype).u > out.u else 0.0)
    x64 = x.astype(np.float64)
    w64 = np.ones(d) if weight is None else weight.astype(np.float64)
    norm = normalised(x, eps, exact_sum, accumulator)
    wide = x.dtype == np.float64 or (weight is not None and weight.dtype == np.float64)
    if wide:
        hi, lo = reference.rms_norm_dd(x, weight, eps, rel=reference.BOUND_REL)
        ref, ref_lo, ref_err = hi, lo, reference.BOUND_REL
    else:
        ref, ref_lo, ref_err = reference.rms_norm(x, weight, eps), None, \
            reference.reference_error(d)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r_out = output_roundings(norm.t, None if weight is None else w64, out_dtype,
                                 norm.rel_t, accumulator)
        # the weight's own rounding into the accumulator, and the product there, where exact
        # scaling does not hold
        w_steps = 0 if weight is None else (~_power_of_two(w64)).astype(np.int64) + (
            info(weight.dtype).p > acc.p)
        rel = compose((norm.rel_t, 1), (acc.u, w_steps), (out.u, r_out), (u_norm, 1)) + ref_err
        absolute = (1.0 + 2.0 * np.abs(w64)) * _sigma(out_dtype, accumulator)
        if u_norm:      # the normalised value rounded below the narrower type's normal range
            absolute = absolute + np.abs(w64) * _sigma(normalised_dtype)
        flushed = np.where(flush_allowed & (np.abs(x64) < acc.tiny), np.abs(ref), 0.0)
        bound = rel * np.abs(ref) + absolute + flushed
    bound = np.where(norm.theta_q >= UNCHECKABLE, np.inf, bound)
    bound = np.where(np.isnan(bound), np.inf, bound)
    zero_ok = np.broadcast_to(accumulator_may_overflow(norm.ms, d, norm.k, accumulator),
                              ref.shape).copy()
    return Bound(ref=ref, bound=bound, zero_ok=zero_ok, out_dtype=np.dtype(out_dtype),
                 ref_lo=ref_lo)


@dataclasses.dataclass
class Candidates:
    """For each element of a narrower-than-float32 output, the values of its type that correct
    implementations return (``values``, NaN-padded along the last axis), and whether the element
    is judged (``judged``: the computation's own error is far below half an ulp of the output
    type and the result is a normal number of a type whose subnormals may be flushed, or any
    finite float16 result)."""

    ref: np.ndarray
    values: np.ndarray
    judged: np.ndarray
    out_dtype: np.dtype


#: An element's rounding is judged where the computation's own error is below this fraction of
#: an ulp of the output type: "far below half an ulp" (SPEC.md TOL, "The last rounding").
JUDGED_BELOW_ULP = 1 / 8


def _nearest_both_ways(v, span, out_dtype):
    """The values of T nearest to each end of [v - span, v + span] (round to nearest even)."""
    return round_to(v - span, out_dtype), round_to(v + span, out_dtype)


def final_rounding_candidates(ref, span, out_dtype) -> Candidates:
    """The accepted values of results computed in float32 within ``span`` of ``ref`` (exact)
    and converted once into ``out_dtype`` (GRAD-18): the nearest value to each end."""
    with np.errstate(invalid="ignore", over="ignore"):
        values = np.stack(_nearest_both_ways(ref, span, out_dtype), axis=-1)
    return Candidates(ref, values, _judged(ref, span, out_dtype), np.dtype(out_dtype))


def _judged(ref, span, out_dtype):
    out = info(out_dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        small = span < JUDGED_BELOW_ULP * ulp(ref, out_dtype)
        normal = np.abs(ref) >= out.tiny if out.name != "float16" else np.ones(ref.shape, bool)
        return np.isfinite(ref) & small & normal & (np.abs(ref) <= out.max)


@by_value
def rounding_candidates(x, weight, eps, out_dtype, exact_sum=True,
                        normalised_value=None) -> Candidates:
    """The accepted values of each element of ``rms_norm(x, weight, eps)`` in a half output type
    T (ACC-10): round-to-nearest-even applied by either accepted order, MLX's T(T(x n') T(w)) and
    PyTorch's T(x n' w), to any float32 x n' within the TOL model's error of the exact x n. With
    ``exact_normalised`` the implementation's x n' is known to be exact (a power-of-four q, its
    own float32 output checked), so a float32 product that is exact adds no error and a tie must
    go to even: pass that exact x n as ``normalised_value``."""
    norm = normalised(x, eps, exact_sum)
    exact_normalised = normalised_value is not None
    t = norm.t if normalised_value is None else np.asarray(normalised_value, np.float64)
    rel_t = np.zeros_like(norm.rel_t) if exact_normalised else norm.rel_t
    with np.errstate(invalid="ignore", over="ignore"):
        span_t = np.abs(t) * rel_t
        if weight is None:
            cands = _nearest_both_ways(t, span_t, out_dtype)
            return Candidates(t, np.stack(cands, axis=-1), _judged(t, span_t, out_dtype),
                              np.dtype(out_dtype))
        w = weight.astype(np.float64)
        w_t = round_to(w, out_dtype)
        y = t * w
        # MLX's order: T(x n') first, then the product with T(w), rounded into T
        mlx = [round_to(c * w_t, out_dtype) for c in _nearest_both_ways(t, span_t, out_dtype)]
        # PyTorch's order: the float32 product x n' w, rounded once into T
        inexact = ~representable(y, "float32") if exact_normalised else True
        span_y = np.abs(y) * compose((rel_t, 1), (U32, np.where(inexact, 1, 0)))
        torch = _nearest_both_ways(y, span_y, out_dtype)
        judged = _judged(y, np.maximum(span_y, span_t * np.abs(w)), out_dtype)
        return Candidates(y, np.stack([*mlx, *torch], axis=-1), judged, np.dtype(out_dtype))


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
    (half float16's smallest subnormal, which may not be flushed; the smallest normal of
    float32, bfloat16 and float64, whose flush-to-zero is allowed)."""
    return max(info(t).tiny if info(t).name != "float16" else info(t).min_subnormal / 2
               for t in dtypes if t is not None)


def _max_c(*dtypes) -> float:
    """Largest finite value of the least precise of the types (where intermediates may live)."""
    return min(info(t).max for t in dtypes if t is not None)


def _row_terms(x, weight, eps, beyond_range=False, exact=False, q_max=Q_MAX,
               accumulator="float32"):
    """float64 x, weight (ones for None), n, and the relative error bound eps_n of n computed in
    the accumulator (float32, or float64 for GRAD-20; with an exact float32 sum of squares where
    ``exact``)."""
    d = x.shape[-1]
    acc = info(accumulator)
    x64 = x.astype(np.float64)
    w64 = np.ones(d) if weight is None else weight.astype(np.float64)
    ms = reference.mean_square(x)
    q = ms + np.float64(eps)
    k = sum_roundings(d, x.dtype, exact, accumulator)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        n = 1.0 / np.sqrt(q)
        theta_q = gamma(k, acc.u) + 3 * acc.tiny / q
        eps_n = theta_q / (2.0 * (1.0 - theta_q)) + C_RSQRT * acc.u
    # rows whose sum of squares may overflow the accumulator are ACC-4's business (n may be 0)
    known = (theta_q < UNCHECKABLE) & ~accumulator_may_overflow(ms, d, k, accumulator)
    checkable = known & ((q <= q_max) | beyond_range)
    return x64, w64, n, eps_n, checkable, known


def _finish(ref, bound, checkable, out_dtype, overflow=None, ref_lo=None):
    """A gradient Bound: infinite where not checkable; ``overflow`` marks elements where an
    intermediate term exceeds the range of the type it may be formed in (inf or NaN accepted);
    ``ref_lo``: the reference's low part (a double-double reference)."""
    bound = np.where(checkable, bound, np.inf)
    bound = np.where(np.isnan(bound), np.inf, bound)
    return Bound(ref=ref, bound=bound, zero_ok=np.zeros(ref.shape, bool),
                 out_dtype=np.dtype(out_dtype),
                 nonfinite_ok=None if overflow is None else np.broadcast_to(overflow,
                                                                            ref.shape).copy(),
                 ref_lo=ref_lo)


def _final_sigma(out_dtype, intermediates, last: float) -> float:
    """The absolute part of the final rounding into ``out_dtype`` below its normal range, where
    the intermediates are of another type (their sigma_c, counted in the constants, is then
    float32's, not the output type's)."""
    return last * _sigma(out_dtype) if intermediates else 0.0


@by_value
def vjp_bounds(x, weight, eps, g, beyond_range=False, exact=False, weight_dtype=None,
               intermediates=None, final_rounding=True, accumulator="float32"):
    """Bounds for (dx, dweight) of the VJP with cotangent g (dweight None without weight).
    ``weight`` is the weight applied; ``weight_dtype`` the parameter's dtype where it differs
    (a parametrised weight, capability weight_offset: dweight comes back in it).
    ``intermediates="float32"`` and ``final_rounding=False``: the error of a computation held
    in float32 throughout, before its result is converted to its type (GRAD-18).
    ``accumulator="float64"`` (with ``intermediates="float64"``): a float64 computation of
    float64 inputs (GRAD-20).

    dx = n a - x n^3 p (a = g w, p = <a, x>/d) is judged against the size of the two terms it
    subtracts, M_i = n |a_i| + |x_i| n^3 <|a|, |x|>/d, not against the (possibly cancelled) result.
    ``exact``: the float32 sum of squares and the dot product <a, x> are exact (GRAD-15), so
    neither reduction contributes a rounding error.
    """
    d = x.shape[-1]
    wdt = _weight_dtype(weight, weight_dtype)
    x64, w64, n, eps_n, ok, known = _row_terms(x, weight, eps, beyond_range, exact,
                                               accumulator=accumulator)
    u_acc, tau = info(accumulator).u, info(accumulator).tiny
    g64 = g.astype(np.float64)
    types = (intermediates,) if intermediates else (x.dtype, g.dtype, wdt)
    uc = _u_compute(*types)
    last = 1.0 if final_rounding else 0.0
    dx_lo = dw_lo = None
    if accumulator == "float64":       # bounds of float64's own size: the double-double result
        (dx_ref, dx_lo), dw = reference.rms_norm_vjp_dd(x, weight, eps, g,
                                                         rel=reference.BOUND_REL)
        dw_ref, dw_lo = (None, None) if dw is None else dw
    else:
        dx_ref, dw_ref = reference.rms_norm_vjp(x, weight, eps, g)
    with np.errstate(invalid="ignore", over="ignore"):
        a = np.abs(g64 * w64)
        p_abs = np.sum(a * np.abs(x64), axis=-1, keepdims=True) / max(d, 1)
        m = n * a + np.abs(x64) * n ** 3 * p_abs
        rel = (3 * eps_n + gamma(2 if exact else d + 2, u_acc) + K_ELEM * uc
               + reference.reference_error(d))
        top = _max_c(x.dtype, g.dtype, wdt)
        overflow = (m > top) | (a > top)
        # a rounding below the normal range (sigma_c) of an intermediate is scaled by what
        # multiplies it afterwards: g w by n, x n by n^2 p, the result and the difference by 1;
        # float32 intermediates feeding x_i (n^3 p, n^2 p) by |x_i| (1 + n)
        sc = _sigma(*types)
        absolute = sc * (2 + n + n ** 2 * p_abs) + tau * np.abs(x64) * (1 + n) \
            + _final_sigma(x.dtype, intermediates, last)
        flushed = np.where(np.abs(x64) < tau, m, 0.0)
        dx_b = _finish(dx_ref, rel * m + last * info(x.dtype).u * np.abs(dx_ref) + absolute
                       + flushed, ok, x.dtype, overflow, ref_lo=dx_lo)
        if weight is None:
            return dx_b, None
        terms = np.abs(g64 * x64 * n).reshape(-1, d)
        rows = terms.shape[0]
        # dweight needs n only (not n^3): every row whose q is known counts
        eps_max = np.max(np.where(known, eps_n, 0.0)) if eps_n.size else 0.0
        rel_w = eps_max + gamma(rows, u_acc) + K_ELEM * uc + reference.reference_error(d)
        total = np.sum(terms, axis=0)
        row_ok = np.all(known) if known.size else True
        # per row: x n rounded (sigma_c, then scaled by |g|) and the product g (x n) (sigma_c)
        low = np.sum((sc * (1 + np.abs(g64))).reshape(-1, d), axis=0)
        dw_bound = (rel_w * total + last * (info(wdt).u * np.abs(dw_ref) + _sigma(wdt)) + low)
        dw_b = _finish(dw_ref, dw_bound, np.broadcast_to(row_ok, dw_ref.shape), wdt,
                       total > top, ref_lo=dw_lo)
    return dx_b, dw_b


@by_value
def jvp_bound(x, weight, eps, tx, tweight, out_dtype, beyond_range=False, weight_dtype=None,
              intermediates=None, final_rounding=True, accumulator="float32"):
    """Bound for the tangent ty = (tx n + x dn) w + x n tw, dn = -n^3 <x, tx>/d, against the size
    of its terms (``weight``, ``weight_dtype``: as for ``vjp_bounds``)."""
    d = x.shape[-1]
    wdt = _weight_dtype(weight, weight_dtype)
    x64, w64, n, eps_n, ok, known = _row_terms(x, weight, eps, beyond_range,
                                               accumulator=accumulator)
    u_acc, tau = info(accumulator).u, info(accumulator).tiny
    tx64 = np.abs(tx.astype(np.float64))
    tw64 = np.zeros(d) if tweight is None else np.abs(tweight.astype(np.float64))
    ref = reference.rms_norm_jvp(x, weight, eps, tx, tweight)
    types = (intermediates,) if intermediates else (x.dtype, out_dtype, wdt)
    uc = _u_compute(*types)
    last = 1.0 if final_rounding else 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        s_abs = np.sum(np.abs(x64) * tx64, axis=-1, keepdims=True) / max(d, 1)
        pre = tx64 * n + np.abs(x64) * n ** 3 * s_abs          # the tangent before the weight
        m = pre * np.abs(w64) + np.abs(x64) * n * tw64
        overflow = (pre > _max_c(x.dtype, out_dtype)) | (m > _max_c(x.dtype, out_dtype))
        rel = 3 * eps_n + gamma(d + 2, u_acc) + K_ELEM * uc + reference.reference_error(d)
        sc = _sigma(*types)
        # tx n and x n rounded (scaled by |w| + |tw| and n^2 s |w|), the products and the sum
        absolute = (sc * (3 + (np.abs(w64) + tw64) * (1 + n ** 2 * s_abs) + np.abs(w64))
                    + tau * np.abs(x64) * (1 + n) * (1 + np.abs(w64))
                    + _final_sigma(out_dtype, intermediates, last))
        bound = rel * m + last * info(out_dtype).u * np.abs(ref) + absolute
    return _finish(ref, bound, ok, out_dtype, overflow)


@by_value
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
        # a second-order graph in the least precise type may also form n^3 and n^5 before
        # scaling them down (n^5 is the larger wherever either exceeds 1), and x^2 (the square
        # it differentiates): beyond that type's range an inf or NaN is accepted (TOL,
        # "Intermediates beyond the range"; GRAD-17 asks for finite values)
        top = _max_c(x.dtype, g.dtype, wdt)
        peaks = np.maximum(n ** 5, np.max(ax, axis=-1, keepdims=True) ** 2)
        overflow = (m > top) | (peaks > top)
    return _finish(ref, bound, ok, x.dtype, overflow)


# ---------------------------------------------------------------------------------------------
# Self-comparisons (SPEC.md, TOL section, "Self-comparisons"; MET-2, MET-4, MET-7).

def self_bound(ref: np.ndarray, weight: np.ndarray | None, out_dtype,
               roundings: np.ndarray | int = 2) -> np.ndarray:
    """How far two evaluations by one correct implementation of cases with the *same exact
    float32 sum of squares* (up to exact scaling by a power of four) may differ, per element of
    the reference output ``ref``: their q agree exactly, so only an approximate rsqrt that is not
    scale-exact (C_RSQRT u each, 2 C_RSQRT u apart), the product x n and, unless the weight is a
    power of two, the product with it (u each), and the roundings into the output type can
    separate them: one ulp of T per rounding an element allows (``roundings``, per element:
    ``output_roundings``; two nearly equal values rounded once may land one ulp apart); results
    below the normal range add the absolute term twice."""
    w = np.ones(1) if weight is None else np.abs(weight.astype(np.float64))
    steps = C_RSQRT + 1 + (0 if weight is None else (~_power_of_two(w)).astype(np.int64))
    a = np.abs(ref)
    return (2 * steps * U32 * a + np.asarray(roundings) * ulp(ref, out_dtype)
            + 2 * (1.0 + 2.0 * w) * _sigma(out_dtype))


@by_value
def self_comparison_bound(x, weight, eps, ref, out_dtype, exact_sum=True) -> np.ndarray:
    """``self_bound`` with each element's own count of roundings into the output type."""
    norm = normalised(x, eps, exact_sum)
    r = output_roundings(norm.t, None if weight is None else weight.astype(np.float64),
                         out_dtype, norm.rel_t)
    return self_bound(ref, weight, out_dtype, np.maximum(r, 1) if info(out_dtype).p < 24
                      else np.ones(np.shape(ref), np.int64))
