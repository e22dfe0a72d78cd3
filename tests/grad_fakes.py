"""Gradient mutants of ``numpy-textbook``: its float32 VJP, JVP and second-order product
(``impl/numpy_textbook.py``) with one classic bug each, and the module's gradient bug.

As in ``fakes.py``: each docstring names the bug, ``target`` the SPEC.md clause whose property
must catch it, and each keeps the capabilities of the correct implementation it derives from.
"""

from __future__ import annotations

import numpy as np

from tests.fakes import F32, HALF_NAMES, ModuleMutant, Mutant, _half_sequential


# -- the derivative through n


class DropProjection(Mutant):
    """n treated as a constant: dx = n g w, the term - x n^3 mean(g w x) is missing."""

    target = "GRAD-1"
    also = ("GRAD-5", "GRAD-15")     # not orthogonal to x as eps vanishes; wrong at every d

    def dx(self, n, a, x32, p):
        return n * a


class ProjectionSignFlipped(Mutant):
    """dx = n a + x n^3 p: the derivative through n added instead of subtracted."""

    target = "GRAD-4"

    def dx(self, n, a, x32, p):
        return n * a + (x32 * n) * (n * n * p)


class SquareInsteadOfCube(Mutant):
    """dx = n a - x n^2 p: the power of n in the derivative through n is 2, not 3."""

    target = "GRAD-7"

    def dx(self, n, a, x32, p):
        return n * a - (x32 * n) * (n * p)


class SumInsteadOfMeanInProjection(Mutant):
    """p = sum(g w x) instead of mean(g w x) in dx: the division by d forgotten."""

    target = "GRAD-1"

    def dx(self, n, a, x32, p):
        return super().dx(n, a, x32, p * F32(x32.shape[-1]))


class UnbiasedProjection(Mutant):
    """p = sum(g w x) / (d - 1) in dx: a Bessel correction carried over."""

    target = "GRAD-15"

    def dx(self, n, a, x32, p):
        d = x32.shape[-1]
        with np.errstate(divide="ignore"):
            return super().dx(n, a, x32, p * F32(d) / F32(d - 1))


class DxWeightMissing(Mutant):
    """dx is formed from g instead of g w: the weight forgotten in the backward (dweight right)."""

    target = "GRAD-1"

    def vjp(self, x, weight, eps, g):
        dx, _ = super().vjp(x, None, eps, g)
        _, dw = super().vjp(x, weight, eps, g)
        return dx, dw


class EpsMissingInBackward(Mutant):
    """The backward recomputes n = 1/sqrt(mean(x^2)) without eps (the forward keeps it)."""

    target = "GRAD-1"

    def vjp(self, x, weight, eps, g):
        return super().vjp(x, weight, 0.0, g)


# -- precision of the backward's reductions


class BackwardSquaresInHalf(Mutant):
    """The backward recomputes n from squares formed and summed in x's half type (float16,
    bfloat16): squares above float16's range (|x| > 256) become inf, so n = 0, and the sum
    loses bits (the forward is right)."""

    target = "GRAD-10"
    _backward = False

    def vjp(self, x, weight, eps, g):
        self._backward = True
        try:
            return super().vjp(x, weight, eps, g)
        finally:
            self._backward = False

    def sum_squares(self, x, x32):
        if not self._backward or x.dtype.name not in HALF_NAMES:
            return super().sum_squares(x, x32)
        return _half_sequential(np.asarray(x) * np.asarray(x), x.dtype)


class HalfDotProduct(Mutant):
    """dx's dot product <g w, x> is accumulated in x's half type (float16, bfloat16) instead of
    float32."""

    target = "GRAD-15"
    _acc = None

    def vjp(self, x, weight, eps, g):
        self._acc = x.dtype if x.dtype.name in HALF_NAMES else None
        try:
            return super().vjp(x, weight, eps, g)
        finally:
            self._acc = None

    def mean(self, u, v):
        if self._acc is None:
            return super().mean(u, v)
        return _half_sequential(u * v, self._acc) / F32(max(u.shape[-1], 1))


# -- dweight


class DweightFirstRowOnly(Mutant):
    """dweight is g x n of the first row only: the reduction over the batch is missing."""

    target = "GRAD-6"

    def batch_sum(self, terms):
        return terms[0].copy() if terms.shape[0] else np.zeros(terms.shape[1], F32)


class DweightHalfManyRows(Mutant):
    """dweight's reduction over the batch switches to a float16 accumulator for more than 4096
    rows (a split reduction for large batches): right for smaller batches."""

    target = "GRAD-14"

    def batch_sum(self, terms):
        if terms.shape[0] <= 4096:
            return super().batch_sum(terms)
        return _half_sequential(np.ascontiguousarray(terms.T), np.float16)[:, 0]


class DweightMissingNorm(Mutant):
    """dweight = sum over rows of g x: the factor n forgotten."""

    target = "GRAD-6"

    def dweight(self, g32, x32, n):
        return super().dweight(g32, x32, np.ones_like(n))


# -- JVP and second order


class JvpMissingNormTerm(Mutant):
    """The tangent ignores the change of n: ty = tx n w + x n tw (no - x n^3 mean(x tx) w)."""

    target = "GRAD-2"
    also = ("GRAD-9",)        # its JVP is then not the adjoint of its (right) VJP

    def tangent(self, x32, n, tx32, w32, tw32, s):
        ty = tx32 * n * w32
        return ty if tw32 is None else ty + (x32 * n) * tw32


