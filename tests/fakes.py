"""Pure-NumPy RMSNorm adapters for the suite's self-tests: correct ones and classic bugs.

``TextbookFloat32`` is a correct float32-accumulating implementation in MLX's order of operations
(``mlx/backend/*/rms_norm``):

    x32 = float32(x)                        (exact)
    s   = sum(x32 * x32)   in float32       (squares rounded once; additions in a chosen order)
    q   = s / d + float32(eps)              (float32)
    n   = 1 / sqrt(q)                       (float32: sqrt and division, one rounding each)
    t   = T(x32 * n)                        (product in float32, rounded to the result dtype T)
    y   = t * T(weight)                     (in T)

with T = ``conformance.dtypes.result_dtype(x.dtype, weight.dtype)`` (x's dtype for no weight or
the same dtype, float32 for mixed dtypes; the half-precision inputs are then cast to float32
exactly, as MLX promotes both operands before the kernel). ``order="torch"`` variants instead
round once at the end: ``y = T(x32 * n * float32(weight))``.

Each mutant below is a subclass that overrides exactly one step with a classic bug; the
docstrings say what the bug is and ``MUTANTS`` says which clause is expected to catch it.
"""

from __future__ import annotations

import numpy as np

from conformance.dtypes import result_dtype
from impl.protocol import LAYOUTS, Capabilities, Implementation, Layout

F32 = np.float32
HALF_NAMES = ("float16", "bfloat16")
SUM_ORDERS = ("sequential", "pairwise", "reversed", "blocked")
BLOCK = 256


def build_view(x: np.ndarray, weight: np.ndarray | None, layout: Layout | None):
    """The NumPy counterpart of ``impl._mlx.build_view``: the requested views (never copies),
    or ``x`` and ``weight`` themselves."""
    if layout is None:
        return x, weight
    return layout.view(x, weight, np.asarray, np.swapaxes, np.broadcast_to)


def _sequential(sq: np.ndarray) -> np.ndarray:
    """Left-to-right float32 sum over the last axis (keepdims): np.add.accumulate is serial."""
    if sq.shape[-1] == 0:
        return np.zeros(sq.shape[:-1] + (1,), F32)
    return np.cumsum(sq, axis=-1, dtype=sq.dtype)[..., -1:]


