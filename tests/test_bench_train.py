"""`python -m benchmarks.bench_train` end to end on the smoke config, and its PyTorch baseline."""
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import torch_unet
from medjax.errors import InputError
from medjax.models import UNet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_TORCH = importlib.util.find_spec("torch") is not None


@pytest.mark.e2e
def test_bench_train_writes_its_json_on_the_smoke_config(tmp_path, data_dir):
  out = tmp_path / "bench.json"
  cmd = [sys.executable, "-m", "benchmarks.bench_train",
         f"--config={REPO}/experiments/configs/unet3d_synthetic.py:smoke",
         f"--set=data_dir={data_dir}", "--set=num_steps=20", "--dtype=bfloat16",
         "--steps=2", "--input_batches=3", "--inference_volumes=1", f"--json={out}"]
  if HAVE_TORCH:  # the baseline is optional; with torch installed it is exercised too
    cmd.append("--torch")
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  r = json.loads(out.read_text())
  assert r["config"]["dtype"] == "bfloat16" and r["config"]["patch_size"] == [8, 16, 16]
  train = r["train"]
  assert train["steps"] == 2 and train["voxels_per_step"] == 4 * 8 * 16 * 16
  assert 0 < train["step_min_s"] <= train["step_median_s"] <= train["step_max_s"]
  assert np.isclose(train["steps_per_s"], 1 / train["step_median_s"])
  assert np.isclose(train["voxels_per_s"], train["voxels_per_step"] / train["step_median_s"])
  assert train["compile_cold_s"] > 0 and train["compile_warm_s"] > 0 and train["cache_entries"] >= 1
  assert train["params"] == 3415  # the smoke U-Net (4, 8 features, 1x3x3 top level, batch norm)
  assert train["compiled_memory"]["temp_size_in_bytes"] > 0 and train["saved_residual_bytes"] > 0
  assert train["init_s"] > 0
  assert r["memory"]["peak_rss_mb"] > 100
  assert r["input"]["batches"] == 3 and r["input"]["batches_per_s"] > 0
  assert r["inference"]["volumes"] == 1 and r["inference"]["volumes_per_min"] > 0
  if HAVE_TORCH:
    assert r["torch"]["params"] == train["params"] and r["torch"]["same_parameters"]
    assert np.isclose(r["torch_ratio"], train["step_median_s"] / r["torch"]["step_median_s"])
  else:
    assert r["torch"] is None


def test_perf_unet_has_the_same_parameters_in_both_frameworks():
  torch = pytest.importorskip("torch")
  del torch
  model_cfg = dict(features=(16, 32, 64, 128))
  x = jax.ShapeDtypeStruct((1, 16, 16, 16, 1), np.float32)
  variables = jax.eval_shape(lambda x: UNet(num_classes=2, **model_cfg).init(jax.random.key(0), x), x)
  medjax_count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
  net = torch_unet.build_unet(model_cfg, in_channels=1, num_classes=2)
  assert medjax_count == torch_unet.count_parameters(net) == 1_400_578  # PERF_BASELINE.md


def test_torch_flag_without_torch_is_one_line_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  with pytest.raises(InputError, match=r"^--torch: PyTorch is not installed"):
    torch_unet.require_torch()


def test_set_overrides_parse_literals_and_name_bad_fields():
  from benchmarks import train_speed
  from experiments.configs import unet3d_synthetic
  c = unet3d_synthetic.get_config("smoke")
  train_speed.apply_sets(c, ["model.features=16,32", "model.kernel_sizes=None",
                             "optimizer.learning_rate=1", "dtype=bfloat16"])
  assert c.model.features == (16, 32) and c.model.kernel_sizes is None
  assert c.optimizer.learning_rate == 1.0 and c.dtype == "bfloat16"
  with pytest.raises(InputError, match="--set='model.nope=3'"):
    train_speed.apply_sets(c, ["model.nope=3"])


@pytest.mark.parametrize("variant", ["", "3d", "smoke"])
def test_resnet_patch_classifier_has_the_same_parameters_in_both_frameworks(variant):
  pytest.importorskip("torch")
  from experiments.configs import resnet_patches2d
  from medjax.models import ResNet
  c = resnet_patches2d.get_config(variant)
  model_cfg = c.model.to_dict()
  kwargs = {k: v for k, v in model_cfg.items() if k != "name"}
  x = jax.ShapeDtypeStruct((1,) + tuple(c.patch_size) + (1,), np.float32)
  variables = jax.eval_shape(
      lambda x: ResNet(num_classes=c.num_classes, **kwargs).init(jax.random.key(0), x), x)
  medjax_count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
  net = torch_unet.build_model(model_cfg, in_channels=1, num_classes=c.num_classes)
  assert medjax_count == torch_unet.count_parameters(net) > 0
  y = net(__import__("torch").zeros((2, 1) + tuple(c.patch_size)))
  assert tuple(y.shape) == (2, c.num_classes)


def test_unet2d_has_the_same_parameters_in_both_frameworks():
  pytest.importorskip("torch")
  from experiments.configs import unet2d_synthetic
  c = unet2d_synthetic.get_config()
  kwargs = {k: v for k, v in c.model.to_dict().items() if k != "name"}
  x = jax.ShapeDtypeStruct((1, 32, 32, 1), np.float32)
  variables = jax.eval_shape(
      lambda x: UNet(num_classes=c.num_classes, **kwargs).init(jax.random.key(0), x), x)
  medjax_count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
  net = torch_unet.build_model(c.model.to_dict(), in_channels=1, num_classes=c.num_classes)
  assert medjax_count == torch_unet.count_parameters(net)
