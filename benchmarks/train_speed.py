"""How fast a config trains: the measurements behind `python -m benchmarks.bench_train`.

`bench_train(config, ...)` times, in one process on the default device:

* the parameter initialisation (`init_s`, its compilation included; served
  by the user's persistent compilation cache when that holds it);
* the real training step of the config (`medjax.train.step.make_train_step`:
  model, loss, optimizer, all devices through `config.parallel`) on a fixed
  random batch of `config.global_batch_size` patches: compile time cold (an
  empty persistent compilation cache) and warm (the same program loaded from
  that cache after `jax.clear_caches()`, as a second launch would), then the
  median step time over `steps` steps after `warmup` steps, with the quartiles
  and the range, as steps/s and voxels/s;
* the compiled step's memory (`memory_analysis()`: temporaries, arguments,
  outputs), the bytes the forward pass saves for the backward pass
  (`saved_residual_bytes`, what `config.remat` shrinks), the peak host RSS (`resource.getrusage`) and the device's
  `memory_stats()` where the backend has them (GPU/TPU; None on CPU);
* the input pipeline alone: batches/s of the task's `train_batches` on the
  train split (after a first batch), and its ratio to the training steps/s;
* sliding-window inference on the test split (`window_predictor`, the
  config's overlap, blending and batch size): volumes per minute after one
  warm-up volume;
* with `torch=True`, the same model (U-Net or ResNet), loss and Adam step in
  PyTorch on a batch of the same shape (`benchmarks.torch_unet.build_model`),
  and the ratio of the step times.

Numbers from shared machines are noisy: compare ratios measured in one run.
"""
from __future__ import annotations

import ast
import datetime
import os
import platform
import resource
import tempfile
import time
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np

from benchmarks import timing, torch_unet, usage
from medjax import host_memory
from medjax.errors import InputError
from medjax.inference.run_predictor import window_predictor
from medjax.train import compile_cache, config_check, loop, tasks
from medjax.train.config_data import load_split
from medjax.train.model_factory import build_model
from medjax.train.step import supervised_loss

TORCH_MODELS = ("unet", "resnet")  # the models `torch_unet.build_model` transcribes


def apply_sets(config: ml_collections.ConfigDict, sets: Sequence[str]) -> None:
  """Applies `FIELD=VALUE` overrides in place (`model.features=16,32,64,128`,
  `model.kernel_sizes=None`, `dtype=bfloat16`); VALUE is a Python literal or a
  bare string."""
  for spec in sets:
    field, sep, text = spec.partition("=")
    if not sep or not field:
      raise InputError(f"--set={spec!r}: expected FIELD=VALUE")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    if isinstance(value, list):
      value = tuple(value)
    *parents, leaf = field.split(".")
    node = config
    try:
      for p in parents:
        node = node[p]
      node[leaf]  # pylint: disable=pointless-statement  # must exist
      if isinstance(node[leaf], float) and isinstance(value, int):
        value = float(value)
      node[leaf] = value
    except (KeyError, AttributeError, TypeError) as e:
      raise InputError(f"--set={spec!r}: {str(e).splitlines()[0] or 'no such config field'}") from None


