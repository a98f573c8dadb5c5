"""Every experiment config trains end to end with its one-step smoke override."""
import json
import os

import numpy as np
import pytest

from experiments.configs import (convnet_synthetic2d, fcn_synthetic2d, mlp_synthetic2d,
                                 unet2d_synthetic, unet3d_synthetic, vnet_synthetic)
from medjax.train import loop

CONFIGS = [
    (mlp_synthetic2d, "smoke", "accuracy"),
    (convnet_synthetic2d, "smoke", "accuracy"),
    (convnet_synthetic2d, "vgg,smoke", "accuracy"),
    (fcn_synthetic2d, "smoke", "dice/tumour"),
    (unet2d_synthetic, "smoke", "dice/tumour"),
    (unet3d_synthetic, "smoke", "dice/tumour"),
    (vnet_synthetic, "smoke", "dice/tumour"),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("datasets"))


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


def test_unknown_variant_is_refused():
  with pytest.raises(ValueError, match="unknown config variant"):
    unet3d_synthetic.get_config("huge")


def test_cascade_trains_both_stages_and_scores_the_joint_map(tmp_path, data_dir):
  from experiments.configs import cascade_synthetic
  config = cascade_synthetic.get_config("smoke")
  config.data_dir = data_dir
  config.num_steps = 1
  config.eval.report_cases = 0
  results = loop.train_and_evaluate(config, str(tmp_path))
  assert {"dice/organ", "dice/tumour", "per_case"} <= set(results)
  assert len(results["per_case"]) == 2
  for stage in ("stage1", "stage2"):
    rows = [json.loads(l) for l in open(os.path.join(tmp_path, stage, "metrics.jsonl"))]
    assert rows[-1]["step"] == 1
  with open(os.path.join(tmp_path, "stage2", "config.json")) as f:
    stage2 = json.load(f)
  assert stage2["label_map"] == [0, 0, 1] and stage2["num_classes"] == 2


def test_organ_crop_source_crops_to_the_labelled_box():
  from medjax.train.cascade import OrganCropSource
  label = np.zeros((10, 12, 14), np.uint8)
  label[3:5, 4:8, 5:6] = 1
  label[4, 5, 5] = 2
  image = np.arange(label.size, dtype=np.float32).reshape(label.shape)
  src = OrganCropSource([{"image": image, "label": label}], margin=(1, 2, 3))
  out = src[0]
  assert out["label"].shape == (4, 8, 7)  # (2+2, 4+4, 1+6)
  np.testing.assert_array_equal(out["image"], image[2:6, 2:10, 2:9])
  assert out["label"].sum() == label.sum()


def test_cascade_stage2_sees_the_crop_normalised_as_in_training():
  """Stage 2 was trained on organ-box crops z-scored with their own statistics;
  at test time it must get the same (not a crop of the normalised volume)."""
  import ml_collections
  from medjax.data import transforms
  from medjax.train.cascade import predict_joint
  rng = np.random.default_rng(0)
  image = rng.normal(0, 100, size=(8, 16, 16)).astype(np.float32)
  image[2:6, 4:12, 4:12] += 150.0
  organ = np.zeros(image.shape, bool)
  organ[2:6, 4:12, 4:12] = True
  seen = {}

  def organ_fn(x):
    seen["stage1"] = x
    return np.stack([~organ, organ], -1)[None].repeat(len(x), 0).astype(np.float32)

  def tumour_fn(x):
    seen["stage2"] = x[0]
    p = np.zeros(x.shape[:-1] + (2,), np.float32)
    p[..., 0] = 1.0
    p[:, 1:3, 2:4, 2:4] = (0.0, 1.0)
    return p
  cfg = ml_collections.ConfigDict({"patch_size": (8, 16, 16), "eval": {
      "overlap": 0.0, "mode": "constant", "batch_size": 1}})
  joint = predict_joint((organ_fn, tumour_fn), image, (cfg, cfg), margin=(0, 0, 0))
  np.testing.assert_allclose(seen["stage1"][0, ..., 0], transforms.normalize_ct(image), rtol=1e-6)
  crop = image[2:6, 4:12, 4:12]
  np.testing.assert_allclose(seen["stage2"][:4, :8, :8, 0], transforms.normalize_ct(crop),
                             rtol=1e-5, atol=1e-5)
  assert set(np.unique(joint)) == {0, 1, 2}
  assert (joint == 2).sum() == 2 * 2 * 2 and (joint[~organ] == 0).all()
