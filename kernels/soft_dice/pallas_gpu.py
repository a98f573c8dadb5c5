"""Soft-Dice statistics as Pallas kernels for GPUs (Triton lowering).

Layout: logits are viewed as (N, V, K) (V = voxels, a free reshape of channels-last
data) and labels as (N, V). The grid is (N, ceil(V / block_v)); each program loads a
(block_v, Kp) tile, Kp = K padded to a power of two (Triton needs power-of-two
tensors). Loads are masked: voxels past V and classes past K are never read, padded
classes get -inf logits so softmax gives them zero probability.

Forward: every program computes p in float32 and writes its three partial class sums
(Kp,) to its own slot of (N, num_blocks, Kp) outputs; a small XLA sum over blocks
finishes (deterministic, no atomics). Probabilities never reach HBM.

Backward: a second pass recomputes p from the logits and writes dlogits directly.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from . import config as cfg


def _tile(logits_ref, labels_ref, *, num_voxels: int, num_classes: int, block_v: int,
          k_pad: int, activation: str):
  """Loads one tile; returns (p, t, mask) as float32 (block_v, Kp), mask boolean."""
  j = pl.program_id(1)
  v = j * block_v + jax.lax.iota(jnp.int32, block_v)
  k = jax.lax.iota(jnp.int32, k_pad)
  v_ok = v < num_voxels
  k_ok = k < num_classes
  mask = v_ok[:, None] & k_ok[None, :]
  x = plgpu.load(logits_ref, mask=mask, other=0.0).astype(jnp.float32)
  lab = plgpu.load(labels_ref, mask=v_ok, other=-1).astype(jnp.int32)
  if activation == "softmax":
    x = jnp.where(k_ok[None, :], x, -jnp.inf)
    e = jnp.exp(x - jnp.max(x, axis=1, keepdims=True))
    p = e / jnp.sum(e, axis=1, keepdims=True)
  else:
    p = 1.0 / (1.0 + jnp.exp(-x))
  p = jnp.where(mask, p, 0.0)
  t = (lab[:, None] == k[None, :]).astype(jnp.float32)
  return p, t, mask


def _fwd_kernel(logits_ref, labels_ref, inter_ref, psum_ref, tsum_ref, *, squared: bool,
                **tile_kw):
  p, t, _ = _tile(logits_ref, labels_ref, **tile_kw)
  inter_ref[...] = jnp.sum(p * t, axis=0)
  psum_ref[...] = jnp.sum(p * p if squared else p, axis=0)
  tsum_ref[...] = jnp.sum(t, axis=0)


def _bwd_kernel(logits_ref, labels_ref, gi_ref, gp_ref, dx_ref, *, squared: bool,
                activation: str, **tile_kw):
  p, t, mask = _tile(logits_ref, labels_ref, activation=activation, **tile_kw)
  gi = gi_ref[...][None, :]
  gp = gp_ref[...][None, :]
  g = gi * t + gp * (2.0 * p if squared else 1.0)
  if activation == "softmax":
    dx = p * (g - jnp.sum(p * g, axis=1, keepdims=True))
  else:
    dx = g * p * (1.0 - p)
  plgpu.store(dx_ref, dx.astype(dx_ref.dtype), mask=mask)


def _prepare(logits, labels, config, backward: bool = False):
  n, k = logits.shape[0], logits.shape[-1]
  x = logits.reshape(n, -1, k)
  lab = labels.reshape(n, -1)
  if lab.dtype.itemsize > 4 or lab.dtype == jnp.uint32:
    lab = lab.astype(jnp.int32)
  v = x.shape[1]
  if config is None:
    config = cfg.default_gpu_config(v, k, logits.dtype, backward=backward)
  k_pad = cfg.padded_classes(k)
  grid = (n, pl.cdiv(v, config.block_v))
  tile_kw = dict(num_voxels=v, num_classes=k, block_v=config.block_v, k_pad=k_pad)
  in_specs = [
      pl.BlockSpec((None, config.block_v, k_pad), lambda i, j: (i, j, 0)),
      pl.BlockSpec((None, config.block_v), lambda i, j: (i, j)),
  ]
  params = plgpu.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages)
  return x, lab, config, grid, tile_kw, in_specs, params


@functools.partial(jax.jit, static_argnames=("squared", "activation", "config", "interpret"))
def soft_dice_stats_fwd(logits: jax.Array, labels: jax.Array, *, squared: bool = False,
                        activation: str = "softmax", config: cfg.GpuConfig | None = None,
                        interpret: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Fused softmax/sigmoid + soft-Dice sums (Milletari 2016) on GPU, one pass over HBM.

  Args:
    logits: (N, *S, K) float32 or bfloat16.
    labels: (N, *S) integers.
    squared, activation: as in `reference.soft_dice_stats`.
    config: tile sizes; `config.default_gpu_config` when None.
    interpret: run the kernel with the Pallas interpreter (any backend, e.g. CPU).

  Returns:
    (intersection, pred_sum, target_sum), each float32 (N, K).
  """
  n, k = logits.shape[0], logits.shape[-1]
  x, lab, config, grid, tile_kw, in_specs, params = _prepare(logits, labels, config)
  k_pad = tile_kw["k_pad"]
  part = jax.ShapeDtypeStruct((n, grid[1], k_pad), jnp.float32)
  out_spec = pl.BlockSpec((None, None, k_pad), lambda i, j: (i, j, 0))
  kernel = functools.partial(_fwd_kernel, squared=squared, activation=activation, **tile_kw)
  parts = pl.pallas_call(
      kernel,
      grid=grid,
      in_specs=in_specs,
      out_specs=[out_spec] * 3,
      out_shape=[part] * 3,
      compiler_params=params,
      interpret=interpret,
      name="soft_dice_stats_fwd",
  )(x, lab)
  return tuple(jnp.sum(q, axis=1)[:, :k] for q in parts)


@functools.partial(jax.jit, static_argnames=("squared", "activation", "config", "interpret"))
def soft_dice_stats_bwd(logits: jax.Array, labels: jax.Array, g_intersection: jax.Array,
                        g_pred_sum: jax.Array, *, squared: bool = False,
                        activation: str = "softmax", config: cfg.GpuConfig | None = None,
                        interpret: bool = False) -> jax.Array:
  """d(Σ gI·intersection + gP·pred_sum)/dlogits in one fused pass (recomputes p).

  Args:
    logits: (N, *S, K); labels: (N, *S); g_intersection, g_pred_sum: (N, K).

  Returns:
    (N, *S, K) in the dtype of `logits`.
  """
  n, k = logits.shape[0], logits.shape[-1]
  x, lab, config, grid, tile_kw, in_specs, params = _prepare(logits, labels, config,
                                                             backward=True)
  k_pad = tile_kw["k_pad"]
  pad = ((0, 0), (0, k_pad - k))
  gi = jnp.pad(g_intersection.astype(jnp.float32), pad)
  gp = jnp.pad(g_pred_sum.astype(jnp.float32), pad)
  g_spec = pl.BlockSpec((None, k_pad), lambda i, j: (i, 0))
  kernel = functools.partial(_bwd_kernel, squared=squared, activation=activation, **tile_kw)
  dx = pl.pallas_call(
      kernel,
      grid=grid,
      in_specs=in_specs + [g_spec, g_spec],
      out_specs=in_specs[0],
      out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
      compiler_params=params,
      interpret=interpret,
      name="soft_dice_stats_bwd",
  )(x, lab, gi, gp)
  return dx.reshape(logits.shape)
