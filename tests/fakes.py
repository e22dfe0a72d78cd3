"""Variants of ``numpy-textbook`` (``impl/numpy_textbook.py``) for the suite's self-tests: correct
ones in other float32 summation orders, a module around it, and faulty ones (mutants) of the
forward pass, the module and argument validation. Gradient mutants are in ``grad_fakes.py``; the
catalogue of all mutants is ``tests/mutants.py``.

Each mutant is a small subclass of a correct implementation that overrides one step with one
bug. Its docstring names the bug; ``target`` names the SPEC.md clause whose property must catch
it; it keeps the capabilities of the correct implementation it derives from, so every clause
applies to it and the suite draws for it exactly the examples it draws for that implementation.
"""

from __future__ import annotations

import dataclasses
import re

import ml_dtypes
import numpy as np

from rmsnorm_conformance.impl.numpy_textbook import F32, NumpyTextbook
from rmsnorm_conformance.protocol import DTYPES, LAYOUTS, Capabilities, ModuleInfo

HALF_NAMES = ("float16", "bfloat16")
SUM_ORDERS = ("sequential", "pairwise", "reversed", "blocked")
BLOCK = 256


# ---- correct variants ------------------------------------------------------------------------

def _sequential(terms: np.ndarray) -> np.ndarray:
    """Left-to-right float32 sum over the last axis (keepdims): np.cumsum is serial."""
    if terms.shape[-1] == 0:
        return np.zeros(terms.shape[:-1] + (1,), terms.dtype)
    return np.cumsum(terms, axis=-1, dtype=terms.dtype)[..., -1:]


def float32_sum(terms: np.ndarray, order: str) -> np.ndarray:
    """Sum of float32 ``terms`` over the last axis in float32, keepdims, in the given order."""
    if order == "sequential":
        return _sequential(terms)
    if order == "reversed":
        return _sequential(terms[..., ::-1])
    if order == "pairwise":
        return np.sum(terms, axis=-1, dtype=F32, keepdims=True)
    if order == "blocked":      # GPU-like: sequential partial sums of BLOCK, then their sum
        d = terms.shape[-1]
        if d <= BLOCK:
            return _sequential(terms)
        nb = -(-d // BLOCK)
        pad = np.zeros(terms.shape[:-1] + (nb * BLOCK - d,), terms.dtype)   # adding 0 is exact
        blocks = np.concatenate([terms, pad], axis=-1).reshape(terms.shape[:-1] + (nb, BLOCK))
        return _sequential(_sequential(blocks)[..., 0])
    raise ValueError(f"unknown summation order {order!r}; use one of {SUM_ORDERS}")


class Ordered(NumpyTextbook):
    """numpy-textbook with every float32 reduction (sums of squares, dot products, dweight's
    batch sum) in ``order`` (``SUM_ORDERS``), or "torch": sequential sums and PyTorch's single
    final rounding, y = T(x32 * n * float32(w)). "pairwise" is numpy-textbook itself (NumPy's
    pairwise sum along rows; dweight's batch sum row after row)."""

    def __init__(self, order: str = "sequential"):
        if order not in SUM_ORDERS + ("torch",):
            raise ValueError(f"unknown order {order!r}; use one of {SUM_ORDERS + ('torch',)}")
        self.order = order
        self.sum_order = "sequential" if order == "torch" else order
        self.id = f"numpy-textbook-{order}"

    def row_sum(self, terms):
        if self.sum_order == "pairwise":
            return super().row_sum(terms)
        return float32_sum(terms, self.sum_order)

    def batch_sum(self, terms):
        if self.sum_order == "pairwise":
            return super().batch_sum(terms)
        return float32_sum(np.ascontiguousarray(terms.T), self.sum_order)[:, 0]

    def scale(self, x32, n, weight, out):
        if self.order != "torch":
            return super().scale(x32, n, weight, out)
        return (x32 * n if weight is None else x32 * n * self.load(weight)).astype(out)


class TextbookFloat32(Ordered):
    """A correct variant under the name and with the hooks other self-tests build on
    (tests/test_fingerprint.py, tests/test_check.py): ``squares(x, x32)``, ``q(s, d, eps)`` for
    mean(x^2) + eps, and ``finish(y, x)`` on the output."""

    def squares(self, x, x32):
        return x32 * x32

    def sum_squares(self, x, x32):
        return self.row_sum(self.squares(x, x32))

    def q(self, s, d, eps):
        return super().mean_plus_eps(s, d, eps)

    def mean_plus_eps(self, s, d, eps):
        return self.q(s, d, eps)

    def finish(self, y, x):
        return y

    def rms_norm(self, x, weight, eps, layout=None):
        return self.finish(super().rms_norm(x, weight, eps, layout), x)


def textbook_variants() -> list[NumpyTextbook]:
    """The correct forward and gradient variants, one per order (numpy-textbook-pairwise is
    numpy-textbook itself)."""
    return [Ordered(o) for o in SUM_ORDERS + ("torch",)]


class TextbookModule(NumpyTextbook):
    """A correct module in MLX's contract around numpy-textbook: ``RMSNorm(dims, eps=1e-5)``
    holds one parameter, ``weight = ones((dims,), float32)``, rejects eps <= 0, and its output
    and gradients are numpy-textbook's functional op and VJP with its weight and eps."""

    id = "numpy-textbook-module"
    capabilities = Capabilities(dtypes=tuple(DTYPES), mixed="promote", module=True,
                                functional=True, mlx_module=True, layouts=LAYOUTS,
                                gradients=("vjp",))
    default_eps = 1e-5

    def parameters(self, dims):
        return {"weight": np.ones(dims, F32)}

    def check_eps(self, eps):
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps!r}")

    def module_info(self, dims, eps=None):
        eps = self.default_eps if eps is None else eps
        self.check_eps(eps)
        return ModuleInfo(eps=eps, parameters=self.parameters(dims))

    def rms_norm(self, x, weight, eps, layout=None):
        """The module built with eps, its weight replaced, called on (a view of) x."""
        self.check_eps(eps)
        xv, wv = self.view(x, weight, layout)
        return self.module_forward(xv, wv, eps)

    def module_forward(self, x, weight, eps):
        return self.functional(x, weight, eps)

    def functional(self, x, weight, eps):
        return NumpyTextbook.rms_norm(self, x, weight, eps)

    def vjp(self, x, weight, eps, g):
        """The module's gradients (weight and x) of sum(g * module(x))."""
        return self.functional_vjp(x, weight, eps, g)

    def functional_vjp(self, x, weight, eps, g):
        return NumpyTextbook.vjp(self, x, weight, eps, g)


