"""The adapter protocol: how an implementation of RMSNorm is exposed to the suite.

Adapter authors import it under the distribution's own name, ``rmsnorm_conformance``:

    from rmsnorm_conformance import Capabilities, Implementation

An adapter is a small object (``impl/mlx_fast.py`` is a complete one) that the suite finds
through the entry-point group ``rmsnorm_conformance.implementations``. Everything crossing the
boundary is NumPy: ``numpy.float32``, ``numpy.float16`` and ``ml_dtypes.bfloat16`` arrays in,
the same kinds of arrays out. The suite never imports the framework under test itself.

    [project.entry-points."rmsnorm_conformance.implementations"]
    my-rmsnorm = "my_pkg.conformance_adapter:adapter"

where ``adapter`` is an ``Implementation`` instance or a zero-argument callable returning one.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Callable, Sequence

import ml_dtypes
import numpy as np

#: The floating dtypes the suite knows, by name. Every property draws the first three;
#: float64 is drawn by the clauses about it (DTY-4, ACC-11, ACC-12, GRAD-19, GRAD-20), for
#: implementations that declare it.
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float64": np.dtype(np.float64),
}
#: The three types the suite draws everywhere (an adapter accepting them all declares these).
LOW_PRECISION = ("float32", "float16", "bfloat16")

#: Set by the suite in the supervised process an adapter runs in (never in the user's own).
CACHE_ENV = "RMSNORM_CONFORMANCE_CACHE"


def cache_dir(name: str) -> pathlib.Path | None:
    """A directory where an adapter may keep what it builds between runs (compiled programs),
    ``<cache>/<name>``, created: ``--rmsnorm-cache`` (default ``cache`` in the
    ``--rmsnorm-artifacts`` folder, ``.rmsnorm-conformance``); None when the adapter runs in the
    caller's process (``--rmsnorm-isolation none`` or imported directly), where process-wide
    settings are the caller's to make."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        return None
    path = pathlib.Path(root) / name
    path.mkdir(parents=True, exist_ok=True)
    return path

#: Memory layouts the suite asks for (MET-7, MET-8). Each names a recipe the adapter applies *in
#: its framework* to ``Layout.source`` (and ``Layout.weight_source``) so that the arrays the kernel
#: sees are views, not copies; ``Layout.view`` is the recipe written once for any array type with
#: NumPy-style slicing:
#:   "transposed":     source has the last two axes swapped; swap them back;
#:   "strided":        source has a doubled last axis; take every other element ``[..., ::2]``;
#:   "broadcast":      source has leading dimensions of size 1; broadcast it to ``shape``;
#:   "offset":         source is 1-D with ``offset`` extra leading elements; ``source[offset:]``
#:                     reshaped to ``shape`` (a view that does not start at its buffer's start);
#:   "padded":         rows padded beyond d: source is (..., d + pad); take ``[..., :d]`` (a row
#:                     stride larger than the row);
#:   "reversed":       source is x reversed along the last axis; take ``[..., ::-1]`` (a negative
#:                     stride);
#:   "weight_strided": x is contiguous; the weight is ``weight_source[::2]`` (a strided weight).
LAYOUTS = ("transposed", "strided", "broadcast", "offset", "padded", "reversed", "weight_strided")

