"""One correct adapter and several broken ones, each failing the forward contract differently.

All declare float32 only and no mixed dtypes, so DTY-2 is skipped for them (a skip cell with a
reason in the summary table).
"""

from __future__ import annotations

import os

import numpy as np

from rmsnorm_conformance import reference
from rmsnorm_conformance.protocol import Capabilities, Implementation, cache_dir

CAPS = Capabilities(dtypes=("float32",), weight_none=True)


def _rms_norm(x, weight, eps):
    """Correct to float32 rounding: the project's float64 reference, rounded once; with
    FAKE_RMSNORM_FAULT=eps-ignored in the environment, eps is dropped (a planted fault for the
    regression-tracking tests: the same implementation id, a worse version)."""
    if os.environ.get("FAKE_RMSNORM_FAULT") == "eps-ignored":
        eps = 0.0
    return reference.rms_norm(x, weight, eps).astype(np.float32)


class Good(Implementation):
    capabilities = CAPS

    def environment(self):
        """The folder it is offered for what it builds (tests/test_plugin.py: --rmsnorm-cache)."""
        return {"framework": "fake", "cache": str(cache_dir("fake"))}

    def rms_norm(self, x, weight, eps, layout=None):
        return _rms_norm(x, weight, eps)


class Raises(Good):
    def rms_norm(self, x, weight, eps, layout=None):
        raise RuntimeError("fake kernel exploded")


class WrongShape(Good):
    def rms_norm(self, x, weight, eps, layout=None):
        return _rms_norm(x, weight, eps).reshape(-1)


class WrongDtype(Good):
    def rms_norm(self, x, weight, eps, layout=None):
        return _rms_norm(x, weight, eps).astype(np.float64)


class ReturnsList(Good):
    def rms_norm(self, x, weight, eps, layout=None):
        return _rms_norm(x, weight, eps).tolist()


class NotImplementedKernel(Good):
    """Its plumbing is incomplete: rms_norm is declared but not implemented."""

    def rms_norm(self, x, weight, eps, layout=None):
        raise NotImplementedError("rms_norm is not wired up yet")


class Unavailable(Good):
    def unavailable_reason(self):
        return "no fake accelerator here"


good = Good()
raises = Raises()
wrong_shape = WrongShape()
wrong_dtype = WrongDtype()
returns_list = ReturnsList
unavailable = Unavailable()
not_implemented = NotImplementedKernel()