# ---- mutants -------------------------------------------------------------------------------

def kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


class _Named:
    #: the SPEC.md clause whose property must catch the bug
    target = ""
    #: further clauses whose properties must catch it too (checked by the kill tests)
    also: tuple = ()

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.id = "mutant-" + kebab(cls.__name__)


class Mutant(_Named, NumpyTextbook):
    """numpy-textbook with one bug."""


class ModuleMutant(_Named, TextbookModule):
    """The NumPy module with one bug."""


def _half_sequential(terms: np.ndarray, dtype) -> np.ndarray:
    """Left-to-right sum over the last axis accumulated in ``dtype`` (keepdims), as float32."""
    t = terms.astype(dtype)
    return _sequential(t).astype(F32)


# -- accumulation and the statistic


class HalfAccumulation(Mutant):
    """Squares and their sum formed in the input's half type (float16/bfloat16), not float32:
    squares round (and overflow above 256 for float16) and the running sum loses bits."""

    target = "ACC-3"

    def sum_squares(self, x, x32):
        if x.dtype.name not in HALF_NAMES:
            return super().sum_squares(x, x32)
        return _half_sequential(np.asarray(x) * np.asarray(x), x.dtype)


class HalfSquares(Mutant):
    """Squares formed in the input's half type (``x.pow(2)`` before the cast), summed in
    float32: float16 squares overflow to inf above |x| = 256, bfloat16 squares round."""

    target = "ACC-2"

    def sum_squares(self, x, x32):
        if x.dtype.name not in HALF_NAMES:
            return super().sum_squares(x, x32)
        return self.row_sum((np.asarray(x) * np.asarray(x)).astype(F32))


class HalfAccumulationLongRows(Mutant):
    """Only the long-row path (d > 4096) accumulates the sum of (float32) squares in the input's
    half type: right for every shorter row."""

    target = "ACC-6"

    def sum_squares(self, x, x32):
        if x.dtype.name not in HALF_NAMES or x.shape[-1] <= 4096:
            return super().sum_squares(x, x32)
        return _half_sequential(x32 * x32, x.dtype)


class LongRowsDropPartialBlock(Mutant):
    """A looped kernel for d > 4096 reads the row in chunks of 4096 and drops the last, partial
    chunk (an off-by-one in the chunk count): right for d <= 4096 and multiples of 4096."""

    target = "ACC-6"

    def sum_squares(self, x, x32):
        d = x.shape[-1]
        if d <= 4096:
            return super().sum_squares(x, x32)
        keep = d - d % 4096
        return super().sum_squares(x[..., :keep], x32[..., :keep])


