"""A folder run as its user sees it (`experiments.main` in a subprocess): bad cases listed
(skipped with `skip_bad_cases`, all reported before the run stops without it) and
recorded in the workdir, the projected run time, no TFDS chatter on stderr but the real
warnings, SIGTERM's exit status; its explanation sees the input it was trained on."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import dataset_writers as writers
import numpy as np
import pytest

from medjax import explain_report
from medjax.data.pipeline import case_cache
from medjax.train import config_data
from medjax.train.workdir import Workdir

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "unet3d_folder.py")
TFDS_CHATTER = ("Using custom data configuration", "has no dataset_info.json")


def _main(raw, data, workdir, *flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  cmd = [sys.executable, "-m", "experiments.main", f"--config={CONFIG}:smoke",
         f"--config.data_dir={data}", f"--config.dataset_kwargs.manual_dir={raw}",
         f"--workdir={workdir}", *flags]
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _corrupt(raw, *cases):
  for case in cases:
    with open(os.path.join(raw, "labelsTr", f"{case}.nii.gz"), "wb") as f:
      f.write(b"not a NIfTI file")


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
  """A folder run with one bad case skipped, stopped by SIGTERM after its third step:
  `(raw folder, workdir, stdout, stderr, exit status)`."""
  root = tmp_path_factory.mktemp("folder_run")
  raw = str(root / "Dataset007_Tiny")
  writers.write_nnunet_raw(raw, ("case_a", "case_b", "case_c", "case_d", "case_bad"),
                           channel_names=("CT",), test_cases=("case_t",))
  _corrupt(raw, "case_bad")
  workdir = str(root / "run")
  proc = _main(raw, str(root / "data"), workdir, "--config.dataset_kwargs.skip_bad_cases=True",
               "--config.num_steps=100000", "--config.checkpoint_every=100000",
               "--config.log_every=1")
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 600
  while proc.poll() is None and time.time() < deadline:
    if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 3:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  return raw, workdir, out, err, proc.returncode


def test_skipped_cases_are_printed_and_recorded(stopped_run):
  _, workdir, out, err, _ = stopped_run
  skipped = [l for l in out.splitlines() if l.startswith("skipped case")]
  assert len(skipped) == 1 and skipped[0].startswith("skipped case case_bad: label: "), out
  with open(os.path.join(workdir, "skipped_cases.json")) as f:
    recorded = json.load(f)
  assert [s["case"] for s in recorded] == ["case_bad"]
  assert recorded == Workdir(workdir).read_skipped_cases()
  assert recorded[0]["reason"].startswith("case case_bad: label: ")
  assert "case_bad" not in json.dumps(Workdir(workdir).read_splits())


def test_run_prints_its_projected_time(stopped_run):
  _, _, out, _, _ = stopped_run
  lines = [l for l in out.splitlines() if l.startswith("time per step:")]
  assert len(lines) == 1, out
  assert re.fullmatch(r"time per step: [0-9.e-]+ s \(step 2; step 1 compiles and is not "
                      r"counted\): 100000 steps take about .+, the 99998 left about .+",
                      lines[0]), lines[0]


def test_stderr_has_real_warnings_and_no_tfds_chatter(stopped_run):
  _, _, _, err, _ = stopped_run
  assert not [l for l in err.splitlines() if any(c in l for c in TFDS_CHATTER)], err
  assert re.search(r"SIGTERM: saved step \d+; re-run the same command to resume", err), err


def test_sigterm_exits_143_after_saving(stopped_run):
  _, workdir, _, err, status = stopped_run
  assert status == 128 + signal.SIGTERM, err
  step, _ = Workdir(workdir).latest_checkpoint()
  assert 3 <= step < 100000
  assert not os.path.exists(os.path.join(workdir, "eval.json"))


def test_explained_input_of_a_folder_run_is_the_training_input(stopped_run, tmp_path):
  _, workdir, _, _, _ = stopped_run
  config = Workdir(workdir).read_config()
  assert config.normalization == "none"  # the plan normalised the images at prepare time
  image, label = explain_report.load_case(config, "case_t")
  options = config_data.patch_options(config)
  test = config_data.load_split(config, "test")
  trained = case_cache.CaseCache(test, (1, 1, 1), normalize=options["normalize"])[0]
  np.testing.assert_array_equal(image, trained.image)
  np.testing.assert_array_equal(label, trained.label)
  paths = explain_report.explain_case(workdir, "case_t", methods=("saliency",),
                                      output=str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ["case_t_saliency.png"]


def test_without_skip_every_bad_case_is_reported_before_the_error(tmp_path):
  raw = str(tmp_path / "raw")
  writers.write_nnunet_raw(raw, ("case_a", "case_b", "case_c", "case_d"), channel_names=("CT",))
  _corrupt(raw, "case_b", "case_d")
  proc = _main(raw, str(tmp_path / "data"), str(tmp_path / "run"))
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 2, err
  lines = [l for l in err.splitlines() if l.strip()]
  assert [l.split(":")[0] for l in lines] == ["bad case case_b", "bad case case_d", "error"], err
  assert lines[0].startswith("bad case case_b: label: ")
  assert lines[-1].startswith(f"error: 2 bad cases in {raw} (case_b, case_d; first: case case_b")
  assert "skip_bad_cases=True" in lines[-1]
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
