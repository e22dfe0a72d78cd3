"""Pure-NumPy RMSNorm gradients for the suite's self-tests: correct ones and classic bugs.

``TextbookGrad`` extends the correct forward ``fakes.TextbookFloat32`` with a correct float32
VJP, JVP and second-order product, computed the way an autodiff graph or a fused backward kernel
would (every array cast to float32 first, which is exact for the half types):

    n  = 1 / sqrt(sum(x^2)/d + eps)          (float32, the forward's own steps and order)
    a  = g w                                 (float32; w = 1 without weight)
    p  = sum(a x) / d                        (float32 accumulation, the variant's order)
    dx = n a - x n^3 p                       (float32, n^3 = n*n*n), rounded to x's dtype
    dweight = sum over leading axes of g x n (float32 accumulation), rounded to weight's dtype
    s  = sum(x tx) / d
    ty = (tx n - x n^3 s) w + x n tw         (float32), rounded to the output dtype
    t  = sum(a v) / d,  sv = sum(x v) / d
    Hv = -n^3 sv a - n^3 p v + 3 n^5 sv p x - n^3 t x   (float32), rounded to x's dtype

The dot products and the reduction of dweight over the batch use the variant's float32
summation order (``fakes.SUM_ORDERS``: "sequential" is a left-to-right cumsum, "pairwise" NumPy's
``sum``, "reversed" and "blocked" as in the forward).

Each mutant below overrides exactly one step with a classic gradient bug; its docstring says what
the bug is and ``tests/test_catches_gradient_faults.py`` which GRAD clause catches it.
"""

from __future__ import annotations

import numpy as np

from conformance.dtypes import result_dtype
from impl.protocol import LAYOUTS, Capabilities
from tests import fakes
from tests.fakes import F32, SUM_ORDERS, float32_sum


def _lead_sum(terms: np.ndarray, order: str) -> np.ndarray:
    """Sum of float32 ``terms`` (rows, d) over the rows, in float32, in the given order."""
    rows, d = terms.shape
    if rows == 0:
        return np.zeros(d, F32)
    # float32_sum reduces the last axis: put the rows there.
    return float32_sum(np.ascontiguousarray(terms.T), order)[:, 0]


