"""Soft-Dice statistics as Pallas kernels for TPUs (Mosaic).

Layout: TPU vregs are (8, 128) tiles, and a class axis of 2-14 on the lanes would
waste most of each vreg. So XLA first turns the channels-last logits (N, V, K) into
class-major (N, K, R, 128), R = ceil(V / 128) rows of 128 voxels (one transpose copy,
fused with the zero-padding of V to a multiple of 128). Labels become (N, R, 128) int32,
a free reshape when V % 128 == 0 and labels are int32 already.

Forward grid (N, splits, blocks per split), backward grid (blocks, N); see the kernels
for why (both TensorCores of megacore chips busy at batch 1). Each step holds a (K, block_rows, 128) logits block in
VMEM and walks it 16 rows at a time; softmax over classes is then elementwise across K
separate (16, 128) slabs (max/exp/sum on the VPU/EUP, no cross-lane work). Voxels past V
(padding or a partial last block) are masked by their global index.

Forward: the three sums are accumulated per class into (8, 128) vreg-shaped partials in
the output block, which stays resident in VMEM across the "arbitrary" voxel-block axis;
XLA adds the 1024 lanes at the end. Probabilities never reach HBM.

Backward: recomputes p and writes dlogits (N, K, R, 128); XLA transposes it back.
The cotangents (N, K) are read as scalars from SMEM.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from . import config as cfg

_SUB = cfg.TPU_SUBLANES
_LANES = cfg.TPU_LANES


def _chunk(x_ref, lab_ref, r0, *, j, num_voxels: int, num_classes: int, block_rows: int,
           activation: str, mask: bool):
  """p and t for rows [r0, r0+16) of the block: two lists of K float32 (16, 128)."""
  xs = [x_ref[k, pl.ds(r0, _SUB), :].astype(jnp.float32) for k in range(num_classes)]
  lab = lab_ref[pl.ds(r0, _SUB), :]
  if activation == "softmax":
    m = xs[0]
    for x in xs[1:]:
      m = jnp.maximum(m, x)
    es = [jnp.exp(x - m) for x in xs]
    s = es[0]
    for e in es[1:]:
      s = s + e
    inv = 1.0 / s
    ps = [e * inv for e in es]
  else:
    ps = [1.0 / (1.0 + jnp.exp(-x)) for x in xs]
  if mask:
    row = jax.lax.broadcasted_iota(jnp.int32, (_SUB, _LANES), 0)
    lane = jax.lax.broadcasted_iota(jnp.int32, (_SUB, _LANES), 1)
    ok = (j * block_rows + r0 + row) * _LANES + lane < num_voxels
    # A partial last block reads unspecified VMEM: mask the labels as well as p.
    ps = [jnp.where(ok, p, 0.0) for p in ps]
    lab = jnp.where(ok, lab, -1)
  ts = [jnp.where(lab == k, 1.0, 0.0) for k in range(num_classes)]
  return ps, ts


def _fold(a):
  """(16, 128) -> (8, 128): adds the two sublane tiles (pure VPU adds)."""
  return a[:8, :] + a[8:, :]


def _fwd_kernel(x_ref, lab_ref, inter_ref, psum_ref, tsum_ref, *, squared: bool,
                num_classes: int, block_rows: int, num_voxels: int, blocks_per_split: int,
                **chunk_kw):
  # Grid (N, splits, blocks_per_split): the voxel blocks of a case are cut into
  # `splits` parallel ranges so that both TensorCores of a megacore chip (v4, v5p) get
  # work even with batch 1; blocks past the end are clamped in the index map and masked.
  jj = pl.program_id(2)
  j = pl.program_id(1) * blocks_per_split + jj

  @pl.when(jj == 0)
  def _init():
    inter_ref[...] = jnp.zeros_like(inter_ref)
    psum_ref[...] = jnp.zeros_like(psum_ref)
    tsum_ref[...] = jnp.zeros_like(tsum_ref)

  def run(mask: bool):
    def body(c, carry):
      r0 = pl.multiple_of(c * _SUB, _SUB)
      ps, ts = _chunk(x_ref, lab_ref, r0, j=j, num_classes=num_classes,
                      block_rows=block_rows, num_voxels=num_voxels, mask=mask, **chunk_kw)
      acc_i, acc_p, acc_t = carry
      acc_i = tuple(a + _fold(p * t) for a, p, t in zip(acc_i, ps, ts))
      acc_p = tuple(a + _fold(p * p if squared else p) for a, p in zip(acc_p, ps))
      acc_t = tuple(a + _fold(t) for a, t in zip(acc_t, ts))
      return acc_i, acc_p, acc_t

    zero = tuple(jnp.zeros((8, _LANES), jnp.float32) for _ in range(num_classes))
    acc_i, acc_p, acc_t = jax.lax.fori_loop(0, block_rows // _SUB, body, (zero, zero, zero))
    for k in range(num_classes):
      inter_ref[k] += acc_i[k]
      psum_ref[k] += acc_p[k]
      tsum_ref[k] += acc_t[k]

  # Only a block reaching past the last voxel pays for the mask.
  inside = (j + 1) * (block_rows * _LANES) <= num_voxels
  pl.when(inside)(lambda: run(mask=False))
  pl.when(jnp.logical_not(inside))(lambda: run(mask=True))


def _bwd_kernel(g_ref, x_ref, lab_ref, dx_ref, *, squared: bool, activation: str,
                num_classes: int, block_rows: int, **chunk_kw):
  j = pl.program_id(0)
  n = pl.program_id(1)
  gis = [g_ref[0, n * num_classes + k] for k in range(num_classes)]
  gps = [g_ref[1, n * num_classes + k] for k in range(num_classes)]

  def body(c, _):
    r0 = pl.multiple_of(c * _SUB, _SUB)
    ps, ts = _chunk(x_ref, lab_ref, r0, j=j, num_classes=num_classes, block_rows=block_rows,
                    activation=activation, mask=False, **chunk_kw)
    gs = [gi * t + (gp * 2.0 * p if squared else gp) for gi, gp, p, t in zip(gis, gps, ps, ts)]
    if activation == "softmax":
      dot = ps[0] * gs[0]
      for p, g in zip(ps[1:], gs[1:]):
        dot = dot + p * g
      dxs = [p * (g - dot) for p, g in zip(ps, gs)]
    else:
      dxs = [g * p * (1.0 - p) for p, g in zip(ps, gs)]
    for k, dx in enumerate(dxs):
      dx_ref[k, pl.ds(r0, _SUB), :] = dx.astype(dx_ref.dtype)
    return 0

  jax.lax.fori_loop(0, block_rows // _SUB, body, 0)


def _to_class_major(logits: jax.Array, labels: jax.Array):
  """(N, *S, K), (N, *S) -> (N, K, R, 128) logits, (N, R, 128) int32 labels, V."""
  n, k = logits.shape[0], logits.shape[-1]
  x = logits.reshape(n, -1, k)
  v = x.shape[1]
  rows = -(-v // _LANES)
  pad = rows * _LANES - v
  x = jnp.pad(jnp.swapaxes(x, 1, 2), ((0, 0), (0, 0), (0, pad))).reshape(n, k, rows, _LANES)
  lab = labels.reshape(n, v).astype(jnp.int32)
  if pad:
    lab = jnp.pad(lab, ((0, 0), (0, pad)), constant_values=-1)
  return x, lab.reshape(n, rows, _LANES), v


@functools.partial(jax.jit, static_argnames=("squared", "activation", "config", "interpret"))
def soft_dice_stats_fwd(logits: jax.Array, labels: jax.Array, *, squared: bool = False,
                        activation: str = "softmax", config: cfg.TpuConfig | None = None,
                        interpret: bool | pltpu.InterpretParams = False
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Fused softmax/sigmoid + soft-Dice sums (Milletari 2016) on TPU.

  Args:
    logits: (N, *S, K) float32 or bfloat16.
    labels: (N, *S) integers.
    squared, activation: as in `reference.soft_dice_stats`.
    config: tile sizes; `config.default_tpu_config` when None.
    interpret: True for the generic Pallas interpreter, or `pltpu.InterpretParams()` for
      the TPU-semantics interpreter; both run on CPU.

  Returns:
    (intersection, pred_sum, target_sum), each float32 (N, K).
  """
  n, k = logits.shape[0], logits.shape[-1]
  x, lab, v = _to_class_major(logits, labels)
  if config is None:
    config = cfg.default_tpu_config(v, k, logits.dtype)
  num_blocks = pl.cdiv(x.shape[2], config.block_rows)
  splits = 2 if num_blocks >= 2 else 1
  per_split = pl.cdiv(num_blocks, splits)

  def block(s, jj):
    return jnp.minimum(s * per_split + jj, num_blocks - 1)

  x_spec = pl.BlockSpec((None, k, config.block_rows, _LANES),
                        lambda i, s, jj: (i, 0, block(s, jj), 0))
  lab_spec = pl.BlockSpec((None, config.block_rows, _LANES),
                          lambda i, s, jj: (i, block(s, jj), 0))
  out_spec = pl.BlockSpec((None, None, k, 8, _LANES), lambda i, s, jj: (i, s, 0, 0, 0))
  part = jax.ShapeDtypeStruct((n, splits, k, 8, _LANES), jnp.float32)
  kernel = functools.partial(_fwd_kernel, squared=squared, activation=activation,
                             num_voxels=v, num_classes=k, block_rows=config.block_rows,
                             blocks_per_split=per_split)
  parts = pl.pallas_call(
      kernel,
      grid=(n, splits, per_split),
      in_specs=[x_spec, lab_spec],
      out_specs=[out_spec] * 3,
      out_shape=[part] * 3,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=interpret,
      name="soft_dice_stats_fwd",
  )(x, lab)
  return tuple(jnp.sum(q, axis=(1, 3, 4)) for q in parts)


