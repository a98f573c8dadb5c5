"""A run on a folder dataset: its plan applied and inverted by the predictor
(predictions on the input's own grid)."""
import os
import types

import dataset_writers as writers
import ml_collections
import nibabel as nib
import numpy as np
import pytest

from experiments.configs import unet3d_folder
from medjax import metrics
from medjax.data import io
from medjax.data.builders import folder_datasets
from medjax.data.preprocessing import fingerprint, planning
from medjax.errors import InputError
from medjax.inference import predict_files
from medjax.inference.run_predictor import RunPredictor
from medjax.train import run, config_data
from medjax.train.workdir import Workdir


def _sphere(shape, spacing, centre_mm, radius_mm):
  grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)],
                              indexing="ij"), -1)
  return np.linalg.norm(grid - np.asarray(centre_mm), axis=-1) <= radius_mm


class ThresholdSegmenter:
  """Stands in for a network: class 1 where the (normalised) image is > 0."""

  def __init__(self):
    self.shapes = []

  def __call__(self, image):
    self.shapes.append(image.shape)
    p1 = 1.0 / (1.0 + np.exp(-4.0 * image[..., 0]))
    probs = np.stack([1.0 - p1, p1], -1).astype(np.float32)
    return probs.argmax(-1).astype(np.uint8), probs


def _predictor(plan=None):
  config = ml_collections.ConfigDict({"patch_size": (8, 8, 8), "in_channels": 1,
                                      "class_names": ("background", "organ")})
  segmenter = ThresholdSegmenter()
  return RunPredictor(config, segmenter, plan), segmenter


def _case(shape, spacing):
  """A sphere of +100 in a body of 0 inside a zero border (cropped away by the plan)."""
  body = np.zeros(shape, bool)
  body[1:-1, 2:-2, 2:-3] = True
  sphere = _sphere(shape, spacing, [n * s / 2 for n, s in zip(shape, spacing)], 6.0)
  image = np.where(body, np.where(sphere, 100.0, -20.0), 0.0).astype(np.float32)
  image = image + np.where(body, np.random.default_rng(0).normal(0, 5, shape), 0).astype(np.float32)
  return image, (sphere & body).astype(np.uint8)


def test_predict_volume_without_a_plan_is_predict():
  predictor, segmenter = _predictor()
  image = np.random.default_rng(1).normal(size=(6, 7, 8)).astype(np.float32)
  volume = types.SimpleNamespace(array=image, spacing=(2.0, 1.0, 1.0), affine=np.eye(4))
  labels, probs = predictor.predict_volume(volume)
  assert segmenter.shapes == [(6, 7, 8, 1)]
  np.testing.assert_array_equal(labels, (image > 0).astype(np.uint8))
  assert probs.shape == (6, 7, 8, 2) and not predictor.has_plan


def test_predict_volume_applies_the_plan_and_returns_the_native_grid():
  # The plan of a dataset at (1.5, 1, 1) mm; the volume to segment is at (3, 0.7, 0.9) mm.
  train_image, train_label = _case((20, 24, 24), (1.5, 1.0, 1.0))
  case = fingerprint.case_fingerprint(train_image[..., None], train_label, (1.5, 1.0, 1.0))
  plan = planning.make_plan(fingerprint.dataset_fingerprint([case], ["T1"]), num_classes=2)
  assert plan["target_spacing"] == [1.5, 1.0, 1.0]
  predictor, segmenter = _predictor(plan)
  image, truth = _case((10, 30, 26), (3.0, 0.7, 0.9))
  affine = np.array([[0.0, 0.7, 0.1, -5.0], [3.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.9, 7.0],
                     [0, 0, 0, 1]])
  labels, probs = predictor.predict_volume(
      types.SimpleNamespace(array=image, spacing=(3.0, 0.7, 0.9), affine=affine))
  # segmented on the plan's grid: the 8x26x21 crop of the body at 1.5 x 1 x 1 mm
  assert segmenter.shapes == [(16, 18, 19, 1)]
  assert labels.shape == image.shape and labels.dtype == np.uint8
  assert probs.shape == (*image.shape, 2) and probs.dtype == np.float32
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(labels, probs.argmax(-1))
  assert metrics.dice(labels == 1, truth == 1) > 0.9
  # outside the crop box (the zero border): background with probability 1
  assert labels[0].max() == 0 and np.all(probs[0, ..., 0] == 1.0)
  with pytest.raises(InputError, match=r"^image: 2 channel\(s\); the model expects 1"):
    predictor.predict_volume(types.SimpleNamespace(array=np.zeros((10, 30, 26, 2), np.float32),
                                                   spacing=(3.0, 0.7, 0.9), affine=affine))


