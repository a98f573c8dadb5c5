"""`train_and_evaluate(config, workdir)`: one run of one task, resumable.

Order of work: check the config (and the workdir's earlier run), build the
model, loss and optimizer (`setup`, which the training benchmark shares),
restore the latest checkpoint if there is one, train on the task's batches
with one jitted SPMD step over all devices, save checkpoints every
`checkpoint_every` steps and on SIGTERM (then stop with `TrainingStopped`, so
the launcher exits non-zero), then let the task evaluate on the test split and
write its outputs (`eval.json`, `report/`). After the first logged step past
the compiling one, the run prints its time per step and the time projected to
`num_steps`.

The loop knows no task names: `config.task` names a `medjax.train.tasks.Task`,
which owns the batches, the evaluation and the report. Runs made of several
runs (a cascade) are orchestrated one level up (`medjax.train.cascade`,
entered through `medjax.train.run`).
"""
from __future__ import annotations

import dataclasses
import signal
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from medjax import losses, parallel
from medjax.data.pipeline import augment
from medjax.errors import InputError
from medjax.train import config_check, epochs, report, tasks, warm_start
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


class TrainingStopped(Exception):
  """SIGTERM stopped training after saving the state; re-running the same command
  resumes. `exit_status` is what a launcher exits with (128 + SIGTERM, as a shell
  reports a process the signal ended), so `main && predict` does not go on."""

  exit_status = 128 + signal.SIGTERM


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


@dataclasses.dataclass
class Setup:
  """What one run of `config` trains with (`setup`).

  Attributes:
    task: the `tasks.Task` of `config.task`.
    dp: the `parallel.DataParallel` over every device (`config.parallel`).
    model: the training-mode model; loss_fn: `build_loss(config)`.
    tx, schedule: the optax optimizer and its learning-rate schedule.
    augmentation: the on-device augmentation (`config.augment`), or None.
    state: the host `TrainState` at step 0 (fresh, or warm-started).
    train_step: the jitted SPMD step `(replicated state, sharded batch) -> (state, metrics)`.
  """
  task: Any
  dp: parallel.DataParallel
  model: Any
  loss_fn: Callable
  tx: Any
  schedule: Callable[[int], Any]
  augmentation: Any
  state: TrainState
  train_step: Callable


def setup(config: ml_collections.ConfigDict, *, warm: bool = True) -> Setup:
  """Everything a run of `config` trains with, before any data is read (`Setup`);
  shared by `train` and `benchmarks.train_speed`.

  Args:
    warm: take the initial parameters from `config.init_from` (`init_state`);
      a run resuming from its own checkpoint passes False.
  Raises:
    InputError: `config.global_batch_size` is not a multiple of the device count.
  """
  task = tasks.get_task(config.task)
  dp = parallel.DataParallel.from_config(config)
  config_check.check_batch_split(config, dp)
  model = build_model(config, training=True)
  loss_fn = build_loss(config)
  augmentation = augment.from_config(config.get("augment"), spacing=config.spacing,
                                     spatial_dims=len(config.patch_size))
  tx, schedule = make_optimizer(config.optimizer, config.num_steps)
  state = init_state(config, model, tx, task.input_shape(config), warm=warm)
  train_step = dp.spmd(make_train_step(model, loss_fn, seed=config.seed,
                                       objective=task.objective(config, loss_fn),
                                       augmentation=augmentation, partition=dp.partition),
                       batch_argnums=(1,), donate_argnums=(0,))
  return Setup(task, dp, model, loss_fn, tx, schedule, augmentation, state, train_step)


def duration(seconds: float) -> str:
  """`seconds` for a person: "8.2 s", "42 s", "3 min 5 s", "2 h 14 min"."""
  if seconds < 10:
    return f"{seconds:.1f} s"
  if seconds < 60:
    return f"{seconds:.0f} s"
  if seconds < 3600:
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"
  return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def projection_line(*, compiled_step: int, step: int, seconds: float, num_steps: int) -> str:
  """The time per step measured over steps `compiled_step + 1 .. step` (`seconds` in all;
  the compiling step `compiled_step` excluded) and the run time it projects."""
  first = compiled_step + 1
  per_step = seconds / (step - compiled_step)
  steps = f"step {first}" if first == step else f"steps {first}-{step}"
  return (f"time per step: {per_step:.3g} s ({steps}; step {compiled_step} compiles and is not "
          f"counted): {num_steps} steps take about {duration(per_step * num_steps)}, the "
          f"{num_steps - step} left about {duration(per_step * (num_steps - step))}")


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

  def note(self, text: str) -> None:
    """One line for the user, above the bar when there is one."""
    if not self.enabled:
      return
    if self._bar.disable:
      print(text, flush=True)
    else:
      self._bar.write(text)

  def close(self) -> None:
    self._bar.close()


