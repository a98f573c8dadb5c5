"""benchmarks/gpu_bench.sh on CPU: its --dry-run lists every step (compiled kernel tests,
kernel microbenchmarks for both dtypes, training rows) in one results file, and every
training command it would run names config fields that exist and pass the config
checks of today's code (so the one GPU call does not die on a renamed field)."""
import importlib
import json
import os
import shlex
import subprocess

import pytest

from benchmarks import train_speed
from medjax.train import config_check, tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_bench.sh")


def _dry_run(tmp_path):
  out = tmp_path / "gpu_bench.json"
  proc = subprocess.run([SCRIPT, "--dry-run", "--out", str(out)], capture_output=True,
                        text=True, timeout=60, env=dict(os.environ, PYTHON="python"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(out.read_text()), proc


@pytest.mark.e2e
def test_dry_run_writes_every_step(tmp_path):
  result, proc = _dry_run(tmp_path)
  steps = result["steps"]
  assert result["dry_run"] is True and len(result["commit"]) >= 7
  assert list(steps)[:5] == ["env", "tests", "kernels_float32", "kernels_bfloat16",
                             "mlperf_step"]
  train = [n for n in steps if n.startswith("train_")]
  assert sorted(train) == sorted(f"train_{net}_{dt}_{k}" for net in ("unet3d", "vnet")
                                 for dt in ("float32", "bfloat16") for k in ("pallas", "xla"))
  assert all(s["status"] == "dry-run" and s["json"] is None for s in steps.values())
  assert steps["tests"]["command"].startswith("env MEDJAX_KERNEL_TESTS=compiled ")
  assert "tests/test_kernel_conv3d.py tests/test_kernel_soft_dice.py" in steps["tests"]["command"]
  for dt in ("float32", "bfloat16"):
    assert f"bench_kernels --shapes all --dtype {dt}" in steps[f"kernels_{dt}"]["command"]
    assert "--torch" in steps[f"kernels_{dt}"]["command"]
  assert "--torch" in steps["train_unet3d_float32_xla"]["command"]
  assert proc.stderr.count("== ") == len(steps)  # each command printed


@pytest.mark.e2e
def test_training_commands_are_valid_configs(tmp_path):
  result, _ = _dry_run(tmp_path)
  for name, s in result["steps"].items():
    if not name.startswith("train_"):
      continue
    args = [a.replace("--set=", "--set ", 1) for a in shlex.split(s["command"])]
    args = [b for a in args for b in (a.split(" ", 1) if a.startswith("--set ") else [a])]
    path = next(a.split("=", 1)[1] for a in args if a.startswith("--config="))
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    config = module.get_config()
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    train_speed.apply_sets(config, sets)
    config.kernels = args[args.index("--kernels") + 1]
    config.dtype = args[args.index("--dtype") + 1]
    config_check.validate(config)
    tasks.get_task(config.task).validate(config)
    assert tuple(config.patch_size) == (128, 128, 128), name
    assert config.model.features[0] in (16, 32), name


def test_mlperf_step_command_is_valid(tmp_path):
  """The MLPerf step's flags exist and build the benchmark's config (bf16, 128^3, batch 2)."""
  from absl import flags as absl_flags
  from benchmarks import mlperf_step
  from medjax.train.model_factory import build_model
  result, _ = _dry_run(tmp_path)
  args = shlex.split(result["steps"]["mlperf_step"]["command"])
  assert args[1:3] == ["-m", "benchmarks.mlperf_step"]
  values = absl_flags.FlagValues()
  mlperf_step.define_flags(values)
  values(["mlperf_step"] + args[3:])
  assert values.kernels == ["auto", "xla"] and values.torch and values.dtype == "bfloat16"
  config = mlperf_step.step_config(patch=values.patch, batch=values.batch, kernels="auto",
                                   dtype=values.dtype)
  config.num_steps = 1  # an MLPerf config's step count comes from its epochs at run time
  config_check.validate(config)
  tasks.get_task(config.task).validate(config)
  assert tuple(config.patch_size) == (128, 128, 128) and config.global_batch_size == 2
  assert type(build_model(config)).__name__ == "MLPerfUNet3D"


@pytest.mark.e2e
def test_unknown_argument_is_one_line():
  proc = subprocess.run([SCRIPT, "--bogus"], capture_output=True, text=True, timeout=30)
  assert proc.returncode == 2
  assert proc.stderr.strip() == ("error: unknown argument '--bogus' (expected --out FILE, "
                                 "--wheels DIR, --dry-run, --fetch-wheels)")
