"""Device mesh, data-parallel wrappers and multi-host start-up.

A training step is written once, as a per-device SPMD function whose
collectives name the mesh axis ``'data'``. `spmd` runs it either under
`jax.jit` + `jax.shard_map` over a `Mesh` of every device in every process
(the default) or under `jax.pmap` over the local devices; both give the same
numbers. Multi-host runs call `jax.distributed.initialize` (JAX's own
multi-controller runtime; on CPU its gloo collectives).

A mesh may also have a ``'spatial'`` axis beside ``'data'`` (`config.mesh`,
e.g. `{"data": -1, "spatial": 4}`): each data group of `spatial` devices
holds one share of the batch, with the depth of every patch split over the
group's devices (`medjax.spatial`). The SPMD function is then manual over
'data' only (`jax.shard_map(axis_names={'data'})`): inside it, arrays are
whole along depth and sharded over 'spatial' by XLA, and the step runs the
model on the slabs through `medjax.spatial.on_slabs`.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from medjax import spatial
from medjax.errors import InputError

AXIS = "data"
SPATIAL = spatial.AXIS
PARALLEL_MODES = ("shard_map", "pmap")
DEFAULT_MESH = {AXIS: -1, SPATIAL: 1}

_ENV_KEYS = ("MEDJAX_COORDINATOR_ADDRESS", "MEDJAX_NUM_PROCESSES", "MEDJAX_PROCESS_ID")


def init_distributed(coordinator_address: Optional[str] = None,
                     num_processes: Optional[int] = None,
                     process_id: Optional[int] = None) -> bool:
  """Starts JAX's multi-controller runtime when a multi-process run is asked for.

  Arguments not given are read from the environment
  (`MEDJAX_COORDINATOR_ADDRESS`, `MEDJAX_NUM_PROCESSES`, `MEDJAX_PROCESS_ID`).
  With no coordinator address, or a single process, this is a no-op and
  returns False. On CPU the cross-process collectives use gloo.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get(_ENV_KEYS[0]) or None
  if num_processes is None and env.get(_ENV_KEYS[1]):
    num_processes = int(env[_ENV_KEYS[1]])
  if process_id is None and env.get(_ENV_KEYS[2]):
    process_id = int(env[_ENV_KEYS[2]])
  if not coordinator_address or (num_processes or 1) <= 1:
    return False
  if process_id is None or not 0 <= process_id < num_processes:
    raise InputError(f"--process_id={process_id}: expected an integer in [0, {num_processes})")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True


def mesh_shape(mesh: Optional[Mapping[str, int]], num_devices: int) -> tuple[int, int]:
  """`config.mesh` (`{"data": D, "spatial": S}`, D = -1 fills the devices) -> (D, S).

  Raises:
    InputError: an unknown axis, a size that is not a positive integer, a
      spatial size that does not divide the device count, or sizes whose
      product is not the device count (one line naming the field and the valid values).
  """
  mesh = dict(DEFAULT_MESH if mesh is None else mesh)
  unknown = sorted(set(mesh) - set(DEFAULT_MESH))
  if unknown:
    raise InputError(f"config.mesh: unknown axis {unknown[0]!r}; expected the axes "
                     f"{AXIS!r} and {SPATIAL!r}, e.g. {{'data': -1, 'spatial': 2}}")
  data, size = mesh.get(AXIS, -1), mesh.get(SPATIAL, 1)
  valid = ", ".join(str(d) for d in range(1, num_devices + 1) if num_devices % d == 0)
  if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
    raise InputError(f"config.mesh.spatial={size!r}: expected a positive integer that divides "
                     f"the {num_devices} devices: one of {valid}")
  if num_devices % size:
    raise InputError(f"config.mesh.spatial={size} does not divide the {num_devices} devices; "
                     f"expected one of {valid}")
  if data == -1:
    return num_devices // int(size), int(size)
  if not isinstance(data, (int, np.integer)) or isinstance(data, bool) or data < 1:
    raise InputError(f"config.mesh.data={data!r}: expected -1 (all devices left) or a positive "
                     "integer")
  if data * size != num_devices:
    raise InputError(f"config.mesh={{'data': {data}, 'spatial': {size}}} asks for "
                     f"{data * size} devices but there are {num_devices}; expected data * spatial "
                     f"= {num_devices} (data=-1 fills them)")
  return int(data), int(size)


