"""Shared plumbing of the MLX adapters: device selection and NumPy <-> MLX conversion."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from impl.protocol import Layout


def gpu_unavailable_reason() -> str | None:
    import mlx.core as mx

    if mx.metal.is_available():
        return None
    cuda = getattr(mx, "cuda", None)
    if cuda is not None and cuda.is_available():
        return None
    return ("no MLX GPU backend here: mx.metal and mx.cuda are unavailable "
            "(Apple silicon brings Metal; on NVIDIA install mlx[cuda13])")


def device(name: str):
    import mlx.core as mx

    return {"cpu": mx.cpu, "gpu": mx.gpu}[name]


def to_mx(a: np.ndarray):
    """NumPy -> MLX, keeping the dtype (bfloat16 from ml_dtypes included)."""
    import mlx.core as mx

    return mx.array(a)


def to_np(a) -> np.ndarray:
    """MLX -> NumPy. MLX's bfloat16 has no buffer format, so go through float32 (exact)."""
    import mlx.core as mx

    if a.dtype == mx.bfloat16:
        return np.array(a.astype(mx.float32)).astype(ml_dtypes.bfloat16)
    return np.array(a)


def build_view(x: np.ndarray, weight: np.ndarray | None, layout: Layout | None):
    """The framework arrays for ``x`` and ``weight``: contiguous, or the requested views built
    with MLX ops (``Layout.view``)."""
    import mlx.core as mx

    if layout is None:
        return to_mx(x), (None if weight is None else to_mx(weight))
    return layout.view(x, weight, to_mx, mx.swapaxes, mx.broadcast_to)


def environment(dev: str) -> dict[str, str]:
    import mlx.core as mx

    return {"framework": "mlx", "version": mx.__version__, "device": dev}


# The functional op and its derivatives, shared by both MLX adapters (the module adapter uses them
# as the reference for MOD-3 and GRAD-8).

def _fn(eps, with_weight):
    import mlx.core as mx

    if with_weight:
        return lambda x, w: mx.fast.rms_norm(x, w, eps)
    return lambda x: mx.fast.rms_norm(x, None, eps)


def _primals(x, weight, layout=None):
    xm, wm = build_view(x, weight, layout)
    return [xm] + ([] if wm is None else [wm])


def fast_rms_norm(dev, x, weight, eps, layout=None):
    import mlx.core as mx

    with mx.stream(device(dev)):
        y = _fn(eps, weight is not None)(*_primals(x, weight, layout))
        mx.eval(y)
    return to_np(y)


def fast_vjp(dev, x, weight, eps, g):
    import mlx.core as mx

    with mx.stream(device(dev)):
        _, grads = mx.vjp(_fn(eps, weight is not None), _primals(x, weight), [to_mx(g)])
        mx.eval(grads)
    return to_np(grads[0]), (None if weight is None else to_np(grads[1]))


def fast_jvp(dev, x, weight, eps, tx, tweight):
    import mlx.core as mx

    with mx.stream(device(dev)):
        tangents = [to_mx(tx)] + ([] if weight is None else [to_mx(tweight)])
        _, (ty,) = mx.jvp(_fn(eps, weight is not None), _primals(x, weight), tangents)
        mx.eval(ty)
    return to_np(ty)


def fast_hvp(dev, x, weight, eps, g, v):
    """d/dt of the VJP's dx at x + t v (cotangent g fixed): forward-over-reverse."""
    import mlx.core as mx

    with mx.stream(device(dev)):
        w = None if weight is None else to_mx(weight)
        gm = to_mx(g)

        def dx(xm):
            f = lambda z: mx.fast.rms_norm(z, w, eps)
            return mx.vjp(f, [xm], [gm])[1][0]

        _, (hv,) = mx.jvp(dx, [to_mx(x)], [to_mx(v)])
        mx.eval(hv)
    return to_np(hv)
