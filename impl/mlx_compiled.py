"""Adapters: ``mx.compile`` of the functional op (``mlx-compiled-fast[-shapeless]-DEV``) and of
the module (``mlx-compiled-nn[-shapeless]-DEV``), with and without ``shapeless=True``.

A plain call (``rms_norm``, ``vjp``, ``jvp``, ``hvp``, ``functional``...) compiles a fresh
function for that call alone, so a failure replays from its inputs. ``rms_norm_sequence`` and
``vjp_sequence`` compile ONE function and call it for every call of the sequence, in order, as a
training or inference loop does: MLX retraces it when a shape changes (never with
``shapeless=True``, where only a change of dtype, of the number of dimensions or of the number
of inputs retraces), and
reuses the trace otherwise. Gradients are ``mx.compile`` of ``mx.vjp`` / ``mx.jvp`` (the module:
of ``nn.value_and_grad`` and ``mx.grad``, its weight an implicit input of the compiled function,
``inputs=module.state``, as in MLX's training examples).

Capabilities are the eager adapters', except that forward mode (jvp, hvp) is absent with
``shapeless=True``: MLX has no JVP for the ``NumberOfElements`` primitive a shapeless ``mean``
uses.

eps: the functional op's eps is a Python float argument of the compiled function (a constant to
``mx.compile``: a new value retraces); a module is built once per sequence with one eps (a module
attribute read at trace time, so a sequence with several eps is refused).
"""

from __future__ import annotations

import dataclasses

from rmsnorm_conformance.impl import _mlx
from rmsnorm_conformance.impl.mlx_fast import MLXFast
from rmsnorm_conformance.impl.mlx_nn import MLXModule, forward_fn as module_forward, make_module, \
    vjp_fn as module_vjp


def _compile(f, shapeless, **kw):
    import mlx.core as mx

    return mx.compile(f, shapeless=shapeless, **kw)


def _eps_arg(fn_of_eps):
    """``fn_of_eps(eps)(*arrays)`` as one function ``(eps, *arrays)``: eps a compile constant."""
    return lambda eps, *arrays: fn_of_eps(eps)(*arrays)


class MLXCompiledFast(MLXFast):
    def __init__(self, device: str, shapeless: bool):
        super().__init__(device)
        self.shapeless = shapeless
        self.id = f"mlx-compiled-fast{'-shapeless' if shapeless else ''}-{device}"

    @property
    def capabilities(self):
        # compiles_per_shape: on the CPU each new kernel variant (dtype, eps, rank, contiguity)
        # is a g++ build of 1.5-2 s, so the suite sends generated examples the anchors' shapes
        # and eps values
        caps = dataclasses.replace(super().capabilities, compiles_per_shape=True)
        if self.shapeless:   # mx.jvp under shapeless compile: "[Primitive::jvp] Not
            # implemented for NumberOfElements" (mean's divisor), every release
            caps = dataclasses.replace(caps, gradients=("vjp",))
        return caps

    def wrap(self, f):
        return _compile(f, self.shapeless)

    def rms_norm_sequence(self, calls):
        f = self.wrap(_eps_arg(_mlx.forward_fn))
        return [_mlx.run(self.device, f, eps, _mlx.to_mx(x), *_mlx.ws(w)) for x, w, eps in calls]

    def vjp_sequence(self, calls):
        f = self.wrap(_eps_arg(_mlx.vjp_fn))
        return [_mlx.split_vjp(_mlx.run(self.device, f, eps, _mlx.to_mx(g), _mlx.to_mx(x),
                                        *_mlx.ws(w)), w) for x, w, eps, g in calls]


class MLXCompiledModule(MLXModule):
    def __init__(self, device: str, shapeless: bool):
        super().__init__(device)
        self.shapeless = shapeless
        self.id = f"mlx-compiled-nn{'-shapeless' if shapeless else ''}-{device}"

    @property
    def capabilities(self):
        # as MLXCompiledFast: each kernel variant is a g++ build on the CPU
        return dataclasses.replace(super().capabilities, compiles_per_shape=True)

    def wrap(self, f, module):
        return _compile(f, self.shapeless, inputs=module.state, outputs=module.state)

    def wrap_functional(self, f):
        return _compile(f, self.shapeless)

    def _sequence(self, calls, fn_of_module):
        if len({repr(c[2]) for c in calls}) > 1:
            raise ValueError(f"a compiled module sequence has one eps (the module's), got "
                             f"{sorted({repr(c[2]) for c in calls})}: give each sequence one eps")
        if not calls:
            return []
        module = make_module(_mlx.to_mx(calls[0][1]), calls[0][2])
        f = self.wrap(fn_of_module(module), module)
        out = []
        for x, w, _, *g in calls:
            module.weight = _mlx.to_mx(w)      # an implicit input: read at every call
            out.append(_mlx.run(self.device, f, *map(_mlx.to_mx, g), _mlx.to_mx(x)))
        return out

    def rms_norm_sequence(self, calls):
        return self._sequence(calls, module_forward)

    def vjp_sequence(self, calls):
        return self._sequence(calls, module_vjp)


fast_cpu = MLXCompiledFast("cpu", shapeless=False)
fast_gpu = MLXCompiledFast("gpu", shapeless=False)
fast_shapeless_cpu = MLXCompiledFast("cpu", shapeless=True)
fast_shapeless_gpu = MLXCompiledFast("gpu", shapeless=True)
nn_cpu = MLXCompiledModule("cpu", shapeless=False)
nn_gpu = MLXCompiledModule("gpu", shapeless=False)
nn_shapeless_cpu = MLXCompiledModule("cpu", shapeless=True)
nn_shapeless_gpu = MLXCompiledModule("gpu", shapeless=True)
