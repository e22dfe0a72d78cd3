"""Adapter ``numpy-textbook``: a correct RMSNorm in plain NumPy, accumulating in float32 (in
float64 for float64 inputs).

A readable baseline for the suite (and the correct implementation the suite's mutants derive
from, ``tests/fakes.py``). The forward follows MLX's order of operations
(``mlx/backend/*/rms_norm``); ``T`` is the output dtype (x's, or float32 for mixed dtypes):

    x32 = float32(x)                          exact for every input dtype
    s   = sum(x32 * x32)                      float32 (NumPy's pairwise sum)
    n   = 1 / sqrt(s / d + float32(eps))      float32
    y   = T(x32 * n) * T(weight)              rounded to T, then the weight product in T

Gradients in float32, each result rounded once into its own dtype (a = g w, means over the
last axis):

    p  = mean(a x)            dx = n a - (x n)(n^2 p)       (no n^3: stays finite past 2^80)
    dweight = sum over rows of g (x n)
    s  = mean(x tx)           ty = (tx n - (x n)(n^2 s)) w + (x n) tw
    t  = mean(a v), sv = mean(x v)
    Hv = -n^3 sv a - n^3 p v + 3 n^5 sv p x - n^3 t x

Each step is one small method, so that a variant overrides exactly one of them.
"""

from __future__ import annotations

import contextlib

import numpy as np

from rmsnorm_conformance.protocol import Capabilities, DTYPES, Implementation, LAYOUTS, LOW_PRECISION

F32 = np.float32