def _random_batch(config: ml_collections.ConfigDict, task, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  shape = (int(config.global_batch_size),) + tuple(int(s) for s in config.patch_size)
  image = rng.normal(size=shape + (int(config.get("in_channels", 1)),)).astype(np.float32)
  if config.task == "segmentation":
    label = rng.integers(0, int(config.num_classes), size=shape).astype(np.int32)
    return {"image": image, "label": label}
  label = rng.integers(0, int(config.num_classes), size=shape[:1]).astype(np.int32)
  return {"image": image, config.get("label_key", "label"): label, "label": label}


def _memory(compiled) -> Optional[dict]:
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend reports it
    return None
  if m is None:
    return None
  return {k: int(getattr(m, k)) for k in ("temp_size_in_bytes", "argument_size_in_bytes",
                                          "output_size_in_bytes", "generated_code_size_in_bytes")
          if hasattr(m, k)}


def saved_residual_bytes(config: ml_collections.ConfigDict, model, loss_fn, variables: dict,
                         batch: dict) -> int:
  """Bytes the forward pass keeps for the backward pass (`jax.vjp` residuals of the
  loss of one device's batch), found by shape inference: what rematerialisation shrinks."""
  model = model.clone(bn_axis_name=None)  # statistics of one device: no mesh axis here
  mutable = ["batch_stats"] if variables.get("batch_stats") else []

  def residuals_of(variables):  # all variables traced: they may be shapes only (eval_shape)
    def loss(params):
      out = model.apply({**variables, "params": params}, batch["image"], train=True,
                        rngs={"dropout": jax.random.key(0)}, mutable=mutable)[0]
      return supervised_loss(loss_fn, out, batch["label"])
    return jax.vjp(loss, variables["params"])[1]

  residuals = jax.eval_shape(residuals_of, variables)
  return int(sum(np.prod(r.shape) * r.dtype.itemsize for r in jax.tree.leaves(residuals)))


def time_train_step(config: ml_collections.ConfigDict, *, steps: int, warmup: int = 1,
                    cache_timing: bool = True) -> dict:
  """Compile (cold, warm cache) and step times of the config's training step (see module doc).

  The model, loss, optimizer, augmentation, initial state and SPMD step are the
  training loop's own (`medjax.train.loop.setup`). Each timed step also reports
  its CPU time and page faults (`benchmarks.usage`): `user_s_median`,
  `sys_s_median`, `minor_faults_median`, and `rss_after_steps_mb` (the memory the
  process keeps between steps). `cache_timing=False` compiles once, without
  timing the persistent cache."""
  t0 = time.perf_counter()
  run = loop.setup(config)
  init_s = time.perf_counter() - t0  # parameter initialisation, its compile included
  task, dp, model, loss_fn, state = run.task, run.dp, run.model, run.loss_fn, run.state
  params = int(sum(np.prod(p.shape) for p in jax.tree.leaves(state.params)))
  step_fn = run.train_step
  dstate = dp.replicate(state)
  batch = dp.shard_batch(_random_batch(config, task, config.seed))
  out: dict[str, Any] = {"params": params, "num_devices": dp.num_devices, "init_s": init_s}
  if task.objective(config, loss_fn) is None:
    host_batch = _random_batch(config, task, config.seed)
    one_device = {k: v[:config.global_batch_size // dp.num_data] for k, v in host_batch.items()}
    out["saved_residual_bytes"] = saved_residual_bytes(
        config, model, loss_fn, {"params": state.params, "batch_stats": state.batch_stats},
        one_device)
  if cache_timing:
    compiled = _compile_cold_and_warm(config, step_fn, (dstate, batch), out)
  else:
    t0 = time.perf_counter()
    compiled = step_fn.lower(dstate, batch).compile()
    out["compile_s"] = time.perf_counter() - t0
  out["compiled_memory"] = _memory(compiled)

  def run_step():
    nonlocal dstate
    dstate, metrics = compiled(dstate, batch)
    jax.block_until_ready(metrics)

  out["first_step_s"] = usage.timed(run_step)["wall_s"]
  for _ in range(warmup):
    run_step()
  records = [usage.timed(run_step) for _ in range(steps)]
  times = np.asarray([r["wall_s"] for r in records])
  voxels = int(config.global_batch_size) * int(np.prod(config.patch_size))
  out.update(timing.spread(times, prefix="step_"), steps=steps, steps_per_s=1.0 / float(np.median(times)),
             voxels_per_step=voxels, voxels_per_s=voxels / float(np.median(times)),
             **usage.summary(records), rss_after_steps_mb=usage.rss_mb(),
             step_times_s=times.tolist())
  out["state"] = dp.unreplicate(dstate)
  return out


def _compile_cold_and_warm(config: ml_collections.ConfigDict, step_fn, args: tuple,
                           out: dict):
  """Compiles `step_fn(*args)` with an empty persistent cache, then again from that
  cache after `jax.clear_caches()`; records both times in `out`."""
  previous = {"compilation_cache": config.get("compilation_cache", True),
              "compilation_cache_dir": config.get("compilation_cache_dir", "")}
  with tempfile.TemporaryDirectory() as cache:
    compile_cache.setup(ml_collections.ConfigDict(
        {"compilation_cache": True, "compilation_cache_dir": cache}))
    for which in ("cold", "warm"):
      if which == "warm":
        jax.clear_caches()  # a new process: nothing compiled in memory, the disk cache full
      t0 = time.perf_counter()
      compiled = step_fn.lower(*args).compile()
      out[f"compile_{which}_s"] = time.perf_counter() - t0
    out["cache_entries"] = len(compile_cache.cache_entries(cache))
  compile_cache.setup(ml_collections.ConfigDict(previous))
  return compiled


def time_input(config: ml_collections.ConfigDict, *, batches: int) -> dict:
  """Batches/s of the task's `train_batches` on the train split, after the first batch;
  `warm_batches_per_s` over the second half alone (the case cache filled by then
  when the dataset fits it: the rate of the rest of a run)."""
  task = tasks.get_task(config.task)
  source = load_split(config, "train")
  it = iter(task.train_batches(config, source, start_step=0, process_index=0, process_count=1))
  next(it)
  times = []
  t0 = time.perf_counter()
  for _ in range(batches):
    try:
      next(it)
    except StopIteration:
      break
    times.append(time.perf_counter() - t0)
  n = len(times)
  seconds = times[-1] if times else 0.0
  half = n // 2
  warm = (n - half) / (times[-1] - times[half - 1]) if half and times[-1] > times[half - 1] else None
  return {"batches": n, "seconds": seconds, "batches_per_s": n / seconds if seconds else None,
          "warm_batches_per_s": warm, "workers": int(config.get("data_workers", 0))}


def time_inference(config: ml_collections.ConfigDict, variables: dict, *, volumes: int) -> dict:
  """Sliding-window inference on the first `volumes` + 1 test volumes (the first is warm-up)."""
  source = load_split(config, "test")
  count = min(len(source), volumes + 1)
  if count < 2:
    return {"volumes": 0, "volumes_per_min": None}
  predictor = window_predictor(config, build_model(config, training=False), variables)
  images = (np.asarray(source[i]["image"], np.float32)[..., None] for i in range(count))
  shapes = []

  def predict_next():
    image = next(images)
    shapes.append(list(image.shape[:-1]))
    return predictor(image)

  _, times = timing.timed_calls(predict_next, reps=count - 1, warmup=1, sync=np.asarray)
  median = timing.spread(times)["median_s"]
  return {"volumes": len(times), "volume_shapes": shapes[1:], "seconds_per_volume_median": median,
          "seconds_per_volume": [float(t) for t in times], "volumes_per_min": 60.0 / median}


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def bench_train(config: ml_collections.ConfigDict, *, steps: int = 5, warmup: int = 1,
                input_batches: int = 20, inference_volumes: int = 2, torch: bool = False,
                command: str = "") -> dict:
  """All the measurements of the module docstring, as one JSON-able dict."""
  config_check.validate(config)
  tasks.get_task(config.task).validate(config)
  if torch:
    torch_unet.require_torch()
    if config.model.name not in TORCH_MODELS:
      raise InputError(f"--torch: model.name={config.model.name!r} has no PyTorch baseline "
                       f"(expected one of {', '.join(TORCH_MODELS)})")
  device = jax.devices()[0]
  result: dict[str, Any] = {
      "command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "machine": {"platform": device.platform, "device": str(getattr(device, "device_kind", device)),
                  "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                  "jax": jax.__version__,
                  # medjax.host_memory's heap settings, else experiments/host_allocator.py's
                  # glibc.malloc.hugetlb=1 (or neither)
                  "host_memory": host_memory.status(),
                  "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")},
      "config": {"model": config.model.to_dict(), "kernels": config.kernels,
                 "dtype": config.get("dtype", "float32"), "remat": bool(config.get("remat", False)),
                 "remat_policy": config.get("remat_policy", ""), "loss": config.loss.to_dict(),
                 "global_batch_size": int(config.global_batch_size),
                 "patch_size": [int(s) for s in config.patch_size],
                 "parallel": config.parallel, "data_workers": int(config.get("data_workers", 0))},
  }
  train = time_train_step(config, steps=steps, warmup=warmup)
  state = train.pop("state")
  result["train"] = train
  result["memory"] = {"peak_rss_mb_after_train": _peak_rss_mb(),
                      "device_memory_stats": device.memory_stats()}
  result["input"] = time_input(config, batches=input_batches)
  if result["input"]["batches_per_s"]:
    result["input"]["ratio_to_training"] = result["input"]["batches_per_s"] / train["steps_per_s"]
  result["inference"] = (time_inference(config, state.variables(), volumes=inference_volumes)
                         if config.task == "segmentation" else None)
  result["memory"]["peak_rss_mb"] = _peak_rss_mb()
  result["torch"] = None
  if torch:
    model_cfg = config.model.to_dict()
    result["torch"] = torch_unet.time_training(
        model_cfg, config.loss.to_dict(), in_channels=int(config.get("in_channels", 1)),
        num_classes=int(config.num_classes),
        batch_shape=(int(config.global_batch_size),) + tuple(config.patch_size),
        learning_rate=float(config.optimizer.learning_rate), steps=steps, warmup=warmup,
        seed=int(config.seed))
    result["torch"]["same_parameters"] = result["torch"]["params"] == train["params"]
    result["torch_ratio"] = train["step_median_s"] / result["torch"]["step_median_s"]
  return result