class DroppedTail(Mutant):
    """The reduction skips the last element of every row (an off-by-one in the loop bound)."""

    target = "ACC-3"

    def sum_squares(self, x, x32):
        return super().sum_squares(x[..., :-1], x32[..., :-1])


class SumInsteadOfMean(Mutant):
    """q = sum(x^2) + eps: the division by d forgotten."""

    target = "ACC-1"

    def mean_plus_eps(self, s, d, eps):
        return s + F32(eps)


class UnbiasedMean(Mutant):
    """q = sum(x^2) / (d - 1) + eps: a variance formula's Bessel correction carried over."""

    target = "ACC-3"

    def mean_plus_eps(self, s, d, eps):
        return s / F32(d - 1) + F32(eps)


class WrongAxis(Mutant):
    """The statistic is taken over the first axis instead of the last when x has 2+ axes."""

    target = "FWD-2"

    def inv_rms(self, x, x32, eps):
        if x32.ndim < 2:
            return super().inv_rms(x, x32, eps)
        s = np.sum(x32 * x32, axis=0, dtype=F32, keepdims=True)
        return self.rsqrt(self.mean_plus_eps(s, x32.shape[0], eps))


class LowPrecisionRsqrt(Mutant):
    """n = 1/sqrt(q) evaluated in bfloat16 (a fast low-precision rsqrt): 8 bits of n."""

    target = "ACC-3"

    def rsqrt(self, q):
        qb = q.astype(ml_dtypes.bfloat16)
        return (np.ones_like(qb) / np.sqrt(qb)).astype(F32)


class LayerNormConfusion(Mutant):
    """LayerNorm instead of RMSNorm: x is centred (its row mean subtracted) first."""

    target = "ACC-1"

    @staticmethod
    def _centre(x32):
        if x32.shape[-1] == 0:
            return x32
        return x32 - np.mean(x32, axis=-1, keepdims=True, dtype=F32)

    def inv_rms(self, x, x32, eps):
        return super().inv_rms(x, self._centre(x32), eps)

    def scale(self, x32, n, weight, out):
        return super().scale(self._centre(x32), n, weight, out)


# -- eps


class EpsOutsideRoot(Mutant):
    """n = 1 / (sqrt(mean(x^2)) + eps)."""

    target = "FWD-3"

    def inv_rms(self, x, x32, eps):
        s = self.sum_squares(x, x32)
        return F32(1) / (np.sqrt(s / F32(x.shape[-1])) + F32(eps))


class EpsIgnored(Mutant):
    """n = 1 / sqrt(mean(x^2)): eps dropped."""

    target = "FWD-3"

    def mean_plus_eps(self, s, d, eps):
        return s / F32(d)


class EpsAddedToSum(Mutant):
    """q = (sum(x^2) + eps) / d: eps added before the division by d."""

    target = "FWD-3"

    def mean_plus_eps(self, s, d, eps):
        return (s + F32(eps)) / F32(d)


class EpsAsFloat16(Mutant):
    """eps passed to the kernel as float16: 1e-8 and 1e-12 become 0, 1e-5 becomes 1.0014e-5."""

    target = "FWD-3"

    def mean_plus_eps(self, s, d, eps):
        with np.errstate(over="ignore"):
            return s / F32(d) + F32(np.float16(eps))


# -- regimes: long rows, bands of d, many rows, d = 1


class BandSharedReduction(Mutant):
    """For 256 < d <= 1024 a block handles two rows and their reductions share one accumulator:
    rows 2k and 2k+1 both get the sum of squares of the two. Right for other d and one row."""

    target = "SPV-7"

    def sum_squares(self, x, x32):
        s = super().sum_squares(x, x32)
        flat = s.reshape(-1).copy()
        r = flat.size
        if not (256 < x.shape[-1] <= 1024 and r > 1):
            return s
        both = flat[0:r - r % 2:2] + flat[1:r:2]
        flat[0:r - r % 2:2] = both
        flat[1:r:2] = both
        return flat.reshape(s.shape)


class ManyRowsGridOverflow(Mutant):
    """One block per row on a grid limited to 65535 blocks: rows from index 65535 on are never
    written (they come back as zeros). Right for up to 65535 rows."""

    target = "FWD-2"

    def scale(self, x32, n, weight, out):
        y = super().scale(x32, n, weight, out)
        d = y.shape[-1]
        if d and y.size // d > 65535:
            y.reshape(-1, d)[65535:] = 0      # y is a fresh contiguous array: a view
        return y


