"""End to end: train + evaluate + report, resume after kill -9, multi-host, bad input."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.configs import unet3d_synthetic
from medjax.errors import InputError
from medjax.train import loop

from helpers import launcher_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "unet3d_synthetic.py")


def smoke_config(data_dir, **overrides):
  c = unet3d_synthetic.get_config("smoke")
  c.data_dir = data_dir
  for k, v in overrides.items():
    target = c
    *parents, leaf = k.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = v
  return c


def _main(workdir, data_dir, *flags, devices=4, **popen):
  cmd = [sys.executable, "-m", "experiments.main", f"--config={CONFIG}:smoke",
         f"--workdir={workdir}", f"--config.data_dir={data_dir}", *flags]
  return subprocess.Popen(cmd, cwd=REPO, env=launcher_env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **popen)


def _final_params(workdir):
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = mngr.latest_step()
  tree = mngr.restore(step, args=ocp.args.StandardRestore())
  mngr.close()
  return step, tree["params"]


@pytest.mark.e2e
def test_train_and_evaluate_writes_the_workdir(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  results = loop.train_and_evaluate(smoke_config(data_dir), workdir)
  for name in ("config.json", "metrics.jsonl", "eval.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, "eval.json")) as f:
    saved = json.load(f)
  assert saved["dice/organ"] == pytest.approx(results["dice/organ"])
  assert 0.0 <= saved["dice/organ"] <= 1.0 and 0.0 <= saved["dice/tumour"] <= 1.0
  assert len(saved["per_case"]) == 2
  assert {"case", "dice/organ", "dice/tumour", "hd95/organ"} <= set(saved["per_case"][0])
  # the mean is the mean of the per-case values
  assert saved["dice/organ"] == pytest.approx(np.mean([c["dice/organ"] for c in saved["per_case"]]))
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert {"loss", "learning_rate", "steps_per_sec"} <= set(rows[0])
  assert all(np.isfinite(r["loss"]) for r in rows)
  report = sorted(os.listdir(os.path.join(workdir, "report")))
  assert "learning_curves.png" in report and any(r.startswith("case_0") for r in report)
  assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))
  step, _ = _final_params(workdir)
  assert step == 6


@pytest.mark.e2e
def test_resume_after_kill_9_gives_the_uninterrupted_parameters(tmp_path, data_dir):
  steps = ["--config.num_steps=20", "--config.checkpoint_every=5", "--config.eval.report_cases=0"]
  ref = _main(str(tmp_path / "ref"), data_dir, *steps)
  assert ref.wait(timeout=600) == 0, ref.stderr.read()
  killed_dir = str(tmp_path / "killed")
  proc = _main(killed_dir, data_dir, *steps)
  ckpt = os.path.join(killed_dir, "checkpoints", "5")  # killed with 15 steps to go
  deadline = time.time() + 600
  while not os.path.exists(ckpt) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  partial_step, partial = _final_params(killed_dir)
  again = _main(killed_dir, data_dir, *steps)
  out, err = again.communicate(timeout=600)
  assert again.returncode == 0, err
  assert "resumed" in out
  # output redirected to a pipe: no progress bar, one line per log interval (log_every=1)
  assert "\r" not in err and "step 20/20: loss" in out
  assert len([l for l in out.splitlines() if l.startswith("step ")]) == 20 - int(partial_step)
  step_a, params_a = _final_params(str(tmp_path / "ref"))
  step_b, params_b = _final_params(killed_dir)
  assert step_a == step_b == 20
  import jax
  leaves_a, leaves_b = jax.tree.leaves(params_a), jax.tree.leaves(params_b)
  assert not all(np.array_equal(a, p) for a, p in zip(leaves_a, jax.tree.leaves(partial)))
  for a, b in zip(leaves_a, leaves_b, strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.e2e
def test_sigterm_saves_a_checkpoint_and_stops(tmp_path, data_dir):
  workdir = str(tmp_path / "term")
  proc = _main(workdir, data_dir, "--config.num_steps=400", "--config.checkpoint_every=100",
               "--config.log_every=1")
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 600
  while proc.poll() is None and time.time() < deadline:
    if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 3:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  # non-zero, so `main && predict` stops: 128 + SIGTERM, as a shell reports a process it killed
  assert proc.returncode == 143, err
  assert re.search(r"SIGTERM: saved step \d+; re-run the same command to resume", err), err
  step, _ = _final_params(workdir)
  assert 3 <= step < 100  # saved at the step it stopped, not at a regular interval
  assert not os.path.exists(os.path.join(workdir, "eval.json"))


@pytest.mark.e2e
def test_two_processes_match_one_process_on_four_devices(tmp_path, data_dir):
  """2 processes x 2 CPU devices (jax.distributed on localhost, gloo) give the
  loss trajectory of 1 process x 4 devices."""
  import portpicker
  flags = ["--config.num_steps=4", "--config.global_batch_size=4",
           "--config.eval.report_cases=0"]
  # all three at once: the two layouts compile different programs (nothing to share through
  # the compilation cache), and the pair waits on each other in its collectives
  single = _main(str(tmp_path / "single"), data_dir, *flags, devices=4)
  port = portpicker.pick_unused_port()
  procs = [_main(str(tmp_path / "multi"), data_dir, *flags, f"--coordinator_address=localhost:{port}",
                 "--num_processes=2", f"--process_id={i}", devices=2) for i in range(2)]
  for p in [single] + procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err

  def losses(d):
    return [json.loads(line)["loss"] for line in open(os.path.join(d, "metrics.jsonl"))]
  a, b = losses(str(tmp_path / "single")), losses(str(tmp_path / "multi"))
  assert len(a) == len(b) == 4
  np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.e2e
@pytest.mark.parametrize("flag,expected", [
    ("--config.no_such_field=1", "no_such_field"),
    ("--config.num_steps=many", "num_steps"),
    ("--config.parallel=mpi", "config.parallel"),
    ("--config.loss.name=l2", "loss.name"),
])
def test_bad_config_is_one_line_error(tmp_path, data_dir, flag, expected):
  proc = _main(str(tmp_path / "bad"), data_dir, flag)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 2
  lines = [l for l in err.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], err
  assert "Traceback" not in err


def test_incompatible_workdir_is_refused_and_kept(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  config = smoke_config(data_dir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json())
  before = open(os.path.join(workdir, "config.json")).read()
  other = smoke_config(data_dir, **{"model.features": (8, 16)})
  with pytest.raises(InputError, match="model"):
    loop.train_and_evaluate(other, workdir)
  assert open(os.path.join(workdir, "config.json")).read() == before


@pytest.mark.e2e
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, monkeypatch):
  import jax.numpy as jnp
  real = loop.build_loss

  def poisoned(config):
    fn = real(config)
    return lambda logits, labels: fn(logits, labels) * jnp.where(
        jnp.max(jnp.abs(logits)) > -1, jnp.nan, 1.0)
  workdir = str(tmp_path / "nan")
  monkeypatch.setattr(loop, "build_loss", poisoned)
  with pytest.raises(loop.NonFiniteLossError, match="step 1"):
    loop.train_and_evaluate(smoke_config(data_dir), workdir)
  assert not os.path.exists(os.path.join(workdir, "eval.json"))