#: Conventions for the output dtype when x and weight differ (capability ``mixed``): the
#: promotion of both (MLX, JAX, Flax), x's dtype (PyTorch), the weight's dtype (ONNX
#: RMSNormalization, Hugging Face's T5LayerNorm).
MIXED = ("promote", "input", "weight")
#: What a default module's parameters are stored in (capability ``module_param_dtype``).
PARAM_DTYPES = ("float32", "input")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Instructions to build non-contiguous framework views whose values equal ``x`` (and the
    weight). ``source`` is None for "weight_strided" (x is passed as is)."""

    kind: str
    source: np.ndarray | None
    shape: tuple[int, ...]
    offset: int = 0
    weight_source: np.ndarray | None = None

    def view(self, x, weight, asarray, swapaxes, broadcast_to):
        """(x view, weight view) built with the framework's own operations: ``asarray`` turns a
        NumPy array into a framework array, ``swapaxes(a, i, j)`` and ``broadcast_to(a, shape)``
        are the framework's. Slicing and ``reshape`` are used as methods. An adapter whose
        framework lacks one of these views does not declare that layout."""
        wv = None if weight is None else asarray(weight)
        if self.kind == "weight_strided":
            return asarray(x), asarray(self.weight_source)[::2]
        src = asarray(self.source)
        if self.kind == "transposed":
            xv = swapaxes(src, -1, -2)
        elif self.kind == "strided":
            xv = src[..., ::2]
        elif self.kind == "broadcast":
            xv = broadcast_to(src, self.shape)
        elif self.kind == "offset":
            xv = src[self.offset:].reshape(self.shape)
        elif self.kind == "padded":
            xv = src[..., :self.shape[-1]]
        elif self.kind == "reversed":
            xv = src[..., ::-1]
        else:
            raise ValueError(f"unknown layout {self.kind!r}; known: {LAYOUTS}")
        return xv, wv


@dataclasses.dataclass(frozen=True)
class ModuleInfo:
    """What a module (``nn.RMSNorm(dims)``-like object) holds after default construction."""

    eps: float | None
    parameters: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What an implementation declares. A clause that needs an undeclared capability is skipped
    with that reason. The defaults are conservative: an adapter is judged on MLX-specific
    behaviour (the MLX profile in SPEC.md) only where it declares it.

    dtypes:          input dtypes accepted (names from ``DTYPES``). Default float32 only.
    mixed:           a weight whose dtype differs from x's is accepted, with the output dtype by
                     "promote" (the promotion of both: MLX, Flax), "input" (x's dtype: PyTorch)
                     or "weight" (the weight's dtype: ONNX RMSNormalization, T5LayerNorm);
                     None (default): mixed dtypes are not tested.
    normalised_in_input_dtype: the normalised value x n is rounded to x's dtype before it meets
                     the weight (Hugging Face's LlamaRMSNorm, ``weight * h.to(input_dtype)``): with
                     a wider weight the output carries x's precision, not the output type's (a
                     convention of its own, SPEC.md TOL "Rounding conventions").
    weight_offset:   the implementation applies ``weight_offset + p`` to the parameter ``p`` it is
                     given (Gemma's ``1 + weight``: 1.0), formed in float32; the suite passes
                     parameters and judges against the applied weight. Default 0.0.
    weight_none:     ``weight=None`` is accepted (no scaling).
    nonpositive_eps: eps <= 0 and non-finite eps are accepted (MLX profile: fast.rms_norm).
    validation:      MLX's argument validation (VAL-1..4): invalid arguments raise ValueError.
    module:          the adapter wraps a module and implements ``module_info``: MOD-1, MOD-5.
    module_bias:     the default module holds a bias as well as its weight (Equinox), zeros by
                     default; the suite never passes one (the adapter builds its module with a
                     zero bias), and MOD-1 checks that the default bias is zero.
    module_param_dtype: the dtype of a default module's parameters: "float32" (MLX, PyTorch,
                     Flax: MOD-1 checks it, MOD-5 applies) or "input" (they follow the input's
                     dtype: MOD-5 does not apply).
    functional:      the module is documented to compute the framework's functional op, which
                     the adapter exposes as ``functional`` (and ``functional_vjp``): MOD-3,
                     GRAD-13 (MLX's ``nn.RMSNorm`` calls ``fast.rms_norm``; Flax has none).
    mlx_module:      the module follows MLX's module contract (MOD-2 default eps 1e-5, MOD-4
                     eps <= 0 rejected).
    layouts:         layouts from ``LAYOUTS`` the adapter builds as views in its framework.
    gradients:       gradient entry points provided: "vjp", "jvp", "hvp" (second order).
    device:          where it runs, e.g. "cpu", "gpu", "cuda:0" (reports).
    compiles_per_shape: every new input shape costs a compilation (JAX/XLA, Flax; eps must
                     then be a traced argument, not a constant): the generated examples take the
                     anchors' shapes (``conformance.strategies.Plan.for_caps``), so that a run
                     compiles a few hundred programs, not thousands; their values, dtypes, eps
                     and weights are drawn as for everyone.
    """

    dtypes: Sequence[str] = ("float32",)
    mixed: str | None = None
    normalised_in_input_dtype: bool = False
    weight_offset: float = 0.0
    weight_none: bool = False
    nonpositive_eps: bool = False
    validation: bool = False
    module: bool = False
    module_bias: bool = False
    module_param_dtype: str = "float32"
    functional: bool = False
    mlx_module: bool = False
    layouts: Sequence[str] = ()
    gradients: Sequence[str] = ()
    device: str = "cpu"
    compiles_per_shape: bool = False

    def problems(self) -> list[str]:
        """What is malformed in this declaration (IMP-1), as messages; [] when well-formed."""
        found = [f"unknown dtype {t!r} (known: {sorted(DTYPES)})" for t in self.dtypes
                 if t not in DTYPES]
        found += [f"unknown layout {k!r} (known: {LAYOUTS})" for k in self.layouts
                  if k not in LAYOUTS]
        found += [f"unknown gradient {g!r} (known: vjp, jvp, hvp)" for g in self.gradients
                  if g not in ("vjp", "jvp", "hvp")]
        if not self.dtypes:
            found.append("declares no dtypes")
        if self.mixed not in (None, *MIXED):
            found.append(f"mixed must be None or one of {MIXED}, got {self.mixed!r}")
        if (self.mlx_module or self.functional or self.module_bias) and not self.module:
            found.append("mlx_module, functional and module_bias need module=True")
        if self.module_param_dtype not in PARAM_DTYPES:
            found.append(f"module_param_dtype must be one of {PARAM_DTYPES}, got "
                         f"{self.module_param_dtype!r}")
        if not isinstance(self.weight_offset, (int, float)) or self.weight_offset != \
                self.weight_offset or abs(self.weight_offset) == float("inf"):
            found.append(f"weight_offset must be a finite number, got {self.weight_offset!r}")
        if isinstance(self.dtypes, str) or isinstance(self.layouts, str) \
                or isinstance(self.gradients, str):
            found.append("dtypes, layouts and gradients are sequences of names, not one string")
        return found

    def output_dtype(self, x_dtype, w_dtype) -> np.dtype:
        """The output dtype this implementation declares for x and weight dtypes (DTY-1..4)."""
        a = np.dtype(x_dtype)
        if w_dtype is None or np.dtype(w_dtype) == a:
            return a
        if self.mixed == "input":
            return a
        if self.mixed == "weight":
            return np.dtype(w_dtype)
        # "promote": the wider of the two; float16 with bfloat16 (neither contains the other)
        # float32, as MLX's result_type, JAX's and NumPy's promotion give
        names = {a.name, np.dtype(w_dtype).name}
        return DTYPES["float64"] if "float64" in names else DTYPES["float32"]


