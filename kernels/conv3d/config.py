"""Block sizes for the conv3d kernels, a heuristic to pick them, and a search space.

The kernels compute the convolution as a sum over taps (and, on GPU, over C_in
chunks) of shifted `(BLOCK_Q, BLOCK_K) @ (BLOCK_K, BLOCK_CO)` matmuls, where Q
enumerates output voxels (on GPU the output grid itself, see `pallas_gpu.py`; on TPU
the padded-width grid, see `pallas_tpu.py`). The GPU weight gradient's tiles are
`pallas_gpu_wgrad.wgrad_config`.
"""
from __future__ import annotations

import dataclasses


def next_pow2(n: int) -> int:
  return 1 << max(int(n) - 1, 0).bit_length()


@dataclasses.dataclass(frozen=True)
class GpuConfig:
  """Triton tiles: output voxels and output channels per program, input channels per
  pipelined step (the split-K chunk), warps and software-pipeline stages."""
  block_q: int = 64
  block_co: int = 64
  block_k: int = 32
  num_warps: int = 4
  num_stages: int = 3


# H100: 132 SMs; fewer than two programs per SM leaves SMs idle in the last wave.
MIN_PROGRAMS = 2 * 132

# Output-channel tile -> (block_q, block_co, num_warps). The float32 accumulator is
# block_q * block_co / (32 * num_warps) registers per thread: 64 in every row, which
# with the operand fragments stays under 168 registers (3 CTAs/SM of 4 warps, 1-2 of
# 8 warps) -- measured with `python -m benchmarks.compile_check` (benchmarks/RESULTS.md).
GPU_TILES = {
    16: (128, 16, 4),
    32: (128, 32, 4),
    64: (128, 64, 4),
    128: (128, 128, 8),
}


def gpu_config(c_in: int, c_out: int, q_total: int, dtype_bytes: int = 4,
               batch: int = 1) -> GpuConfig:
  """Block sizes for one conv (channels already counted before padding).

  * `block_k`: 128 bytes of input channels per row and step (32 float32, 64
    bfloat16; fewer if C_in is smaller): the shared memory per pipeline stage is
    `(block_q + block_co) * block_k * dtype_bytes` <= 32 KiB, so 3 stages fit any
    C_in (a 64x1024 tile needed 256 KiB > the H100's 227 KiB: no C_in loop).
  * `block_q`, `block_co`, `num_warps`: `GPU_TILES` by padded C_out (wider C_out
    takes 128-channel tiles in bfloat16; float32 stays at 128x64 with 4 warps: its
    8-warp 128x128 tile took 132 registers, 1 CTA/SM, against 155-159 and 3 CTAs/SM);
    `block_q` halves (down to 64) while the grid has fewer than `MIN_PROGRAMS` programs:
    a 32-row tile is below the 64 rows a Hopper warpgroup MMA (wgmma) takes, and
    Triton falls back to mma.sync (seen in the PTX of the compile check); then
    `block_co` halves (down to 16) while the grid is still short of `MIN_PROGRAMS`.
  * `num_stages`: 3 (cp.async multi-buffering of the (tap x C_in chunk) loop).
  """
  c_in_p, c_out_p = max(16, next_pow2(c_in)), max(16, next_pow2(c_out))
  block_k = min(c_in_p, 128 // dtype_bytes)
  block_q, block_co, num_warps = GPU_TILES[min(c_out_p, 128 if dtype_bytes == 2 else 64)]
  programs = lambda bq, bco: batch * -(-q_total // bq) * (c_out_p // bco)
  if block_co == 128 and programs(block_q, block_co) < MIN_PROGRAMS:
    block_co, num_warps = 64, 4
  while block_q > 64 and programs(block_q, block_co) < MIN_PROGRAMS:
    block_q //= 2
  # Still too few (deep layers: V-Net down3 launched 64 programs, stage 4 144): narrower
  # output-channel tiles, down to 16 (a wgmma N may be 8-256; the input rows are re-read per
  # C_out tile, from L2 at these sizes).
  while block_co > 16 and programs(block_q, block_co) < MIN_PROGRAMS:
    block_co //= 2
  block_q = min(block_q, max(16, next_pow2(q_total)))
  return GpuConfig(block_q=block_q, block_co=block_co, block_k=block_k, num_warps=num_warps)


# Autotuning search space (for a sweep on a real GPU; the heuristic is the default).
GPU_SEARCH_SPACE = {
    "block_q": (32, 64, 128, 256),
    "block_co": (16, 32, 64, 128),
    "block_k": (16, 32, 64),
    "num_warps": (4, 8),
    "num_stages": (2, 3, 4),
}


@dataclasses.dataclass(frozen=True)
class TpuConfig:
  """Mosaic tiles: output channels per program (a multiple of 128 or all of them)."""
  block_co: int = 128


def tpu_config(c_out: int) -> TpuConfig:
  return TpuConfig(block_co=128 if c_out > 128 else c_out)


TPU_SEARCH_SPACE = {"block_co": (128, 256)}
