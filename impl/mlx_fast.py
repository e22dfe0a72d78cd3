"""Adapter: ``mlx.core.fast.rms_norm(x, weight, eps)`` on one MLX device, with its derivatives
through ``mx.vjp`` and ``mx.jvp`` (second order: ``mx.jvp`` of ``mx.vjp``)."""

from __future__ import annotations

from rmsnorm_conformance.impl import _mlx
from rmsnorm_conformance.protocol import Capabilities, Implementation, LAYOUTS


class MLXFast(Implementation):
    #: How the functional op is called: identity here; mlx_compiled wraps it in mx.compile.
    wrap = staticmethod(lambda f: f)

    def __init__(self, device: str):
        self.device = device
        self.id = f"mlx-fast-{device}"

    @property
    def capabilities(self):
        return Capabilities(
            dtypes=_mlx.dtypes(self.device), mixed="promote", weight_none=True, nonpositive_eps=True,
            validation=True, layouts=LAYOUTS, gradients=_mlx.gradients(), device=self.device)

    def unavailable_reason(self):
        return _mlx.unavailable_reason(self.device)

    def environment(self):
        return _mlx.environment(self.device)

    def rms_norm(self, x, weight, eps, layout=None):
        return _mlx.fast_rms_norm(self.device, x, weight, eps, layout, self.wrap)

    def vjp(self, x, weight, eps, g):
        return _mlx.fast_vjp(self.device, x, weight, eps, g, self.wrap)

    def jvp(self, x, weight, eps, tx, tweight):
        return _mlx.fast_jvp(self.device, x, weight, eps, tx, tweight, self.wrap)

    def hvp(self, x, weight, eps, g, v):
        return _mlx.fast_hvp(self.device, x, weight, eps, g, v, self.wrap)

    def benchmark(self, op, shape, dtype):
        forward, backward = self.wrap(_mlx.forward_fn(1e-5)), self.wrap(_mlx.vjp_fn(1e-5))
        return _mlx.benchmark(self.device, op, shape, dtype, lambda w: (
            lambda x: forward(x, w), lambda g, x: backward(g, x, w)))


cpu = MLXFast("cpu")
gpu = MLXFast("gpu")
