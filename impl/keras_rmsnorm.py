"""Adapters: Keras 3 on the JAX backend, on the CPU: the op ``keras.ops.rms_normalization`` (id
``keras-ops-cpu``) and the layer ``keras.layers.RMSNormalization`` (id ``keras-layer-cpu``).

Install with ``pip install 'rmsnorm-conformance[keras]'`` (keras >= 3.9, which added both, and
jax). Keras picks its backend once, when it is first imported, from ``KERAS_BACKEND``: the
adapters set it to "jax" in their own process before importing keras (every implementation is
imported and called in a supervised child process of its own), and report themselves unavailable
where keras was already imported with another backend (``--rmsnorm-isolation none`` in a process
that had imported keras first). Keras and JAX are imported inside the functions only, so this
module imports (and reports why it can't run) without them.

What they compute (keras 3.15.1, ``keras/src/ops/nn.py``, ``_rms_normalization``, on the JAX
backend):

    compute = result_type(x.dtype, float32)        float32 for every input dtype
    x = x.astype(compute); scale = scale.astype(compute)
    y = x * rsqrt(mean(square(x), axis) + epsilon) * scale
    return y.astype(x's original dtype)

so the op returns x's dtype whatever the scale's (``mixed="input"``, one rounding at the end),
and accepts ``scale=None`` and any epsilon (default ``keras.config.epsilon()`` = 1e-7). The
layer (``keras/src/layers/normalization/rms_normalization.py``) holds a ``scale`` variable
(ones, in its dtype policy's variable dtype; default epsilon 1e-6, not validated) and calls the
op with it; like every Keras layer it first casts its input to its compute dtype (autocast,
``Layer.__call__``). The adapter builds the layer as a model holds a weight of the given dtype,
``RMSNormalization(epsilon=eps, dtype=weight.dtype)``. A layer therefore never computes on two
dtypes: its output is its compute dtype and it normalises x *cast to it*, which for a float32 x
and a float16 layer rounds x to float16 (and makes values beyond 65504 infinite) before
normalising. No ``mixed`` convention describes that (declared as ``mixed="weight"`` it fails
ACC-1, FWD-2, FWD-4, SPV-1/7/9, MET-2 and GRAD-1/10/12 on such inputs: docs/notes/frameworks.md,
Keras), so the layer declares none: it is judged on same-dtype inputs.

Both run jitted (``jax.jit``), as a Keras model runs on JAX (``jit_compile`` is the JAX
backend's default): the op through the same one-program-per-op machinery as the ``jax-numpy``
adapter (``impl/jax_rmsnorm.py``; eps a traced float32 scalar, so one program serves every eps),
the layer inside ``keras.StatelessScope`` with its scale mapped to the given weight and called
through ``layer(x)`` (so the input is autocast as in a model). Gradients: ``jax.vjp``,
``jax.jvp``, forward-over-reverse second order. JAX arrays have no views: no layouts.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys

from packaging.version import Version

from rmsnorm_conformance.impl import jax_rmsnorm as _jax
from rmsnorm_conformance.protocol import DTYPES, Capabilities, Implementation, ModuleInfo

EXTRA = "pip install 'rmsnorm-conformance[keras]'"
#: keras.ops.rms_normalization and keras.layers.RMSNormalization arrived in keras 3.9.0.
MIN_VERSION = Version("3.9")


def unavailable() -> str | None:
    if importlib.util.find_spec("keras") is None:
        return f"keras is not installed: {EXTRA}"
    if importlib.util.find_spec("jax") is None:
        return f"jax is not installed (the adapters run Keras on its JAX backend): {EXTRA}"
    version = importlib.metadata.version("keras")
    if Version(version).release < MIN_VERSION.release:
        return f"keras {version} has no rms_normalization (added in keras 3.9): {EXTRA}"
    loaded = sys.modules.get("keras")
    if loaded is not None and _backend(loaded) != "jax":
        return (f"keras was imported in this process with the {_backend(loaded)!r} backend "
                f"before the adapter could select 'jax' (run with process isolation)")
    return None


def _backend(keras_module) -> str:
    try:
        return keras_module.backend.backend()
    except Exception:                      # a half-imported or broken keras
        return "unknown"


def _keras():
    """keras, imported with the JAX backend (KERAS_BACKEND set first in this process)."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "jax"
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"keras runs on {keras.backend.backend()!r}, not jax: {unavailable()}")
    return keras


# --- what is jitted: fn(x, weight, eps), as impl/jax_rmsnorm.compiled takes it ------------------

def ops_rms_norm(x, weight, eps):
    """``keras.ops.rms_normalization(x, scale=weight, axis=-1, epsilon=eps)``."""
    return _keras().ops.rms_normalization(x, scale=weight, axis=-1, epsilon=eps)


def _dtype_name(a) -> str:
    import jax.numpy as jnp

    return jnp.dtype(a.dtype).name