class TextbookGrad(fakes.TextbookFloat32):
    """A correct float32 RMSNorm with float32 VJP, JVP and Hessian-vector product; ``order``
    (from ``SUM_ORDERS``) is the float32 summation order of every reduction. ``split_cube``
    forms dx's second term as (x n)(n^2 p) instead of x n^3 p (GRAD-11's suggestion); by default
    n^3 is formed explicitly, as MLX does."""

    capabilities = Capabilities(
        dtypes=("float32", "float16", "bfloat16"), mixed="promote", weight_none=True,
        nonpositive_eps=True, module=False, validation=False, layouts=LAYOUTS,
        gradients=("vjp", "jvp", "hvp"), device="cpu")

    def __init__(self, order: str = "sequential", split_cube: bool = False):
        if order not in SUM_ORDERS:
            raise ValueError(f"unknown order {order!r}; use one of {SUM_ORDERS}")
        super().__init__(order)
        self.split_cube = split_cube
        mutant = type(self) is not TextbookGrad
        self.id = (self.kind() + ("" if mutant and order == "sequential" else f"-{order}")
                   + ("-split-cube" if split_cube else ""))

    @classmethod
    def kind(cls) -> str:
        return "textbook-grad" if cls is TextbookGrad else "mutant-" + cls.__name__

    # ---- the steps, each overridable ------------------------------------------------------
    def backward_n(self, x, x32, eps):
        """n = 1/sqrt(mean(x^2) + eps) in float32, exactly as the forward forms it."""
        return self.inv_rms(self.sum_squares(x, x32), self.count(x), eps)

    def dx_n(self, x, x32, eps, n):
        """The n that dx is formed with (the backward's n)."""
        return n

    def row_mean(self, u, v):
        """mean(u v) over the last axis, keepdims: float32 products, float32 accumulation."""
        d = u.shape[-1]
        return float32_sum(u * v, self.sum_order) / F32(max(d, 1))

    def cube(self, n):
        return n * n * n

    def dx_formula(self, n, a, x32, p):
        if self.split_cube:      # (x n)(n^2 p): no n^3, which underflows for q > 2**84
            return n * a - (x32 * n) * (n * n * p)
        return n * a - x32 * self.cube(n) * p

    def batch_sum(self, terms):
        """dweight's reduction of (rows, d) float32 terms over the rows."""
        return _lead_sum(terms, self.sum_order)

    def dweight_terms(self, g32, x32, n):
        return g32 * x32 * n

    def dweight_for(self, x, weight, g32, x32, n):
        d = x.shape[-1]
        rows = int(np.prod(x.shape[:-1], dtype=np.int64))
        dw = self.batch_sum(self.dweight_terms(g32, x32, n).reshape(rows, d))
        return dw.astype(weight.dtype)

    def finish_dx(self, dx32, x):
        return dx32.astype(x.dtype)

    def tangent(self, x32, n, tx32, w32, tw32, s):
        ty = (tx32 * n - x32 * self.cube(n) * s) * w32
        if tw32 is not None:
            ty = ty + x32 * n * tw32
        return ty

    hvp_coefficient = 3

    def second_order(self, x32, n, a, v32, p, sv, t):
        n3 = self.cube(n)
        n5 = n3 * n * n
        c = F32(self.hvp_coefficient)
        return -n3 * sv * a - n3 * p * v32 + c * n5 * sv * p * x32 - n3 * t * x32

    # ---- the entry points ------------------------------------------------------------------
    def _w32(self, weight, d):
        return np.ones(d, F32) if weight is None else weight.astype(F32)

    def vjp(self, x, weight, eps, g):
        with np.errstate(all="ignore"):
            x32, g32 = x.astype(F32), g.astype(F32)
            n = self.backward_n(x, x32, eps)
            a = g32 * self._w32(weight, x.shape[-1])
            p = self.row_mean(a, x32)
            dx = self.finish_dx(self.dx_formula(self.dx_n(x, x32, eps, n), a, x32, p), x)
            dw = None if weight is None else self.dweight_for(x, weight, g32, x32, n)
        return dx, dw

    def jvp(self, x, weight, eps, tx, tweight):
        out = result_dtype(x.dtype, None if weight is None else weight.dtype)
        with np.errstate(all="ignore"):
            x32, tx32 = x.astype(F32), tx.astype(F32)
            n = self.backward_n(x, x32, eps)
            s = self.row_mean(x32, tx32)
            tw32 = None if tweight is None else tweight.astype(F32)
            ty = self.tangent(x32, n, tx32, self._w32(weight, x.shape[-1]), tw32, s)
            return ty.astype(out)

    def hvp(self, x, weight, eps, g, v):
        with np.errstate(all="ignore"):
            x32, g32, v32 = x.astype(F32), g.astype(F32), v.astype(F32)
            n = self.backward_n(x, x32, eps)
            a = g32 * self._w32(weight, x.shape[-1])
            p, sv, t = self.row_mean(a, x32), self.row_mean(x32, v32), self.row_mean(a, v32)
            hv = self.second_order(x32, n, a, v32, p, sv, t)
            return hv.astype(x.dtype)


# ---- mutants: one classic gradient bug each ------------------------------------------------


class DropProjection(TextbookGrad):
    """dx = n g w: the term - x n^3 mean(g w x) (the derivative through n) is missing."""

    def dx_formula(self, n, a, x32, p):
        return n * a


class ProjectionSignFlipped(TextbookGrad):
    """dx = n a + x n^3 p: the derivative through n added instead of subtracted."""

    def dx_formula(self, n, a, x32, p):
        return n * a + x32 * self.cube(n) * p


class BackwardSquaresInHalf(TextbookGrad):
    """dx's kernel recomputes n from squares formed and summed in x's half type (float16 or
    bfloat16) instead of float32: squares above float16's range (|x| > 256) become inf, so n = 0,
    and the sum loses bits (the forward and dweight are right)."""

    def dx_n(self, x, x32, eps, n):
        if x.dtype.name not in fakes.HALF_NAMES:
            return n
        sq = x * x
        s = (np.zeros(sq.shape[:-1] + (1,), sq.dtype) if sq.shape[-1] == 0
             else np.cumsum(sq, axis=-1, dtype=sq.dtype)[..., -1:])
        return self.inv_rms(s.astype(F32), self.count(x), eps)


