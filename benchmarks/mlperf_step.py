"""The MLPerf 3D U-Net training step, timed on this machine's device against PyTorch.

  python -m benchmarks.mlperf_step [--patch 128] [--batch 2] [--kernels auto,xla]
      [--dtype bfloat16] [--steps 5] [--torch] [--filters 32,64,128,256,320] [--json OUT]

medjax's step is the run's (`experiments/configs/mlperf_unet3d_kits19.py`: the
`MLPerfUNet3D`, Dice+CE of the reference, SGD with Nesterov momentum 0.9 at lr
0.8) through `medjax.train.step.make_train_step` on one device, on a fixed random
batch; for each `--kernels` it reports the compile time, the median step time
(quartiles, range) after `--warmup` steps, samples/s, the compiled program's
memory (`memory_analysis()`) and the device's peak memory (`memory_stats()`,
GPU/TPU). `--torch`: the reference model and step in PyTorch on the same device
(`benchmarks.torch_mlperf_unet3d.bench_step`; bf16 autocast on CUDA when
`--dtype bfloat16`), and the ratio of the step times.

The abstract step (`abstract_step`) is what `benchmarks.mlperf_predict` compiles
for device-less H100 and TPU targets.
"""
from __future__ import annotations

import datetime
import json
import platform
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from benchmarks.timing import spread
from experiments.configs import mlperf_unet3d_kits19
from medjax import parallel
from medjax.train import loop
from medjax.train.model_factory import build_model
from medjax.train.optim import make_optimizer
from medjax.train.state import TrainState
from medjax.train.step import make_train_step


def step_config(*, patch: int = 128, batch: int = 2, kernels: str = "auto",
                dtype: str = "bfloat16", filters: Sequence[int] = (32, 64, 128, 256, 320)
                ) -> ml_collections.ConfigDict:
  """The MLPerf config with the step's shape and implementation (learning rate constant:
  the warm-up changes no cost)."""
  c = mlperf_unet3d_kits19.get_config()
  c.patch_size = (patch,) * 3
  c.global_batch_size = batch
  c.kernels, c.dtype = kernels, dtype
  c.model.filters = tuple(filters)
  c.optimizer.warmup_steps = 0
  return c


def train_step_and_state(config: ml_collections.ConfigDict, dp: parallel.DataParallel,
                         abstract: bool = False):
  """`(jitted SPMD step, state)`: the state on the host, or as ShapeDtypeStructs."""
  model = build_model(config, training=True)
  tx, _ = make_optimizer(config.optimizer, 1000)
  shape = (1,) + tuple(config.patch_size) + (1,)

  def init():  # "rbg" keys: XLA compiles threefry slowly on CPU; the values do not matter
    variables = model.init(jax.random.key(0, impl="rbg"), jnp.zeros(shape, jnp.float32),
                           train=False)
    return TrainState.create(params=variables["params"], batch_stats={}, tx=tx)

  state = jax.eval_shape(init) if abstract else jax.device_get(jax.jit(init)())
  step = dp.spmd(make_train_step(model, loop.build_loss(config), seed=0),
                 batch_argnums=(1,), donate_argnums=(0,))
  return step, state


def abstract_step(config: ml_collections.ConfigDict, devices) -> Any:
  """The step lowered for `devices` (compile-only ones too) with abstract inputs:
  a global batch of `config.global_batch_size` split over them."""
  dp = parallel.DataParallel("shard_map", devices=list(devices))
  step, state = train_step_and_state(config, dp, abstract=True)
  rep = jax.sharding.NamedSharding(dp.mesh, jax.sharding.PartitionSpec())
  split = jax.sharding.NamedSharding(dp.mesh, jax.sharding.PartitionSpec(parallel.AXIS))
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)
  shape = (int(config.global_batch_size),) + tuple(config.patch_size)
  batch = {"image": jax.ShapeDtypeStruct(shape + (1,), jnp.float32, sharding=split),
           "label": jax.ShapeDtypeStruct(shape, jnp.uint8, sharding=split)}
  return step.lower(state, batch)


def _memory(compiled) -> Optional[dict]:
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend has it
    return None
  return None if m is None else {k: int(getattr(m, k)) for k in (
      "temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")
      if hasattr(m, k)}