def train(config: ml_collections.ConfigDict, workdir, *,
          train_source: Optional[Sequence[dict]] = None) -> dict:
  """Trains until `config.num_steps` (resuming from the workdir) and returns
  `{"state": host TrainState}`.

  Args:
    train_source: the training cases; default `config`'s train split (a
      cascade's second stage passes its organ crops here).
  Raises:
    TrainingStopped: SIGTERM arrived; the state was saved at the step reached.
    NonFiniteLossError: the loss became NaN/inf; the last good checkpoint is kept.
  """
  workdir = Workdir.of(workdir)
  is_writer = jax.process_index() == 0
  # everything a bad config can fail on comes before the checkpointer (orbax) is opened
  run = setup(config, warm=not workdir.has_checkpoint())
  ckpt = workdir.checkpointer(every=config.checkpoint_every)
  start = ckpt.latest_step() or 0
  task, dp, state = run.task, run.dp, run.state
  if start:
    state = ckpt.restore(state)
    print(f"resumed {workdir.path} at step {start}", flush=True)
  if start >= config.num_steps or workdir.read_stopped():
    ckpt.close()
    return {"state": state}

  callbacks = (list(task.callbacks(config, workdir, start_step=start))
               if train_source is None else [])
  source = (load_split(config, "train", workdir=workdir if is_writer else None)
            if train_source is None else train_source)
  batches = task.train_batches(config, source, start_step=start,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())
  dstate = dp.replicate(state)
  writer = MetricWriter(workdir) if is_writer else None
  stopped_at = None
  t_log, n_log = time.perf_counter(), 0
  t_compiled, projected = None, False
  progress = Progress(config, start, enabled=is_writer)
  last, reason = start, "num_steps"
  for callback in callbacks:
    callback.on_train_start(start)
  try:
    with StopRequest() as stop:
      for step, batch in zip(range(start + 1, config.num_steps + 1), batches):
        dstate, metrics = run.train_step(dstate, dp.shard_batch(batch))
        metrics = jax.tree.map(lambda x: np.asarray(x).reshape(-1)[0], metrics)
        if not metrics["finite"]:
          raise NonFiniteLossError(
              f"non-finite loss ({metrics['loss']}) at step {step}: training stopped; the last "
              f"good checkpoint (step {ckpt.latest_step()}) is kept in {workdir.checkpoint_dir} "
              f"(try a lower optimizer.learning_rate or optimizer.grad_clip_norm)")
        if step == start + 1:
          t_compiled = time.perf_counter()  # the first step of a process compiles the step
        n_log += 1
        last = step
        progress.step()
        if step % config.log_every == 0 or step == config.num_steps:
          now = time.perf_counter()
          rate = n_log / (now - t_log)
          t_log, n_log = now, 0
          progress.log(step, float(metrics["loss"]), rate)
          if not projected and step > start + 1:
            projected = True
            progress.note(projection_line(compiled_step=start + 1, step=step,
                                          seconds=now - t_compiled, num_steps=config.num_steps))
          if writer:
            writer.write(step, {"loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
                                "learning_rate": float(run.schedule(step - 1)),
                                "steps_per_sec": rate})
        state_fn = lambda: dp.unreplicate(dstate)  # noqa: E731  (copied when a callback asks)
        reasons = [callback.after_step(step, state_fn, writer) for callback in callbacks]
        reasons = [r for r in reasons if r]
        if ckpt.should_save(step) or step == config.num_steps or stop.requested or reasons:
          ckpt.save(step, dp.unreplicate(dstate), force=True)
        if reasons:
          reason = reasons[0]
          if is_writer:
            workdir.write_stopped(step, reason)
          print(f"training stopped at step {step}: {reason}", flush=True)
          break
        if stop.requested:
          reason = "sigterm"
          stopped_at = step
          logging.warning("SIGTERM: saved step %d; re-run the same command to resume", step)
          break
  finally:
    progress.close()
    ckpt.close()
    for callback in callbacks:
      callback.on_train_end(last, reason)
    if writer:
      writer.close()
  if stopped_at is not None:
    raise TrainingStopped(f"SIGTERM: saved step {stopped_at}; re-run the same command to resume")
  return {"state": dp.unreplicate(dstate)}


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

  Raises:
    TrainingStopped: SIGTERM stopped training (the state is saved; nothing evaluated).
  """
  if "cascade" in config:
    raise InputError("config.cascade: a cascade is two runs; run it with "
                     "medjax.train.run.train_and_evaluate (experiments.main does)")
  config = epochs.resolve(config)
  workdir = prepare_workdir(config, workdir)
  task = tasks.get_task(config.task)
  t0 = time.perf_counter()
  result = train(config, workdir)
  t1 = time.perf_counter()
  evaluation = task.evaluate(config, build_model(config, training=False),
                             result["state"].variables(),
                             load_split(config, config.eval.get("split", "test")))
  if jax.process_index() == 0:
    task.write_outputs(config, evaluation, workdir)
  finish(workdir, evaluation, item_name=task.item_name, metric_prefixes=task.summary_metrics,
         seconds=f"train {t1 - t0:.0f} s, eval {time.perf_counter() - t1:.0f} s; ")
  return evaluation.results
