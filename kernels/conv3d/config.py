"""Block sizes for the conv3d kernels, a heuristic to pick them, and a search space.

The kernels compute the convolution as a sum over taps of shifted
`(BLOCK_Q, C_in) @ (C_in, BLOCK_CO)` matmuls, where Q enumerates output voxels
on the padded-width grid (see `pallas_gpu.py`).
"""
from __future__ import annotations

import dataclasses


def next_pow2(n: int) -> int:
  return 1 << max(int(n) - 1, 0).bit_length()


@dataclasses.dataclass(frozen=True)
class GpuConfig:
  """Triton tile sizes: output voxels per program, output channels per program."""
  block_q: int = 64
  block_co: int = 32
  num_warps: int = 4
  num_stages: int = 2


def gpu_config(c_in: int, c_out: int, q_total: int, dtype_bytes: int = 4) -> GpuConfig:
  """Heuristic: a (BLOCK_Q, C_in) input tile and a (C_in, BLOCK_CO) weight tile
  in registers/shared memory; wide C_in gets fewer rows so the tiles stay ~64 KiB."""
  c_in_p, c_out_p = max(16, next_pow2(c_in)), max(16, next_pow2(c_out))
  block_co = min(c_out_p, 64)
  block_q = 128 if c_in_p * dtype_bytes <= 128 else 64
  block_q = min(block_q, max(16, next_pow2(q_total)))
  num_warps = 4 if block_q * block_co <= 64 * 64 else 8
  return GpuConfig(block_q=block_q, block_co=block_co, num_warps=num_warps)


# Autotuning search space (for a sweep on a real GPU; the heuristic is the default).
GPU_SEARCH_SPACE = {
    "block_q": (32, 64, 128, 256),
    "block_co": (16, 32, 64, 128),
    "num_warps": (2, 4, 8),
    "num_stages": (1, 2, 3),
}


@dataclasses.dataclass(frozen=True)
class TpuConfig:
  """Mosaic tiles: output channels per program (a multiple of 128 or all of them)."""
  block_co: int = 128


def tpu_config(c_out: int) -> TpuConfig:
  return TpuConfig(block_co=128 if c_out > 128 else c_out)


TPU_SEARCH_SPACE = {"block_co": (128, 256)}