class DweightFirstRowOnly(TextbookGrad):
    """dweight is g x n of the first row only: the reduction over the batch is missing."""

    def batch_sum(self, terms):
        return terms[0].copy() if terms.shape[0] else np.zeros(terms.shape[1], F32)


class DweightHalfAccumulation(TextbookGrad):
    """dweight's terms and their sum over the batch are formed in float16 (a half-precision
    accumulator): terms below float16's range vanish, the sum loses bits."""

    def batch_sum(self, terms):
        if terms.shape[0] == 0:
            return np.zeros(terms.shape[1], F32)
        h = terms.astype(np.float16)
        return np.cumsum(h, axis=0, dtype=np.float16)[-1].astype(F32)


class EpsMissingInBackward(TextbookGrad):
    """The backward recomputes n = 1/sqrt(mean(x^2)) without eps (the forward keeps it)."""

    def backward_n(self, x, x32, eps):
        return self.inv_rms(self.sum_squares(x, x32), self.count(x), 0.0)


class SquareInsteadOfCube(TextbookGrad):
    """dx = n a - x n^2 p: the power of n in the derivative through n is 2, not 3."""

    def dx_formula(self, n, a, x32, p):
        return n * a - x32 * (n * n) * p


class SumInsteadOfMeanInProjection(TextbookGrad):
    """p = sum(a x) instead of mean(a x) in dx (the division by d forgotten)."""

    def dx_n(self, x, x32, eps, n):
        """The n that dx is formed with (the backward's n)."""
        return n

    def row_mean(self, u, v):
        return float32_sum(u * v, self.sum_order)


class JvpMissingNormTerm(TextbookGrad):
    """The tangent ignores the change of n: ty = tx n w + x n tw (no - x n^3 mean(x tx) w)."""

    def tangent(self, x32, n, tx32, w32, tw32, s):
        ty = tx32 * n * w32
        return ty if tw32 is None else ty + x32 * n * tw32


class JvpIgnoresWeightTangent(TextbookGrad):
    """The tangent ignores the weight's tangent tw (as if the weight were a constant)."""

    def tangent(self, x32, n, tx32, w32, tw32, s):
        return super().tangent(x32, n, tx32, w32, None, s)


class HvpCoefficientTwo(TextbookGrad):
    """Second order: the coefficient of n^5 <x, v> <a, x> x / d^2 is 2 instead of 3."""

    hvp_coefficient = 2


class DxNotCastBack(TextbookGrad):
    """dx is returned in the float32 working type, not cast back to x's dtype."""

    def finish_dx(self, dx32, x):
        return dx32


class DxRowsFlattened(TextbookGrad):
    """dx is returned as the kernel's (rows, d) matrix: the leading shape is not restored."""

    def finish_dx(self, dx32, x):
        d = x.shape[-1]
        rows = int(np.prod(x.shape[:-1], dtype=np.int64))
        return dx32.astype(x.dtype).reshape(rows, d)


class DweightWithoutWeight(TextbookGrad):
    """vjp returns a dweight (that of a unit weight) for weight=None instead of None."""

    def vjp(self, x, weight, eps, g):
        dx, dw = super().vjp(x, weight, eps, g)
        if weight is None:
            with np.errstate(all="ignore"):
                x32 = x.astype(F32)
                n = self.backward_n(x, x32, eps)
                dw = self.dweight_for(x, np.ones(x.shape[-1], x.dtype), g.astype(F32), x32, n)
        return dx, dw


def grad_variants() -> list[TextbookGrad]:
    """The correct ones, one per float32 summation order."""
    return [TextbookGrad(o) for o in SUM_ORDERS]


MUTANT_CLASSES = [c for c in list(globals().values())
                  if isinstance(c, type) and issubclass(c, TextbookGrad) and c is not TextbookGrad]
