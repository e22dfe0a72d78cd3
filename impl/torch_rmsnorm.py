"""Adapters: PyTorch's ``torch.nn.functional.rms_norm`` and ``torch.nn.RMSNorm``, on the CPU and
on CUDA (ids ``torch-functional-{cpu,cuda}``, ``torch-module-{cpu,cuda}``).

Install with ``pip install 'rmsnorm-conformance[torch]'``. torch is imported inside the methods
only, so this module imports (and reports why it can't run) without it.

Boundary: NumPy arrays become tensors with ``torch.from_numpy``; bfloat16 (``ml_dtypes``, which
torch cannot read) crosses as its bits, an int16 view on each side, so every round trip is exact.
The normalised axis is the last one (``normalized_shape = x.shape[-1:]``, the MLX contract; torch
could also normalise several trailing axes). Gradients: the VJP through ``torch.autograd``
(``autograd.grad`` for the functional op, ``module(x).backward(g)`` for the module), the JVP
through ``torch.func.jvp``, second order forward-over-reverse (``torch.func.jvp`` of
``torch.func.vjp``). Views: every layout but "reversed" (torch has no negative strides).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util

import ml_dtypes
import numpy as np
from packaging.version import Version

from rmsnorm_conformance.protocol import DTYPES, LAYOUTS, Capabilities, Implementation, ModuleInfo

EXTRA = "pip install 'rmsnorm-conformance[torch]'"
#: torch.nn.functional.rms_norm and torch.nn.RMSNorm first shipped in torch 2.4.
MIN_VERSION = Version("2.4")
BF16 = np.dtype(ml_dtypes.bfloat16)
#: Every layout torch builds as a view: all but "reversed" (torch has no negative strides).
TORCH_LAYOUTS = tuple(k for k in LAYOUTS if k != "reversed")


def unavailable(device: str) -> str | None:
    """Why torch can't run on ``device`` here, or None. Imports torch only to ask about CUDA on
    a build that may have it (a ``+cpu`` build is answered from its version string)."""
    if importlib.util.find_spec("torch") is None:
        return f"torch is not installed: {EXTRA}"
    version = importlib.metadata.version("torch")
    if Version(version).release < MIN_VERSION.release:
        return (f"torch {version} has no torch.nn.functional.rms_norm (added in torch 2.4): "
                f"{EXTRA}")
    if device == "cuda":
        if version.endswith("+cpu"):
            return (f"torch {version} is a CPU-only build: install a CUDA build of torch "
                    f"(https://pytorch.org/get-started/locally/) on a machine with an NVIDIA GPU")
        import torch

        if not torch.backends.cuda.is_built():
            return (f"torch {version} was built without CUDA: install a CUDA build of torch "
                    f"(https://pytorch.org/get-started/locally/)")
        if not torch.cuda.is_available():
            return ("torch.cuda.is_available() is False: no usable NVIDIA GPU or driver here "
                    f"(torch {version}, CUDA {torch.version.cuda})")
    return None


def environment(device: str) -> dict[str, str]:
    import torch

    env = {"framework": "torch", "version": torch.__version__, "device": device}
    if device == "cuda":
        env["device"] = f"cuda:{torch.cuda.current_device()}"
        env["device_name"] = torch.cuda.get_device_name()
        env["cuda"] = str(torch.version.cuda)
    return env


@functools.cache
def _one_thread() -> None:
    """One intra-op thread: the suite runs several implementations in parallel processes, where
    torch's thread pool only oversubscribes the cores (measured: 2-3x slower on 2 cores). Its
    results are judged the same either way (any summation order is within the bounds)."""
    import torch

    torch.set_num_threads(1)


def to_torch(a: np.ndarray, device: str):
    """NumPy -> tensor on ``device``, dtype kept (bfloat16 through its bits: exact)."""
    import torch

    _one_thread()

    a = np.array(a, order="C", copy=True)   # writable and positive strides, as from_numpy needs
    if a.dtype == BF16:
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a)
    return t.to(device)


def to_numpy(t) -> np.ndarray:
    """Tensor -> NumPy (bfloat16 -> ml_dtypes.bfloat16 through its bits: exact)."""
    import torch

    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BF16)
    return t.resolve_conj().numpy()


@contextlib.contextmanager
def argument_errors():
    """torch rejects bad shapes and dtypes with RuntimeError (NotImplementedError for dtypes,
    a subclass); the protocol asks for ValueError. Memory errors are not argument errors."""
    import torch

    out_of_memory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # < 2.5
    try:
        yield
    except out_of_memory:
        raise
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"torch rejected the arguments: {e}") from e


def _tensors(x, weight, device, layout=None):
    import torch

    asarray = lambda a: to_torch(a, device)   # noqa: E731
    if layout is None:
        return asarray(x), (None if weight is None else asarray(weight))
    return layout.view(x, weight, asarray, torch.swapaxes, torch.broadcast_to)


def _rms_norm(x, w, eps):
    """torch.nn.functional.rms_norm over the last axis (what the MLX contract calls the op)."""
    import torch.nn.functional as F

    return F.rms_norm(x, x.shape[-1:], w, eps)


# The functional op's forward and derivatives, shared with the module adapter (its reference for
# MOD-3 and GRAD-13).

def functional_forward(device, x, weight, eps, layout=None):
    import torch

    with argument_errors():
        xt, wt = _tensors(x, weight, device, layout)
        with torch.no_grad():
            y = _rms_norm(xt, wt, eps)
    return to_numpy(y)


def functional_vjp(device, x, weight, eps, g):
    """dx, dweight through torch.autograd.grad of y = F.rms_norm(x, weight, eps)."""
    import torch

    xt, wt = _tensors(x, weight, device)
    primals = [xt.requires_grad_()] + ([] if wt is None else [wt.requires_grad_()])
    y = _rms_norm(xt, wt, eps)
    grads = torch.autograd.grad(y, primals, to_torch(g, device), allow_unused=True)
    grads = [torch.zeros_like(p) if d is None else d for p, d in zip(primals, grads)]
    return to_numpy(grads[0]), (None if wt is None else to_numpy(grads[1]))


def jvp_of(fn, device, x, weight, tx, tweight):
    """The output tangent of fn(x, weight) (fn(x) without weight) through torch.func.jvp."""
    import torch.func

    xt, wt = _tensors(x, weight, device)
    if wt is None:
        _, ty = torch.func.jvp(lambda a: fn(a, None), (xt,), (to_torch(tx, device),))
    else:
        _, ty = torch.func.jvp(fn, (xt, wt), (to_torch(tx, device), to_torch(tweight, device)))
    return to_numpy(ty)


def hvp_of(fn, device, x, weight, g, v):
    """d/dt of the VJP's dx at x + t v, cotangent g fixed: torch.func.jvp of torch.func.vjp."""
    import torch.func

    xt, wt = _tensors(x, weight, device)
    gt = to_torch(g, device)

    def dx(a):
        _, pullback = torch.func.vjp(lambda z: fn(z, wt), a)
        return pullback(gt)[0]

    _, hv = torch.func.jvp(dx, (xt,), (to_torch(v, device),))
    return to_numpy(hv)