class AxisLengthOneSignOnly(Mutant):
    """A d = 1 fast path computes x / |x| (eps dropped; 0/0 for x = 0)."""

    target = "FWD-4"

    def inv_rms(self, x, x32, eps):
        if x.shape[-1] != 1:
            return super().inv_rms(x, x32, eps)
        return F32(1) / np.abs(x32)


class RowsCoupled(Mutant):
    """Rows affect each other: every row is normalised by the mean square of the whole batch."""

    target = "SPV-7"

    def sum_squares(self, x, x32):
        s = super().sum_squares(x, x32)
        if s.ndim < 2 or s.size == 0:
            return s
        return np.full_like(s, np.sum(s, dtype=F32) / F32(s.size))


# -- special values and range


class NanIgnoringSum(Mutant):
    """The sum of squares ignores NaN (nansum): a NaN input no longer poisons its row."""

    target = "SPV-3"

    def sum_squares(self, x, x32):
        return np.nansum(x32 * x32, axis=-1, dtype=F32, keepdims=True)


class FastMathInfinity(Mutant):
    """Finite-math assumption: q is clamped to the largest float32, so an infinite input gives
    inf (not NaN) at its position and tiny non-zero values beside it."""

    target = "SPV-4"

    def mean_plus_eps(self, s, d, eps):
        return np.minimum(super().mean_plus_eps(s, d, eps), np.finfo(F32).max)


class RescaledNoZeroGuard(Mutant):
    """An overflow-safe formulation that divides each row by its largest magnitude first, with
    no guard for all-zero rows: 0/0 gives NaN where the output must be 0."""

    target = "SPV-1"

    def inv_rms(self, x, x32, eps):
        d = x32.shape[-1]
        if d == 0:
            return super().inv_rms(x, x32, eps)
        m = np.max(np.abs(x32), axis=-1, keepdims=True)
        xs = x32 / m
        q = self.row_sum(xs * xs).astype(np.float64) / d + np.float64(eps) / np.square(
            m.astype(np.float64))
        return (1.0 / (np.sqrt(q) * m)).astype(F32)


class ZeroSumShortcut(Mutant):
    """An early exit writes zeros for rows whose float32 sum of squares is 0, meant for zero rows:
    rows of tiny values whose squares underflow get 0 instead of x / sqrt(eps)."""

    target = "ACC-7"

    def inv_rms(self, x, x32, eps):
        s = self.sum_squares(x, x32)
        return np.where(s == 0, F32(0), self.rsqrt(self.mean_plus_eps(s, x.shape[-1], eps)))


class KahanOverflowNan(Mutant):
    """Kahan-compensated sum of squares: once the running sum overflows, the compensation
    (t - s) - y is inf - inf = NaN, so rows whose float32 sum overflows give NaN instead of 0
    (modelled on the float32 sum: NaN wherever it is infinite)."""

    target = "ACC-4"

    def sum_squares(self, x, x32):
        s = super().sum_squares(x, x32)
        return np.where(np.isinf(s), F32(np.nan), s)


class FlushSubnormalInputs(Mutant):
    """Denormals-are-zero: every subnormal input (x, weight, cotangents) reads as 0."""

    target = "SPV-6"

    def load(self, a):
        a32 = super().load(a)
        return np.where(np.abs(a32) < np.finfo(F32).tiny, F32(0), a32)


# -- output dtype, shape, plumbing


class AlwaysFloat32(Mutant):
    """Returns the float32 working values: the output is float32 whatever the input dtypes."""

    target = "DTY-1"

    def out_dtype(self, x, weight):
        return np.dtype(F32)


class OutputInXDtype(Mutant):
    """The output takes x's dtype even when the weight's dtype should promote it."""

    target = "DTY-2"

    def out_dtype(self, x, weight):
        return x.dtype


class NoWeightPromotes(Mutant):
    """weight=None is replaced by a float32 ones weight, so a half-precision x without weight is
    promoted to a float32 output."""

    target = "DTY-3"

    def view(self, x, weight, layout):
        xv, wv = super().view(x, weight, layout)
        return xv, (np.ones(np.shape(xv)[-1:], F32) if wv is None and np.ndim(xv) else wv)


class MixedWeightCastToHalf(Mutant):
    """With a half-precision x and a float32 weight the kernel casts the weight to x's type
    before the (float32) product: the output dtype is right, the weight lost 13 or 16 bits."""

    target = "ACC-8"

    def view(self, x, weight, layout):
        xv, wv = super().view(x, weight, layout)
        if wv is not None and xv.dtype.name in HALF_NAMES and wv.dtype == F32:
            wv = wv.astype(xv.dtype).astype(F32)
        return xv, wv


