"""`train_and_evaluate(config, workdir)`: the whole run, resumable.

Order of work: check the config (and the workdir's earlier run), build the
data, model and optimizer, restore the latest checkpoint if there is one,
train with one jitted SPMD step over all devices, save checkpoints every
`checkpoint_every` steps and on SIGTERM, then evaluate on the test split with
sliding-window inference and write `eval.json` and the PNG report.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from medjax import losses, parallel
from medjax.data import datasets, pipeline
from medjax.errors import InputError
from medjax.train import config_check, evaluate, report
from medjax.train.checkpoint import Checkpointer, StopRequest
from medjax.train.model_factory import build_model
from medjax.train.optim import make_optimizer
from medjax.train.state import TrainState
from medjax.train.step import make_train_step
from medjax.train.writer import MetricWriter, read_metrics


class NonFiniteLossError(RuntimeError):
  """The loss became NaN/inf; the last good checkpoint is kept."""


# Options of the Dice family that a config may set once for a sweep over
# `loss.name`: a loss without them (e.g. "ce") ignores them. Any other option
# the chosen loss does not take is an error.
DICE_FAMILY_OPTIONS = ("batch", "include_background", "squared", "smooth_nr", "smooth_dr")


def build_loss(config: ml_collections.ConfigDict):
  """`medjax.losses.get_loss(config.loss.name, **options)`; Dice statistics use
  the `config.kernels` implementation."""
  accepted = losses.loss_options(config.loss.name)
  kwargs = {k: v for k, v in config.loss.to_dict().items()
            if k != "name" and (k in accepted or k not in DICE_FAMILY_OPTIONS)}
  if "implementation" in accepted:
    kwargs.setdefault("implementation", config.kernels)
  return losses.get_loss(config.loss.name, **kwargs)


def load_split(config: ml_collections.ConfigDict, split: str):
  """The random-access source of `split` of `config.dataset` (prepared on first use)."""
  kwargs = config.dataset_kwargs.to_dict() if config.get("dataset_kwargs") else {}
  return datasets.load_source(config.dataset, split, config.data_dir, **kwargs)


def remap_labels(batches, label_map):
  """Applies `config.label_map` (old class id -> new class id) to every batch.

  E.g. (0, 1, 1) merges the tumour into the organ (stage 1 of a cascade) and
  (0, 0, 1) keeps only the tumour.
  """
  lut = np.asarray(label_map, np.int32)
  for batch in batches:
    yield {**batch, "label": lut[batch["label"]]}


def train_batches(config: ml_collections.ConfigDict, start_step: int):
  """This process's batches for steps `start_step..num_steps-1`, by `config.task`."""
  source = load_split(config, "train")
  if config.get("crop_margin"):  # cascade stage 2: cases cropped to the organ box
    from medjax.train.cascade import OrganCropSource  # pylint: disable=import-outside-toplevel
    source = OrganCropSource(source, config.crop_margin)
  common = dict(global_batch_size=config.global_batch_size, seed=config.seed,
                start_step=start_step, num_steps=config.num_steps,
                process_index=jax.process_index(), process_count=jax.process_count(),
                worker_count=config.get("data_workers", 0))
  if config.task == "classification":
    return pipeline.classification_batches(source, flip_axes=tuple(config.flip_axes), **common)
  batches = pipeline.train_batches(
      source, patch_size=tuple(config.patch_size), foreground_fraction=config.foreground_fraction,
      flip_axes=tuple(config.flip_axes), **common)
  if config.get("label_map"):
    batches = remap_labels(batches, config.label_map)
  return batches


