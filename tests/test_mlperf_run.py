"""The MLPerf 3D U-Net run end to end at `:smoke` size on a generated KiTS19 folder:
training in epochs, evaluations on the schedule, the stop rule, and an `mlperf.log`
that MLPerf's own compliance checker (mlperf-logging, rules of round 4.0.0, the last
with 3D U-Net) accepts except for the rules a run on a tiny dataset cannot meet:

* `train_samples == 168` and `eval_samples == 42` (the smoke folder has 6 and 4 cases);
* at least one `eval_accuracy >= 0.908` (a few steps of a tiny network never get there).
"""
import json
import os

import numpy as np
import pytest

from dataset_writers import write_kits19
from experiments.configs import mlperf_unet3d_kits19
from medjax.mlperf import evaluation
from medjax.mlperf.run import MLPerfRun
from medjax.train import epochs, loop
from medjax.train.workdir import Workdir

pytest.importorskip("mlperf_logging")
CASES = tuple(range(10))  # validation: 0, 3, 5, 6; train: 1, 2, 4, 7, 8, 9


@pytest.fixture(scope="module")
def kits_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("kits19")
  write_kits19(str(root / "data"), CASES)
  return str(root / "data"), str(tmp_path_factory.mktemp("prepared"))


def smoke_config(kits_folder, **overrides):
  config = mlperf_unet3d_kits19.get_config("smoke")
  config.dataset_kwargs.manual_dir, config.data_dir = kits_folder
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def compliance_failures(path):
  """The compliance checker's messages for `path`: `(keys of failed CHECKs, other messages)`."""
  from mlperf_logging.compliance_checker import mlp_compliance
  checker = mlp_compliance.make_checker("training", "4.0.0", quiet=True, werror=False)
  checker.check_file(path, "training_4.0.0/common.yaml")
  return set(checker.overwritable), list(checker.not_overwritable)


def read_log(path):
  return [json.loads(line.split(":::MLLOG ", 1)[1]) for line in open(path) if ":::MLLOG" in line]


@pytest.mark.e2e
def test_smoke_run_stops_at_target_with_a_compliant_log(kits_folder, tmp_path):
  config = smoke_config(kits_folder, **{"mlperf.target": 0.0})  # reached at the first eval
  workdir = str(tmp_path / "run")
  results = loop.train_and_evaluate(config, workdir)
  wd = Workdir(workdir)
  # 6 training cases in global batches of 4: 1 step per epoch; first evaluation at epoch 2
  assert wd.read_stopped() == {"step": 2, "reason": "mean Dice " + wd.read_stopped()["reason"]
                               .split("mean Dice ", 1)[1]}
  assert wd.read_stopped()["reason"].endswith(">= 0.0 at epoch 2")
  events = read_log(wd.mlperf_log_path())
  keys = [e["key"] for e in events]
  assert keys[:2] == ["cache_clear", "init_start"]
  assert keys.index("init_stop") < keys.index("run_start") < keys.index("epoch_start")
  assert keys[-1] == "run_stop" and events[-1]["metadata"]["status"] == "success"
  accuracy = [e for e in events if e["key"] == "eval_accuracy"]
  assert [e["metadata"]["epoch_num"] for e in accuracy] == [2]
  assert [e["metadata"]["epoch_num"] for e in events if e["key"] == "epoch_stop"] == [1, 2]
  assert {e["key"]: e["value"] for e in events}["train_samples"] == 6
  assert {e["key"]: e["value"] for e in events}["eval_samples"] == 4
  assert {e["key"]: e["value"] for e in events}["samples_per_epoch"] == 4
  failed_checks, messages = compliance_failures(wd.mlperf_log_path())
  assert failed_checks == {"train_samples", "eval_samples"}, messages
  assert messages == ["Failed checks for eval_accuracy :  v['value'] >= 0.908"]
  # the usual outputs: eval.json of the validation split, metrics with the MLPerf score
  assert len(results["per_case"]) == 4 and 0.0 <= results["dice/tumour"] <= 1.0
  rows = [json.loads(line) for line in open(wd.metrics_path)]
  assert [r["step"] for r in rows if "mlperf/mean_dice" in r] == [2]
  assert os.path.isdir(wd.tensorboard_dir)
  # the run is done: training again does nothing (no step, no second MLPerf log)
  again = loop.train(epochs.resolve(config), workdir)
  assert int(again["state"].step) == 2 and not os.path.exists(wd.mlperf_log_path(2))


