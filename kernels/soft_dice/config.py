"""Block sizes for the soft-Dice statistics kernels: heuristic defaults and a search space.

The kernels are memory bound (a few FLOPs per logit), so block sizes are chosen for
enough bytes in flight per program and few enough live values per thread/vreg, not for
arithmetic shape. Defaults come from the heuristics below; `GPU_SEARCH_SPACE` and
`TPU_SEARCH_SPACE` list the candidates a tuner (or `benchmarks.bench_kernels`) sweeps.
"""
from __future__ import annotations

import dataclasses

import numpy as np

# Triton works on power-of-two tensors; classes are padded up to this (at least 2).
MIN_CLASS_PAD = 2
# Rows of 128 lanes that the TPU kernel processes per inner-loop step. 16 rows keeps
# bfloat16 slices on (16, 128) tile boundaries and float32 on (8, 128) ones.
TPU_SUBLANES = 16
TPU_LANES = 128


def next_power_of_2(x: int) -> int:
  """Smallest power of two >= x (and >= 1)."""
  return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def padded_classes(num_classes: int) -> int:
  """Number of classes the Triton kernel computes with: next power of two, >= 2."""
  return max(MIN_CLASS_PAD, next_power_of_2(num_classes))


@dataclasses.dataclass(frozen=True)
class GpuConfig:
  """Tile of the Triton kernel: `block_v` voxels x `padded_classes(K)` per program."""

  block_v: int
  num_warps: int = 4
  num_stages: int = 1

  def __post_init__(self):
    if self.block_v < 16 or self.block_v & (self.block_v - 1):
      raise ValueError(f"block_v must be a power of two >= 16, got {self.block_v}")


@dataclasses.dataclass(frozen=True)
class TpuConfig:
  """Tile of the Mosaic TPU kernel: `block_rows` x 128 voxels x K classes per grid step."""

  block_rows: int

  def __post_init__(self):
    if self.block_rows < TPU_SUBLANES or self.block_rows % TPU_SUBLANES:
      raise ValueError(
          f"block_rows must be a positive multiple of {TPU_SUBLANES}, got {self.block_rows}")


def default_gpu_config(num_voxels: int, num_classes: int, dtype,
                       backward: bool = False) -> GpuConfig:
  """Heuristic GPU tile: about 4096 (float32) or 8192 (bfloat16) logits per program
  forward, 2048 backward.

  Forward: 32-64 logits per thread with 4 warps, enough loads in flight to stream HBM.
  Backward: ~5 live (block_v, K) float32 tensors (p, t, g, their products) took 98-167
  registers per thread at the forward's tile (1-4 CTAs/SM on an H100, from
  `benchmarks.compile_check`); 16 logits per thread (2048 per 4-warp program) take
  52-80 (6-9 CTAs/SM, every bench shape and both dtypes; benchmarks/RESULTS.md).
  Never larger than the (power-of-two-rounded) voxel count.
  """
  kp = padded_classes(num_classes)
  target = 8192 if np.dtype(dtype).itemsize <= 2 else 4096
  if backward:
    target = 2048
  block_v = max(16, min(4096, target // kp))
  block_v = min(block_v, max(16, next_power_of_2(num_voxels)))
  num_warps = 8 if block_v * kp >= 8192 and not backward else 4
  return GpuConfig(block_v=block_v, num_warps=num_warps)


def default_tpu_config(num_voxels: int, num_classes: int, dtype) -> TpuConfig:
  """Heuristic TPU tile: about 2 MiB of logits per grid step (4 MiB double-buffered).

  Small enough for the 16-32 MiB default scoped VMEM of v4/v5e/v5p/v6e with the label
  and output blocks beside it, large enough to hide the ~0.35 us per-step overhead.
  """
  itemsize = np.dtype(dtype).itemsize
  rows = (2 << 20) // (num_classes * TPU_LANES * itemsize)
  rows = max(TPU_SUBLANES, min(2048, rows // TPU_SUBLANES * TPU_SUBLANES))
  needed = -(-num_voxels // TPU_LANES)
  needed = -(-needed // TPU_SUBLANES) * TPU_SUBLANES
  return TpuConfig(block_rows=min(rows, needed))


GPU_SEARCH_SPACE: tuple[GpuConfig, ...] = tuple(
    GpuConfig(block_v=bv, num_warps=nw)
    for bv in (128, 256, 512, 1024, 2048, 4096)
    for nw in (2, 4, 8))

TPU_SEARCH_SPACE: tuple[TpuConfig, ...] = tuple(
    TpuConfig(block_rows=r) for r in (64, 128, 256, 512, 1024, 2048))