@functools.partial(jax.jit, static_argnames=("squared", "activation", "config", "interpret"))
def soft_dice_stats_bwd(logits: jax.Array, labels: jax.Array, g_intersection: jax.Array,
                        g_pred_sum: jax.Array, *, squared: bool = False,
                        activation: str = "softmax", config: cfg.TpuConfig | None = None,
                        interpret: bool | pltpu.InterpretParams = False) -> jax.Array:
  """d(Σ gI·intersection + gP·pred_sum)/dlogits on TPU, recomputing p in the kernel.

  Args:
    logits: (N, *S, K); labels: (N, *S); g_intersection, g_pred_sum: (N, K).

  Returns:
    (N, *S, K) in the dtype of `logits`.
  """
  n, k = logits.shape[0], logits.shape[-1]
  x, lab, v = _to_class_major(logits, labels)
  if config is None:
    config = cfg.default_tpu_config(v, k, logits.dtype)
  # Voxel blocks first: megacore chips split the leading parallel axis, and a batch
  # of 1-2 volumes would leave a core idle.
  grid = (pl.cdiv(x.shape[2], config.block_rows), n)
  x_spec = pl.BlockSpec((None, k, config.block_rows, _LANES), lambda j, i: (i, 0, j, 0))
  lab_spec = pl.BlockSpec((None, config.block_rows, _LANES), lambda j, i: (i, j, 0))
  g = jnp.stack([g_intersection.reshape(-1), g_pred_sum.reshape(-1)]).astype(jnp.float32)
  kernel = functools.partial(_bwd_kernel, squared=squared, activation=activation,
                             num_voxels=v, num_classes=k, block_rows=config.block_rows)
  dx = pl.pallas_call(
      kernel,
      grid=grid,
      in_specs=[pl.BlockSpec(memory_space=pltpu.SMEM), x_spec, lab_spec],
      out_specs=x_spec,
      out_shape=jax.ShapeDtypeStruct(x.shape, logits.dtype),
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
      interpret=interpret,
      name="soft_dice_stats_bwd",
  )(g, x, lab)
  dx = dx.reshape(n, k, -1)[:, :, :v]
  return jnp.swapaxes(dx, 1, 2).reshape(logits.shape)
