"""Adapters: the RMSNorm modules of Hugging Face transformers, on PyTorch's CPU (ids
``hf-llama-cpu``, ``hf-gemma-cpu``, ``hf-t5-cpu``):

    transformers.models.llama.modeling_llama.LlamaRMSNorm(d, eps)
    transformers.models.gemma.modeling_gemma.GemmaRMSNorm(d, eps)
    transformers.models.t5.modeling_t5.T5LayerNorm(d, eps)

Install with ``pip install 'rmsnorm-conformance[hf]'`` (transformers; it needs torch, which, as
for the torch adapters, you install first in the build you want). transformers and torch are
imported inside the functions only, so this module imports (and reports why it can't run)
without them.

Each module is constructed as models construct it and its parameter replaced by the given one
(``module.weight = nn.Parameter(weight)``; for Gemma the parameter ``p``, of which the module
applies ``1 + p``). The three differ where the weight meets the normalised value (transformers
5.17.0, read in the installed source):

    Llama   h = float32(x); h = h * rsqrt(mean(h^2) + eps); return weight * h.to(x.dtype)
    Gemma   h = float32(x) * rsqrt(...); h = h * (1.0 + float32(weight)); return h.type_as(x)
    T5      h = x * rsqrt(mean(float32(x)^2) + eps)       (float32 by torch's promotion)
            if weight is float16 or bfloat16: h = h.to(weight.dtype); return weight * h

so the output dtype with mixed inputs is torch's promotion for Llama (``mixed="promote"``, with
the normalised value rounded to x's dtype first: ``normalised_in_input_dtype``), x's for Gemma
(``mixed="input"``) and the weight's for T5 (``mixed="weight"``).

Gradients as for ``torch.nn.RMSNorm`` (``impl/torch_rmsnorm.py``): the VJP as a training loop
takes it (``module(x).backward(g)``, then ``x.grad`` and ``module.weight.grad``), the JVP through
``torch.func.jvp`` of ``torch.func.functional_call``, second order forward-over-reverse. Views:
every layout torch builds (all but "reversed"). None has a weight-less form, a functional op or
eps validation.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

from rmsnorm_conformance.impl import torch_rmsnorm as _torch
from rmsnorm_conformance.protocol import DTYPES, LOW_PRECISION, Capabilities, Implementation, \
    ModuleInfo

EXTRA = "pip install 'rmsnorm-conformance[hf]'"

#: id kind -> (module path, class name, the attribute holding eps).
MODULES = {
    "llama": ("transformers.models.llama.modeling_llama", "LlamaRMSNorm", "variance_epsilon"),
    "gemma": ("transformers.models.gemma.modeling_gemma", "GemmaRMSNorm", "eps"),
    "t5": ("transformers.models.t5.modeling_t5", "T5LayerNorm", "variance_epsilon"),
}


def unavailable(device: str = "cpu") -> str | None:
    """Why the Hugging Face adapters can't run here, or None."""
    if importlib.util.find_spec("torch") is None:
        return (f"torch is not installed (transformers' modules run on it): install the torch "
                f"build you want first (README), then {EXTRA}")
    if importlib.util.find_spec("transformers") is None:
        return f"transformers is not installed: {EXTRA}"
    return _torch.unavailable(device)


def module_class(kind: str):
    import importlib

    path, name, _ = MODULES[kind]
    return getattr(importlib.import_module(path), name)


