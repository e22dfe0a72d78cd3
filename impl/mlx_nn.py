"""Adapter: the module ``mlx.nn.RMSNorm(dims, eps)`` on one MLX device.

``rms_norm(x, weight, eps)`` builds the module with that eps and replaces its weight; a module
has no ``weight=None`` and rejects eps <= 0, so those capabilities are off.
"""

from __future__ import annotations

from impl import _mlx
from impl.protocol import Capabilities, Implementation, ModuleInfo


class MLXModule(Implementation):
    def __init__(self, device: str):
        self.device = device
        self.id = f"mlx-nn-{device}"
        self.capabilities = Capabilities(weight_none=False, nonpositive_eps=False, module=True,
                                         validation=False, devices=device)

    def unavailable_reason(self):
        return _mlx.gpu_unavailable_reason() if self.device == "gpu" else None

    def rms_norm(self, x, weight, eps, layout=None):
        import mlx.core as mx
        import mlx.nn as nn

        with mx.stream(_mlx.device(self.device)):
            module = nn.RMSNorm(x.shape[-1], eps=eps)
            module.weight = _mlx.to_mx(weight)
            y = module(_mlx.build_view(x, layout))
            mx.eval(y)
        return _mlx.to_np(y)

    def module_info(self, dims, eps=None):
        import mlx.nn as nn
        from mlx.utils import tree_flatten

        module = nn.RMSNorm(dims) if eps is None else nn.RMSNorm(dims, eps=eps)
        params = {k: _mlx.to_np(v) for k, v in tree_flatten(module.parameters())}
        return ModuleInfo(eps=module.eps, parameters=params)

    def functional(self, x, weight, eps):
        import mlx.core as mx

        with mx.stream(_mlx.device(self.device)):
            w = None if weight is None else _mlx.to_mx(weight)
            y = mx.fast.rms_norm(_mlx.to_mx(x), w, eps)
            mx.eval(y)
        return _mlx.to_np(y)


cpu = MLXModule("cpu")
gpu = MLXModule("gpu")
