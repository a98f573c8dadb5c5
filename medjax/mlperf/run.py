"""The MLPerf run around medjax's training loop: its log, its evaluations, its stop rule.

A `medjax.train.callbacks.Callback` (the `mlperf_unet3d` task adds it) that does
what the reference's `main.py` and `runtime/training.py` do around the steps
(mlcommons/training `retired_benchmarks/unet3d/pytorch`):

* logs MLPerf's keys (`medjax.mlperf.log`, `Workdir.mlperf_log_path`):
  `cache_clear` (False: medjax does not drop the page cache), `init_start`,
  the submission keys (`submission_benchmark` "unet3d", org / division /
  status / platform from `config.mlperf`), the run's hyperparameters (those
  `mlperf_run_param_log` and `main.py` log, and `train_samples`,
  `eval_samples`, `samples_per_epoch`, `seed`), then `init_stop` and
  `run_start` before the first step, `block_start` / `epoch_start` and
  `epoch_stop` / `block_stop` around every epoch, `eval_start`,
  `eval_accuracy` (the mean Dice) and `eval_stop` around every evaluation,
  and `run_stop` with `status` "success" or "aborted";
* evaluates (`medjax.mlperf.evaluation`) at epoch `eval_start` and every
  `eval_every` epochs after it (1000 and 20 at 168 samples per epoch, scaled
  by `medjax.train.epochs.scaled`), writes `mlperf/mean_dice`,
  `mlperf/kidney_dice` and `mlperf/tumour_dice` to the run's metrics
  (TensorBoard, `metrics.jsonl`);
* stops training when the mean Dice reaches `config.mlperf.target` (0.908)
  ("success"), or falls below 1e-6 (the reference's divergence rule,
  "aborted"); the epoch limit (`epochs.max`, 10000 at 168 samples per epoch:
  the reference README's rule) is `num_steps`.

Every process evaluates its share of the cases and receives the others' scores,
so all of them take the same decision.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import ml_collections

from medjax.mlperf import evaluation
from medjax.mlperf.log import MLLog, constants
from medjax.train import epochs
from medjax.train.callbacks import Callback, StateFn
from medjax.train.config_data import load_split
from medjax.train.model_factory import build_model
from medjax.train.workdir import Workdir

DIVERGED = 1e-6  # runtime/training.py: eval_metrics["mean_dice"] < 1e-6 -> "MODEL DIVERGED"


def platform_name() -> str:
  """`<count>x<device kind>` of this run's devices, e.g. `8xNVIDIA H100 80GB HBM3`."""
  devices = jax.devices()
  return f"{len(devices)}x{devices[0].device_kind}"


