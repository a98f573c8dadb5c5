"""Cascaded FCNs: two ordinary runs, one joint predictor (`medjax.inference.cascade_predict`),
used by evaluation and by `experiments.predict --workdir=<cascade run>`."""
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from experiments.configs import cascade_synthetic
from medjax import inference
from medjax.data import io
from medjax.data.phantoms import organ_ct
from medjax.data.pipeline import transforms
from medjax.data.pipeline.crop import OrganCropSource, crop_to_bbox, organ_bbox, paste_from_bbox
from medjax.errors import InputError
from medjax.inference import run_predictor
from medjax.train import loop, run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cascade_run(tmp_path_factory, data_dir):
  config = cascade_synthetic.get_config("smoke")
  config.data_dir = data_dir
  config.num_steps = 2
  config.eval.report_cases = 1
  workdir = tmp_path_factory.mktemp("cascade")
  results = run.train_and_evaluate(config, str(workdir))
  return {"config": config, "workdir": workdir, "results": results}


@pytest.mark.e2e
def test_cascade_trains_both_stages_and_scores_the_joint_map(cascade_run):
  workdir, results = cascade_run["workdir"], cascade_run["results"]
  assert {"dice/organ", "dice/tumour", "per_case"} <= set(results)
  assert len(results["per_case"]) == 2
  assert sorted(c["case"] for c in results["per_case"]) == ["test_00000", "test_00001"]
  for stage in ("stage1", "stage2"):
    rows = [json.loads(l) for l in open(workdir / stage / "metrics.jsonl")]
    assert rows[-1]["step"] == 2
    assert os.path.isdir(workdir / stage / "checkpoints")
  stage2 = json.loads((workdir / "stage2" / "config.json").read_text())
  assert stage2["label_map"] == [0, 0, 1] and stage2["num_classes"] == 2
  assert stage2["task"] == "segmentation"
  assert json.loads((workdir / "eval.json").read_text())["dice/organ"] == pytest.approx(
      results["dice/organ"])
  assert json.loads((workdir / "config.json").read_text())["task"] == "cascade"
  first = results["per_case"][0]["case"]
  assert any(n.startswith(f"case_0_{first}") for n in os.listdir(workdir / "report"))


@pytest.mark.e2e
def test_loaded_cascade_reproduces_the_evaluation(cascade_run):
  """`load_predictor` on the cascade workdir segments a test case as the evaluation did."""
  config, workdir = cascade_run["config"], cascade_run["workdir"]
  loaded = run_predictor.load_predictor(str(workdir))
  assert isinstance(loaded.segmenter, run_predictor.CascadeSegmenter)
  assert loaded.class_names == ("background", "organ", "tumour")
  from medjax import metrics
  from medjax.train.config_data import load_split
  case = load_split(config, "test")[0]
  labels, probs = loaded.predict(np.asarray(case["image"]))
  assert labels.shape == case["label"].shape and probs.shape == labels.shape + (3,)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  dice = metrics.dice(labels == 1, np.asarray(case["label"]) == 1)
  scored = cascade_run["results"]["per_case"][0]
  # The predictor's labels are before post-processing: compare with the raw scores when a rule was kept.
  assert dice == pytest.approx(scored.get("raw", scored)["dice/organ"], abs=1e-6)


