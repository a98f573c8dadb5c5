"""Fused 3D convolution (+bias +residual +activation): Pallas GPU/TPU kernels,
a pure-JAX reference and the fastest XLA path for CPU. See `api.py`."""
from medjax_kernels.conv3d.api import IMPLEMENTATIONS, conv3d

__all__ = ["conv3d", "IMPLEMENTATIONS"]
