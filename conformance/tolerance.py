"""The error-bound tolerance model: the one place every property gets its bounds from.

Each constant below is derived in SPEC.md, section TOL ("The tolerance model"); the names match
the symbols used there. A bound is per element, in float64, and is reported in ulps of the
output dtype so that one number means the same thing for every dtype.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import reference
from conformance.dtypes import F32, info
from reference import gamma

U32 = F32.u            # unit roundoff of the float32 accumulator
TAU = F32.tiny         # float32's smallest normal: the flush-to-zero threshold (TOL-FTZ)
C_RSQRT = 4            # rsqrt within 2 ulp = 4u (GPU approximations); sqrt+divide costs 2u
K_FIXED = 4            # roundings in q besides the sum: 1/d (2: reciprocal and product), eps (2)
ETA_Q = 3 * TAU        # absolute error of q from flushed/underflowed squares, sums and eps
UNCHECKABLE = 0.5      # relative error of q at or above which no output value can be bounded


@dataclasses.dataclass
class ForwardBound:
    """Reference values and per-element bounds for one forward call.

    ref:        float64 reference output.
    bound:      per-element absolute error bound (inf where nothing can be bounded).
    zero_ok:    elements that may also be exactly zero (rows whose float32 sum of squares may
                overflow: ACC-4).
    out_dtype:  the output dtype the bound is stated for.
    """

    ref: np.ndarray
    bound: np.ndarray
    zero_ok: np.ndarray
    out_dtype: np.dtype


def sum_roundings(d: int, x_dtype, exact_sum: bool) -> int:
    """Roundings in q = fl(mean(x^2) + eps): d-1 additions and, for float32 inputs, the square
    itself (squares of half types are exact in float32); none of those when the float32 sum of
    squares is exact (ACC-3); plus K_FIXED."""
    if exact_sum:
        return K_FIXED
    return max(d - 1, 0) + (1 if info(x_dtype).name == "float32" else 0) + K_FIXED


def forward_bound(x: np.ndarray, weight: np.ndarray | None, eps: float, out_dtype,
                  exact_sum: bool = False, flush_allowed: bool = True) -> ForwardBound:
    """The ACC-1 bound for ``rms_norm(x, weight, eps)``; ACC-3's with ``exact_sum``; without
    the allowance for inputs flushed to zero (SPV-6) when not ``flush_allowed``."""
    d = x.shape[-1]
    out = info(out_dtype)
    x64 = x.astype(np.float64)
    w64 = np.ones(d) if weight is None else weight.astype(np.float64)
    ref = reference.rms_norm(x, weight, eps)
    ms = reference.mean_square(x)
    q = ms + np.float64(eps)
    k = sum_roundings(d, x.dtype, exact_sum)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        theta_q = gamma(k, U32) + ETA_Q / q                      # relative error of q
        rho = theta_q / (2.0 * (1.0 - theta_q))                  # of 1/sqrt(q), before rsqrt
        rel = ((1.0 + rho) * (1.0 + U32) ** (C_RSQRT + 1) * (1.0 + out.u) ** 2 - 1.0
               + reference.reference_error(d))
        absolute = (1.0 + 2.0 * np.abs(w64)) * (TAU if out.name != "float16" else out.min_subnormal / 2)
        flushed = np.where(flush_allowed & (np.abs(x64) < TAU), np.abs(ref), 0.0)
        bound = rel * np.abs(ref) + absolute + flushed
    bound = np.where(theta_q >= UNCHECKABLE, np.inf, bound)
    bound = np.where(np.isnan(bound), np.inf, bound)
    # ACC-4: the float32 sum of squares may overflow (it certainly does above F32.max).
    zero_ok = np.broadcast_to(ms * d * (1.0 + gamma(k, U32)) >= F32.max, ref.shape)
    return ForwardBound(ref=ref, bound=bound, zero_ok=zero_ok, out_dtype=np.dtype(out_dtype))
