"""Adapter: the ONNX operator ``RMSNormalization`` (opset 23) run by ONNX Runtime on the CPU
(id ``onnxruntime-cpu``).

Install with ``pip install 'rmsnorm-conformance[onnx]'`` (onnx >= 1.18, the first with opset 23,
and onnxruntime; tested with onnx 1.23.1 and onnxruntime 1.30.0). onnx and
onnxruntime are imported inside the functions only, so this module imports (and reports why it
can't run) without them.

The adapter builds a one-node model with ``onnx.helper``: inputs ``X`` (rank of x, every
dimension symbolic) and ``scale`` (``[d]``), output ``Y``, node ``RMSNormalization(X, scale,
axis=-1, epsilon=eps)`` (epsilon is an attribute: a float32 constant of the model; ``stash_type``
left at its default, 1: float32), opset 23, and runs it with an ``onnxruntime.InferenceSession``
on the ``CPUExecutionProvider`` with one intra-op thread (the suite runs implementations in
parallel processes). One session per (dtype, rank, eps), kept for reuse; every shape of that rank
runs on it.

The contract, as ONNX Runtime 1.30.0 has it (``onnxruntime/core/providers/cpu/nn/rms_norm.cc``:
the LayerNorm kernel in its "simplified" form, ``layer_norm_impl.cc``): a CPU kernel for float32
and float16 (and float64) with X and scale of one type only ("RMSNorm uses LayerNorm kernel,
which only supports X and scale both being the same data type"); float16 is converted to
float32, ``x / sqrt(s / d + eps) * scale`` computed in float32 and rounded once (the suite's
fingerprint of 1.30.0: weight-then-round, a strided(8) + tree sum of squares, s / d, eps added
in float32). No bfloat16 kernel: ORT
falls back to the operator's ONNX function, whose ``Mul`` has no bfloat16 CPU kernel either, so
the session cannot be created. Mixed types are rejected when the session is created (the
operator's schema types the output as the scale's type V, but its function body multiplies the
normalised value, cast to X's type T, by the scale with ``Mul``, which needs T = V, and ONNX's
type inference gives Y X's type): ``mixed`` is not declared, although the schema suggests
"weight" (docs/notes/frameworks.md, ONNX). The scale input is required (no ``weight=None``);
eps is not validated (0, < 0, inf computed); an empty normalised axis is rejected
(INVALID_ARGUMENT, "Size of X.shape[axis:] must be at least 1"). No gradients (inference only),
no views, no module.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np

from rmsnorm_conformance.protocol import Capabilities, Implementation

EXTRA = "pip install 'rmsnorm-conformance[onnx]'"
OPSET = 23


def unavailable() -> str | None:
    """None, or which package is missing. An ONNX Runtime that cannot read opset 23 says so when
    the first session is created (the clause then fails with its message)."""
    for name in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed: {EXTRA}"
    return None


def _elem_type(dtype: np.dtype) -> int:
    from onnx import TensorProto

    return {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16,
            "bfloat16": TensorProto.BFLOAT16}[np.dtype(dtype).name]


def model(x_dtype, w_dtype, rank: int, eps: float):
    """The one-node ONNX model: Y = RMSNormalization(X, scale, axis=-1, epsilon=eps); Y typed as
    the schema types it (V, the scale's type)."""
    from onnx import helper

    dims = [f"d{i}" for i in range(rank)]
    node = helper.make_node("RMSNormalization", ["X", "scale"], ["Y"], axis=-1,
                            epsilon=float(eps))
    graph = helper.make_graph(
        [node], "rms_norm",
        [helper.make_tensor_value_info("X", _elem_type(x_dtype), dims),
         helper.make_tensor_value_info("scale", _elem_type(w_dtype), dims[-1:])],
        [helper.make_tensor_value_info("Y", _elem_type(w_dtype), dims)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                          producer_name="rmsnorm-conformance")
    m.ir_version = 10        # opset 23 needs IR 10 or later; ORT 1.22 reads up to 11
    return m


@functools.lru_cache(maxsize=256)
def session(x_dtype: str, w_dtype: str, rank: int, eps: float):
    """An InferenceSession of ``model`` on the CPU, one intra-op thread; errors in ONNX
    Runtime's log only at FATAL (the exception carries the message)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    return ort.InferenceSession(model(x_dtype, w_dtype, rank, eps).SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _errors():
    """ONNX Runtime's exception types for bad arguments (pybind11 classes deriving Exception
    directly: InvalidArgument, Fail, NotImplemented, InvalidGraph, RuntimeException)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(getattr(state, n) for n in ("InvalidArgument", "Fail", "NotImplemented",
                                             "InvalidGraph", "RuntimeException")
                 if hasattr(state, n))


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    import onnx

    if weight is None:
        raise ValueError("RMSNormalization's scale is a required input (weight_none is not "
                         "declared)")
    x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
    try:
        s = session(x.dtype.name, weight.dtype.name, x.ndim, float(eps))
        return s.run(None, {"X": x, "scale": weight})[0]
    except (onnx.checker.ValidationError, *_errors()) as e:
        raise ValueError(f"onnxruntime rejected the arguments: {type(e).__name__}: "
                         f"{str(e).strip()}") from e


class OnnxRuntimeRMSNorm(Implementation):
    """ONNX's RMSNormalization (opset 23) on ONNX Runtime's CPU execution provider."""

    id = "onnxruntime-cpu"
    # float32 and float16 only (no bfloat16 kernel); one type for X and scale (mixed not
    # declared); a scale is required (no weight_none); eps not validated (nonpositive_eps);
    # validation off (the weight may broadcast, a 0-d x fails on the model's rank).
    capabilities = Capabilities(dtypes=("float32", "float16"), mixed=None, weight_none=False,
                                nonpositive_eps=True, validation=False, device="cpu")

    def unavailable_reason(self):
        return unavailable()

    def environment(self):
        import onnx
        import onnxruntime as ort

        return {"framework": "onnxruntime", "version": ort.__version__, "device": "cpu",
                "onnx": onnx.__version__, "opset": str(OPSET),
                "provider": "CPUExecutionProvider"}

    def rms_norm(self, x, weight, eps, layout=None):
        if layout is not None:
            raise ValueError(f"{self.id} declares no layouts (ONNX Runtime takes contiguous "
                             f"buffers)")
        return rms_norm(x, weight, eps)

    def benchmark(self, op, shape, dtype):
        """The forward only (ONNX Runtime has no gradient or copy of its own here)."""
        if op != "forward" or dtype == "bfloat16":
            return None
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape).astype(dtype)
        w = (1 + 0.1 * rng.random(shape[-1])).astype(dtype)
        s = session(x.dtype.name, w.dtype.name, x.ndim, 1e-5)
        feeds = {"X": x, "scale": w}
        run = lambda: s.run(None, feeds)   # noqa: E731
        run()
        return run


cpu = OnnxRuntimeRMSNorm()
