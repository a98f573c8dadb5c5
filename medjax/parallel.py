"""Device mesh, data-parallel wrappers and multi-host start-up.

A training step is written once, as a per-device SPMD function whose
collectives name the mesh axis ``'data'``. `spmd` runs it either under
`jax.jit` + `jax.shard_map` over a `Mesh` of every device in every process
(the default) or under `jax.pmap` over the local devices; both give the same
numbers. Multi-host runs call `jax.distributed.initialize` (JAX's own
multi-controller runtime; on CPU its gloo collectives).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from medjax.errors import InputError

AXIS = "data"
PARALLEL_MODES = ("shard_map", "pmap")

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


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh with axis 'data' over every device of every process."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def check_parallel(mode: str) -> str:
  if mode not in PARALLEL_MODES:
    raise InputError(f"config.parallel={mode!r}: expected one of {', '.join(PARALLEL_MODES)}")
  return mode


class DataParallel:
  """Places state and batches, and compiles per-device SPMD functions.

  Attributes:
    mode: "shard_map" (jit + shard_map over a global mesh) or "pmap".
    mesh: the global mesh (shard_map mode).
  """

  def __init__(self, mode: str = "shard_map", devices=None):
    self.mode = check_parallel(mode)
    self.mesh = make_mesh(devices)
    self.num_devices = self.mesh.devices.size
    self.num_local_devices = (jax.local_device_count() if devices is None else
                              sum(d.process_index == jax.process_index() for d in devices))
    if mode == "pmap" and devices is not None:
      raise ValueError("pmap mode runs on every local device; devices= is for shard_map")

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
    sharding = NamedSharding(self.mesh, P(AXIS))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)

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
                           check_vma=False)(*args)
    return jax.jit(wrapped, donate_argnums=donate_argnums)


def global_mean(x: jax.Array) -> jax.Array:
  """Mean over the 'data' axis (inside an `spmd` function)."""
  return jax.lax.pmean(x, AXIS)


def device_index() -> jax.Array:
  """This device's index along 'data' (inside an `spmd` function)."""
  return jax.lax.axis_index(AXIS)


__all__ = ["AXIS", "DataParallel", "init_distributed", "make_mesh", "global_mean",
           "device_index", "check_parallel"]
