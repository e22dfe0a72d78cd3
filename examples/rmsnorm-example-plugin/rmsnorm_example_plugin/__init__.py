"""An example third-party RMSNorm (NumPy, float32) and its rmsnorm-conformance adapter."""

from rmsnorm_example_plugin.adapter import rms_norm

__all__ = ["rms_norm"]
