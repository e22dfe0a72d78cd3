"""Adapter: ``mlx.core.fast.rms_norm(x, weight, eps)`` on one MLX device."""

from __future__ import annotations

from impl import _mlx
from impl.protocol import Capabilities, Implementation


class MLXFast(Implementation):
    def __init__(self, device: str):
        self.device = device
        self.id = f"mlx-fast-{device}"
        self.capabilities = Capabilities(devices=device, gradients=())

    def unavailable_reason(self):
        return _mlx.gpu_unavailable_reason() if self.device == "gpu" else None

    def rms_norm(self, x, weight, eps, layout=None):
        import mlx.core as mx

        with mx.stream(_mlx.device(self.device)):
            w = None if weight is None else _mlx.to_mx(weight)
            y = mx.fast.rms_norm(_mlx.build_view(x, layout), w, eps)
            mx.eval(y)
        return _mlx.to_np(y)


cpu = MLXFast("cpu")
gpu = MLXFast("gpu")