def benchmark(build, device, op, shape, dtype):
    """A closure timing one op on tensors already on ``device`` (CUDA: synchronised).
    ``build(w)`` returns ``(f, weight)``: ``f(x)`` the forward with that weight, ``weight`` the
    tensor dweight is taken for. For "backward" the forward graph is built once and kept: only
    the VJP (dx and dweight) is timed."""
    import torch

    dt = {"float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}[dtype]
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dt)
    w = (1 + 0.1 * torch.rand(shape[-1], generator=gen)).to(device=device, dtype=dt)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if op == "forward":
        f, _ = build(w)

        def run():
            with torch.no_grad():
                f(x)
            sync()
    elif op == "backward":
        xg = x.clone().requires_grad_()
        f, wg = build(w.clone().requires_grad_())
        y = f(xg)
        g = torch.randn(shape, generator=gen).to(device=device, dtype=y.dtype)

        def run():
            torch.autograd.grad(y, (xg, wg), g, retain_graph=True)
            sync()
    elif op == "copy":
        def run():
            x.clone()
            sync()
    else:
        return None
    run()   # warm up (allocations, CUDA kernels' first launch)
    return run


class _TorchBase(Implementation):
    kind = ""

    def __init__(self, device: str):
        self.device = device
        self.id = f"torch-{self.kind}-{device}"

    def unavailable_reason(self):
        return unavailable(self.device)

    def environment(self):
        return environment(self.device)


def _caps(device, module, functional=False):
    # mixed "input": torch returns x's dtype whatever the weight's (it warns that it cannot use
    # the fused kernel). nonpositive_eps: eps is not validated (0, < 0, inf, NaN accepted).
    # validation off: torch rejects VAL-1..3 (RuntimeError, translated to ValueError) but accepts
    # complex x (VAL-4), so MLX's rules are not its rules.
    return Capabilities(dtypes=tuple(DTYPES), mixed="input", weight_none=True,
                        nonpositive_eps=True, validation=False, module=module,
                        functional=functional, mlx_module=False,
                        layouts=TORCH_LAYOUTS, gradients=("vjp", "jvp", "hvp"),
                        device=device)


