"""`train_and_evaluate(config, workdir)`: one run of one task, resumable.

Order of work: check the config (and the workdir's earlier run), build the
model, loss and optimizer, restore the latest checkpoint if there is one,
train on the task's batches with one jitted SPMD step over all devices, save
checkpoints every `checkpoint_every` steps and on SIGTERM, then let the task
evaluate on the test split and write its outputs (`eval.json`, `report/`).

The loop knows no task names: `config.task` names a `medjax.train.tasks.Task`,
which owns the batches, the evaluation and the report. Runs made of several
runs (a cascade) are orchestrated one level up (`medjax.train.cascade`,
entered through `medjax.train.run`).
"""
from __future__ import annotations

import sys
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from medjax import losses, parallel
from medjax.data.pipeline import augment
from medjax.errors import InputError
from medjax.train import config_check, report, tasks, warm_start
from medjax.train.checkpoint import StopRequest
from medjax.train.model_factory import build_model
from medjax.train.optim import make_optimizer
from medjax.train.config_data import load_split
from medjax.train.state import TrainState
from medjax.train.step import make_train_step
from medjax.train.workdir import Workdir
from medjax.train.writer import MetricWriter


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
  if "kernels" in accepted:
    kwargs.setdefault("kernels", config.kernels)
  return losses.get_loss(config.loss.name, **kwargs)


def init_state(config: ml_collections.ConfigDict, model, tx, input_shape: Sequence[int], *,
               warm: bool = True) -> TrainState:
  """Parameters initialised on the host from `config.seed` (identical on every process),
  then taken from `config.init_from` when `warm` (a run that resumes from its own
  checkpoint passes False: the checkpoint replaces them, and the source is not read)."""
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    variables = jax.jit(lambda k: model.init(k, jnp.zeros(input_shape, jnp.float32), train=False))(
        jax.random.key(config.seed))
    variables = jax.device_get(variables)
    if warm:
      variables = warm_start.apply(config, variables, model)
    state = TrainState.create(params=variables["params"],
                              batch_stats=variables.get("batch_stats", {}), tx=tx)
    return jax.device_get(state)


class Progress:
  """Training progress: a tqdm bar on a terminal; redirected to a file (or with
  `config.progress_bar=False`), one plain line per log interval instead."""

  def __init__(self, config: ml_collections.ConfigDict, start: int, enabled: bool):
    self.total = config.num_steps
    self.enabled = enabled
    tty = sys.stderr.isatty()
    self._bar = tqdm(total=self.total, initial=start, dynamic_ncols=True, desc="train",
                     disable=not (enabled and tty and config.progress_bar))
    self._lines = enabled and not (tty and config.progress_bar)

  def step(self) -> None:
    self._bar.update(1)

  def log(self, step: int, loss: float, rate: float) -> None:
    self._bar.set_postfix(loss=f"{loss:.4f}", steps_per_s=f"{rate:.2f}")
    if self._lines:
      print(f"step {step}/{self.total}: loss {loss:.4f}, {rate:.2f} steps/s", flush=True)

  def close(self) -> None:
    self._bar.close()


