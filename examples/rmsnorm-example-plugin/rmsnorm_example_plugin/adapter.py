"""A user's RMSNorm in NumPy (float32) and the adapter that registers it with the suite.

The adapter imports only the suite's public module, ``rmsnorm_conformance``.
"""

import numpy as np

from rmsnorm_conformance import LAYOUTS, Capabilities, Implementation


def rms_norm(x, weight=None, eps=1e-5):
    """y = x / sqrt(mean(x^2, last axis) + eps) * weight, in float32."""
    x = np.asarray(x, np.float32)
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps))
    return y if weight is None else y * np.asarray(weight, np.float32)


class ExampleNumPy(Implementation):
    # float32 only; weight=None and any eps accepted (nothing is validated); NumPy builds every
    # layout as a view (negative strides included).
    capabilities = Capabilities(dtypes=("float32",), weight_none=True, nonpositive_eps=True,
                                layouts=LAYOUTS)

    def environment(self):
        return {"framework": "numpy", "version": np.__version__, "device": "cpu"}

    def rms_norm(self, x, weight, eps, layout=None):
        if layout is not None:
            x, weight = layout.view(x, weight, np.asarray, np.swapaxes, np.broadcast_to)
        with np.errstate(all="ignore"):      # 0/0 and inf/inf are results here, not errors
            return rms_norm(x, weight, eps)


adapter = ExampleNumPy()
