"""Fused 3D convolution (+bias +residual +activation): Pallas GPU/TPU kernels,
a pure-JAX reference, and the XLA path of `medjax_kernels.conv_xla`. See `api.py`."""
from medjax_kernels.conv3d.api import conv3d

__all__ = ["conv3d"]