class NormalisedRoundedToInput(Mutant):
    """Hugging Face LlamaRMSNorm's order, undeclared: the normalised value is rounded to x's
    dtype before a wider weight multiplies it, so a half x with a float32 weight gives a float32
    output of half precision. One cause: it must fail ACC-8 and no other clause."""

    target = "ACC-8"

    def rms_norm(self, x, weight, eps, layout=None):
        xv, wv = self.view(x, weight, layout)
        if wv is None or np.dtype(wv.dtype).itemsize <= np.dtype(xv.dtype).itemsize:
            return super().rms_norm(x, weight, eps, layout)
        self.check_args(xv, wv)
        with np.errstate(all="ignore"):
            x32 = self.load(xv)
            normalised = (x32 * self.inv_rms(xv, x32, eps)).astype(xv.dtype)   # the fault
            out = normalised.astype(F32) * self.load(wv)
            return np.asarray(out.astype(self.out_dtype(xv, wv)))


class DeclaredNormalisedRoundedToInput(NormalisedRoundedToInput):
    """The same Llama order, declared (``normalised_in_input_dtype``): ACC-8 judges it under its
    convention and passes; ACC-9 reports once that its float32 outputs carry half precision."""

    target = "ACC-9"
    capabilities = dataclasses.replace(NumpyTextbook.capabilities,
                                       normalised_in_input_dtype=True)


class FixedPointRsqrt(Mutant):
    """n quantised to multiples of 2**-16 (a fixed-point reciprocal square root): the result
    depends on the magnitude of x, so scaling x and eps together changes it."""

    target = "MET-2"
    also = ("MET-3",)

    def rsqrt(self, q):
        n = super().rsqrt(q)
        return np.maximum(np.round(n * F32(65536)), F32(1)) / F32(65536)


class PositionDependentScale(Mutant):
    """Each output element is scaled by (1 + i 2**-23) for its column i (a per-lane rounding
    slip): permuting the columns changes the results."""

    target = "MET-5"

    def scale(self, x32, n, weight, out):
        d = x32.shape[-1]
        return super().scale(x32 * (F32(1) + np.arange(d, dtype=F32) * F32(2.0 ** -23)), n,
                             weight, out)


class StridedRowsSummedInPlace(Mutant):
    """Views are read where they lie (no copy to row-major order), so the float32 sum of a
    transposed row runs in another order than the contiguous row's: a view's result differs
    from the contiguous copy's in the last bit (MET-8; within the bound, MET-7 passes)."""

    target = "MET-8"

    def load(self, a):
        return np.asarray(a, dtype=F32)

    def row_sum(self, terms):
        if terms.ndim > 1 and not terms.flags.c_contiguous:
            return np.add.reduce(np.swapaxes(terms, -1, 0), axis=0, dtype=F32)[..., None] \
                if terms.ndim == 2 else super().row_sum(terms)
        return super().row_sum(terms)


class BatchDependentRounding(Mutant):
    """A batched path rounds n once more than the single-row path (n * (1 + 2**-23) for more
    than one row): a row's result depends on the batch around it."""

    target = "SPV-8"

    def inv_rms(self, x, x32, eps):
        n = super().inv_rms(x, x32, eps)
        rows = x32.size // max(x32.shape[-1], 1)
        return n * F32(1 + 2.0 ** -23) if rows > 1 else n


class InfRowAllNan(Mutant):
    """A row holding an infinity comes back NaN throughout (allowed by SPV-4, not MLX's zeros
    beside the infinity)."""

    target = "SPV-5"

    def scale(self, x32, n, weight, out):
        y = super().scale(x32, n, weight, out)
        rows = np.any(np.isinf(x32), axis=-1, keepdims=True)
        return np.where(rows, np.asarray(np.nan, y.dtype), y)


class ZeroRowGuardedAtZeroEps(Mutant):
    """A zero row is special-cased to give zeros even with eps = 0 (MLX gives NaN, 0/0)."""

    target = "SPV-2"

    def rsqrt(self, q):
        return np.where(q == 0, F32(0), super().rsqrt(q))


class EmptyAxisRejected(Mutant):
    """An empty normalised axis raises ValueError instead of returning an empty array."""

    target = "FWD-5"

    def rms_norm(self, x, weight, eps, layout=None):
        if x.shape[-1] == 0:
            raise ValueError("empty normalised axis")
        return super().rms_norm(x, weight, eps, layout)


