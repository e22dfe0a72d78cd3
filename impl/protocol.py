"""The adapter protocol: how an implementation of RMSNorm is exposed to the suite.

An adapter is a small object (see ``impl/mlx_fast.py`` for a complete one) that the suite finds
through the entry-point group ``rmsnorm_conformance.implementations``. Everything crossing the
boundary is NumPy: ``numpy.float32``, ``numpy.float16`` and ``ml_dtypes.bfloat16`` arrays in,
the same kinds of arrays out. The suite never imports the framework under test itself.

The protocol is deliberately framework-neutral; a third party implements it in its own package:

    [project.entry-points."rmsnorm_conformance.implementations"]
    my-rmsnorm = "my_pkg.conformance_adapter:adapter"

where ``adapter`` is an ``Implementation`` instance or a zero-argument callable returning one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import ml_dtypes
import numpy as np

#: The floating dtypes the suite knows, by name.
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}

#: Memory layouts the suite asks for (MET-6). Each names a recipe the adapter applies *in the
#: framework* to ``Layout.source`` so that the framework array seen by the kernel is a view:
#:   "transposed": source has the last two axes swapped; swap them back (a non-contiguous view);
#:   "strided":    source has a doubled last axis; take every other element ``[..., ::2]``;
#:   "broadcast":  source has leading dimensions of size 1; broadcast it to ``Layout.shape``.
LAYOUTS = ("transposed", "strided", "broadcast")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Instructions to build a non-contiguous framework view whose values equal ``x``."""

    kind: str
    source: np.ndarray
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ModuleInfo:
    """What a module (``nn.RMSNorm(dims)``-like object) holds after default construction."""

    eps: float
    parameters: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What an implementation declares; clauses needing an undeclared capability are skipped.

    dtypes:        input dtypes accepted (names from ``DTYPES``).
    mixed:         accepts a weight whose dtype differs from x's (output dtype by promotion).
    weight_none:   accepts ``weight=None`` (no scaling).
    nonpositive_eps: accepts eps <= 0 (MLX's fast.rms_norm does; its module raises).
    module:        the adapter wraps a module and implements ``module_info``/``functional``.
    validation:    the adapter passes invalid arguments through so that VAL clauses apply.
    layouts:       layouts from ``LAYOUTS`` the adapter can build in its framework.
    gradients:     gradient entry points provided: "vjp", "jvp", "hvp" (second order).
    devices:       a free-form description of where it runs (for reports only).
    """

    dtypes: Sequence[str] = ("float32", "float16", "bfloat16")
    mixed: bool = True
    weight_none: bool = True
    nonpositive_eps: bool = True
    module: bool = False
    validation: bool = True
    layouts: Sequence[str] = LAYOUTS
    gradients: Sequence[str] = ()
    devices: str = "cpu"


class Implementation:
    """Base class for adapters. Subclasses set ``id`` and ``capabilities`` and override
    ``rms_norm``; module adapters also override ``module_info`` and ``functional``.

    Contract for ``rms_norm``: return a NumPy array (``ml_dtypes.bfloat16`` for bfloat16) of the
    framework's result, fully computed (lazy frameworks must evaluate). Invalid arguments must
    raise ``ValueError`` (translate other exception types); any other exception is reported as a
    failure of the clause being checked.
    """

    id: str = "unnamed"
    capabilities: Capabilities = Capabilities()

    def unavailable_reason(self) -> str | None:
        """None when usable here; otherwise the reason every clause is skipped (no GPU, ...)."""
        return None

    def rms_norm(self, x: np.ndarray, weight: np.ndarray | None, eps: float,
                 layout: Layout | None = None) -> np.ndarray:
        raise NotImplementedError

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
        """The functional op's VJP, to compare the module's gradients with (GRAD-8)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"


def as_implementation(obj: Any) -> Implementation:
    """Accept an adapter object or a zero-argument factory (what an entry point may name)."""
    if not isinstance(obj, Implementation) and callable(obj):
        obj = obj()
    if not isinstance(obj, Implementation):
        raise TypeError(
            f"entry point must name an impl.protocol.Implementation instance or a factory "
            f"returning one, got {type(obj).__name__}")
    return obj
