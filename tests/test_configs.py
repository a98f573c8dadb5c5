"""Every experiment config trains end to end with its one-step smoke override."""
import json
import os

import pytest

from experiments.configs import (convnet_synthetic2d, fcn_synthetic2d, mlp_synthetic2d,
                                 resnet_patches2d, unet2d_synthetic, unet3d_synthetic,
                                 vnet_synthetic)
from medjax.train import loop

CONFIGS = [
    (mlp_synthetic2d, "smoke", "accuracy"),
    (convnet_synthetic2d, "smoke", "accuracy"),
    (convnet_synthetic2d, "vgg,smoke", "accuracy"),
    (mlp_synthetic2d, "patches,smoke", "accuracy"),
    (convnet_synthetic2d, "vgg,patches,smoke", "accuracy"),
    (resnet_patches2d, "smoke", "accuracy"),
    (resnet_patches2d, "3d,smoke", "accuracy"),
    (fcn_synthetic2d, "smoke", "dice/tumour"),
    (unet2d_synthetic, "smoke", "dice/tumour"),
    (unet3d_synthetic, "smoke", "dice/tumour"),
    (vnet_synthetic, "smoke", "dice/tumour"),
]


@pytest.mark.e2e
@pytest.mark.parametrize("module,variant,metric", CONFIGS,
                         ids=[f"{m.__name__.split('.')[-1]}:{v}" for m, v, _ in CONFIGS])
def test_config_trains_one_step(module, variant, metric, tmp_path, data_dir):
  config = module.get_config(variant)
  config.data_dir = data_dir
  config.num_steps = 1
  config.eval.surface_metrics = False
  config.eval.report_cases = 1
  results = loop.train_and_evaluate(config, str(tmp_path))
  assert 0.0 <= results[metric] <= 1.0
  if config.task == "segmentation":  # the report slice of a 2D or 3D case
    pngs = [n for n in os.listdir(os.path.join(tmp_path, "report")) if n.startswith("case_")]
    assert len(pngs) == 1
  with open(os.path.join(tmp_path, "eval.json")) as f:
    assert json.load(f)[metric] == pytest.approx(results[metric])
  rows = [json.loads(l) for l in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert rows[-1]["step"] == 1 and rows[-1]["loss"] is not None
  # per-case entries carry the dataset's case ids (each test case once)
  cases = [c["case"] for c in results["per_case"]]
  assert sorted(cases) == [f"test_{i:05d}" for i in range(len(cases))]


def test_unknown_variant_is_refused():
  with pytest.raises(ValueError, match="unknown config variant"):
    unet3d_synthetic.get_config("huge")
