"""Adapter: the module ``mlx.nn.RMSNorm(dims, eps)`` on one MLX device.

``rms_norm(x, weight, eps)`` builds the module with that eps and replaces its weight; a module
has no ``weight=None`` and rejects eps <= 0 (from MLX 0.32.2 on), so those capabilities are off.
Its VJP goes through ``nn.value_and_grad`` (weight) and ``mx.grad`` (x) of ``sum(g * module(x))``.
"""

from __future__ import annotations

from rmsnorm_conformance.impl import _mlx
from rmsnorm_conformance.protocol import Capabilities, Implementation, LAYOUTS, ModuleInfo


def forward_fn(module):
    return lambda x: module(x)


def vjp_fn(module):
    """(g, x) -> (dx, dweight) of sum(g * module(x)), the way a training step takes them."""
    import mlx.core as mx
    import mlx.nn as nn

    def vjp(g, x):
        loss = lambda model, z: (model(z) * g).sum()
        _, grads = nn.value_and_grad(module, loss)(module, x)
        return mx.grad(lambda z: loss(module, z))(x), grads["weight"]
    return vjp


def make_module(weight, eps):
    """nn.RMSNorm(d, eps) holding the MLX array ``weight``."""
    import mlx.nn as nn

    module = nn.RMSNorm(weight.shape[-1], eps=eps)
    module.weight = weight
    return module


class MLXModule(Implementation):
    #: How a function of the module is called: as is here; mlx_compiled wraps it in mx.compile
    #: with the module's state as implicit inputs. ``wrap_functional`` is MLXFast.wrap.
    wrap = staticmethod(lambda f, module: f)
    wrap_functional = staticmethod(lambda f: f)

    def __init__(self, device: str):
        self.device = device
        self.id = f"mlx-nn-{device}"

    @property
    def capabilities(self):
        return Capabilities(
            dtypes=_mlx.dtypes(self.device), mixed="promote", module=True, functional=True,
            mlx_module=True, layouts=LAYOUTS, gradients=("vjp",), device=self.device)

    def unavailable_reason(self):
        return _mlx.unavailable_reason(self.device)

    def environment(self):
        return _mlx.environment(self.device)

    def rms_norm(self, x, weight, eps, layout=None):
        xm, wm = _mlx.build_view(x, weight, layout)
        module = make_module(wm, eps)
        return _mlx.run(self.device, self.wrap(forward_fn(module), module), xm)

    def vjp(self, x, weight, eps, g):
        module = make_module(_mlx.to_mx(weight), eps)
        return _mlx.run(self.device, self.wrap(vjp_fn(module), module), _mlx.to_mx(g),
                        _mlx.to_mx(x))

    def module_info(self, dims, eps=None):
        import mlx.nn as nn
        from mlx.utils import tree_flatten

        module = nn.RMSNorm(dims) if eps is None else nn.RMSNorm(dims, eps=eps)
        params = {k: _mlx.to_np(v) for k, v in tree_flatten(module.parameters())}
        return ModuleInfo(eps=module.eps, parameters=params)

    def functional(self, x, weight, eps):
        return _mlx.fast_rms_norm(self.device, x, weight, eps, wrap=self.wrap_functional)

    def functional_vjp(self, x, weight, eps, g):
        return _mlx.fast_vjp(self.device, x, weight, eps, g, wrap=self.wrap_functional)

    def benchmark(self, op, shape, dtype):
        def build(w):
            module = make_module(w, 1e-5)
            return self.wrap(forward_fn(module), module), self.wrap(vjp_fn(module), module)
        return _mlx.benchmark(self.device, op, shape, dtype, build)


cpu = MLXModule("cpu")
gpu = MLXModule("gpu")