class JvpIgnoresWeightTangent(Mutant):
    """The tangent ignores the weight's tangent tw (as if the weight were a constant)."""

    target = "GRAD-2"

    def tangent(self, x32, n, tx32, w32, tw32, s):
        return super().tangent(x32, n, tx32, w32, None, s)


class HvpCoefficientTwo(Mutant):
    """Second order: the coefficient of n^5 <x, v> <a, x> x / d^2 is 2 instead of 3."""

    target = "GRAD-12"

    def second_order(self, x32, n, a, v32, p, sv, t):
        n5 = n * n * n * n * n
        return super().second_order(x32, n, a, v32, p, sv, t) - n5 * sv * p * x32


class HvpMissingTerm(Mutant):
    """Second order: the term - n^3 <a, v>/d x (the derivative of the projection along v) is
    missing."""

    target = "GRAD-12"

    def second_order(self, x32, n, a, v32, p, sv, t):
        return super().second_order(x32, n, a, v32, p, sv, np.zeros_like(t))


# -- shapes, dtypes, plumbing


class DxNotCastBack(Mutant):
    """dx is returned in the float32 working type, not cast back to x's dtype."""

    target = "GRAD-3"

    def vjp(self, x, weight, eps, g):
        dx, dw = super().vjp(x, weight, eps, g)
        return dx.astype(F32), dw


class DxRowsFlattened(Mutant):
    """dx is returned as the kernel's (rows, d) matrix: the leading shape is not restored."""

    target = "GRAD-3"

    def vjp(self, x, weight, eps, g):
        dx, dw = super().vjp(x, weight, eps, g)
        return dx.reshape(-1, x.shape[-1]), dw


class DweightWithoutWeight(Mutant):
    """vjp returns a dweight (that of a unit weight) for weight=None instead of None."""

    target = "GRAD-3"

    def vjp(self, x, weight, eps, g):
        if weight is not None:
            return super().vjp(x, weight, eps, g)
        return super().vjp(x, np.ones(x.shape[-1], x.dtype), eps, g)


# -- state carried between calls


class StaleResiduals(Mutant):
    """The function built for a sequence of VJP calls caches the forward's saved statistic n by
    dtype only: later calls reuse the first call's n (repeated to the new number of rows)."""

    target = "GRAD-16"
    _saved = None

    def inv_rms(self, x, x32, eps):
        n = super().inv_rms(x, x32, eps)
        if self._saved is None:
            return n
        first = self._saved.setdefault(x.dtype.name, n)
        return np.resize(first, n.shape) if n.size else n

    def vjp_sequence(self, calls):
        self._saved = {}
        try:
            return [self.vjp(x, w, eps, g) for x, w, eps, g in calls]
        finally:
            self._saved = None


# -- the module's gradients


class ModuleGradDiffersFromFunctional(ModuleMutant):
    """The module's backward forms x n^3 p with n^3 explicit, the functional VJP (x n)(n^2 p):
    both are accurate, but not bit-identical as GRAD-13 requires."""

    target = "GRAD-13"
    _module = False

    def vjp(self, x, weight, eps, g):
        self._module = True
        try:
            return super().vjp(x, weight, eps, g)
        finally:
            self._module = False

    def dx(self, n, a, x32, p):
        if not self._module:
            return super().dx(n, a, x32, p)
        return n * a - x32 * (n * n * n) * p


# -- beyond the MUST domains, and bit for bit


class CubedNInBackward(Mutant):
    """dx formed with an explicit n^3 in float32 (MLX's, PyTorch's and JAX's formulation): rows
    with mean(x^2) + eps above 2**80 underflow n^3 and get wrong dx (GRAD-11, SHOULD)."""

    target = "GRAD-11"

    def dx(self, n, a, x32, p):
        return n * a - x32 * (n * n * n) * p


class HalfPrecisionTerms(Mutant):
    """dx's two terms rounded to x's (half) dtype before they are subtracted: they overflow
    float16 where n is large, giving inf - inf = NaN where dx is an ordinary number (Flax's
    float16 VJP; GRAD-17, SHOULD)."""

    target = "GRAD-17"

    def vjp(self, x, weight, eps, g):
        if x.dtype.name not in HALF_NAMES:
            return super().vjp(x, weight, eps, g)
        with np.errstate(all="ignore"):
            x32, g32 = self.load(x), self.load(g)
            n = self.inv_rms(x, x32, eps)
            a = self._gw(g32, weight)
            p = self.mean(a, x32)
            direct = (n * a).astype(x.dtype).astype(F32)
            projected = ((x32 * n) * (n * n * p)).astype(x.dtype).astype(F32)
            dx = (direct - projected).astype(x.dtype)
            dw = None if weight is None else self.dweight(g32, x32, n).astype(weight.dtype)
        return dx, dw


class ScaleDependentDx(Mutant):
    """dx rounded once more (times 1 + 2**-23) where x's largest magnitude exceeds 1: within
    every bound, but dx(c x) * c is no longer dx(x) bit for bit (GRAD-8, SHOULD)."""

    target = "GRAD-8"

    def dx(self, n, a, x32, p):
        dx = super().dx(n, a, x32, p)
        big = np.max(np.abs(x32), axis=-1, keepdims=True) > 1
        return np.where(big, dx * F32(1 + 2.0 ** -23), dx)