class MLPerfRun(Callback):
  """The MLPerf log, evaluation schedule and stop rule of one run (module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: Workdir, *,
               start_step: int = 0):
    self.config = config
    c = constants()
    self.c = c
    mcfg = config.mlperf
    self.steps_per_epoch = int(config.epochs.steps_per_epoch)
    self.first_eval = epochs.scaled(int(mcfg.eval_start), config)
    self.eval_every = epochs.scaled(int(mcfg.eval_every), config)
    self.target = float(mcfg.target)
    self.validation = load_split(config, "validation")
    self.log = MLLog(workdir.mlperf_log_path(start_step), enabled=jax.process_index() == 0)
    self.model = build_model(config, training=False)
    self.run_stopped = False
    log = self.log
    log.event(c.CACHE_CLEAR, False)
    log.start(c.INIT_START)
    log.event(c.SUBMISSION_BENCHMARK, c.UNET3D)
    log.event(c.SUBMISSION_ORG, str(mcfg.org))
    log.event(c.SUBMISSION_DIVISION, str(mcfg.division))
    log.event(c.SUBMISSION_STATUS, str(mcfg.status))
    log.event(c.SUBMISSION_PLATFORM, str(mcfg.platform) or platform_name())
    opt = config.optimizer
    for key, value in (
        (c.SEED, int(config.seed)),
        (c.GLOBAL_BATCH_SIZE, int(config.global_batch_size)),
        (c.GRADIENT_ACCUMULATION_STEPS, 1),
        (c.OPT_NAME, str(opt.name)),
        (c.OPT_BASE_LR, float(opt.learning_rate)),
        (c.OPT_LR_WARMUP_EPOCHS, int(config.epochs.warmup)),
        ("opt_initial_learning_rate", float(opt.get("warmup_init", 0.0))),
        (c.OPT_LR_DECAY_BOUNDARY_EPOCHS, []),
        (c.OPT_LR_DECAY_FACTOR, 1.0),
        (c.OPT_WEIGHT_DECAY, float(opt.get("weight_decay", 0.0))
         if opt.name != "sgd" else 0.0),
        ("opt_momentum", float(opt.momentum)),
        ("oversampling", float(config.mlperf.oversampling)),
        ("training_input_shape", list(config.patch_size)),
        ("validation_input_shape", list(config.patch_size)),
        ("validation_overlap", float(config.eval.overlap)),
        (c.TRAIN_SAMPLES, int(config.epochs.train_cases)),
        (c.EVAL_SAMPLES, len(self.validation)),
        ("samples_per_epoch", int(config.epochs.samples_per_epoch)),
    ):
      log.event(key, value)

  # --- the loop's calls ---------------------------------------------------
  def on_train_start(self, start_step: int) -> None:
    c = self.c
    self.log.end(c.INIT_STOP)
    self.log.start(c.RUN_START)
    if start_step % self.steps_per_epoch == 0:
      self._open_epoch(start_step // self.steps_per_epoch + 1)

  def after_step(self, step: int, state_fn: StateFn, writer: Optional[Any]) -> Optional[str]:
    if step % self.steps_per_epoch:
      return None
    c = self.c
    epoch = step // self.steps_per_epoch
    self.log.end(c.EPOCH_STOP, metadata={c.EPOCH_NUM: epoch})
    reason = None
    if self.is_eval_epoch(epoch):
      score = self.evaluate(epoch, state_fn(), writer, step)
      if score >= self.target:
        reason = f"mean Dice {score:.4f} >= {self.target} at epoch {epoch}"
        status = c.SUCCESS
      elif score < DIVERGED:
        reason, status = f"mean Dice {score:.2e}: diverged at epoch {epoch}", c.ABORTED
    self.log.end(c.BLOCK_STOP, metadata={c.FIRST_EPOCH_NUM: epoch, c.EPOCH_COUNT: 1})
    if reason:
      self._stop(status, epoch)
    elif step < int(self.config.num_steps):
      self._open_epoch(epoch + 1)
    return reason

  def on_train_end(self, step: int, reason: str) -> None:
    if not self.run_stopped:  # the epoch limit, or SIGTERM
      self._stop(self.c.ABORTED, step // self.steps_per_epoch)
    self.log.close()

  # --- parts ----------------------------------------------------------------
  def is_eval_epoch(self, epoch: int) -> bool:
    return epoch >= self.first_eval and (epoch - self.first_eval) % self.eval_every == 0

  def evaluate(self, epoch: int, state, writer: Optional[Any], step: int) -> float:
    """The mean Dice of `state` on the validation split, logged; returns it."""
    c = self.c
    self.log.start(c.EVAL_START, epoch, metadata={c.EPOCH_NUM: epoch})
    result = evaluation.evaluate(
        evaluation.logits_function(self.model, state.variables()), self.validation,
        roi=tuple(self.config.patch_size), overlap=float(self.config.eval.overlap),
        batch_size=int(self.config.eval.batch_size), process_index=jax.process_index(),
        process_count=jax.process_count())
    score = result["mean_dice"]
    self.log.event(c.EVAL_ACCURACY, score, metadata={c.EPOCH_NUM: epoch})
    self.log.end(c.EVAL_STOP, metadata={c.EPOCH_NUM: epoch})
    if writer is not None:
      writer.write(step, {"mlperf/mean_dice": score, "mlperf/kidney_dice": result["kidney_dice"],
                          "mlperf/tumour_dice": result["tumour_dice"], "epoch": epoch})
    print(f"epoch {epoch}: mean Dice {score:.4f} (kidney {result['kidney_dice']:.4f}, "
          f"tumour {result['tumour_dice']:.4f})", flush=True)
    return score

  def _open_epoch(self, epoch: int) -> None:
    c = self.c
    self.log.start(c.BLOCK_START, metadata={c.FIRST_EPOCH_NUM: epoch, c.EPOCH_COUNT: 1})
    self.log.start(c.EPOCH_START, metadata={c.EPOCH_NUM: epoch})

  def _stop(self, status: str, epoch: int) -> None:
    self.log.end(self.c.RUN_STOP, metadata={self.c.STATUS: status, self.c.EPOCH_NUM: epoch})
    self.run_stopped = True


__all__ = ["MLPerfRun", "platform_name"]