def float32_sum(sq: np.ndarray, order: str) -> np.ndarray:
    """Sum of ``sq`` (float32) over the last axis in float32, keepdims, in the given order."""
    if order == "sequential":
        return _sequential(sq)
    if order == "reversed":
        return _sequential(sq[..., ::-1])
    if order == "pairwise":
        return np.sum(sq, axis=-1, dtype=F32, keepdims=True)
    if order == "blocked":
        d = sq.shape[-1]
        if d <= BLOCK:
            return _sequential(sq)
        nb = -(-d // BLOCK)
        pad = np.zeros(sq.shape[:-1] + (nb * BLOCK - d,), sq.dtype)   # adding zeros is exact
        blocks = np.concatenate([sq, pad], axis=-1).reshape(sq.shape[:-1] + (nb, BLOCK))
        partial = _sequential(blocks)[..., 0]                         # (..., nb)
        return _sequential(partial)
    raise ValueError(f"unknown summation order {order!r}; use one of {SUM_ORDERS}")


class TextbookFloat32(Implementation):
    """A correct float32-accumulating RMSNorm; ``order`` is a summation order from
    ``SUM_ORDERS`` or "torch" (sequential sum, output rounded once: y = T(x32 * n * w32))."""

    capabilities = Capabilities(
        dtypes=("float32", "float16", "bfloat16"), mixed="promote", weight_none=True,
        nonpositive_eps=True, module=False, validation=False, layouts=LAYOUTS, gradients=(),
        device="cpu")

    def __init__(self, order: str = "sequential"):
        if order not in SUM_ORDERS + ("torch",):
            raise ValueError(f"unknown order {order!r}")
        self.order = order
        self.sum_order = "sequential" if order == "torch" else order
        mutant = type(self) is not TextbookFloat32
        self.id = self.kind() + ("" if mutant and order == "sequential" else f"-{order}")

    @classmethod
    def kind(cls) -> str:
        return "textbook-f32" if cls is TextbookFloat32 else "mutant-" + cls.__name__

    # ---- the steps, each overridable ------------------------------------------------------
    def view(self, x, weight, layout):
        return build_view(x, weight, layout)

    def out_dtype(self, x, weight) -> np.dtype:
        return result_dtype(x.dtype, None if weight is None else weight.dtype)

    def to_accumulator(self, xv: np.ndarray) -> np.ndarray:
        return xv.astype(F32)

    def squares(self, xv: np.ndarray, x32: np.ndarray) -> np.ndarray:
        return x32 * x32

    def sum_squares(self, xv: np.ndarray, x32: np.ndarray) -> np.ndarray:
        """float32 sum of squares over the last axis, keepdims (broadcastable to x)."""
        return float32_sum(self.squares(xv, x32), self.sum_order)

    def count(self, xv: np.ndarray) -> int:
        return xv.shape[-1]

    def q(self, s: np.ndarray, d: int, eps: float) -> np.ndarray:
        """mean(x^2) + eps in float32."""
        return s / F32(d) + F32(eps)

    def rsqrt(self, q: np.ndarray) -> np.ndarray:
        return F32(1) / np.sqrt(q)

    def inv_rms(self, s: np.ndarray, d: int, eps: float) -> np.ndarray:
        return self.rsqrt(self.q(s, d, eps))

    def scale(self, x32, n, weight, out):
        """The output from x32, n (float32) and the weight, in the result dtype ``out``."""
        if self.order == "torch":
            y = x32 * n
            if weight is not None:
                y = y * weight.astype(F32)
            return y.astype(out)
        t = (x32 * n).astype(out)
        return t if weight is None else t * weight.astype(out)

    def finish(self, y: np.ndarray, x: np.ndarray):
        return y

    # ---- the whole computation -------------------------------------------------------------
    def rms_norm(self, x, weight, eps, layout=None):
        xv, weight = self.view(x, weight, layout)
        out = self.out_dtype(xv, weight)
        with np.errstate(all="ignore"):
            x32 = self.to_accumulator(xv)
            n = self.inv_rms(self.sum_squares(xv, x32), self.count(xv), eps)
            y = self.scale(x32, n, weight, out)
        return self.finish(np.asarray(y), xv)


# ---- mutants: one classic bug each ---------------------------------------------------------


class HalfAccumulation(TextbookFloat32):
    """Squares and their sum formed in the input's half type (float16/bfloat16), not float32:
    squares round (and overflow above 256 for float16), the sum loses bits."""

    def sum_squares(self, xv, x32):
        if xv.dtype.name not in HALF_NAMES:
            return super().sum_squares(xv, x32)
        sq = xv * xv
        acc = (np.zeros(sq.shape[:-1] + (1,), sq.dtype) if sq.shape[-1] == 0
               else np.cumsum(sq, axis=-1, dtype=sq.dtype)[..., -1:])
        return acc.astype(F32)


class EpsOutsideRoot(TextbookFloat32):
    """n = 1 / (sqrt(mean(x^2)) + eps)."""

    def inv_rms(self, s, d, eps):
        return F32(1) / (np.sqrt(s / F32(d)) + F32(eps))


class EpsIgnored(TextbookFloat32):
    """n = 1 / sqrt(mean(x^2)): eps dropped."""

    def q(self, s, d, eps):
        return s / F32(d)


class EpsAddedToSum(TextbookFloat32):
    """q = (sum(x^2) + eps) / d: eps added before the division by d."""

    def q(self, s, d, eps):
        return (s + F32(eps)) / F32(d)


class SumInsteadOfMean(TextbookFloat32):
    """q = sum(x^2) + eps: the division by d forgotten."""

    def q(self, s, d, eps):
        return s + F32(eps)


class UnbiasedMean(TextbookFloat32):
    """q = sum(x^2) / (d - 1) + eps: a variance formula's Bessel correction carried over."""

    def q(self, s, d, eps):
        return s / F32(d - 1) + F32(eps)


class DroppedTail(TextbookFloat32):
    """The reduction skips the last element (an off-by-one in the loop bound)."""

    def sum_squares(self, xv, x32):
        return super().sum_squares(xv[..., :-1], x32[..., :-1])


class WrongAxis(TextbookFloat32):
    """The statistic is taken over the first axis (axis 0) when x has more than one axis."""

    def sum_squares(self, xv, x32):
        if x32.ndim < 2:
            return super().sum_squares(xv, x32)
        return np.sum(x32 * x32, axis=0, dtype=F32, keepdims=True)

    def count(self, xv):
        return xv.shape[0] if xv.ndim > 1 else xv.shape[-1]


class LowPrecisionRsqrt(TextbookFloat32):
    """n = 1/sqrt(q) evaluated in bfloat16 (a fast low-precision rsqrt): 8 bits of n."""

    def rsqrt(self, q):
        import ml_dtypes

        qb = q.astype(ml_dtypes.bfloat16)
        return (np.ones_like(qb) / np.sqrt(qb)).astype(F32)


class AlwaysFloat32(TextbookFloat32):
    """Returns the float32 working values: the output is float32 whatever the input dtypes."""

    def out_dtype(self, x, weight):
        return np.dtype(F32)


class OutputInXDtype(TextbookFloat32):
    """The output takes x's dtype even when the weight's dtype should promote it."""

    def out_dtype(self, x, weight):
        return x.dtype


class FlattenedOutput(TextbookFloat32):
    """Returns the result flattened to one dimension."""

    def finish(self, y, x):
        return y.ravel()


class ReturnsList(TextbookFloat32):
    """Returns a Python list (``tolist()``) instead of an ndarray."""

    def finish(self, y, x):
        return y.tolist()


class Raises(TextbookFloat32):
    """Every call raises RuntimeError (a kernel that fails to launch)."""

    def rms_norm(self, x, weight, eps, layout=None):
        raise RuntimeError("kernel launch failed")


class RowsCoupled(TextbookFloat32):
    """Rows affect each other: every row is normalised by the mean square of the whole batch
    (``mode="batch"``) or of row 0 (``mode="row0"``)."""

    def __init__(self, mode: str = "batch"):
        super().__init__()
        self.mode = mode
        self.id = f"{self.kind()}-{mode}"

    def sum_squares(self, xv, x32):
        s = super().sum_squares(xv, x32)
        if s.ndim < 2 or s.size == 0:
            return s
        rows = s.reshape(-1)
        value = rows[0] if self.mode == "row0" else np.sum(rows, dtype=F32) / F32(rows.size)
        return np.full_like(s, value)


class AbsX(TextbookFloat32):
    """Sign bug: the output uses |x| (y = |x| * n * w). ``signed_zero=False`` (the default)
    negates negative values only, so -0.0 stays -0.0; ``signed_zero=True`` uses np.abs, which
    also turns -0.0 into +0.0."""

    def __init__(self, signed_zero: bool = False):
        super().__init__()
        self.signed_zero = signed_zero
        self.id = f"{self.kind()}-{'abs' if signed_zero else 'negate-negatives'}"

    def scale(self, x32, n, weight, out):
        a = np.abs(x32) if self.signed_zero else np.where(x32 < 0, -x32, x32)
        return super().scale(a, n, weight, out)


class WeightTwice(TextbookFloat32):
    """The weight is applied twice (once in the kernel, once by the caller)."""

    def scale(self, x32, n, weight, out):
        y = super().scale(x32, n, weight, out)
        return y if weight is None else y * weight.astype(out)


class WeightIgnored(TextbookFloat32):
    """The weight is never applied."""

    def scale(self, x32, n, weight, out):
        return super().scale(x32, n, None, out)


class LayerNormConfusion(TextbookFloat32):
    """LayerNorm instead of RMSNorm: x is centred (its row mean subtracted) first."""

    def to_accumulator(self, xv):
        x32 = xv.astype(F32)
        if x32.shape[-1] == 0:
            return x32
        return x32 - np.mean(x32, axis=-1, keepdims=True, dtype=F32)


class NanIgnoringSum(TextbookFloat32):
    """The reduction uses a NaN-ignoring sum: a NaN input no longer poisons its row."""

    def sum_squares(self, xv, x32):
        return np.nansum(self.squares(xv, x32), axis=-1, dtype=F32, keepdims=True)


class IgnoresStrides(TextbookFloat32):
    """Reads a non-contiguous view's buffer as if it were contiguous (strides ignored):
    a transposed view is read in memory order, a strided one reads the skipped elements."""

    def view(self, x, weight, layout):
        if layout is None or layout.kind in ("broadcast", "weight_strided", "offset"):
            return build_view(x, weight, layout)
        n = int(np.prod(layout.shape, dtype=np.int64))
        flat = np.ascontiguousarray(layout.source).reshape(-1)[:n].reshape(layout.shape)
        return flat, weight


class FlushSubnormalInputs(TextbookFloat32):
    """Denormals-are-zero: subnormal inputs read as 0 (of float32's subnormal range)."""

    def to_accumulator(self, xv):
        x32 = xv.astype(F32)
        return np.where(np.abs(x32) < np.finfo(F32).tiny, F32(0), x32)


def textbook_variants() -> list[TextbookFloat32]:
    return [TextbookFloat32(o) for o in SUM_ORDERS + ("torch",)]