def make_mesh(devices=None, spatial_size: int = 1) -> Mesh:
  """A mesh over every device of every process: 1-D with axis 'data', or with
  `spatial_size > 1` 2-D `('data', 'spatial')`, consecutive devices (those of one
  host first) forming one spatial group."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  if spatial_size == 1:
    return Mesh(devices, (AXIS,))
  return Mesh(devices.reshape(-1, spatial_size), (AXIS, SPATIAL))


def check_parallel(mode: str) -> str:
  if mode not in PARALLEL_MODES:
    raise InputError(f"config.parallel={mode!r}: expected one of {', '.join(PARALLEL_MODES)}")
  return mode


class DataParallel:
  """Places state and batches, and compiles per-device SPMD functions.

  Attributes:
    mode: "shard_map" (jit + shard_map over a global mesh) or "pmap".
    mesh: the global mesh (shard_map mode).
    num_data: devices along 'data' (the batch is split into this many shares).
    partition: the `medjax.spatial.Partition` of the patches' depth over
      'spatial' (None without a spatial axis): "auto" with `kernels="xla"`
      (XLA partitions), "manual" otherwise (the Pallas kernels need slabs).
  """

  def __init__(self, mode: str = "shard_map", devices=None, *,
               mesh: Optional[Mapping[str, int]] = None, kernels: str = "auto"):
    self.mode = check_parallel(mode)
    count = len(jax.devices()) if devices is None else len(devices)
    self.num_data, size = mesh_shape(mesh, count)
    if size > 1 and mode == "pmap":
      raise InputError(f"config.mesh.spatial={size}: a spatial axis needs "
                       "config.parallel='shard_map' (pmap maps over 'data' only)")
    self.mesh = make_mesh(devices, size)
    self.partition = (None if size == 1 else
                      spatial.Partition(size, "auto" if kernels == "xla" else "manual"))
    self.num_devices = self.mesh.devices.size
    self.num_local_devices = (jax.local_device_count() if devices is None else
                              sum(d.process_index == jax.process_index() for d in devices))
    if mode == "pmap" and devices is not None:
      raise ValueError("pmap mode runs on every local device; devices= is for shard_map")

  @classmethod
  def from_config(cls, config, devices=None) -> "DataParallel":
    """`config.parallel`, `config.mesh` (default data-parallel only) and `config.kernels`."""
    return cls(config.parallel, devices, mesh=config_mesh(config), kernels=config.kernels)

  @property
  def spatial_size(self) -> int:
    return 1 if self.partition is None else self.partition.size

  # -- placement ---------------------------------------------------------
  def replicate(self, tree: Any) -> Any:
    """Host pytree -> the placement that `spmd` functions take for state."""
    if self.mode == "pmap":
      n = self.num_local_devices  # pmap takes host arrays with a leading device axis
      return jax.tree.map(lambda x: np.ascontiguousarray(
          np.broadcast_to(np.asarray(x), (n,) + np.shape(x))), tree)
    sharding = NamedSharding(self.mesh, P())
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)

  def unreplicate(self, tree: Any) -> Any:
    """Replicated state -> host numpy pytree (identical on every process)."""
    if self.mode == "pmap":
      tree = jax.tree.map(lambda x: x[0], tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array)
                        else np.asarray(x), tree)

  def shard_batch(self, batch: dict) -> dict:
    """This process's share of the global batch -> a batch sharded over 'data'.

    In shard_map mode the result is one global array per field, built from
    every process's local rows; in pmap mode it is reshaped to
    `(local_devices, per_device, ...)`.
    """
    if self.mode == "pmap":
      n = self.num_local_devices
      return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)
    if self.partition is None:
      sharding = NamedSharding(self.mesh, P(AXIS))
      return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
    voxels = np.shape(batch["image"])[1:-1]
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        NamedSharding(self.mesh, spatial.batch_spec(x, voxels, AXIS)), x), batch)

  def shard_windows(self, x: np.ndarray) -> jax.Array:
    """Windows `(B, *S, C)` for `spmd_map`: split over 'data' when B allows it (else
    each data group takes them all), depth over 'spatial'."""
    data = AXIS if x.shape[0] % self.num_data == 0 else None
    spec = P(data, SPATIAL) if self.partition is not None else P(data)
    return jax.device_put(x, NamedSharding(self.mesh, spec))

  # -- compilation -------------------------------------------------------
  def spmd(self, fn: Callable, *, batch_argnums: tuple[int, ...] = (1,),
           donate_argnums: tuple[int, ...] = ()) -> Callable:
    """Compiles a per-device function `fn(*args)` with collectives over 'data'.

    Arguments at `batch_argnums` are split over devices; the others and all
    outputs are replicated (the function must make them so, e.g. with
    `lax.pmean`).
    """
    if self.mode == "pmap":
      return jax.pmap(fn, axis_name=AXIS, donate_argnums=donate_argnums)

    def wrapped(*args):
      in_specs = tuple(P(AXIS) if i in batch_argnums else P() for i in range(len(args)))
      return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=P(),
                           check_vma=False, **self._manual_axes())(*args)
    return jax.jit(wrapped, donate_argnums=donate_argnums)

  def spmd_map(self, fn: Callable) -> Callable:
    """Compiles `fn(replicated, batch) -> per-example outputs` (shard_map mode): the
    batch (placed by `shard_windows`) and the outputs are split over 'data' (when the
    batch divides, else computed whole by every group) and depth over 'spatial'."""

    def wrapped(tree, x):
      spec = P(AXIS) if x.shape[0] % self.num_data == 0 else P()
      return jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), spec), out_specs=spec,
                           check_vma=False, **self._manual_axes())(tree, x)
    return jax.jit(wrapped)

  def _manual_axes(self) -> dict:
    """shard_map's manual axes: every axis, or 'data' only with a spatial axis (which
    XLA partitions, or `spatial.on_slabs` maps manually)."""
    return {} if self.partition is None else {"axis_names": frozenset({AXIS})}


def config_mesh(config) -> Optional[dict]:
  """`config.mesh` as a dict (None when the config has none: data-parallel only)."""
  mesh = config.get("mesh")
  return None if mesh is None else (mesh.to_dict() if hasattr(mesh, "to_dict") else dict(mesh))


def global_mean(x: jax.Array) -> jax.Array:
  """Mean over the 'data' axis (inside an `spmd` function)."""
  return jax.lax.pmean(x, AXIS)


def device_index() -> jax.Array:
  """This device's index along 'data' (inside an `spmd` function)."""
  return jax.lax.axis_index(AXIS)


__all__ = ["AXIS", "SPATIAL", "DEFAULT_MESH", "DataParallel", "init_distributed", "make_mesh",
           "mesh_shape", "config_mesh", "global_mean", "device_index", "check_parallel"]
