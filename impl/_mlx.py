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


def build_view(x: np.ndarray, layout: Layout | None):
    """The framework array for ``x``: contiguous, or the requested view built with MLX ops."""
    import mlx.core as mx

    if layout is None:
        return to_mx(x)
    src = to_mx(layout.source)
    if layout.kind == "transposed":
        return mx.swapaxes(src, -1, -2)
    if layout.kind == "strided":
        return src[..., ::2]
    if layout.kind == "broadcast":
        return mx.broadcast_to(src, layout.shape)
    raise ValueError(f"unknown layout {layout.kind!r}")
