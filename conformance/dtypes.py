"""Floating-point facts per dtype (SPEC.md, TOL section) and the dtype rules of DTY clauses."""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np

from rmsnorm_conformance.protocol import DTYPES


@dataclasses.dataclass(frozen=True)
class FloatInfo:
    name: str
    dtype: np.dtype
    p: int            # significand bits, implicit bit included
    emin: int         # exponent of the smallest normal
    max: float        # largest finite

    @property
    def u(self) -> float:
        """Unit roundoff: half an ulp at 1.0."""
        return 2.0 ** -self.p

    @property
    def tiny(self) -> float:
        """Smallest positive normal."""
        return 2.0 ** self.emin

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.emin - self.p + 1)


INFO = {
    "float32": FloatInfo("float32", DTYPES["float32"], 24, -126, float(np.finfo(np.float32).max)),
    "float16": FloatInfo("float16", DTYPES["float16"], 11, -14, 65504.0),
    "bfloat16": FloatInfo("bfloat16", DTYPES["bfloat16"], 8, -126,
                          float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)),
    "float64": FloatInfo("float64", DTYPES["float64"], 53, -1022, float(np.finfo(np.float64).max)),
}
F32 = INFO["float32"]


def info(dtype) -> FloatInfo:
    return INFO[np.dtype(dtype).name]


def name(dtype) -> str:
    return np.dtype(dtype).name


def ulp(values, dtype) -> np.ndarray:
    """The spacing of ``dtype`` at |values| (float64 array), subnormal spacing below tiny."""
    fi = info(dtype)
    v = np.abs(np.asarray(values, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        _, e = np.frexp(np.where(np.isfinite(v), v, 1.0))
    step = np.ldexp(1.0, np.maximum(e - fi.p, fi.emin - fi.p + 1))
    return np.where(v == 0, fi.min_subnormal, step)


def round_to(values, dtype) -> np.ndarray:
    """float64 ``values`` rounded to the nearest value of ``dtype`` (ties to even), exactly:
    one rounding (a cast through float32 would round twice), subnormals and overflow to +-inf
    included; the result is float64."""
    fi = info(dtype)
    v = np.asarray(values, dtype=np.float64)
    if fi.p >= 53:
        return v.copy()
    with np.errstate(invalid="ignore", over="ignore"):
        _, e = np.frexp(np.where(np.isfinite(v) & (v != 0), v, 1.0))
        # the value's last kept bit: p bits below its leading one, never below the subnormals'
        shift = fi.p - np.maximum(e, fi.emin + 1)
        r = np.ldexp(np.rint(np.ldexp(v, shift)), -shift)        # np.rint: ties to even
        r = np.where(np.abs(r) > fi.max, np.copysign(np.inf, v), r)
    return np.where(np.isfinite(v), r, v)


def representable(values, dtype) -> np.ndarray:
    """Which float64 ``values`` are exactly values of ``dtype``."""
    v = np.asarray(values, dtype=np.float64)
    return round_to(v, dtype) == v
