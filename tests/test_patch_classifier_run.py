"""A patch-classifier run (`transfer_patches2d`'s smoke variants, in process): every arm
trains, the run prints its time per step and projection, and an explanation sees the
input the network was trained on."""
import contextlib
import io
import re

import numpy as np
import pytest

from experiments.configs import transfer_patches2d
from medjax import explain_report
from medjax.data.pipeline import loaders
from medjax.train import config_data, loop
from medjax.train.tasks import classification

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """`pretrain,smoke` trained for 4 steps: (workdir, config, its stdout)."""
  root = tmp_path_factory.mktemp("patch_run")
  config = transfer_patches2d.get_config("pretrain,smoke")
  config.data_dir = str(root / "data")
  config.num_steps = 4
  config.eval.batch_size = 6
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    results = loop.train_and_evaluate(config, str(root / "pretrain"))
  assert 0.0 <= results["accuracy"] <= 1.0
  return str(root / "pretrain"), config, out.getvalue()


@pytest.mark.parametrize("arm", ["linear_probe", "finetune"])
def test_transfer_arm_smoke_variant_trains(pretrained, arm, tmp_path):
  workdir, source_config, _ = pretrained
  config = transfer_patches2d.get_config(f"{arm},smoke")
  config.data_dir = source_config.data_dir
  config.num_steps = 2
  config.eval.batch_size = 6
  if arm != "scratch":
    config.init_from = workdir
  results = loop.train_and_evaluate(config, str(tmp_path / arm))
  assert 0.0 <= results["accuracy"] <= 1.0 and len(results["per_case"]) == 6


def test_run_prints_its_time_per_step_and_the_projection(pretrained):
  _, _, out = pretrained
  lines = [l for l in out.splitlines() if l.startswith("time per step:")]
  assert len(lines) == 1, out
  match = re.fullmatch(r"time per step: ([0-9.e-]+) s \(step 2; step 1 compiles and is not "
                       r"counted\): 4 steps take about (.+), the 2 left about (.+)", lines[0])
  assert match, lines[0]
  assert float(match.group(1)) > 0
  # printed once, right after step 2's log line (the first step timed without compiling)
  order = [l.split(":")[0] for l in out.splitlines() if l.startswith(("step ", "time per step"))]
  assert order == ["step 1/4", "step 2/4", "time per step", "step 3/4", "step 4/4"]


def test_explained_input_is_the_training_input(pretrained, tmp_path):
  workdir, config, _ = pretrained
  case = "test_00002"
  image, label = explain_report.load_case(config, case)
  assert label is None  # an image-level label
  test = config_data.load_split(config, "test")
  trained = {name: x for name, x, _ in loaders.classification_images(
      test, **classification.data_options(config))}
  np.testing.assert_array_equal(image, trained[case])
  # the fixed window of intensity_stats, not a per-image z-score
  raw = np.asarray(explain_report.find_case(test, case)["image"], np.float32)
  np.testing.assert_allclose(image[..., 0], (np.clip(raw, -200, 300) - 50.0) / 125.0, rtol=1e-6)
  paths = explain_report.explain_case(workdir, case, methods=("saliency",),
                                      output=str(tmp_path))
  assert [p.rsplit("/", 1)[1] for p in paths] == [f"{case}_saliency.png"]