class NumpyTextbook(Implementation):
    id = "numpy-textbook"
    #: The working type: float32, or float64 where any input is float64 (``for_inputs``).
    real = F32
    capabilities = Capabilities(
        dtypes=LOW_PRECISION + ("float64",), mixed="promote", weight_none=True, nonpositive_eps=True,
        validation=True, layouts=LAYOUTS, gradients=("vjp", "jvp", "hvp"), device="cpu")

    def environment(self):
        return {"framework": "numpy", "version": np.__version__, "device": "cpu"}

    # ---- the steps ---------------------------------------------------------------------------
    def check_args(self, x, weight):
        """MLX's argument validation (VAL-1..4): ValueError for what fast.rms_norm rejects."""
        if x.ndim == 0:
            raise ValueError("x must have at least one dimension")
        if weight is not None and weight.ndim != 1:
            raise ValueError(f"weight must be 1-D, got shape {weight.shape}")
        if weight is not None and weight.shape[0] != x.shape[-1]:
            raise ValueError(f"weight of size {weight.shape[0]} for an axis of {x.shape[-1]}")
        for a in (x, weight):
            if a is not None and a.dtype.name not in DTYPES:
                raise ValueError(f"unsupported dtype {a.dtype.name}; use one of {list(DTYPES)}")

    def view(self, x, weight, layout):
        """The arrays the kernel reads: x and weight, or the requested NumPy views."""
        if layout is None:
            return x, weight
        return layout.view(x, weight, np.asarray, np.swapaxes, np.broadcast_to)

    def load(self, a):
        """Read an array into float32 working storage (exact; C order whatever the view)."""
        return np.asarray(a, dtype=self.real, order="C")

    def row_sum(self, terms):
        """float32 sum over the last axis, keepdims."""
        return np.sum(terms, axis=-1, dtype=self.real, keepdims=True)

    def batch_sum(self, terms):
        """float32 sum of (rows, d) terms over the rows: dweight's reduction."""
        return np.sum(terms, axis=0, dtype=self.real)

    def sum_squares(self, x, x32):
        return self.row_sum(x32 * x32)

    def mean_plus_eps(self, s, d, eps):
        return s / self.real(d) + self.real(eps)

    def rsqrt(self, q):
        return self.real(1) / np.sqrt(q)

    def inv_rms(self, x, x32, eps):
        """n = 1 / sqrt(mean(x^2) + eps), float32, keepdims."""
        return self.rsqrt(self.mean_plus_eps(self.sum_squares(x, x32), x.shape[-1], eps))

    def out_dtype(self, x, weight):
        return self.capabilities.output_dtype(x.dtype, None if weight is None else weight.dtype)

    def scale(self, x32, n, weight, out):
        """y from x32 and n: rounded to the output type, then the weight product in it (the
        product of two values of the output type, exact in the working type, converted)."""
        t = self.convert(x32 * n, out)
        if weight is None:
            return t
        return self.convert(t.astype(self.real) * weight.astype(out).astype(self.real), out)

    def convert(self, values, dtype):
        """The forward result into its type: round to nearest, ties to even."""
        return values.astype(dtype)

    def convert_gradient(self, values, dtype):
        """A gradient into its type: round to nearest, ties to even."""
        return values.astype(dtype)

    def mean(self, u, v):
        """mean(u v) over the last axis, keepdims: float32 products and accumulation."""
        return self.row_sum(u * v) / self.real(max(u.shape[-1], 1))

    def dx(self, n, a, x32, p):
        return n * a - (x32 * n) * (n * n * p)

    def dweight(self, g32, x32, n):
        return self.batch_sum((g32 * (x32 * n)).reshape(-1, x32.shape[-1]))

    def tangent(self, x32, n, tx32, w32, tw32, s):
        ty = (tx32 * n - (x32 * n) * (n * n * s)) * w32
        return ty if tw32 is None else ty + (x32 * n) * tw32

    def second_order(self, x32, n, a, v32, p, sv, t):
        n3 = n * n * n
        n5 = n3 * n * n
        return -n3 * sv * a - n3 * p * v32 + self.real(3) * n5 * sv * p * x32 - n3 * t * x32

    # ---- the entry points --------------------------------------------------------------------
    @contextlib.contextmanager
    def working_type(self, *arrays):
        """Within the block, the working type is float64 if an input is float64 (else the
        class's float32)."""
        saved = self.real
        if any(a is not None and a.dtype == np.float64 for a in arrays):
            self.real = np.float64
        try:
            yield
        finally:
            self.real = saved

    def rms_norm(self, x, weight, eps, layout=None):
        with self.working_type(x, weight):
            return self._rms_norm(x, weight, eps, layout)

    def _rms_norm(self, x, weight, eps, layout=None):
        xv, wv = self.view(x, weight, layout)
        self.check_args(xv, wv)
        with np.errstate(all="ignore"):
            x32 = self.load(xv)
            return np.asarray(self.scale(x32, self.inv_rms(xv, x32, eps), wv,
                                         self.out_dtype(xv, wv)))

    def _gw(self, g32, weight):
        return g32 if weight is None else g32 * self.load(weight)

    def vjp(self, x, weight, eps, g):
        with self.working_type(x, weight):
            return self._vjp(x, weight, eps, g)

    def _vjp(self, x, weight, eps, g):
        with np.errstate(all="ignore"):
            x32, g32 = self.load(x), self.load(g)
            n = self.inv_rms(x, x32, eps)
            a = self._gw(g32, weight)
            dx = self.convert_gradient(self.dx(n, a, x32, self.mean(a, x32)), x.dtype)
            dw = None if weight is None else self.convert_gradient(
                self.dweight(g32, x32, n), weight.dtype)
        return dx, dw

    def jvp(self, x, weight, eps, tx, tweight):
        with self.working_type(x, weight):
            return self._jvp(x, weight, eps, tx, tweight)

    def _jvp(self, x, weight, eps, tx, tweight):
        with np.errstate(all="ignore"):
            x32, tx32 = self.load(x), self.load(tx)
            n = self.inv_rms(x, x32, eps)
            w32 = np.ones(x.shape[-1], self.real) if weight is None else self.load(weight)
            tw32 = None if tweight is None else self.load(tweight)
            ty = self.tangent(x32, n, tx32, w32, tw32, self.mean(x32, tx32))
            return self.convert_gradient(ty, self.out_dtype(x, weight))

    def hvp(self, x, weight, eps, g, v):
        with self.working_type(x, weight):
            return self._hvp(x, weight, eps, g, v)

    def _hvp(self, x, weight, eps, g, v):
        with np.errstate(all="ignore"):
            x32, v32 = self.load(x), self.load(v)
            n = self.inv_rms(x, x32, eps)
            a = self._gw(self.load(g), weight)
            hv = self.second_order(x32, n, a, v32, self.mean(a, x32), self.mean(x32, v32),
                                   self.mean(a, v32))
            return self.convert_gradient(hv, x.dtype)


adapter = NumpyTextbook()
