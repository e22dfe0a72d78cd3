"""The regions of the input space the default run must reach (SPEC.md, "What the default run
draws"), named once: the strategies anchor them, coverage checks that a run reached them.

- axis-length regions: where kernels switch code paths (MLX's GPU kernels: simd width 32, block
  sizes 256..1024, the looped kernel above 4096; row tiling) and their neighbours, each with the
  length the anchors use;
- dtype pairs: x's dtype and the weight's, equal or mixed (``DTYPE_KEYS``, as the ledger names
  them: "float16+float32");
- magnitude classes of a row's largest element, per dtype;
- eps decades 1e-12..1, and 0 to 3 leading dimensions;
- more than 65535 rows (``MANY_ROWS``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from rmsnorm_conformance.protocol import DTYPES


@dataclasses.dataclass(frozen=True)
class AxisRegion:
    name: str
    lo: int
    hi: int
    anchor: int        # the axis length the anchors use for this region

    def __contains__(self, d: int) -> bool:
        return self.lo <= d <= self.hi


AXIS_REGIONS = tuple(AxisRegion(*r) for r in (
    ("1", 1, 1, 1), ("2..31", 2, 31, 7), ("32..255", 32, 255, 33), ("256", 256, 256, 256),
    ("257", 257, 257, 257), ("1024", 1024, 1024, 1024), ("4096", 4096, 4096, 4096),
    ("4097", 4097, 4097, 4097), ("8193", 8193, 8193, 8193), ("16385", 16385, 16385, 16385),
    ("65535", 65535, 65535, 65535), ("65536", 65536, 65536, 65536)))
#: The anchors' axis lengths: one per region, every run reaches each for every dtype, forward
#: and backward.
D_TARGETS = tuple(r.anchor for r in AXIS_REGIONS)
MAX_D = AXIS_REGIONS[-1].hi


def axis_region(d: int) -> str | None:
    """The name of the region holding axis length ``d``, or None."""
    return next((r.name for r in AXIS_REGIONS if d in r), None)


#: The three low-precision floating types the suite draws everywhere.
ALL_DTYPES = ("float32", "float16", "bfloat16")
#: Mixed (x, weight) dtype pairs.
MIXED_PAIRS = (("float16", "float32"), ("bfloat16", "float32"), ("float32", "float16"),
               ("float32", "bfloat16"), ("float16", "bfloat16"), ("bfloat16", "float16"))


def dtype_key(x_dtype, w_dtype=None) -> str:
    """x's dtype, and "+weight dtype" when the weight's differs: "float16+float32"."""
    x = np.dtype(x_dtype).name
    if w_dtype is not None and np.dtype(w_dtype).name != x:
        return f"{x}+{np.dtype(w_dtype).name}"
    return x


#: Pairs with float64 (drawn only by the float64 clauses, for implementations declaring it).
FLOAT64_PAIRS = tuple(p for t in ALL_DTYPES for p in (("float64", t), (t, "float64")))

#: Every dtype pair a run must reach.
DTYPE_KEYS = ALL_DTYPES + tuple(dtype_key(DTYPES[x], DTYPES[w]) for x, w in MIXED_PAIRS)

#: Magnitude classes of a row's largest element (per dtype; see ``magnitude_classes``).
MAGNITUDE_CLASSES = ("subnormal", "tiny", "ordinary", "near sqrt(max)", "near max")

#: The eps decades every run reaches (log10 of eps).
EPS_DECADES = tuple(range(-12, 1))
#: Leading dimensions every run reaches.
LEAD_DIMS = (0, 1, 2, 3)

#: Every run sends more rows than this in one call (a GPU grid's limit of 65535 blocks in one
#: dimension: rows beyond it need a second dimension or a loop) ...
MANY_ROWS = 65535
#: ... for these x dtypes and directions ("<x dtype> forward|backward").
MANY_ROWS_REACHED = ("float32 forward",)


def magnitude_classes(rows_max: np.ndarray, dtype: str) -> set[str]:
    """The classes of ``MAGNITUDE_CLASSES`` that rows with these largest magnitudes reach."""
    from rmsnorm_conformance.conformance.dtypes import INFO

    fi = INFO[dtype]
    top, root = fi.max, math.sqrt(fi.max)
    m = rows_max[(rows_max > 0) & np.isfinite(rows_max)]
    found = set()
    if np.any(m < fi.tiny):
        found.add("subnormal")
    if np.any((m >= fi.tiny) & (m < 16 * fi.tiny)):
        found.add("tiny")
    if np.any((m >= 2.0 ** -8) & (m <= 2.0 ** 8)):
        found.add("ordinary")
    if np.any((m >= root / 16) & (m <= root * 16)):
        found.add("near sqrt(max)")
    if np.any(m >= top / 16):
        found.add("near max")
    return found