def train(config: ml_collections.ConfigDict, workdir, *,
          train_source: Optional[Sequence[dict]] = None) -> dict:
  """Trains until `config.num_steps` (resuming from the workdir) and returns
  `{"state": host TrainState, "stopped": bool}`.

  Args:
    train_source: the training cases; default `config`'s train split (a
      cascade's second stage passes its organ crops here).
  """
  workdir = Workdir.of(workdir)
  task = tasks.get_task(config.task)
  is_writer = jax.process_index() == 0
  dp = parallel.DataParallel.from_config(config)
  config_check.check_batch_split(config, dp)
  model = build_model(config, training=True)
  loss_fn = build_loss(config)
  augmentation = augment.from_config(config.get("augment"), spacing=config.spacing,
                                     spatial_dims=len(config.patch_size))
  tx, schedule = make_optimizer(config.optimizer, config.num_steps)
  ckpt = workdir.checkpointer(every=config.checkpoint_every)
  start = ckpt.latest_step() or 0
  state = init_state(config, model, tx, task.input_shape(config), warm=not start)
  if start:
    state = ckpt.restore(state)
    print(f"resumed {workdir.path} at step {start}", flush=True)
  if start >= config.num_steps:
    ckpt.close()
    return {"state": state, "stopped": False}

  source = (load_split(config, "train", workdir=workdir if is_writer else None)
            if train_source is None else train_source)
  batches = task.train_batches(config, source, start_step=start,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())
  step_fn = dp.spmd(make_train_step(model, loss_fn, seed=config.seed,
                                    objective=task.objective(config, loss_fn),
                                    augmentation=augmentation, partition=dp.partition),
                    batch_argnums=(1,), donate_argnums=(0,))
  dstate = dp.replicate(state)
  writer = MetricWriter(workdir) if is_writer else None
  stopped = False
  t_log, n_log = time.perf_counter(), 0
  progress = Progress(config, start, enabled=is_writer)
  try:
    with StopRequest() as stop:
      for step, batch in zip(range(start + 1, config.num_steps + 1), batches):
        dstate, metrics = step_fn(dstate, dp.shard_batch(batch))
        metrics = jax.tree.map(lambda x: np.asarray(x).reshape(-1)[0], metrics)
        if not metrics["finite"]:
          raise NonFiniteLossError(
              f"non-finite loss ({metrics['loss']}) at step {step}: training stopped; the last "
              f"good checkpoint (step {ckpt.latest_step()}) is kept in {workdir.checkpoint_dir} "
              f"(try a lower optimizer.learning_rate or optimizer.grad_clip_norm)")
        n_log += 1
        progress.step()
        if step % config.log_every == 0 or step == config.num_steps:
          now = time.perf_counter()
          rate = n_log / (now - t_log)
          t_log, n_log = now, 0
          progress.log(step, float(metrics["loss"]), rate)
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
    progress.close()
    ckpt.close()
    if writer:
      writer.close()
  return {"state": dp.unreplicate(dstate), "stopped": stopped}


def prepare_workdir(config: ml_collections.ConfigDict, workdir) -> Workdir:
  """Checks `config` and the workdir's earlier run, then writes `config.json`.

  Nothing is written when a check fails (`InputError`).
  """
  workdir = Workdir.of(workdir)
  config_check.validate(config)
  tasks.get_task(config.task).validate(config)
  config_check.check_workdir(config, workdir)
  workdir.create()
  if jax.process_index() == 0:
    workdir.write_config(config)
  return workdir


def summary_line(results: dict, metric_prefixes: Sequence[str]) -> str:
  """The scalar results whose `metric/...` prefix is one of `metric_prefixes`, rounded."""
  return str({k: round(v, 4) for k, v in results.items()
              if isinstance(v, float) and k.split("/")[0] in metric_prefixes})


def finish(workdir: Workdir, evaluation, *, item_name: str, metric_prefixes: Sequence[str],
           seconds: str = "") -> None:
  """Writes `eval.json` and the learning curves, prints the one-line summary (process 0)."""
  if jax.process_index() != 0:
    return
  results = evaluation.results
  path = workdir.write_eval(results)
  report.write_learning_curves(workdir)
  print(f"{seconds}eval ({len(results['per_case'])} test {item_name}): "
        f"{summary_line(results, metric_prefixes)} -> {path}", flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Trains (or resumes) one run and evaluates it; returns the eval dict (also in `eval.json`).

  A config with a `cascade` section is refused here: it is two runs, see
  `medjax.train.run.train_and_evaluate`.
  """
  if "cascade" in config:
    raise InputError("config.cascade: a cascade is two runs; run it with "
                     "medjax.train.run.train_and_evaluate (experiments.main does)")
  workdir = prepare_workdir(config, workdir)
  task = tasks.get_task(config.task)
  t0 = time.perf_counter()
  result = train(config, workdir)
  if result["stopped"]:
    return {}
  t1 = time.perf_counter()
  evaluation = task.evaluate(config, build_model(config, training=False),
                             result["state"].variables(), load_split(config, "test"))
  if jax.process_index() == 0:
    task.write_outputs(config, evaluation, workdir)
  finish(workdir, evaluation, item_name=task.item_name, metric_prefixes=task.summary_metrics,
         seconds=f"train {t1 - t0:.0f} s, eval {time.perf_counter() - t1:.0f} s; ")
  return evaluation.results