@pytest.mark.e2e
def test_predict_accepts_a_cascade_workdir(cascade_run, tmp_path):
  workdir = cascade_run["workdir"]
  image, _ = organ_ct.make_volume(7, shape=(16, 32, 32))
  affine = np.diag([0.8, 0.8, 2.5, 1.0])
  io.write_nifti(tmp_path / "scan.nii.gz", image, affine)
  out = tmp_path / "out"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run(
      [sys.executable, "-m", "experiments.predict", f"--workdir={workdir}",
       f"--input={tmp_path / 'scan.nii.gz'}", f"--output={out}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  seg = io.read_image(out / "scan_seg.nii.gz").array
  expected = run_predictor.load_predictor(str(workdir)).segment(image)
  np.testing.assert_array_equal(seg, expected)


def test_loop_refuses_a_cascade_config(tmp_path):
  config = cascade_synthetic.get_config("smoke")
  with pytest.raises(InputError, match="config.cascade"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_organ_crop_source_crops_to_the_labelled_box():
  label = np.zeros((10, 12, 14), np.uint8)
  label[3:5, 4:8, 5:6] = 1
  label[4, 5, 5] = 2
  image = np.arange(label.size, dtype=np.float32).reshape(label.shape)
  src = OrganCropSource([{"image": image, "label": label}], margin=(1, 2, 3))
  out = src[0]
  assert out["label"].shape == (4, 8, 7)  # (2+2, 4+4, 1+6)
  np.testing.assert_array_equal(out["image"], image[2:6, 2:10, 2:9])
  assert out["label"].sum() == label.sum()


def _stage_predictors(organ, seen):
  """Window predictors over fake networks: stage 1 returns `organ`; stage 2 a
  2x2x2 tumour at (1:3, 2:4, 2:4) of its crop; both record what they see."""

  def organ_fn(x):
    seen["stage1"] = x
    return np.stack([~organ, organ], -1)[None].repeat(len(x), 0).astype(np.float32)

  def tumour_fn(x):
    seen["stage2"] = x[0]
    p = np.zeros(x.shape[:-1] + (2,), np.float32)
    p[..., 0] = 1.0
    p[:, 1:3, 2:4, 2:4] = (0.0, 1.0)
    return p
  window = dict(roi_size=(8, 16, 16), overlap=0.0, mode="constant", batch_size=1,
                normalize=transforms.normalize_ct_channels)
  return (inference.WindowPredictor(organ_fn, **window),
          inference.WindowPredictor(tumour_fn, **window))


def test_cascade_stage2_sees_the_crop_normalised_as_in_training():
  """Stage 2 was trained on organ-box crops z-scored with their own statistics;
  at test time it must get the same (not a crop of the normalised volume)."""
  rng = np.random.default_rng(0)
  image = rng.normal(0, 100, size=(8, 16, 16)).astype(np.float32)
  image[2:6, 4:12, 4:12] += 150.0
  organ = np.zeros(image.shape, bool)
  organ[2:6, 4:12, 4:12] = True
  seen = {}
  organ_fn, tumour_fn = _stage_predictors(organ, seen)
  joint, probs = inference.cascade_predict(organ_fn, tumour_fn, image[..., None],
                                           margin=(0, 0, 0), probabilities=True)
  np.testing.assert_allclose(seen["stage1"][0, ..., 0], transforms.normalize_ct(image), rtol=1e-6)
  crop = image[2:6, 4:12, 4:12]
  np.testing.assert_allclose(seen["stage2"][:4, :8, :8, 0], transforms.normalize_ct(crop),
                             rtol=1e-5, atol=1e-5)
  assert set(np.unique(joint)) == {0, 1, 2}
  assert (joint == 2).sum() == 2 * 2 * 2 and (joint[~organ] == 0).all()
  assert (joint[2:6, 4:12, 4:12][1:3, 2:4, 2:4] == 2).all()
  np.testing.assert_array_equal(probs.argmax(-1), joint)  # certain stages: the rule's labels
  np.testing.assert_allclose(probs.sum(-1), 1.0)


def test_cascade_removes_lesions_outside_the_organ_and_handles_no_organ():
  organ = np.zeros((4, 8, 8), bool)
  organ[1:3, 2:6, 2:6] = True
  organ[1, 2, 2] = False  # a hole in the organ, inside its box
  everywhere = lambda x: np.stack([np.zeros(x.shape[:-1]), np.ones(x.shape[:-1])], -1)
  joint = inference.cascade_predict(lambda x: np.stack([~organ, organ], -1).astype(float),
                                    everywhere, np.zeros((4, 8, 8, 1)), margin=1)
  np.testing.assert_array_equal(joint == 2, organ)  # lesion only where the organ is
  assert joint[1, 2, 2] == 0
  none = inference.cascade_predict(lambda x: np.stack([np.ones(x.shape[:-1]),
                                                       np.zeros(x.shape[:-1])], -1),
                                   everywhere, np.zeros((4, 8, 8, 1)), margin=1)
  assert not none.any()


def test_cascade_honours_each_stage_mirror_axes():
  """The joint predictor runs each stage's test-time mirroring (the old one ignored it)."""
  calls = []

  def organ_fn(x):
    calls.append(x.copy())
    return np.stack([np.zeros(x.shape[:-1]), np.ones(x.shape[:-1])], -1)
  window = dict(roi_size=(4, 8, 8), overlap=0.0, mode="constant", batch_size=1)
  mirrored = inference.WindowPredictor(organ_fn, mirror_axes=(2,), **window)
  lesion = inference.WindowPredictor(lambda x: np.stack([np.ones(x.shape[:-1]),
                                                         np.zeros(x.shape[:-1])], -1), **window)
  image = np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8, 1)
  inference.cascade_predict(mirrored, lesion, image, margin=0)
  assert len(calls) == 2
  np.testing.assert_array_equal(calls[1], calls[0][:, :, :, ::-1])


def test_stage_configs_merge_the_overrides():
  config = cascade_synthetic.get_config("smoke")
  stage1, stage2 = run_predictor.stage_configs(config)
  assert stage1.task == stage2.task == "segmentation"
  assert "cascade" not in stage1 and tuple(stage1.label_map) == (0, 1, 1)
  assert tuple(stage2.crop_margin) == (2, 6, 6) and stage2.num_classes == 2
  assert stage1.model.features == config.model.features
  assert isinstance(stage2.eval, ml_collections.ConfigDict)


def test_organ_bbox_crop_paste_roundtrip():
  mask = np.zeros((10, 12), bool)
  mask[3:5, 4:9] = True
  assert organ_bbox(mask, 0) == (slice(3, 5), slice(4, 9))
  assert organ_bbox(mask, 2) == (slice(1, 7), slice(2, 11))
  assert organ_bbox(mask, (4, 10)) == (slice(0, 9), slice(0, 12))  # clipped
  assert organ_bbox(np.zeros((4, 4)), 3) is None
  image = np.arange(10 * 12 * 2).reshape(10, 12, 2)
  bbox = organ_bbox(mask, 1)
  crop = crop_to_bbox(image, bbox)
  assert crop.shape == (4, 7, 2)
  pasted = paste_from_bbox(crop, bbox, (10, 12), fill=-1)
  assert pasted.shape == (10, 12, 2)
  np.testing.assert_array_equal(pasted[bbox], image[bbox])
  outside = np.ones((10, 12), bool)
  outside[bbox] = False
  assert np.all(pasted[outside] == -1)


def _indicator_logits(x, channel):
  """Two-class logits that mark voxels where channel `channel` of x is > 0.5."""
  on = (x[..., channel] > 0.5).astype(np.float32)
  return np.stack([1.0 - on, on], axis=-1)


def test_cascade_predict_removes_lesions_outside_organ():
  organ = np.zeros((20, 24), bool)
  organ[4:12, 6:16] = True
  lesion = np.zeros((20, 24), bool)
  lesion[6:8, 8:10] = True      # inside the organ: kept
  lesion[12:14, 10:12] = True   # inside the margin box but outside the organ: removed
  lesion[17:19, 20:22] = True   # far outside the box: never seen by stage 2
  image = np.stack([organ, lesion], axis=-1).astype(np.float32)
  seen = []

  def stage2(crop):
    seen.append(crop.shape)
    return _indicator_logits(crop, 1)

  labels = inference.cascade_predict(lambda x: _indicator_logits(x, 0), stage2, image, margin=2)
  expected = np.where(organ, 1, 0)
  expected[6:8, 8:10] = 2
  np.testing.assert_array_equal(labels, expected)
  assert seen == [(12, 14, 2)]  # stage 2 sees the box (2:14, 4:18) only
  empty = inference.cascade_predict(lambda x: _indicator_logits(x, 0), stage2,
                                    np.zeros((8, 8, 2), np.float32), margin=2)
  assert not empty.any() and len(seen) == 1
