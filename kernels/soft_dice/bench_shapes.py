"""Named benchmark shapes for soft-Dice statistics, taken from real segmentation workloads.

`SHAPES` lists (name, logits_shape_without_K, K, dtype): the output layer of a 3D U-Net
(Çiçek 2016) / V-Net (Milletari 2016) on 128³ and 96³ patches, batch 2, with 2 classes
(foreground/background, V-Net's prostate task), 3 (organ + tumour, e.g. liver/LiTS,
kidney/KiTS) or 14 (BTCV multi-organ: 13 organs + background); and a 2D U-Net on 512²
slices, batch 16, 2 classes. `make_inputs` builds random logits and labels for one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

SHAPES: list[tuple[str, tuple[int, ...], int, str]] = [
    (f"{net}_{side}^3_b2_k{k}_{dt}", (2, side, side, side), k, dt)
    for net, side in (("unet3d", 128), ("vnet", 96))
    for k in (2, 3, 14)
    for dt in ("float32", "bfloat16")
] + [
    ("unet2d_512^2_b16_k2_float32", (16, 512, 512), 2, "float32"),
    ("unet2d_512^2_b16_k2_bfloat16", (16, 512, 512), 2, "bfloat16"),
]


# The training pipeline's label dtype (`medjax.data.pipeline.loaders.train_batches`: uint8 for up to
# 256 classes), so the benchmarks and the compile check read what training reads.
LABEL_DTYPE = "uint8"


def make_inputs(shape: tuple[int, ...], K: int, dtype: str | jnp.dtype = "float32",
                seed: int = 0, label_dtype: str | jnp.dtype = LABEL_DTYPE
                ) -> tuple[jax.Array, jax.Array]:
  """Random logits (*shape, K) ~ 2·N(0, 1) in `dtype` and integer labels `shape` in [0, K)
  (`label_dtype`, uint8 by default as in training).

  Labels are drawn from a skewed distribution (background ~70 %) as in medical volumes;
  never zeros, so no kernel can shortcut the work.
  """
  k_logits, k_labels = jax.random.split(jax.random.key(seed))
  logits = (2.0 * jax.random.normal(k_logits, (*shape, K), jnp.float32)).astype(dtype)
  weights = jnp.full((K,), 0.3 / max(K - 1, 1)).at[0].set(0.7 if K > 1 else 1.0)
  labels = jax.random.categorical(k_labels, jnp.log(weights), shape=shape).astype(label_dtype)
  return logits, labels


def bytes_moved(shape: tuple[int, ...], K: int, dtype: str | jnp.dtype,
                backward: bool = False, label_dtype: str | jnp.dtype = LABEL_DTYPE) -> int:
  """HBM bytes of the fused kernel's floor: logits + labels read once (forward);
  plus dlogits written (backward)."""
  voxels = 1
  for s in shape:
    voxels *= s
  itemsize = jnp.dtype(dtype).itemsize
  return voxels * (K * itemsize * (2 if backward else 1) + jnp.dtype(label_dtype).itemsize)
