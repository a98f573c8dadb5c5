"""Spatial partitioning: the depth axis of each patch split over the mesh axis 'spatial'.

A patch (or an inference window) too large for one device is cut into `size`
slabs along its depth, axis 1 of `(N, D, H, W, C)`, one slab per device of the
mesh axis 'spatial' (`medjax.parallel`: a mesh `('data', 'spatial')`). The
models are unchanged; the layers they are built from (`medjax.layers`) read the
active `Partition` while they are traced:

* ``"auto"`` (`kernels="xla"`): the model sees the whole patch. Every
  convolution's output is annotated as depth-sharded
  (`jax.lax.with_sharding_constraint`), and XLA's SPMD partitioner (GSPMD,
  Xu et al. 2021) inserts the halo exchanges of the convolutions and the
  cross-device sums of the normalisation statistics and the loss.
* ``"manual"`` (the Pallas kernels, which the partitioner cannot split): inside
  `jax.shard_map` each device holds one slab. A convolution first fetches the
  rows its window needs from the neighbouring slabs (`halo_exchange`:
  `jax.lax.ppermute` of the boundary rows; the devices at the volume's ends
  receive zeros, which is the convolution's zero padding) and then convolves
  its slab without padding along depth (`conv_input`). Instance- and
  batch-norm statistics are averaged over the axis (`norm_axis_name`), the
  losses sum their voxel statistics over it (`voxel_sum`, `voxel_mean`).
  Max pooling and the up-convolutions (window == stride) stay on the slab.

Which depths a model can split is found by tracing it once (`valid_sizes`):
every convolution, pooling and up-convolution records its depth geometry, and
`size` must cut each of them into whole slabs whose halo comes from one
neighbour only.

Reference: the halo exchange of spatially partitioned convolutions as in
GSPMD (Xu et al. 2021, "GSPMD: General and Scalable Parallelization for ML
Computation Graphs"), which uses it for the MLPerf 3D U-Net on TPU.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from medjax_kernels.conv_xla import explicit_padding

AXIS = "spatial"
MODES = ("auto", "manual")
DEPTH = 1  # the split axis of (N, D, H, W, C) activations and (N, D, H, W) labels


@dataclasses.dataclass(frozen=True)
class Partition:
  """How the depth of a patch is split while a model is traced.

  Attributes:
    size: devices along the mesh axis `axis_name` (slabs per patch).
    mode: "auto" (sharding annotations, XLA partitions) or "manual" (one slab
      per device inside `jax.shard_map`, explicit halos and sums).
    axis_name: the mesh axis.
  """
  size: int
  mode: str = "manual"
  axis_name: str = AXIS

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"mode={self.mode!r}: expected one of {', '.join(MODES)}")


@dataclasses.dataclass
class _Probe:
  """Depth geometries recorded while a model is traced on a whole patch."""
  convs: list = dataclasses.field(default_factory=list)   # (depth, window, stride, lo, hi)
  blocks: list = dataclasses.field(default_factory=list)  # (depth, factor): pool / up-conv


_ACTIVE: contextvars.ContextVar[Optional[Union[Partition, _Probe]]] = contextvars.ContextVar(
    "medjax_spatial_partition", default=None)


@contextlib.contextmanager
def partitioned(partition: Optional[Partition]) -> Iterator[None]:
  """Within the block, models traced see `partition` (None: no partition)."""
  token = _ACTIVE.set(partition)
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def current() -> Optional[Partition]:
  """The active `Partition`, or None."""
  active = _ACTIVE.get()
  return active if isinstance(active, Partition) else None


def _manual() -> Optional[Partition]:
  part = current()
  return part if part is not None and part.mode == "manual" else None


# ----------------------------------------------------------------------------- halos
def halo_exchange(x: jax.Array, before: int, after: int, *, axis_name: str = AXIS,
                  size: int) -> jax.Array:
  """Slab `(N, d, ...)` -> `(N, before + d + after, ...)` with its neighbours' rows.

  Device i gets the last `before` rows of device i-1 in front and the first
  `after` rows of device i+1 behind (`jax.lax.ppermute`; device 0 and device
  `size-1` receive zeros: the zero padding at the volume's ends). A negative
  `after` drops that many rows from the slab's end (rows no output reads).
  Inside `jax.shard_map` over `axis_name` only.
  """
  d = x.shape[DEPTH]
  if before > d or after > d:
    raise ValueError(f"a halo of {max(before, after)} rows is deeper than the slab ({d} rows)")
  parts = []
  if before > 0:
    tail = jax.lax.slice_in_dim(x, d - before, d, axis=DEPTH)
    parts.append(jax.lax.ppermute(tail, axis_name, [(i, i + 1) for i in range(size - 1)]))
  parts.append(x if after >= 0 else jax.lax.slice_in_dim(x, 0, d + after, axis=DEPTH))
  if after > 0:
    head = jax.lax.slice_in_dim(x, 0, after, axis=DEPTH)
    parts.append(jax.lax.ppermute(head, axis_name, [(i + 1, i) for i in range(size - 1)]))
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=DEPTH)


def depth_halo(depth: int, window: int, stride: int, lo: int, hi: int, size: int
               ) -> Optional[tuple[int, int]]:
  """`(before, after)` halo rows of a convolution on `size` slabs of a `depth`-deep
  volume (zero padding `lo`, `hi`), or None when the slabs cannot compute it alone:
  each slab must hold whole strides and give the same number of output rows,
  and each halo must come from the next slab only."""
  if depth % size:
    return None
  d = depth // size
  out = (depth + lo + hi - window) // stride + 1
  if d % stride or out != size * (d // stride):
    return None
  before, after = lo, window - stride - lo
  if before > d or after > d:
    return None
  return before, after


def conv_input(x: jax.Array, window: Sequence[int], strides: Sequence[int], padding
               ) -> tuple[jax.Array, Any]:
  """The input and padding of a 3D convolution under the active partition.

  No partition, or "auto": `(x, padding)` unchanged (a probe records the
  geometry). "manual": the slab with its depth halo (`halo_exchange`) and the
  explicit padding `((0, 0), (lo_h, hi_h), (lo_w, hi_w))` that makes the
  convolution of the haloed slab the slab of the whole volume's convolution.

  Raises:
    ValueError: the slabs cannot compute this convolution alone (see `depth_halo`).
  """
  active = _ACTIVE.get()
  if active is None or (isinstance(active, Partition) and active.mode == "auto"):
    return x, padding
  size = 1 if isinstance(active, _Probe) else active.size
  spatial = (x.shape[DEPTH] * size,) + tuple(x.shape[2:-1])
  pads = explicit_padding(spatial, tuple(window), tuple(strides), padding)
  (lo, hi), k, s = pads[0], int(window[0]), int(strides[0])
  if isinstance(active, _Probe):
    active.convs.append((spatial[0], k, s, lo, hi))
    return x, padding
  halo = depth_halo(spatial[0], k, s, lo, hi, size)
  if halo is None:
    raise ValueError(f"a {k}-wide stride-{s} convolution of depth {spatial[0]} cannot be "
                     f"split into {size} slabs")
  x = halo_exchange(x, *halo, axis_name=active.axis_name, size=size)
  return x, ((0, 0),) + tuple(pads[1:])


def record_block(depth: int, factor: int) -> None:
  """Notes, while a model is probed (`valid_sizes`), a layer that runs on each slab
  alone if the slab's depth is a multiple of `factor`: a pooling by `factor`, an
  up-convolution (factor 1); a no-op otherwise."""
  active = _ACTIVE.get()
  if isinstance(active, _Probe):
    active.blocks.append((int(depth), int(factor)))


def constrain(x: jax.Array) -> jax.Array:
  """Under an "auto" partition, `x` `(N, D, ...)` annotated as depth-sharded over the axis."""
  part = current()
  if part is None or part.mode != "auto" or x.ndim < 3:
    return x
  spec = P(*([None] * DEPTH + [part.axis_name] + [None] * (x.ndim - DEPTH - 1)))
  return jax.lax.with_sharding_constraint(x, spec)


# ----------------------------------------------------------------------------- reductions
def norm_axis_name(axis_name: Optional[Union[str, tuple]]) -> Optional[Union[str, tuple]]:
  """The axis names a normalisation layer averages its statistics over: `axis_name`
  (batch norm's 'data', or None) plus the spatial axis under a "manual" partition."""
  part = _manual()
  if part is None:
    return axis_name
  names = () if axis_name is None else (
      (axis_name,) if isinstance(axis_name, str) else tuple(axis_name))
  names = names + (part.axis_name,)
  return names[0] if len(names) == 1 else names


def slab_sum(partial: Any) -> Any:
  """Per-slab partial sums (a pytree) -> the whole patch's sums: `jax.lax.psum` over
  the slabs under a "manual" partition, the input itself otherwise."""
  part = _manual()
  return partial if part is None else jax.lax.psum(partial, part.axis_name)


def voxel_sum(x: jax.Array, axis: Optional[Union[int, Sequence[int]]] = None) -> jax.Array:
  """`jnp.sum(x, axis)` over the whole patch: a sum that includes the depth axis is
  also summed over the slabs under a "manual" partition."""
  return slab_sum(jnp.sum(x, axis=axis))


def voxel_mean(x: jax.Array) -> jax.Array:
  """The mean of every element of `x`, over the whole patch (all slabs)."""
  part = _manual()
  if part is None:
    return jnp.mean(x)
  return jax.lax.psum(jnp.sum(x), part.axis_name) / (x.size * part.size)


def voxel_count(n: Union[int, jax.Array]) -> Union[int, jax.Array]:
  """The number of voxels of the whole patch whose slab holds `n` (static or traced)."""
  part = _manual()
  if part is None:
    return n
  if isinstance(n, int):
    return n * part.size
  return jax.lax.psum(n, part.axis_name)


def slab_mean(tree: Any) -> Any:
  """The mean over the slabs (`jax.lax.pmean`) under a "manual" partition, else `tree`.

  The gradient of a whole-patch loss: every slab computes the same loss (from
  summed statistics), and with shard_map's collectives transposed as sums
  (`check_vma=False`), the slab gradients add up to the gradient of that loss
  once per slab; their mean is the gradient of the loss.
  """
  part = _manual()
  return tree if part is None else jax.lax.pmean(tree, part.axis_name)


def slab_key(key: jax.Array) -> jax.Array:
  """A random key of its own for each slab under a "manual" partition (dropout masks
  would otherwise repeat from slab to slab), else `key`."""
  part = _manual()
  return key if part is None else jax.random.fold_in(key, jax.lax.axis_index(part.axis_name))


def on_slabs(fn: Callable, partition: Optional[Partition], split: Sequence[Any],
             out_split: Any, *, mesh=None) -> Callable:
  """`fn(*args)` run on the depth slabs of `partition` (None: `fn` itself).

  Args:
    fn: a function of whole-patch arrays that returns whole-patch values (its
      losses and normalisation layers reduce over every slab).
    partition: "auto": `fn` is traced under the partition (its layers annotate the
      activations as depth-sharded, XLA partitions); "manual": `jax.shard_map` over
      the partition's axis, each device gets the slabs of the split arrays and
      whole copies of the others, and traces `fn` under the partition (halos,
      summed statistics).
    split: one entry per argument of `fn`, a bool or a pytree prefix of bools (a
      dict of bools for a batch dict): True for arrays `(N, D, ...)` split along D.
    out_split: the same for the outputs (e.g. False for a loss, True for logits).
    mesh: the mesh, when not called inside a `jax.shard_map` region that sets it.
  """
  if partition is None:
    return fn

  def traced(*args):
    with partitioned(partition):
      return fn(*args)

  if partition.mode == "auto":
    return traced
  spec = lambda s: P(*([None] * DEPTH + [partition.axis_name])) if s else P()
  to_specs = lambda tree: jax.tree.map(spec, tree)
  return jax.shard_map(traced, mesh=mesh, in_specs=to_specs(tuple(split)),
                       out_specs=to_specs(out_split), axis_names={partition.axis_name},
                       check_vma=False)


# ----------------------------------------------------------------------------- the model's limits
def probe(model_fn: Callable[[jax.Array], Any], shape: Sequence[int]) -> _Probe:
  """Traces `model_fn(x)` on an abstract float32 `x` of `shape` `(N, D, H, W, C)` and
  returns the depth geometry of its convolutions, poolings and up-convolutions."""
  record = _Probe()
  token = _ACTIVE.set(record)
  try:
    jax.eval_shape(model_fn, jax.ShapeDtypeStruct(tuple(shape), jnp.float32))
  finally:
    _ACTIVE.reset(token)
  return record


def splits(record: _Probe, size: int) -> bool:
  """Whether every recorded layer can run on `size` slabs of its input (always for 1)."""
  if size == 1:
    return True
  for depth, window, stride, lo, hi in record.convs:
    if depth_halo(depth, window, stride, lo, hi, size) is None:
      return False
  return all(depth % size == 0 and (depth // size) % factor == 0
             for depth, factor in record.blocks)


def valid_sizes(record: _Probe, depth: int, limit: Optional[int] = None) -> list[int]:
  """The slab counts (divisors of `depth`, up to `limit`) the probed model can run on."""
  limit = depth if limit is None else min(depth, limit)
  return [n for n in range(1, limit + 1) if depth % n == 0 and splits(record, n)]


def coarsest_depth(record: _Probe) -> int:
  """The smallest depth of any recorded convolution input (the model's coarsest level)."""
  depths = [c[0] for c in record.convs] + [b[0] for b in record.blocks]
  return min(depths) if depths else 0


def is_voxel_field(x: Any, voxels: Sequence[int]) -> bool:
  """Whether a batch field is voxel-wise: its dims after the batch lead with the
  patch's spatial shape `voxels` (image `(B, D, H, W, C)`, labels `(B, D, H, W)`)."""
  shape = tuple(getattr(x, "shape", ()))
  return len(voxels) > 0 and shape[1:1 + len(voxels)] == tuple(voxels)


def batch_spec(x: Any, voxels: Sequence[int], data_axis: Optional[str]) -> P:
  """The spec of one batch field on a `('data', 'spatial')` mesh: `P(data_axis,
  'spatial')` for a voxel-wise field (`is_voxel_field`), `P(data_axis)` for any other
  (a case id, an image-level label)."""
  if not getattr(x, "shape", ()):
    return P()
  return P(data_axis, AXIS) if is_voxel_field(x, voxels) else P(data_axis)


__all__ = ["AXIS", "Partition", "partitioned", "current", "halo_exchange", "depth_halo",
           "conv_input", "record_block", "constrain", "norm_axis_name", "slab_sum", "voxel_sum",
           "voxel_mean", "voxel_count", "slab_mean", "slab_key", "on_slabs", "probe", "splits", "valid_sizes", "coarsest_depth",
           "is_voxel_field", "batch_spec"]