def bench_medjax(config: ml_collections.ConfigDict, *, steps: int = 5, warmup: int = 2
                 ) -> dict[str, Any]:
  """Compile and time the step on the first device (module docstring)."""
  device = jax.devices()[0]
  dp = parallel.DataParallel("shard_map", devices=[device])
  step, state = train_step_and_state(config, dp)
  rng = np.random.default_rng(0)
  shape = (int(config.global_batch_size),) + tuple(config.patch_size)
  batch = dp.shard_batch({"image": rng.normal(size=shape + (1,)).astype(np.float32),
                          "label": rng.integers(0, 3, size=shape).astype(np.uint8)})
  dstate = dp.replicate(state)
  t = time.perf_counter()
  compiled = step.lower(dstate, batch).compile()
  compile_s = time.perf_counter() - t
  for _ in range(warmup):
    dstate, metrics = compiled(dstate, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    dstate, metrics = compiled(dstate, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  med = float(np.median(times))
  stats = device.memory_stats() or {}
  return {"framework": "medjax", "jax": jax.__version__, "device": device.device_kind,
          "kernels": config.kernels, "dtype": config.dtype, "patch": config.patch_size[0],
          "batch": int(config.global_batch_size), "compile_s": compile_s, "step_s": med,
          **spread(times, prefix="step_"), "samples_per_s": int(config.global_batch_size) / med,
          "loss": float(np.asarray(metrics["loss"]).reshape(-1)[0]),
          "compiled_memory": _memory(compiled),
          "peak_device_bytes": stats.get("peak_bytes_in_use")}


FLAGS = flags.FLAGS


def define_flags(values: flags.FlagValues = FLAGS) -> None:
  """The command line's flags, on `values` (defined when run as a program, so that importing
  this module next to other benchmarks defines no flag twice)."""
  flags.DEFINE_integer("patch", 128, "cubic patch size", flag_values=values)
  flags.DEFINE_integer("batch", 2, "samples per step (one device)", flag_values=values)
  flags.DEFINE_list("kernels", ["auto", "xla"], "medjax kernel switches to time",
                    flag_values=values)
  flags.DEFINE_string("dtype", "bfloat16", "medjax compute dtype (and PyTorch autocast)",
                      flag_values=values)
  flags.DEFINE_list("filters", ["32", "64", "128", "256", "320"], "the network's filters",
                    flag_values=values)
  flags.DEFINE_integer("steps", 5, "timed steps", flag_values=values)
  flags.DEFINE_integer("warmup", 2, "untimed steps first", flag_values=values)
  flags.DEFINE_bool("torch", False, "also time the PyTorch reference step", flag_values=values)
  flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (CPU; 0: its default)",
                       flag_values=values)
  flags.DEFINE_string("json", None, "write the rows to this JSON file (rewritten after each row)",
                      flag_values=values)


def main(argv) -> None:
  del argv
  filters = tuple(int(f) for f in FLAGS.filters)
  result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.node(), "processor": platform.processor(),
            "devices": [d.device_kind for d in jax.devices()], "rows": []}

  def emit(row):
    result["rows"].append(row)
    print(json.dumps(row), flush=True)
    if FLAGS.json:
      with open(FLAGS.json, "w") as f:
        json.dump(result, f, indent=1)

  result["filters"] = list(filters)
  for kernels in FLAGS.kernels:
    config = step_config(patch=FLAGS.patch, batch=FLAGS.batch, kernels=kernels,
                         dtype=FLAGS.dtype, filters=filters)
    emit(bench_medjax(config, steps=FLAGS.steps, warmup=FLAGS.warmup))
  if FLAGS.torch:
    from benchmarks import torch_mlperf_unet3d  # pylint: disable=import-outside-toplevel
    row = torch_mlperf_unet3d.bench_step(patch=FLAGS.patch, batch=FLAGS.batch, steps=FLAGS.steps,
                                         warmup=FLAGS.warmup, amp=FLAGS.dtype == "bfloat16",
                                         threads=FLAGS.torch_threads, filters=filters)
    for other in result["rows"]:
      other["step_s_over_torch"] = other["step_s"] / row["step_s"]
    emit(row)


if __name__ == "__main__":
  define_flags()
  app.run(main)
