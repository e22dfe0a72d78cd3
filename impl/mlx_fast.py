"""Adapter: ``mlx.core.fast.rms_norm(x, weight, eps)`` on one MLX device, with its derivatives
through ``mx.vjp`` and ``mx.jvp`` (second order: ``mx.jvp`` of ``mx.vjp``)."""

from __future__ import annotations

from impl import _mlx
from impl.protocol import DTYPES, LAYOUTS, Capabilities, Implementation


class MLXFast(Implementation):
    def __init__(self, device: str):
        self.device = device
        self.id = f"mlx-fast-{device}"
        self.capabilities = Capabilities(
            dtypes=tuple(DTYPES), mixed="promote", weight_none=True, nonpositive_eps=True,
            validation=True, layouts=LAYOUTS, gradients=("vjp", "jvp", "hvp"), device=device)

    def unavailable_reason(self):
        return _mlx.gpu_unavailable_reason() if self.device == "gpu" else None

    def environment(self):
        return _mlx.environment(self.device)

    def rms_norm(self, x, weight, eps, layout=None):
        return _mlx.fast_rms_norm(self.device, x, weight, eps, layout)

    def vjp(self, x, weight, eps, g):
        return _mlx.fast_vjp(self.device, x, weight, eps, g)

    def jvp(self, x, weight, eps, tx, tweight):
        return _mlx.fast_jvp(self.device, x, weight, eps, tx, tweight)

    def hvp(self, x, weight, eps, g, v):
        return _mlx.fast_hvp(self.device, x, weight, eps, g, v)


cpu = MLXFast("cpu")
gpu = MLXFast("gpu")