def test_schedule_and_epoch_limit(kits_folder, tmp_path, monkeypatch):
  """Evaluations at epochs 2, 4, 6 (smoke schedule), none reaching the target: the run
  ends at the epoch limit with status aborted; the learning rate warms up per epoch."""
  config = epochs.resolve(smoke_config(kits_folder))
  assert (config.num_steps, config.epochs.steps_per_epoch, config.epochs.samples_per_epoch) == (6, 1, 4)
  assert (config.optimizer.warmup_steps, config.optimizer.warmup_every) == (2, 1)
  scores, evaluated = iter([0.3, 0.5, 0.7]), []
  monkeypatch.setattr(MLPerfRun, "evaluate", lambda self, epoch, state, writer, step: (
      evaluated.append(epoch), next(scores))[1])
  run = MLPerfRun(config, Workdir(str(tmp_path)))
  run.on_train_start(0)
  reasons = [run.after_step(step, lambda: None, None) for step in range(1, 7)]
  run.on_train_end(6, "num_steps")
  assert reasons == [None] * 6
  events = read_log(Workdir(str(tmp_path)).mlperf_log_path())
  assert evaluated == [2, 4, 6]
  assert events[-1]["key"] == "run_stop" and events[-1]["metadata"]["status"] == "aborted"
  assert sum(e["key"] == "block_start" for e in events) == 6


def test_mlperf_schedule_scales_with_samples_per_epoch():
  config = mlperf_unet3d_kits19.get_config()
  config.epochs.samples_per_epoch = 160  # 8 GPUs x 2: 168 // 16 = 10 steps of 16
  assert (epochs.scaled(1000, config), epochs.scaled(20, config)) == (1050, 21)  # README
  config.epochs.samples_per_epoch = 128
  assert (epochs.scaled(1000, config), epochs.scaled(20, config)) == (1313, 27)
  config.epochs.samples_per_epoch = 168
  assert epochs.scaled(10000, config) == 10000


def test_reference_window_crop_pad_and_dice():
  image = np.zeros((150, 200, 129, 1), np.float32)
  label = np.zeros((150, 200, 129), np.int32)
  padded, cropped, low = evaluation.crop_and_pad(image, label, (128, 128, 128), 0.5)
  # 150 % 64 = 22 < 32: cropped to 128; 200 % 64 = 8: to 192; 129 % 64 = 1: to 128
  assert cropped.shape == (128, 192, 128) and padded.shape[:3] == (128, 192, 128)
  padded, cropped, low = evaluation.crop_and_pad(image[:100], label[:100], (128, 128, 128), 0.5)
  # 100 % 64 = 36 >= 32: not cropped, padded by 28 to 128 (14 before)
  assert cropped.shape[0] == 100 and padded.shape[0] == 128 and low[0] == 14
  assert padded[0, 0, 0, 0] == pytest.approx(-2.2)
  pred = np.array([0, 1, 1, 2, 0])
  truth = np.array([0, 1, 0, 0, 0])
  np.testing.assert_allclose(evaluation.dice_scores(pred, truth),
                             [(2 + 1e-6) / (3 + 1e-6), 1e-6 / (1 + 1e-6)], rtol=1e-9)
  assert evaluation.dice_scores(np.zeros(3), np.zeros(3)).tolist() == [1.0, 1.0]


def test_learning_rate_warms_up_once_per_epoch_as_the_reference():
  """runtime/training.py `lr_warmup`: lr = init + (lr - init) * epoch / warmup_epochs at the
  start of epochs 1..warmup_epochs, then the base rate."""
  import ml_collections
  from medjax.train.optim import make_schedule
  steps_per_epoch, warmup_epochs = 3, 4
  cfg = ml_collections.ConfigDict(dict(learning_rate=0.8, schedule="constant",
                                       warmup_steps=warmup_epochs * steps_per_epoch,
                                       warmup_every=steps_per_epoch, warmup_init=1e-4))
  schedule = make_schedule(cfg, 100)
  for update in range(20):
    epoch = update // steps_per_epoch + 1
    want = 1e-4 + (0.8 - 1e-4) * min(epoch, warmup_epochs) / warmup_epochs
    assert float(schedule(update)) == pytest.approx(want, rel=1e-6)


def test_window_weights_are_the_reference_gaussian():
  """runtime/inference.py `gaussian_kernel(n, 0.125 n)`: cube root of the 3D outer product
  of scipy's Gaussian window, peak 1."""
  from scipy import signal
  from medjax.inference.windows import importance_map
  n = 16
  g1 = signal.windows.gaussian(n, 0.125 * n)
  g3 = np.cbrt(np.outer(np.outer(g1, g1), g1).reshape(n, n, n))
  np.testing.assert_allclose(importance_map((n, n, n), "gaussian_cbrt"), g3 / g3.max(),
                             rtol=1e-5)