class TorchFunctional(_TorchBase):
    """``torch.nn.functional.rms_norm(x, x.shape[-1:], weight, eps)``."""

    kind = "functional"

    def __init__(self, device: str):
        super().__init__(device)
        self.capabilities = _caps(device, module=False)

    def rms_norm(self, x, weight, eps, layout=None):
        return functional_forward(self.device, x, weight, eps, layout)

    def vjp(self, x, weight, eps, g):
        return functional_vjp(self.device, x, weight, eps, g)

    def jvp(self, x, weight, eps, tx, tweight):
        return jvp_of(lambda a, w: _rms_norm(a, w, eps), self.device, x, weight, tx, tweight)

    def hvp(self, x, weight, eps, g, v):
        return hvp_of(lambda a, w: _rms_norm(a, w, eps), self.device, x, weight, g, v)

    def benchmark(self, op, shape, dtype):
        return benchmark(lambda w: ((lambda x: _rms_norm(x, w, 1e-5)), w), self.device, op,
                         shape, dtype)


class TorchModule(_TorchBase):
    """``torch.nn.RMSNorm(d, eps=eps)`` with its weight replaced by the given one
    (``elementwise_affine=False`` for weight None). Its default eps is None, which torch reads
    as the machine epsilon of the computation type (``torch.finfo(torch.float32).eps`` =
    1.19e-7 for float32, float16 and bfloat16 inputs); ``module_info`` reports it as the module
    holds it (None)."""

    kind = "module"

    def __init__(self, device: str):
        super().__init__(device)
        self.capabilities = _caps(device, module=True, functional=True)

    def _module(self, d, weight, eps):
        import torch

        module = torch.nn.RMSNorm(d, eps=eps, elementwise_affine=weight is not None,
                                  device=self.device)
        if weight is not None:
            module.weight = torch.nn.Parameter(weight)
        return module

    def rms_norm(self, x, weight, eps, layout=None):
        import torch

        with argument_errors():
            xt, wt = _tensors(x, weight, self.device, layout)
            with torch.no_grad():
                y = self._module(xt.shape[-1], wt, eps)(xt)
        return to_numpy(y)

    def vjp(self, x, weight, eps, g):
        """As a training loop gets them: ``module(x).backward(g)``, then x.grad and
        module.weight.grad."""
        import torch

        xt, wt = _tensors(x, weight, self.device)
        module = self._module(xt.shape[-1], wt, eps)
        xt.requires_grad_()
        module(xt).backward(to_torch(g, self.device))
        grad = lambda p: torch.zeros_like(p) if p.grad is None else p.grad   # noqa: E731
        return to_numpy(grad(xt)), (None if wt is None else to_numpy(grad(module.weight)))

    def _call(self, x, weight, eps):
        """module(x) as a function of (x, weight): ``torch.func.functional_call`` with the
        weight swapped in (the module is built outside the transforms)."""
        import torch.func

        wt = None if weight is None else to_torch(weight, self.device)
        module = self._module(x.shape[-1], wt, eps)

        def fn(a, w):
            if w is None:
                return module(a)
            return torch.func.functional_call(module, {"weight": w}, (a,))
        return fn

    def jvp(self, x, weight, eps, tx, tweight):
        return jvp_of(self._call(x, weight, eps), self.device, x, weight, tx, tweight)

    def hvp(self, x, weight, eps, g, v):
        return hvp_of(self._call(x, weight, eps), self.device, x, weight, g, v)

    def module_info(self, dims, eps=None):
        import torch

        module = (torch.nn.RMSNorm(dims, device=self.device) if eps is None
                  else torch.nn.RMSNorm(dims, eps=eps, device=self.device))
        return ModuleInfo(eps=module.eps, parameters={name: to_numpy(p) for name, p
                                                      in module.named_parameters()})

    def functional(self, x, weight, eps):
        return functional_forward(self.device, x, weight, eps)

    def functional_vjp(self, x, weight, eps, g):
        return functional_vjp(self.device, x, weight, eps, g)

    def benchmark(self, op, shape, dtype):
        def build(w):
            module = self._module(shape[-1], w.detach(), 1e-5)
            return module, module.weight
        return benchmark(build, self.device, op, shape, dtype)


functional_cpu = TorchFunctional("cpu")
functional_cuda = TorchFunctional("cuda")
module_cpu = TorchModule("cpu")
module_cuda = TorchModule("cuda")