class Implementation:
    """Base class for adapters. Subclasses set ``id`` and ``capabilities`` and override
    ``rms_norm``; gradient and module adapters override the methods their capabilities name.

    Contract for ``rms_norm``: return a NumPy array (``ml_dtypes.bfloat16`` for bfloat16) of the
    framework's result, fully computed (lazy frameworks must evaluate). Invalid arguments must
    raise ``ValueError`` (translate other exception types); any other exception is reported as a
    failure of the clause being checked.
    """

    id: str = "unnamed"
    capabilities: Capabilities = Capabilities()

    def unavailable_reason(self) -> str | None:
        """None when usable here; otherwise the reason every clause is skipped (no GPU, the
        framework not installed, ...). Called in a supervised child process."""
        return None

    def environment(self) -> dict[str, str]:
        """What it runs on, for the results file: e.g. {"framework": "mlx", "version":
        "0.32.4", "device": "cpu"}. Called in a supervised child process."""
        return {}

    def rms_norm(self, x: np.ndarray, weight: np.ndarray | None, eps: float,
                 layout: Layout | None = None) -> np.ndarray:
        raise NotImplementedError

    def rms_norm_sequence(self, calls: Sequence[tuple]) -> list[np.ndarray]:
        """Forward calls ``(x, weight, eps)`` in order, on one function built for the whole
        sequence (compiled adapters: one compiled function reused across the calls' changing
        shapes; FWD-6). The default calls ``rms_norm`` for each."""
        return [self.rms_norm(x, w, eps) for x, w, eps in calls]

    def vjp_sequence(self, calls: Sequence[tuple]) -> list[tuple]:
        """VJP calls ``(x, weight, eps, g)`` in order, on one function built for the whole
        sequence (GRAD-16). The default calls ``vjp`` for each."""
        return [self.vjp(x, w, eps, g) for x, w, eps, g in calls]

    # Gradients (capability ``gradients``). Arrays as for rms_norm; the cotangent g has the
    # output's dtype, tangents have their primal's dtype.
    def vjp(self, x: np.ndarray, weight: np.ndarray | None, eps: float,
            g: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(dx, dweight) = the VJP of rms_norm at (x, weight) with cotangent g; dweight is None
        when weight is None."""
        raise NotImplementedError

    def jvp(self, x: np.ndarray, weight: np.ndarray | None, eps: float, tx: np.ndarray,
            tweight: np.ndarray | None) -> np.ndarray:
        """The tangent of the output for tangents tx (and tweight, None without weight)."""
        raise NotImplementedError

    def hvp(self, x: np.ndarray, weight: np.ndarray | None, eps: float, g: np.ndarray,
            v: np.ndarray) -> np.ndarray:
        """Second order: the derivative along v of the VJP's dx (cotangent g held fixed)."""
        raise NotImplementedError

    # Module adapters only (capability ``module``).
    def module_info(self, dims: int, eps: float | None = None) -> ModuleInfo:
        """Construct the module with default arguments (eps given: with that eps, which must
        raise ValueError when the module rejects it) and report its eps and parameters."""
        raise NotImplementedError

    def functional(self, x: np.ndarray, weight: np.ndarray | None, eps: float) -> np.ndarray:
        """The framework's functional op the module is documented to equal (MOD-3)."""
        raise NotImplementedError

    def functional_vjp(self, x: np.ndarray, weight: np.ndarray | None, eps: float,
                       g: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The functional op's VJP, to compare the module's gradients with (GRAD-13)."""
        raise NotImplementedError

    # Benchmarks (``rmsnorm-conformance bench``; never a test).
    def benchmark(self, op: str, shape: tuple[int, ...],
                  dtype: str) -> Callable[[], None] | None:
        """A zero-argument function that runs one ``op`` on inputs already resident where the
        implementation runs and returns once the work has finished (synchronising the device):
        "forward" (rms_norm with a weight of x's dtype), "backward" (the VJP, dx and dweight)
        or "copy" (the framework's plain copy of an x-sized array: the bandwidth ceiling).
        None: not offered; the bench then times the NumPy round trip and says so."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"


def as_implementation(obj: Any) -> Implementation:
    """Accept an adapter object or a zero-argument factory (what an entry point may name)."""
    if not isinstance(obj, Implementation) and callable(obj):
        obj = obj()
    if not isinstance(obj, Implementation):
        raise TypeError(
            f"entry point must name a rmsnorm_conformance.Implementation instance or a factory "
            f"returning one, got {type(obj).__name__}")
    return obj