@pytest.mark.e2e
def test_unet3d_folder_trains_on_an_nnunet_raw_folder_and_predicts_on_the_input_grid(tmp_path):
  raw = tmp_path / "Dataset007_Tiny"
  cases = ("case_a", "case_b", "case_c", "case_d")
  truth = writers.write_nnunet_raw(str(raw), cases + ("case_bad",), channel_names=("CT",),
                                   test_cases=("case_t",))
  bad_label = raw / "labelsTr" / "case_bad.nii.gz"
  bad_label.write_bytes(b"not a NIfTI file")  # corrupt: skipped, the rest trains
  config = unet3d_folder.get_config("smoke")
  config.data_dir = str(tmp_path / "data")
  config.dataset_kwargs.manual_dir = str(raw)
  config.dataset_kwargs.skip_bad_cases = True
  results = run.train_and_evaluate(config, str(tmp_path / "run"))
  skipped = folder_datasets.prepared_metadata(config_data.folder_builder(config))["skipped"]
  assert [s["case"] for s in skipped] == ["case_bad"] and "case_bad" in skipped[0]["reason"]
  assert [c["case"] for c in results["per_case"]] == ["case_t"]  # the labelled imagesTs
  assert 0.0 <= results["dice/organ"] <= 1.0
  workdir = Workdir(str(tmp_path / "run"))
  splits = workdir.read_splits()
  assert (splits["fold"], splits["num_folds"], splits["test"]) == (0, 2, ["case_t"])
  assert sorted(splits["train"] + splits["validation"]) == list(cases)
  assert len(splits["validation"]) == 2
  plan = workdir.read_plan()
  saved = workdir.read_config()  # the fields the plan and dataset.json filled in
  assert (saved.num_classes, saved.class_names, saved.in_channels) == (
      3, ("background", "organ", "lesion"), 1)
  assert list(saved.patch_size) == plan["patch_size"]
  assert [list(k) for k in saved.model.kernel_sizes] == plan["kernel_sizes"][:2]
  assert saved.normalization == "none"
  deeper = unet3d_folder.get_config("smoke")
  deeper.data_dir, deeper.dataset_kwargs.manual_dir = config.data_dir, str(raw)
  deeper.dataset_kwargs.skip_bad_cases = True
  deeper.model.features = (4, 8, 16, 32, 64, 128, 256)
  with pytest.raises(InputError, match=r"config.model.features=\(4, .*\): 7 levels, but the plan"):
    config_data.resolve_dataset(deeper)
  deeper.model.features, deeper.patch_size = (4,), (8, 8, 8)  # set fields are kept
  resolved = config_data.resolve_dataset(deeper)
  assert resolved.patch_size == (8, 8, 8) and resolved.model.pool_sizes == ()
  assert resolved.model.kernel_sizes == (tuple(plan["kernel_sizes"][0]),)
  config.dataset_kwargs.fold = 1  # another fold's run cannot resume this one
  with pytest.raises(InputError, match=r"holds a run with dataset_kwargs.fold=0"):
    run.train_and_evaluate(config, str(tmp_path / "run"))

  # experiments.predict (in process) on a raw test image: RunPredictor.predict_volume applies
  # plan.json and maps the result back; the written NIfTI has the input's grid exactly.
  path = os.path.join(raw, "imagesTs", "case_t_0000.nii.gz")
  skipped = predict_files.predict_folder(str(tmp_path / "run"), path, str(tmp_path / "out"),
                                   probabilities=True, postprocess=False, log=lambda line: None)
  volume = io.read_image(path)
  seg = io.read_image(str(tmp_path / "out" / "case_t_0000_seg.nii.gz"))
  assert skipped == 0 and seg.array.shape == volume.array.shape == truth["case_t"]["label"].shape
  np.testing.assert_array_equal(seg.affine, volume.affine)
  np.testing.assert_allclose(volume.affine, truth["case_t"]["affine"], atol=1e-5)
  probs = nib.load(str(tmp_path / "out" / "case_t_0000_probs.nii.gz")).get_fdata()
  assert probs.shape == (*volume.array.shape[::-1], 3)  # NIfTI voxel axes reversed, classes last
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-3)
  # labels = argmax of the probabilities, where the 2-byte storage cannot flip it
  top = np.sort(probs, -1)
  clear = (top[..., -1] - top[..., -2] > 1e-3).transpose(2, 1, 0)
  assert clear.mean() > 0.5
  np.testing.assert_array_equal(seg.array[clear], probs.argmax(-1).transpose(2, 1, 0)[clear])
  # --uncertainty on a run with a plan: the entropy map comes back on the input's grid too
  # (resampled linearly like the probabilities), with the same labels
  assert predict_files.predict_folder(str(tmp_path / "run"), path, str(tmp_path / "out_u"),
                                uncertainty=True, postprocess=False,
                                log=lambda line: None) == 0
  entropy = io.read_image(str(tmp_path / "out_u" / "case_t_0000_entropy.nii.gz"))
  assert entropy.array.shape == volume.array.shape and entropy.array.dtype == np.float32
  np.testing.assert_array_equal(entropy.affine, volume.affine)
  assert 0.0 <= entropy.array.min() and entropy.array.max() <= np.log(3) + 1e-5
  seg_u = io.read_image(str(tmp_path / "out_u" / "case_t_0000_seg.nii.gz")).array
  np.testing.assert_array_equal(seg_u, seg.array)
  p = np.clip(probs.transpose(2, 1, 0, 3), 1e-12, 1.0)
  h = -(p * np.log(p)).sum(-1)  # entropy of the written (2-byte) probabilities
  assert float(np.abs(entropy.array - h).mean()) < 1e-3 and float(np.abs(entropy.array - h).max()) < 0.05