def init_state(config: ml_collections.ConfigDict, model, tx) -> TrainState:
  """Parameters initialised on the host from `config.seed` (identical on every process)."""
  shape = (1,) + tuple(config.patch_size) + (config.in_channels,)
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    variables = jax.jit(lambda k: model.init(k, jnp.zeros(shape, jnp.float32), train=False))(
        jax.random.key(config.seed))
    variables = jax.device_get(variables)
    state = TrainState.create(params=variables["params"],
                              batch_stats=variables.get("batch_stats", {}), tx=tx)
    return jax.device_get(state)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  path = os.path.join(workdir, "config.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(config.to_json(indent=2))
  os.replace(tmp, path)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains until `config.num_steps` (resuming from the workdir) and returns
  `{"state": host TrainState, "stopped": bool}`."""
  is_writer = jax.process_index() == 0
  dp = parallel.DataParallel(config.parallel)
  if config.global_batch_size % dp.num_devices:
    raise InputError(f"config.global_batch_size={config.global_batch_size}: expected a multiple "
                     f"of the number of devices ({dp.num_devices})")
  model = build_model(config, training=True)
  loss_fn = build_loss(config)
  tx, schedule = make_optimizer(config.optimizer, config.num_steps)
  state = init_state(config, model, tx)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), every=config.checkpoint_every)
  start = ckpt.latest_step() or 0
  if start:
    state = ckpt.restore(state)
    print(f"resumed {workdir} at step {start}", flush=True)
  if start >= config.num_steps:
    ckpt.close()
    return {"state": state, "stopped": False}

  batches = train_batches(config, start)
  step_fn = dp.spmd(make_train_step(model, loss_fn, seed=config.seed),
                    batch_argnums=(1,), donate_argnums=(0,))
  dstate = dp.replicate(state)
  writer = MetricWriter(workdir) if is_writer else None
  stopped = False
  t_log, n_log = time.perf_counter(), 0
  bar = tqdm(total=config.num_steps, initial=start, disable=not is_writer or not config.progress_bar,
             dynamic_ncols=True, desc="train")
  try:
    with StopRequest() as stop:
      for step, batch in zip(range(start + 1, config.num_steps + 1), batches):
        dstate, metrics = step_fn(dstate, dp.shard_batch(batch))
        metrics = jax.tree.map(lambda x: np.asarray(x).reshape(-1)[0], metrics)
        if not metrics["finite"]:
          raise NonFiniteLossError(
              f"non-finite loss ({metrics['loss']}) at step {step}: training stopped; the last "
              f"good checkpoint (step {ckpt.latest_step()}) is kept in {workdir}/checkpoints "
              f"(try a lower optimizer.learning_rate or optimizer.grad_clip_norm)")
        n_log += 1
        bar.update(1)
        if step % config.log_every == 0 or step == config.num_steps:
          now = time.perf_counter()
          rate = n_log / (now - t_log)
          t_log, n_log = now, 0
          bar.set_postfix(loss=f"{metrics['loss']:.4f}", steps_per_s=f"{rate:.2f}")
          if writer:
            writer.write(step, {"loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
                                "learning_rate": float(schedule(step - 1)), "steps_per_sec": rate})
        if ckpt.should_save(step) or step == config.num_steps or stop.requested:
          ckpt.save(step, dp.unreplicate(dstate), force=True)
        if stop.requested:
          stopped = True
          logging.warning("SIGTERM: saved step %d; re-run the same command to resume", step)
          break
  finally:
    bar.close()
    ckpt.close()
    if writer:
      writer.close()
  return {"state": dp.unreplicate(dstate), "stopped": stopped}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) and evaluates; returns the eval dict (also in `eval.json`)."""
  if config.task == "cascade":
    from medjax.train import cascade  # pylint: disable=import-outside-toplevel
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
      write_config(config, workdir)
    return cascade.train_and_evaluate_cascade(config, workdir)
  config_check.validate(config)
  os.makedirs(workdir, exist_ok=True)
  config_check.check_workdir(config, workdir)
  if jax.process_index() == 0:
    write_config(config, workdir)
  t0 = time.perf_counter()
  result = train(config, workdir)
  if result["stopped"]:
    return {}
  t1 = time.perf_counter()
  state = result["state"]
  eval_model = build_model(config, training=False)
  if config.task == "classification":
    results = evaluate.evaluate_classification(config, eval_model, state.variables(),
                                               load_split(config, "test"))
  else:
    results = evaluate.evaluate(config, eval_model, state.variables(), load_split(config, "test"),
                                workdir=workdir)
  if jax.process_index() == 0:
    path = os.path.join(workdir, "eval.json")
    with open(path + ".tmp", "w") as f:
      json.dump(results, f, indent=2)
    os.replace(path + ".tmp", path)
    rows = read_metrics(workdir)
    if rows:
      report.plot_learning_curves(rows, os.path.join(report.report_dir(workdir), "learning_curves.png"))
    summary = {k: round(v, 4) for k, v in results.items() if isinstance(v, float) and
               k.split("/")[0] in ("dice", "hd95", "accuracy", "auc", "ece")}
    print(f"train {t1 - t0:.0f} s, eval {time.perf_counter() - t1:.0f} s; "
          f"eval ({len(results['per_case'])} test {'images' if config.task == 'classification' else 'cases'}): {summary} -> {path}", flush=True)
  return results