class HFRMSNorm(Implementation):
    """One of transformers' RMSNorm modules with its weight replaced by the given one."""

    def __init__(self, kind: str, capabilities: Capabilities, device: str = "cpu"):
        self.kind = kind
        self.device = device
        self.id = f"hf-{kind}-{device}"
        self.capabilities = capabilities

    def unavailable_reason(self):
        return unavailable(self.device)

    def environment(self):
        env = _torch.environment(self.device)
        env["torch"] = env["version"]
        env["framework"] = f"transformers.{MODULES[self.kind][1]}"
        env["version"] = importlib.metadata.version("transformers")
        return env

    # ---- the module -------------------------------------------------------------------------
    def _module(self, d, weight, eps):
        """The module as a model builds it (``Class(d, eps=eps)``), its parameter replaced by the
        tensor ``weight`` (Gemma: the parameter p, which the module applies as 1 + p)."""
        import torch

        _torch._one_thread()
        module = module_class(self.kind)(d, eps=eps).to(self.device)
        module.weight = torch.nn.Parameter(weight)
        return module

    def rms_norm(self, x, weight, eps, layout=None):
        import torch

        if weight is None:
            raise ValueError(f"{self.id}: the module always holds a weight (weight_none is not "
                             f"declared)")
        with _torch.argument_errors():
            xt, wt = _torch._tensors(x, weight, self.device, layout)
            with torch.no_grad():
                y = self._module(xt.shape[-1], wt, eps)(xt)
        return _torch.to_numpy(y)

    def vjp(self, x, weight, eps, g):
        """As a training loop gets them: ``module(x).backward(g)``, then x.grad and
        module.weight.grad."""
        import torch

        xt, wt = _torch._tensors(x, weight, self.device)
        module = self._module(xt.shape[-1], wt, eps)
        xt.requires_grad_()
        module(xt).backward(_torch.to_torch(g, self.device))
        grad = lambda p: torch.zeros_like(p) if p.grad is None else p.grad   # noqa: E731
        return _torch.to_numpy(grad(xt)), _torch.to_numpy(grad(module.weight))

    def _call(self, x, weight, eps):
        """module(x) as a function of (x, weight), through torch.func.functional_call."""
        import torch.func

        module = self._module(x.shape[-1], _torch.to_torch(weight, self.device), eps)
        return lambda a, w: torch.func.functional_call(module, {"weight": w}, (a,))

    def jvp(self, x, weight, eps, tx, tweight):
        return _torch.jvp_of(self._call(x, weight, eps), self.device, x, weight, tx, tweight)

    def hvp(self, x, weight, eps, g, v):
        return _torch.hvp_of(self._call(x, weight, eps), self.device, x, weight, g, v)

    def module_info(self, dims, eps=None):
        cls = module_class(self.kind)
        module = cls(dims) if eps is None else cls(dims, eps=eps)
        return ModuleInfo(eps=getattr(module, MODULES[self.kind][2]),
                          parameters={name: _torch.to_numpy(p)
                                      for name, p in module.named_parameters()})

    def benchmark(self, op, shape, dtype):
        def build(w):
            module = self._module(shape[-1], w.detach(), 1e-6)
            return module, module.weight
        return _torch.benchmark(build, self.device, op, shape, dtype)


def _caps(dtypes=tuple(DTYPES), **contract) -> Capabilities:
    # Common to the three: every dtype (T5: see below); eps not validated (0, < 0, inf and NaN computed:
    # nonpositive_eps); no weight-less form; a module (default eps 1e-6, one float32 parameter
    # "weight") with no functional op of its own and not MLX's (no eps validation, default 1e-6);
    # torch's views; torch's gradients.
    return Capabilities(dtypes=dtypes, weight_none=False, nonpositive_eps=True,
                        validation=False, module=True, functional=False, mlx_module=False,
                        module_param_dtype="float32", layouts=_torch.TORCH_LAYOUTS,
                        gradients=("vjp", "jvp", "hvp"), device="cpu", **contract)


#: LlamaRMSNorm: ``weight * h.to(input_dtype)``: torch promotes the product (float16 or
#: bfloat16 x with a float32 weight gives float32, float16 with bfloat16 gives float32) after
#: rounding the normalised value to x's dtype.
llama_cpu = HFRMSNorm("llama", _caps(mixed="promote", normalised_in_input_dtype=True))
#: GemmaRMSNorm: ``(h * (1.0 + weight.float())).type_as(x)``: the parameter p (zeros by
#: default) applied as 1 + p in float32, one rounding into x's dtype.
gemma_cpu = HFRMSNorm("gemma", _caps(mixed="input", weight_offset=1.0))
#: T5LayerNorm: h in float32, rounded to the weight's dtype when that is a half type, then
#: ``weight * h`` in it; with a float32 weight, float32 throughout: the weight's dtype. float64
#: is not declared: ``weight * h`` is torch's promotion when the weight is not a half type, so a
#: float64 x with a float32 weight gives float64, which no single convention states with the
#: half pairs' (measured; SPEC.md, "Contract differences").
t5_cpu = HFRMSNorm("t5", _caps(dtypes=LOW_PRECISION, mixed="weight"))
