"""Adapter: Equinox's layer ``eqx.nn.RMSNorm`` (JAX, on the CPU; id ``equinox-cpu``).

Install with ``pip install 'rmsnorm-conformance[equinox]'``. Equinox and JAX are imported inside
the functions only, so this module imports (and reports why it can't run) without them.

What it computes (equinox 0.13.8, ``equinox/nn/_normalisation.py``): for one vector of the
layer's ``shape``,

    dtype = result_type(x.dtype, float32)           float32 for every input dtype
    x = x.astype(dtype)
    out = rsqrt(mean(x**2) + eps) * x
    out = weight.astype(dtype) * out                 (use_weight, default True)
    out = out + bias.astype(dtype)                   (use_bias, default True: zeros)
    return out.astype(x's original dtype)

so the output is x's dtype whatever the weight's (``mixed="input"``), with one rounding. A
default ``RMSNorm(d)`` has eps 1e-5 and two parameters, ``weight`` (ones) and ``bias`` (zeros),
in float32 (``default_floating_dtype()`` without x64); eps is not validated. The layer takes one
vector (``x.shape == shape``, else ValueError): batches go through ``jax.vmap``, one per leading
axis, as Equinox's documentation says.

The adapter builds ``eqx.nn.RMSNorm(d, eps=eps, use_weight=weight is not None,
dtype=weight.dtype)`` and replaces its weight with the given one and its bias with zeros of the
weight's dtype, both passed into the jitted function as arrays (parameters are runtime values in a
model, so the zero bias really is added: XLA cannot fold it away), then applies the vmapped layer
under ``jax.jit``. eps is a traced float32 scalar (one program per shape, as for the other JAX
adapters), although Equinox declares it a static field: Equinox warns about an array in a static
field, and the adapter silences that one warning. Gradients: ``jax.vjp``, ``jax.jvp``,
forward-over-reverse second order. JAX arrays have no views: no layouts.
"""

from __future__ import annotations

import importlib.util
import warnings

from rmsnorm_conformance.impl import jax_rmsnorm as _jax
from rmsnorm_conformance.protocol import DTYPES, Capabilities, Implementation, ModuleInfo

EXTRA = "pip install 'rmsnorm-conformance[equinox]'"


def unavailable() -> str | None:
    if importlib.util.find_spec("equinox") is None:
        return f"equinox is not installed: {EXTRA}"
    if importlib.util.find_spec("jax") is None:
        return f"jax is not installed: {EXTRA}"
    return None


def layer(d, eps, weight):
    """``eqx.nn.RMSNorm(d, eps=eps, use_weight=..., dtype=...)`` holding ``weight`` and a zero
    bias that is an array of the caller's (not a constant of the program)."""
    import equinox as eqx
    import jax.numpy as jnp

    dtype = jnp.float32 if weight is None else weight.dtype
    with warnings.catch_warnings():     # eps traced: "A JAX array is being set as static!"
        warnings.filterwarnings("ignore", message="A JAX array is being set as static")
        module = eqx.nn.RMSNorm(d, eps=eps, use_weight=weight is not None, dtype=dtype)
    return module


def eqx_rms_norm(x, weight, eps, bias=None):
    """The layer vmapped over every leading axis of x, its weight and bias replaced."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    module = layer(x.shape[-1], eps, weight)
    if bias is None:      # only for direct calls: the jitted entry points pass the zeros in
        bias = jnp.zeros(x.shape[-1:], module.bias.dtype)
    if weight is None:
        module = eqx.tree_at(lambda m: m.bias, module, bias)
    else:
        module = eqx.tree_at(lambda m: (m.weight, m.bias), module, (weight, bias))
    fn = module
    for _ in range(x.ndim - 1):
        fn = jax.vmap(fn)
    return fn(x)


def _with_zero_bias(x, weight, eps):
    """fn(x, weight, eps) as impl/jax_rmsnorm.compiled takes it, its third argument the pair
    (eps, zero bias): both traced arguments of the jitted program."""
    eps, bias = eps
    return eqx_rms_norm(x, weight, eps, bias)


class EquinoxRMSNorm(Implementation):
    """``eqx.nn.RMSNorm`` with the given weight (``use_weight=False`` for None) and a zero bias,
    vmapped over the leading axes and jitted."""

    id = "equinox-cpu"
    # mixed "input": the output is cast back to x's dtype. weight None: use_weight=False. eps
    # not validated (nonpositive_eps). A module: default eps 1e-5 (as MLX's) but eps <= 0
    # accepted (not mlx_module); its parameters are the weight (ones) and a zero bias
    # (module_bias), float32; no functional op. validation off: the vmapped layer checks only
    # that each vector has the layer's shape.
    capabilities = Capabilities(dtypes=tuple(DTYPES), mixed="input", weight_none=True,
                                nonpositive_eps=True, validation=False, module=True,
                                module_bias=True, functional=False, mlx_module=False,
                                module_param_dtype="float32", gradients=("vjp", "jvp", "hvp"),
                                device="cpu", compiles_per_shape=True)

    def unavailable_reason(self):
        return unavailable()

    def environment(self):
        import equinox as eqx
        import jax

        return {"framework": "equinox", "version": eqx.__version__, "device": "cpu",
                "jax": jax.__version__}

    @staticmethod
    def _eps(x, weight, eps):
        """eps travels with the zero bias, both traced: (eps, zeros of the weight's dtype)."""
        import numpy as np

        return eps, np.zeros(x.shape[-1:], np.float32 if weight is None else weight.dtype)

    def rms_norm(self, x, weight, eps, layout=None):
        if layout is not None:
            raise ValueError(f"{self.id} declares no layouts (JAX arrays have no views)")
        return _jax.forward(_with_zero_bias, x, weight, self._eps(x, weight, eps))

    def vjp(self, x, weight, eps, g):
        return _jax.vjp(_with_zero_bias, x, weight, self._eps(x, weight, eps), g)

    def jvp(self, x, weight, eps, tx, tweight):
        return _jax.jvp(_with_zero_bias, x, weight, self._eps(x, weight, eps), tx, tweight)

    def hvp(self, x, weight, eps, g, v):
        return _jax.hvp(_with_zero_bias, x, weight, self._eps(x, weight, eps), g, v)

    def module_info(self, dims, eps=None):
        import equinox as eqx

        module = eqx.nn.RMSNorm(dims) if eps is None else eqx.nn.RMSNorm(dims, eps=eps)
        return ModuleInfo(eps=module.eps, parameters={
            name: _jax.to_numpy(getattr(module, name)) for name in ("weight", "bias")
            if getattr(module, name) is not None})

    def benchmark(self, op, shape, dtype):
        return _jax.benchmark(lambda x, w, eps: eqx_rms_norm(x, w, eps), op, shape, dtype)


cpu = EquinoxRMSNorm()