def layer_rms_norm(x, weight, eps):
    """``RMSNormalization(epsilon=eps, dtype=weight.dtype)`` built for x's last axis, its scale
    mapped to ``weight`` in a ``keras.StatelessScope`` and called as ``layer(x)`` (autocasting x
    to the layer's compute dtype, as in a model). Constructed while tracing: the variable's
    initial value is computed eagerly (``jax.ensure_compile_time_eval``)."""
    import jax

    keras = _keras()
    with jax.ensure_compile_time_eval():
        layer = keras.layers.RMSNormalization(epsilon=eps, dtype=_dtype_name(weight))
        layer.build(x.shape)
    with keras.StatelessScope(state_mapping=[(layer.scale, weight)]):
        return layer(x)


def layer_as_documented(x, weight, eps):
    """What the layer is documented to compute: Keras casts a layer's input to its compute dtype
    (here the weight's; a no-op for the same-dtype inputs the suite sends) and ``RMSNormalization.call`` is ``ops.rms_normalization(x,
    scale=self.scale, axis=self.axis, epsilon=self.epsilon)``."""
    keras = _keras()
    return keras.ops.rms_normalization(keras.ops.cast(x, _dtype_name(weight)), scale=weight,
                                       axis=-1, epsilon=eps)


class _KerasBase(Implementation):
    def unavailable_reason(self):
        return unavailable()

    def environment(self):
        import jax

        keras = _keras()
        return {"framework": "keras", "version": keras.__version__, "device": "cpu",
                "backend": keras.backend.backend(), "jax": jax.__version__}

    def _fn(self):
        raise NotImplementedError

    def rms_norm(self, x, weight, eps, layout=None):
        if layout is not None:
            raise ValueError(f"{self.id} declares no layouts (JAX arrays have no views)")
        _keras()
        return _jax.forward(self._fn(), x, weight, eps)

    def vjp(self, x, weight, eps, g):
        _keras()
        return _jax.vjp(self._fn(), x, weight, eps, g)

    def jvp(self, x, weight, eps, tx, tweight):
        _keras()
        return _jax.jvp(self._fn(), x, weight, eps, tx, tweight)

    def hvp(self, x, weight, eps, g, v):
        _keras()
        return _jax.hvp(self._fn(), x, weight, eps, g, v)

    def benchmark(self, op, shape, dtype):
        _keras()
        return _jax.benchmark(self._fn(), op, shape, dtype)


class KerasOps(_KerasBase):
    """``keras.ops.rms_normalization``, jitted."""

    id = "keras-ops-cpu"
    # mixed "input": computed in float32, cast back to x's dtype whatever the scale's. scale=None
    # accepted (weight_none); epsilon not validated (0, < 0, inf computed: nonpositive_eps);
    # validation off: a (1, d) or (1,) scale broadcasts, as in jax.numpy.
    capabilities = Capabilities(dtypes=tuple(DTYPES), mixed="input", weight_none=True,
                                nonpositive_eps=True, validation=False,
                                gradients=("vjp", "jvp", "hvp"), device="cpu",
                                compiles_per_shape=True)

    def _fn(self):
        return ops_rms_norm


class KerasLayer(_KerasBase):
    """``keras.layers.RMSNormalization(epsilon=eps, dtype=weight.dtype)`` with its scale replaced
    by the given weight, called jitted. ``functional`` is the op on x cast to the layer's
    compute dtype, which the layer is documented to compute (MOD-3, GRAD-13)."""

    id = "keras-layer-cpu"
    # mixed not declared: the layer casts x to its compute dtype (the weight's here) before the
    # op, a convention the suite cannot express (module docstring). No weight-less form (the layer always creates its
    # scale). A module: default epsilon 1e-6, one float32 parameter "scale" (ones, the default
    # policy's variable dtype), epsilon not validated: not MLX's module contract.
    capabilities = Capabilities(dtypes=tuple(DTYPES), mixed=None, weight_none=False,
                                nonpositive_eps=True, validation=False, module=True,
                                functional=True, mlx_module=False, module_param_dtype="float32",
                                gradients=("vjp", "jvp", "hvp"), device="cpu",
                                compiles_per_shape=True)

    def _fn(self):
        return layer_rms_norm

    def module_info(self, dims, eps=None):
        keras = _keras()
        layer = (keras.layers.RMSNormalization() if eps is None
                 else keras.layers.RMSNormalization(epsilon=eps))
        layer.build((dims,))
        return ModuleInfo(eps=layer.epsilon,
                          parameters={v.name: _jax.to_numpy(v.value) for v in layer.weights})

    def functional(self, x, weight, eps):
        _keras()
        return _jax.forward(layer_as_documented, x, weight, eps)

    def functional_vjp(self, x, weight, eps, g):
        _keras()
        return _jax.vjp(layer_as_documented, x, weight, eps, g)


ops_cpu = KerasOps()
layer_cpu = KerasLayer()