def round_toward_zero(values, dtype) -> np.ndarray:
    """A conversion that truncates: the float32 ``values`` to ``dtype`` rounded toward zero
    (bfloat16: the low 16 bits dropped, as bit-masking "fast" conversions do)."""
    v = np.asarray(values, F32)
    if np.dtype(dtype) == DTYPES["bfloat16"]:
        return (v.view(np.uint32) & np.uint32(0xFFFF0000)).view(F32).astype(dtype)
    r = v.astype(dtype)
    with np.errstate(invalid="ignore"):
        up = np.abs(r.astype(np.float64)) > np.abs(v.astype(np.float64))
    return np.where(up, np.nextafter(r, np.zeros_like(r)), r)


def round_half_away(values, dtype) -> np.ndarray:
    """A conversion that rounds ties away from zero (IEEE's roundTiesToAway, C's round()): the
    same as round-to-nearest-even but at exact midpoints (bfloat16: add half of the dropped
    bits' range, then drop them)."""
    v = np.asarray(values, F32)
    if np.dtype(dtype) == DTYPES["bfloat16"]:
        bits = v.view(np.uint32)
        finite = np.isfinite(v)
        rounded = ((bits + np.uint32(0x8000)) & np.uint32(0xFFFF0000)).view(F32)
        return np.where(finite, rounded, v).astype(dtype)
    r = v.astype(dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        r64, v64 = r.astype(np.float64), v.astype(np.float64)
        other = np.nextafter(r, np.where(v64 > r64, np.inf, -np.inf).astype(dtype))
        tie = (v64 - r64) == (other.astype(np.float64) - v64)
        away = tie & (np.abs(other.astype(np.float64)) > np.abs(r64))
    return np.where(away, other, r)


class _Conversion(Mutant):
    """A mutant whose conversion into one half type uses another rounding mode."""

    mode = staticmethod(round_toward_zero)
    half = "bfloat16"
    gradient = False

    def _convert(self, values, dtype, correct):
        if np.dtype(dtype) != DTYPES[self.half]:
            return correct(values, dtype)
        return self.mode(values, dtype)

    def convert(self, values, dtype):
        if self.gradient:
            return super().convert(values, dtype)
        return self._convert(values, dtype, super().convert)

    def convert_gradient(self, values, dtype):
        if not self.gradient:
            return super().convert_gradient(values, dtype)
        return self._convert(values, dtype, super().convert_gradient)


class OutputTruncatedBfloat16(_Conversion):
    """The float32 result is converted to bfloat16 by truncation (rounding toward zero: errors
    up to 1 ulp instead of half of one), as a bit-masking conversion does."""

    target = "ACC-10"


class OutputTruncatedFloat16(_Conversion):
    """The float32 result is converted to float16 by truncation (rounding toward zero)."""

    target = "ACC-10"
    half = "float16"


class OutputHalfAwayBfloat16(_Conversion):
    """The float32 result is converted to bfloat16 rounding ties away from zero (not to even):
    only exact midpoints differ."""

    target = "ACC-10"
    mode = staticmethod(round_half_away)


class OutputHalfAwayFloat16(_Conversion):
    """The float32 result is converted to float16 rounding ties away from zero."""

    target = "ACC-10"
    mode = staticmethod(round_half_away)
    half = "float16"


class Float64ThroughFloat16(Mutant):
    """float64 inputs are computed through float16 (x and the weight converted to float16
    first): the float64 output carries half precision, far below even float32's accuracy."""

    target = "ACC-11"

    def rms_norm(self, x, weight, eps, layout=None):
        if x.dtype != np.float64:
            return super().rms_norm(x, weight, eps, layout)
        half = None if weight is None else weight.astype(np.float16).astype(np.float64)
        return super().rms_norm(x.astype(np.float16).astype(np.float64), half, eps, layout)


class Float64ReturnedAsFloat32(Mutant):
    """float64 inputs come back as float32 (the input converted on entry, never back)."""

    target = "DTY-4"

    def out_dtype(self, x, weight):
        out = super().out_dtype(x, weight)
        return DTYPES["float32"] if out == np.float64 else out


class FlattenedOutput(Mutant):
    """Returns the result flattened to one dimension."""

    target = "FWD-1"

    def rms_norm(self, x, weight, eps, layout=None):
        return super().rms_norm(x, weight, eps, layout).ravel()


class ReturnsList(Mutant):
    """Returns a Python list (``tolist()``) instead of an ndarray."""

    target = "FWD-1"

    def rms_norm(self, x, weight, eps, layout=None):
        return super().rms_norm(x, weight, eps, layout).tolist()


class Raises(Mutant):
    """Every call raises RuntimeError (a kernel that fails to launch)."""

    target = "FWD-1"

    def rms_norm(self, x, weight, eps, layout=None):
        raise RuntimeError("kernel launch failed")


# -- the weight and the sign


class AbsX(Mutant):
    """Sign bug: the output uses |x| (np.abs, which also turns -0.0 into +0.0)."""

    target = "MET-1"

    def scale(self, x32, n, weight, out):
        return super().scale(np.abs(x32), n, weight, out)


class WeightTwice(Mutant):
    """The weight is applied twice (once in the kernel, once by the caller)."""

    target = "MET-4"

    def scale(self, x32, n, weight, out):
        y = super().scale(x32, n, weight, out)
        return y if weight is None else y * weight.astype(out)


class WeightIgnored(Mutant):
    """The weight is never applied."""

    target = "MET-4"

    def scale(self, x32, n, weight, out):
        return super().scale(x32, n, None, out)


class GemmaWeightOffset(Mutant):
    """The weight is applied as (1 + w), Gemma's convention, to a weight meant as MLX's: a zero
    weight no longer gives zero."""

    target = "SPV-9"

    def scale(self, x32, n, weight, out):
        return super().scale(x32, n, None if weight is None else (
            weight.astype(F32) + F32(1)).astype(weight.dtype), out)


class WeightOffByOne(Mutant):
    """The weight is indexed off by one: element i is scaled by w[i - 1] (w[-1] for i = 0)."""

    target = "MET-4"

    def scale(self, x32, n, weight, out):
        return super().scale(x32, n, None if weight is None else np.roll(weight, 1), out)


# -- layouts (each misreads one kind of view; the others are read right)


class _Misread(Mutant):
    kind = ""

    def view(self, x, weight, layout):
        if layout is None or layout.kind != self.kind:
            return super().view(x, weight, layout)
        return self.misread(layout, x, weight)

    def misread(self, layout, x, weight):
        """By default: the first prod(shape) elements of the view's source buffer, in memory
        order, as if the view were a contiguous array starting there."""
        n = int(np.prod(layout.shape, dtype=np.int64))
        return np.ascontiguousarray(layout.source).reshape(-1)[:n].reshape(layout.shape), weight


class TransposedReadInMemoryOrder(_Misread):
    """A transposed view (last two axes swapped) is read in memory order, as if contiguous."""

    target = "MET-7"
    kind = "transposed"


class StridedReadContiguously(_Misread):
    """A strided view (every other element) is read contiguously: the skipped elements are
    read, and half of each row is missed."""

    target = "MET-7"
    kind = "strided"


class BroadcastReadAsContiguous(_Misread):
    """A broadcast view (size-1 axes of stride 0) is read as a contiguous array of the full
    shape: only the first copy is the source, the rest reads past it (modelled as zeros)."""

    target = "MET-7"
    kind = "broadcast"

    def misread(self, layout, x, weight):
        src = np.ascontiguousarray(layout.source).reshape(-1)
        n = int(np.prod(layout.shape, dtype=np.int64))
        buf = np.zeros(n, src.dtype)
        buf[:min(n, src.size)] = src[:n]
        return buf.reshape(layout.shape), weight


class OffsetIgnored(_Misread):
    """A view that does not start at its buffer's start is read from the buffer's start."""

    target = "MET-7"
    kind = "offset"


class PaddedRowStrideIgnored(_Misread):
    """Rows padded beyond d (row stride > d) are read with row stride d."""

    target = "MET-7"
    kind = "padded"


class NegativeStrideMisread(_Misread):
    """A reversed view (negative stride) is read with the stride's magnitude: forwards."""

    target = "MET-7"
    kind = "reversed"

    def misread(self, layout, x, weight):
        return np.asarray(layout.source), weight


class StridedWeightReadContiguously(_Misread):
    """A strided weight (every other element of its buffer) is read contiguously."""

    target = "MET-7"
    kind = "weight_strided"

    def misread(self, layout, x, weight):
        return np.asarray(x), np.ascontiguousarray(layout.weight_source)[:np.shape(x)[-1]]


# -- state carried between calls


class StaleShapeCache(Mutant):
    """The function built for a sequence of calls caches its compiled kernel by dtype only, not
    by shape: a later call with another axis length reuses the first call's d for the mean."""

    target = "FWD-6"
    _d = None

    def mean_plus_eps(self, s, d, eps):
        return super().mean_plus_eps(s, self._d or d, eps)

    def rms_norm_sequence(self, calls):
        compiled, out = {}, []
        try:
            for x, w, eps in calls:
                key = (x.dtype.name, None if w is None else w.dtype.name)
                self._d = compiled.setdefault(key, x.shape[-1])
                out.append(self.rms_norm(x, w, eps))
        finally:
            self._d = None
        return out


# -- argument validation (VAL: numpy-textbook declares MLX's validation)


class SizeOneWeightBroadcast(Mutant):
    """A weight of size 1 is broadcast over the axis instead of rejected."""

    target = "VAL-3"

    def rms_norm(self, x, weight, eps, layout=None):
        if weight is not None and weight.ndim == 1 and weight.size == 1 and x.ndim:
            weight = np.broadcast_to(weight, (x.shape[-1],))
        return super().rms_norm(x, weight, eps, layout)


class MatrixWeightAccepted(Mutant):
    """A weight that is not 1-D is broadcast against x (NumPy rules) instead of rejected."""

    target = "VAL-2"

    def rms_norm(self, x, weight, eps, layout=None):
        if weight is None or weight.ndim == 1:
            return super().rms_norm(x, weight, eps, layout)
        return super().rms_norm(x, None, eps, layout) * weight


class ZeroDimAccepted(Mutant):
    """A 0-d x is treated as a row of one element instead of rejected."""

    target = "VAL-1"

    def rms_norm(self, x, weight, eps, layout=None):
        if np.ndim(x) != 0:
            return super().rms_norm(x, weight, eps, layout)
        return super().rms_norm(np.reshape(x, (1,)), weight, eps, layout).reshape(())


class IntegerInputAccepted(Mutant):
    """An integer, bool or complex x is cast to float32 and normalised instead of rejected."""

    target = "VAL-4"

    def rms_norm(self, x, weight, eps, layout=None):
        if x.dtype.name not in DTYPES:
            x = np.real(x).astype(F32)
        return super().rms_norm(x, weight, eps, layout)


class WrongExceptionType(Mutant):
    """Invalid arguments raise TypeError (the framework's own type, not translated) instead of
    ValueError."""

    target = "VAL-3"

    def check_args(self, x, weight):
        try:
            super().check_args(x, weight)
        except ValueError as e:
            raise TypeError(str(e)) from None


# -- the module (MOD clauses, GRAD-13)


class ModuleWeightNotOnes(ModuleMutant):
    """The default weight is initialised randomly (like a linear layer's), not to ones."""

    target = "MOD-1"

    def parameters(self, dims):
        return {"weight": np.random.default_rng(dims).normal(size=dims).astype(F32)}


class ModuleWeightNotFloat32(ModuleMutant):
    """The default weight is created in bfloat16 instead of float32."""

    target = "MOD-1"

    def parameters(self, dims):
        return {"weight": np.ones(dims, ml_dtypes.bfloat16)}


class ModuleExtraParameter(ModuleMutant):
    """The module has a second parameter, a (zero) bias, beside its weight."""

    target = "MOD-1"

    def parameters(self, dims):
        return {**super().parameters(dims), "bias": np.zeros(dims, F32)}


class ModuleDefaultEps(ModuleMutant):
    """The default eps is 1e-6 (Keras/LLaMA's) instead of MLX's 1e-5."""

    target = "MOD-2"
    default_eps = 1e-6


class ModuleAcceptsNonpositiveEps(ModuleMutant):
    """The module accepts eps <= 0 instead of raising ValueError."""

    target = "MOD-4"

    def check_eps(self, eps):
        pass


class ModuleCastsWeightToInput(ModuleMutant):
    """The module casts its weight to x's dtype: a default (float32) module fed float16 or
    bfloat16 returns the half type instead of float32."""

    target = "MOD-5"

    def module_forward(self, x, weight, eps):
        return self.functional(x, weight.astype(x.dtype), eps)


class ModuleDiffersFromFunctional(ModuleMutant):
    """The module is a composition of separate ops (PyTorch's order: one final rounding of
    x n w), not the fused functional op: results differ in the last bit for half outputs."""

    target = "MOD-3"

    def module_forward(self, x, weight, eps):
        with np.errstate(all="ignore"):
            x32 = self.load(x)
            y = x32 * self.inv_rms(x, x32, eps) * self.load(weight)
            return y.astype(self.out_dtype(x, weight))


class CacheProbe(NumpyTextbook):
    """numpy-textbook whose environment() reports the cache directory it is offered
    (``protocol.cache_dir``): tests/test_good_citizen.py."""

    id = "cache-probe"

    def environment(self):
        from rmsnorm_conformance.protocol import cache_dir

        return {"cache": str(cache_dir("probe"))}
