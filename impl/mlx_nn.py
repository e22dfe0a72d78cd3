"""Adapter: the module ``mlx.nn.RMSNorm(dims, eps)`` on one MLX device.

``rms_norm(x, weight, eps)`` builds the module with that eps and replaces its weight; a module
has no ``weight=None`` and rejects eps <= 0, so those capabilities are off. Its VJP goes through
``nn.value_and_grad`` (weight) and ``mx.grad`` (x) of ``sum(g * module(x))``.
"""

from __future__ import annotations

from impl import _mlx
from impl.protocol import DTYPES, LAYOUTS, Capabilities, Implementation, ModuleInfo


class MLXModule(Implementation):
    def __init__(self, device: str):
        self.device = device
        self.id = f"mlx-nn-{device}"
        self.capabilities = Capabilities(
            dtypes=tuple(DTYPES), mixed="promote", module=True, functional=True, mlx_module=True,
            layouts=LAYOUTS, gradients=("vjp",), device=device)

    def unavailable_reason(self):
        return _mlx.gpu_unavailable_reason() if self.device == "gpu" else None

    def environment(self):
        return _mlx.environment(self.device)

    def _module(self, weight, eps):
        import mlx.nn as nn

        module = nn.RMSNorm(weight.shape[-1], eps=eps)
        module.weight = _mlx.to_mx(weight)
        return module

    def rms_norm(self, x, weight, eps, layout=None):
        import mlx.core as mx

        with mx.stream(_mlx.device(self.device)):
            xm, wm = _mlx.build_view(x, weight, layout)
            module = self._module(weight, eps)
            module.weight = wm
            y = module(xm)
            mx.eval(y)
        return _mlx.to_np(y)

    def vjp(self, x, weight, eps, g):
        import mlx.core as mx
        import mlx.nn as nn

        with mx.stream(_mlx.device(self.device)):
            module, gm, xm = self._module(weight, eps), _mlx.to_mx(g), _mlx.to_mx(x)
            loss = lambda model, z: (model(z) * gm).sum()
            _, grads = nn.value_and_grad(module, loss)(module, xm)
            dx = mx.grad(lambda z: loss(module, z))(xm)
            mx.eval(grads, dx)
        return _mlx.to_np(dx), _mlx.to_np(grads["weight"])

    def module_info(self, dims, eps=None):
        import mlx.nn as nn
        from mlx.utils import tree_flatten

        module = nn.RMSNorm(dims) if eps is None else nn.RMSNorm(dims, eps=eps)
        params = {k: _mlx.to_np(v) for k, v in tree_flatten(module.parameters())}
        return ModuleInfo(eps=module.eps, parameters=params)

    def functional(self, x, weight, eps):
        return _mlx.fast_rms_norm(self.device, x, weight, eps)

    def functional_vjp(self, x, weight, eps, g):
        return _mlx.fast_vjp(self.device, x, weight, eps, g)


cpu = MLXModule("cpu")
gpu = MLXModule("gpu")
