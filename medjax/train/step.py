"""The per-device SPMD training step, written once for shard_map and pmap.

Each device computes the loss and gradients on its share of the global batch;
gradients, loss and BatchNorm statistics are averaged over the mesh axis
'data' (BatchNorm layers also synchronise their batch statistics over 'data'
in the forward pass). A step whose loss or gradients are not finite leaves
the state unchanged and reports `finite=False`, so the last good parameters
survive and the loop can stop cleanly.

With an `Augmentation` (`medjax.data.pipeline.augment`), the step first augments its
share of the batch on the device; sample i of the global batch of step t is
augmented from `(seed, t, i)`, so the augmented global batch does not depend
on the number of devices.

With a spatial axis in the mesh (`partition`, `medjax.spatial`), each data
group's share is whole along depth inside the step, and the model, the loss and
their gradients run on the depth slabs of the group's devices
(`spatial.on_slabs`): the same step, the same numbers.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from medjax import parallel, spatial
from medjax.data.pipeline import augment as augment_lib
from medjax.train.state import TrainState

LossFn = Callable[[jax.Array, jax.Array], jax.Array]

# Folded into the seed's key for the augmentation stream (dropout uses the key itself).
AUGMENT_STREAM = 0x617567


@dataclasses.dataclass(frozen=True)
class Objective:
  """A task's own training loss, replacing the loss of `batch["label"]`.

  `loss(outputs, batch) -> scalar` is applied to the outputs of
  `model.apply(variables, batch["image"], train=True, **apply_kwargs)` and may
  read any field of the batch (e.g. distillation's `batch["teacher_logits"]`).
  """
  loss: Callable[[Any, dict], jax.Array]
  apply_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def downsample_labels(labels: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Nearest-neighbour label map at a coarser `shape` (deep-supervision targets)."""
  factors = [s // t for s, t in zip(labels.shape[1:], shape)]
  index = (slice(None),) + tuple(slice(f // 2, None, f) for f in factors)
  return labels[index]


def supervised_loss(loss_fn: LossFn, outputs, labels: jax.Array) -> jax.Array:
  """Loss of the logits, plus deep-supervision heads weighted 1/2^i (nnU-Net).

  `outputs` is the logits, or `(logits, [aux logits at coarser levels, finest first])`.
  """
  if not isinstance(outputs, tuple):
    return loss_fn(outputs, labels)
  logits, aux = outputs
  weights = [1.0] + [0.5 ** (i + 1) for i in range(len(aux))]
  total = loss_fn(logits, labels) * weights[0]
  for w, a in zip(weights[1:], aux):
    total = total + w * loss_fn(a, downsample_labels(labels, a.shape[1:-1]))
  return total / sum(weights)


def augment_batch(batch: dict, augmentation: augment_lib.Augmentation, *, seed: int,
                  step: jax.Array) -> dict:
  """This device's share of the batch with `image (B, *S, C)` and a voxel-wise
  `label (B, *S)` augmented (inside an `spmd` function; other fields, and
  image-level labels, unchanged).

  Sample j of device d is sample `d * B + j` of the global batch; its
  randomness is `fold_in(fold_in(fold_in(key(seed), AUGMENT_STREAM), step), d * B + j)`.
  """
  image, label = batch["image"], batch.get("label")
  n = image.shape[0]
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), AUGMENT_STREAM), step)
  index = parallel.device_index() * n + jnp.arange(n)
  voxel_labels = label is not None and label.ndim == image.ndim - 1
  image, label = augment_lib.augment(key, image, label if voxel_labels else None, augmentation,
                                     sample_index=index)
  return {**batch, "image": image, **({"label": label} if voxel_labels else {})}


def make_train_step(model: nn.Module, loss_fn: LossFn, *, seed: int,
                    objective: Optional[Objective] = None,
                    augmentation: Optional[augment_lib.Augmentation] = None,
                    partition: Optional[spatial.Partition] = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Returns the per-device `step(state, batch) -> (state, metrics)`.

  `batch` holds this device's `image (B, *S, C)` and `label (B, *S)` (plus
  whatever fields `objective` reads); the loss is
  `supervised_loss(loss_fn, outputs, batch["label"])`, or `objective`'s when
  given. With `augmentation`, image and label are first augmented on the
  device (`augment_batch`). With `partition` (`DataParallel.partition`: a mesh
  with a spatial axis) the forward and backward passes run on depth slabs
  (`spatial.on_slabs`); objectives, which reduce over voxels their own way,
  are not split. The returned metrics (`loss`, `grad_norm`, `finite`) are
  already averaged over devices.
  """
  apply_kwargs = dict(objective.apply_kwargs) if objective else {}
  base_key = jax.random.key(seed)
  if augmentation is not None and not augmentation.active:
    augmentation = None
  if partition is not None and objective is not None:
    raise ValueError("a spatial partition splits the supervised loss of batch['label'] only, "
                     "not a task objective")

  def compute_loss(params, batch_stats, batch, rng):
    variables = {"params": params}
    mutable = []
    if batch_stats:
      variables["batch_stats"] = batch_stats
      mutable = ["batch_stats"]
    outputs, updates = model.apply(variables, batch["image"], train=True,
                                   rngs={"dropout": spatial.slab_key(rng)}, mutable=mutable,
                                   **apply_kwargs)
    if objective:
      loss = objective.loss(outputs, batch)
    else:
      loss = supervised_loss(loss_fn, outputs, batch["label"])
    return loss, updates.get("batch_stats", batch_stats)

  def loss_and_grads(params, batch_stats, batch, rng):
    (loss, batch_stats), grads = jax.value_and_grad(compute_loss, has_aux=True)(
        params, batch_stats, batch, rng)
    return loss, batch_stats, spatial.slab_mean(grads)

  def step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(jax.random.fold_in(base_key, state.step), parallel.device_index())
    if augmentation is not None:
      batch = augment_batch(batch, augmentation, seed=seed, step=state.step)
    voxels = batch["image"].shape[1:-1]
    split = {k: spatial.is_voxel_field(v, voxels) for k, v in batch.items()}
    loss, batch_stats, grads = spatial.on_slabs(
        loss_and_grads, partition, (False, False, split, False), False)(
            state.params, state.batch_stats, batch, rng)
    grads, loss, batch_stats = parallel.global_mean((grads, loss, batch_stats))
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = state.apply_gradients(grads, batch_stats)
    state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    return state, {"loss": loss, "grad_norm": grad_norm, "finite": finite}

  return step


def make_predict_fn(model: nn.Module, dp: Optional[parallel.DataParallel] = None
                    ) -> Callable[[dict, jax.Array], jax.Array]:
  """`predict(variables, x) -> softmax probabilities (B, *S, K)`, jitted, eval mode.

  With `dp` whose mesh has a spatial axis, the windows `x` (numpy, or placed by
  `dp.shard_windows`) are split over the mesh: over 'data' when B divides, and
  along depth over 'spatial' (`spatial.on_slabs`), so one window larger than a
  device's memory (a whole 512^3 volume) is predicted by several devices at once;
  the probabilities come back depth-sharded.
  """

  def probabilities(variables, x):
    out = model.apply(variables, x, train=False)
    return jax.nn.softmax(out.astype(jnp.float32), axis=-1)

  if dp is None or dp.partition is None:
    return jax.jit(probabilities)
  mapped = dp.spmd_map(spatial.on_slabs(probabilities, dp.partition, (False, True), True))
  return lambda variables, x: mapped(variables, dp.shard_windows(np.asarray(x))
                                     if not isinstance(x, jax.Array) else x)


__all__ = ["Objective", "make_train_step", "augment_batch", "make_predict_fn", "supervised_loss", "downsample_labels"]
