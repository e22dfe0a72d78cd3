"""Shared plumbing of the MLX adapters: what differs between MLX releases, device selection,
NumPy <-> MLX conversion, and the functional op with its derivatives.

MLX is imported inside functions only: loading an adapter never imports it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

import ml_dtypes
import numpy as np
from packaging.version import Version

from rmsnorm_conformance.protocol import LOW_PRECISION, Layout

# ---- What differs between MLX releases -----------------------------------------------------
# Checked on every release with a Linux CPU wheel, 0.26.5 to 0.32.4. Everything else the
# adapters use behaves the same on all of them.
#  * bfloat16 NumPy -> MLX: mx.array() rejects ml_dtypes arrays before 0.31.2 ("Invalid type
#    ndarray received in array initialization"); MLX -> NumPy: np.array() rejects MLX bfloat16
#    on every release (no PEP 3118 format). Both go through a uint16 view: bit-exact, one path.
#  * mx.cuda exists from 0.29.0 (gpu_unavailable_reason uses getattr).
#  * Forward mode: mx.jvp through a reduction raises "[Primitive::jvp] Not implemented for Sum"
#    before 0.30.1 (MLX PR #2854, "Reduce JVP"), so rms_norm has no jvp and no second order
#    (forward-over-reverse) there: those capabilities are declared from 0.30.1 on.

FORWARD_MODE_SINCE = Version("0.30.1")


def mlx_version() -> Version | None:
    """The installed MLX release, read from its metadata (MLX is not imported), or None when
    MLX is not installed."""
    try:
        return Version(importlib.metadata.version("mlx"))
    except importlib.metadata.PackageNotFoundError:
        return None


def gradients(second_order: bool = True) -> tuple[str, ...]:
    """The gradient entry points the installed release supports for rms_norm."""
    if (mlx_version() or Version("0")) >= FORWARD_MODE_SINCE:
        return ("vjp", "jvp", "hvp") if second_order else ("vjp", "jvp")
    return ("vjp",)


def dtypes(dev: str) -> tuple[str, ...]:
    """The input dtypes MLX takes on ``dev``: float64 on the CPU only (MLX's GPU backends reject
    it: "float64 is not supported on the GPU")."""
    return LOW_PRECISION + (("float64",) if dev == "cpu" else ())


def unavailable_reason(dev: str) -> str | None:
    if importlib.util.find_spec("mlx") is None:
        return "MLX is not installed (pip install 'mlx[cpu]' on Linux, 'mlx' on a Mac)"
    return gpu_unavailable_reason() if dev == "gpu" else None


def gpu_unavailable_reason() -> str | None:
    import mlx.core as mx

    if mx.metal.is_available():
        return None
    cuda = getattr(mx, "cuda", None)
    if cuda is not None and cuda.is_available():
        return None
    return ("no MLX GPU backend here: mx.metal and mx.cuda are unavailable "
            "(Apple silicon brings Metal; on NVIDIA install mlx[cuda13])")


# ---- Devices and conversion ---------------------------------------------------------------

def device(name: str):
    import mlx.core as mx

    return {"cpu": mx.cpu, "gpu": mx.gpu}[name]


def to_mx(a: np.ndarray):
    """NumPy -> MLX, keeping the dtype (a copy; bfloat16 through a uint16 view, see above).

    A zero-size array is passed with canonical (row-contiguous) strides: an unpickled
    ``np.zeros((3, 0))`` has strides (4, 4), which MLX keeps from 0.32.0, and MLX's CPU
    reduction reads uninitialised memory for a non-row-contiguous input whose reduced axes
    all have size 0 or 1 (SPEC.md, "Findings": it returns, hangs or crashes at random). The
    suite's empty-axis clause (FWD-5) asks about an ordinary empty array, deterministically.
    An array with a negative stride (a reversed view, in the suite's own process under
    ``--rmsnorm-isolation none``) is copied in order first: MLX 0.32.4 takes NumPy arrays
    through DLPack and refuses negative strides ("Cannot convert DLPack arrays with negative
    strides"); an adapter in its own process receives it unpickled, in order, anyway."""
    import mlx.core as mx

    if a.size == 0:
        a = np.zeros(a.shape, a.dtype)
    elif any(s < 0 for s in a.strides):
        a = a.copy()        # not ascontiguousarray: a size-1 axis keeps its negative stride
    if a.dtype == ml_dtypes.bfloat16:
        return mx.array(a.view(np.uint16)).view(mx.bfloat16)
    if a.dtype == np.float64:           # mx.array converts float64 to float32 unless told
        return mx.array(a, dtype=mx.float64)
    return mx.array(a)


def to_np(a) -> np.ndarray:
    """MLX -> NumPy (evaluates ``a``); bfloat16 through a uint16 view, see above."""
    import mlx.core as mx

    if a.dtype == mx.bfloat16:
        return np.array(a.view(mx.uint16)).view(ml_dtypes.bfloat16)
    return np.array(a)


def build_view(x: np.ndarray, weight: np.ndarray | None, layout: Layout | None):
    """The framework arrays for ``x`` and ``weight``: contiguous, or the requested views built
    with MLX ops (``Layout.view``; every layout is a view of its source on every release)."""
    import mlx.core as mx

    if layout is None:
        return to_mx(x), (None if weight is None else to_mx(weight))
    return layout.view(x, weight, to_mx, mx.swapaxes, mx.broadcast_to)


def environment(dev: str) -> dict[str, str]:
    import mlx.core as mx

    return {"framework": "mlx", "version": mx.__version__, "device": dev}


# ---- The functional op and its derivatives ------------------------------------------------
# Shared by the eager and compiled adapters (and the module adapters' references for MOD-3 and
# GRAD-13). Each ``*_fn(eps)`` returns a plain function of MLX arrays whose trailing argument
# is the weight, absent for weight=None; the compiled adapters compile exactly these.

def forward_fn(eps):
    import mlx.core as mx

    def forward(x, *w):
        return mx.fast.rms_norm(x, w[0] if w else None, eps)
    return forward


def vjp_fn(eps):
    """(g, x, *w) -> (dx, *dw)."""
    import mlx.core as mx

    f = forward_fn(eps)

    def vjp(g, x, *w):
        return tuple(mx.vjp(f, [x, *w], [g])[1])
    return vjp


def jvp_fn(eps):
    """(x, tx, *(w, tw)) -> ty."""
    import mlx.core as mx

    f = forward_fn(eps)

    def jvp(x, tx, *wt):
        return mx.jvp(f, [x, *wt[:1]], [tx, *wt[1:]])[1][0]
    return jvp


def hvp_fn(eps):
    """(g, v, x, *w) -> d/dt of the VJP's dx at x + t v (cotangent g fixed): forward over
    reverse."""
    import mlx.core as mx

    f = forward_fn(eps)

    def hvp(g, v, x, *w):
        dx = lambda z: mx.vjp(f, [z, *w], [g])[1][0]
        return mx.jvp(dx, [x], [v])[1][0]
    return hvp


def run(dev, fn, *arrays):
    """Call ``fn`` on MLX arrays on device ``dev``, evaluate, and return NumPy results (a tuple
    when ``fn`` returns one)."""
    import mlx.core as mx

    with mx.stream(device(dev)):
        out = fn(*arrays)
        mx.eval(out)
    return tuple(map(to_np, out)) if isinstance(out, (tuple, list)) else to_np(out)


def ws(weight):
    """The weight as the trailing arguments of the ``*_fn`` functions: () for None."""
    return () if weight is None else (to_mx(weight),)


def split_vjp(grads, weight):
    return grads[0], (grads[1] if weight is not None else None)


def fast_rms_norm(dev, x, weight, eps, layout=None, wrap=lambda f: f):
    xm, wm = build_view(x, weight, layout)
    return run(dev, wrap(forward_fn(eps)), xm, *(() if wm is None else (wm,)))


def fast_vjp(dev, x, weight, eps, g, wrap=lambda f: f):
    return split_vjp(run(dev, wrap(vjp_fn(eps)), to_mx(g), to_mx(x), *ws(weight)), weight)


def fast_jvp(dev, x, weight, eps, tx, tweight, wrap=lambda f: f):
    wt = () if weight is None else (to_mx(weight), to_mx(tweight))
    return run(dev, wrap(jvp_fn(eps)), to_mx(x), to_mx(tx), *wt)


def fast_hvp(dev, x, weight, eps, g, v, wrap=lambda f: f):
    return run(dev, wrap(hvp_fn(eps)), to_mx(g), to_mx(v), to_mx(x), *ws(weight))


# ---- Benchmarks -----------------------------------------------------------------------------

def bench_inputs(dev, shape, dtype):
    """x, weight (x's dtype) and a cotangent, resident on ``dev`` and evaluated."""
    import mlx.core as mx

    dt = getattr(mx, dtype)
    with mx.stream(device(dev)):
        key = mx.random.key(0)
        kx, kw, kg = mx.random.split(key, 3)
        x = mx.random.normal(shape, key=kx).astype(dt)
        w = (1 + 0.1 * mx.random.normal(shape[-1:], key=kw)).astype(dt)
        g = mx.random.normal(shape, key=kg).astype(dt)
        mx.eval(x, w, g)
    return x, w, g


def benchmark(dev, op, shape, dtype, build):
    """A zero-argument callable for ``Implementation.benchmark``. ``build(w)`` returns the
    adapter's ``(forward(x), backward(g, x))`` for weight ``w``, built once (eager, or compiled
    once: the calls are timed, not the compile). "copy" is an elementwise pass ``x + 0``: MLX
    has no public copy op, and ``mx.array(x)`` shares the buffer on older releases."""
    import mlx.core as mx

    if op not in ("forward", "backward", "copy"):
        return None
    x, w, g = bench_inputs(dev, shape, dtype)
    forward, backward = build(w)
    body = {"forward": lambda: forward(x), "backward": lambda: backward(g, x),
            "copy": lambda: x + 0}[op]
    stream = device(dev)

    def call():
        with mx.stream(stream):
            mx.eval(body())
    return call
