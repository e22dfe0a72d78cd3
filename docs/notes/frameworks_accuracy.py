"""Accuracy of the installed adapters in ulps of the output dtype (docs/notes/frameworks.md).

    python docs/notes/frameworks_accuracy.py [ID ...]      (default: the CPU adapters here)

Inputs as in docs/notes/frameworks.md: 4 rows of N(0, 1) (default_rng(0)), weight
1 + U(0, 0.1) in x's dtype, eps 1e-5, d = 64, 4096, 65536. The error of each element is
|y - reference| / ulp_T(reference) with the float64 reference of the inputs' exact values;
printed: the largest and the mean over the 4 d elements.
"""

from __future__ import annotations

import sys

import numpy as np

from rmsnorm_conformance import reference
from rmsnorm_conformance.conformance.dtypes import ulp
from rmsnorm_conformance.conformance.registry import discover
from rmsnorm_conformance.protocol import DTYPES

DEFAULT = ("mlx-fast-cpu", "torch-functional-cpu", "torch-module-cpu", "jax-numpy-cpu",
           "flax-nnx-cpu")


def errors(impl, dtype, d, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, d)).astype(DTYPES[dtype])
    w = (1 + 0.1 * rng.random(d)).astype(DTYPES[dtype])
    y = impl.rms_norm(x, w, 1e-5)
    ref = reference.rms_norm(x, w, 1e-5)
    e = np.abs(y.astype(np.float64) - ref) / ulp(ref, y.dtype)
    return e.max(), e.mean()


def main(ids):
    entries = {e.id: e for e in discover()}
    print(f"{'id':22} {'dtype':9} " + " ".join(f"{'d=' + str(d):>17}" for d in (64, 4096, 65536)))
    for i in ids:
        e = entries.get(i)
        if e is None or e.impl is None or e.unavailable:
            print(f"{i:22} not available: {None if e is None else (e.error or e.unavailable)}")
            continue
        for t in DTYPES:
            cells = [errors(e.impl, t, d) for d in (64, 4096, 65536)]
            print(f"{i:22} {t:9} " + " ".join(f"{m:7.2f} (mean {a:4.2f})" for m, a in cells))


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)
