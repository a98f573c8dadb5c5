"""The detection task: patches with boxes, a lesion-free batch, thresholds stored, end to end."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments.configs import retina_unet_nodules
from medjax.data.pipeline import detection_batches
from medjax.data.pipeline.transforms import keep_intensities
from medjax.errors import InputError
from medjax.inference import detect
from medjax.train import detection_scores, loop, tasks
from medjax.train.model_factory import build_model
from medjax.train.workdir import Workdir


def _case(instances: np.ndarray, classes=(0,)) -> dict:
  count = int(instances.max())
  boxes = np.zeros((4, 6), np.float32)
  found, ids = detection_batches.box_ops.boxes_from_instances(instances)
  boxes[ids - 1] = found
  padded = np.full(4, -1, np.int32)
  padded[:count] = classes[:count]
  return {"image": np.random.default_rng(0).normal(size=instances.shape + (1,)).astype(np.float32),
          "instances": instances.astype(np.int16), "boxes": boxes, "classes": padded,
          "num_boxes": np.int32(count), "case": "c0"}


def test_patch_targets_renumber_the_visible_instances_and_clip_their_boxes():
  instances = np.zeros((4, 6, 6), np.int32)
  instances[1:3, 4:6, 0:2] = 3  # lesion 3 cut by the patch border
  instances[0, 0, 0] = 5
  classes = np.array([0, 0, 1, 0, 2])
  mapped, boxes, out_classes, count = detection_batches.patch_targets(instances, classes, 3)
  assert count == 2
  np.testing.assert_array_equal(boxes[:2], [[1, 4, 0, 3, 6, 2], [0, 0, 0, 1, 1, 1]])
  np.testing.assert_array_equal(out_classes, [1, 2, -1])  # classes of ids 3 and 5
  assert mapped[1, 4, 0] == 1 and mapped[0, 0, 0] == 2 and mapped.max() == 2


def test_foreground_patches_hold_the_lesion_and_the_batch_is_resumable():
  instances = np.zeros((16, 32, 32), np.int16)
  instances[10:13, 25:29, 3:7] = 1
  source = [_case(instances)]
  kw = dict(patch_size=(8, 16, 16), global_batch_size=2, seed=3, num_steps=4,
            foreground_fraction=0.5, normalize=keep_intensities, max_boxes=4)
  batches = list(detection_batches.detection_batches(source, **kw))
  assert all(b["num_boxes"][1] == 1 for b in batches)  # the forced sample sees the lesion
  for b in batches:
    assert b["image"].shape == (2, 8, 16, 16, 1) and b["boxes"].shape == (2, 4, 6)
    for i in range(2):
      k = int(b["num_boxes"][i])
      assert k == int(b["instances"][i].max())
      found, _ = detection_batches.box_ops.boxes_from_instances(b["instances"][i])
      np.testing.assert_array_equal(b["boxes"][i, :k], found)
  resumed = list(detection_batches.detection_batches(source, **kw, start_step=2))
  np.testing.assert_array_equal(resumed[0]["image"], batches[2]["image"])


def _smoke_config(data_dir, variant="smoke"):
  config = retina_unet_nodules.get_config(variant)
  config.data_dir = data_dir
  return config


def test_a_batch_without_any_lesion_trains():
  config = _smoke_config("/nonexistent")
  task = tasks.get_task("detection")
  empty = _case(np.zeros((16, 32, 32), np.int16))
  batch = next(iter(task.train_batches(config, [empty], start_step=0, process_index=0,
                                       process_count=1)))
  assert batch["num_boxes"].sum() == 0
  model = build_model(config, training=False)
  variables = model.init(jax.random.key(0), batch["image"][:1], train=False)
  objective = task.objective(config, None)

  def loss(params):
    outputs = model.apply({"params": params}, batch["image"], train=True)
    return objective.loss(outputs, batch)

  value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
  norms = [float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(grads)]
  assert np.isfinite(float(value)) and float(value) > 0
  assert all(np.isfinite(norms)) and max(norms) > 0  # the classifier learns "no lesion"


def test_thresholds_round_trip_through_the_workdir(tmp_path):
  post = detect.Postprocessing(iou_threshold=0.3, min_size_mm=3.0, score_threshold=0.42,
                               max_detections=50)
  workdir = Workdir(str(tmp_path))
  workdir.write_detection_thresholds({"postprocessing": post.to_json(), "validation": {}})
  assert workdir.read_detection_thresholds() == post
  assert Workdir(str(tmp_path / "none")).read_detection_thresholds() is None
  with open(workdir.detection_thresholds_path, "w") as f:
    json.dump({"postprocessing": {"iou": 0.2}}, f)
  with pytest.raises(InputError, match="detection_thresholds.json: not a detection thresholds"):
    workdir.read_detection_thresholds()


def test_operating_threshold_keeps_the_false_positives_at_the_target():
  from medjax.detection import froc
  scans = [froc.ScanFindings("a", [[0, 0, 0], [50, 0, 0], [90, 0, 0]], [0.9, 0.8, 0.3],
                             [[0, 0, 0]], [10.0]),
           froc.ScanFindings("b", [[20, 0, 0]], [0.6], np.zeros((0, 3)), [])]
  result = froc.froc_luna16(scans, bootstrap=0)
  # FPs at 0.8 (a), 0.6 (b), 0.3 (a): at most 1 FP/scan = 2 FPs -> threshold 0.6
  assert detection_scores.operating_threshold(result, 1.0) == pytest.approx(0.6)
  assert detection_scores.operating_threshold(result, 0.01) == pytest.approx(0.9)


@pytest.mark.parametrize("field,value,message", [
    ("model.name", "unet", "detection task trains 'retina_unet'"),
    ("augment.enabled", True, "geometric augmentation"),
    ("detection_loss.matcher", "hungarian", "config.detection_loss: detection loss matcher"),
])
def test_bad_detection_configs_are_one_line_errors(field, value, message):
  config = _smoke_config("/nonexistent")
  section, _, name = field.partition(".")
  config[section][name] = value
  with pytest.raises(InputError, match=message):
    tasks.get_task("detection").validate(config)


@pytest.mark.e2e
@pytest.mark.parametrize("variant", ["smoke", "retinanet_smoke"])
def test_smoke_config_trains_evaluates_and_stores_thresholds(variant, tmp_path, data_dir):
  config = _smoke_config(data_dir, variant)
  config.num_steps = 2
  config.eval.detection.bootstrap = 5
  results = loop.train_and_evaluate(config, str(tmp_path))
  for key in ("cpm/nodule", "froc@1fp/nodule", "iou_froc@0.1/nodule", "mAP/nodule",
              "sensitivity/nodule", "fp_per_scan/nodule", "case_auroc/nodule"):
    assert key in results
  assert 0.0 <= results["cpm/nodule"] <= 1.0
  assert sorted(r["case"] for r in results["per_case"]) == ["test_00000", "test_00001"]
  workdir = Workdir(str(tmp_path))
  post = workdir.read_detection_thresholds()
  assert post.iou_threshold in tuple(config.eval.detection.iou_grid)
  assert results["operating_threshold"] == pytest.approx(post.score_threshold)
  report = sorted(os.listdir(tmp_path / "report"))
  assert "froc.png" in report and any(n.startswith("boxes_") for n in report)
  with open(workdir.eval_csv_path) as f:
    assert f.readline().startswith("case,nodules,detected,false_positives")


def _write_case_nifti(example, path):
  from medjax.data import io
  file_affine = np.asarray(example["affine"], np.float64)[:, [2, 1, 0, 3]]  # array -> file axes
  io.write_nifti(path, np.asarray(example["image"])[..., 0], file_affine)


@pytest.mark.e2e
def test_smoke_run_predicts_files_into_json_and_a_luna16_candidates_csv(tmp_path, data_dir):
  import csv
  from medjax.data.builders import datasets
  from medjax.inference import predict_detections
  config = retina_unet_nodules.get_config("smoke")
  config.data_dir = data_dir
  config.num_steps = 1
  config.eval.detection.bootstrap = 0
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  example = datasets.load_source(config.dataset, "test", data_dir)[0]
  (tmp_path / "in").mkdir()
  _write_case_nifti(example, str(tmp_path / "in" / "scan_a.nii.gz"))
  (tmp_path / "in" / "broken.nii.gz").write_bytes(b"not a nifti")
  lines, errors = [], []
  failed = predict_detections.predict_folder(str(tmp_path / "run"), str(tmp_path / "in"),
                                             str(tmp_path / "out"), boxes_nifti=True,
                                             log=lines.append, error=errors.append)
  assert failed == 1 and len(errors) == 1 and errors[0].startswith("error: ")
  assert "broken.nii.gz" in errors[0] and "\n" not in errors[0]
  with open(tmp_path / "out" / "scan_a_detections.json") as f:
    summary = json.load(f)
  detections = summary["detections"]
  assert detections and summary["shape"] == list(example["image"].shape[:3])
  scores = [d["score"] for d in detections]
  assert scores == sorted(scores, reverse=True)
  # the world centre is the example's array-axis affine applied to the voxel centre
  first = detections[0]
  np.testing.assert_allclose(
      first["center_world_mm"],
      np.asarray(example["affine"], np.float64)[:3] @ np.r_[first["center_voxel"], 1.0],
      atol=2e-3)
  # candidates.csv as LUNA16's evaluation script reads it: a header, then one row per candidate
  with open(tmp_path / "out" / "candidates.csv") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["seriesuid", "coordX", "coordY", "coordZ", "probability"]
  assert len(rows) == 1 + len(detections) and rows[1][0] == "scan_a"
  x, y, z, p = map(float, rows[1][1:])
  np.testing.assert_allclose([-x, -y, z], first["center_world_mm"], atol=2e-3)  # LPS -> RAS
  assert p == pytest.approx(first["score"], abs=1e-6)
  from medjax.data import io
  boxes = io.read_image(str(tmp_path / "out" / "scan_a_boxes.nii.gz")).array
  assert list(boxes.shape) == summary["shape"]
  assert {"score_std", "agreement", "box_std_voxels"} <= set(first)  # 2 mirror samples
  assert boxes.max() == sum(d["finding"] for d in detections)


def test_predict_refuses_a_run_that_is_not_a_detection_run(tmp_path):
  from medjax.inference import predict_detections
  workdir = Workdir(str(tmp_path))
  workdir.create()
  workdir.write_config(_smoke_config("/nonexistent"))
  with pytest.raises(InputError, match="detection_thresholds.json: missing"):
    predict_detections.load_detector(str(tmp_path))
  config = _smoke_config("/nonexistent")
  config.task = "segmentation"
  workdir.write_config(config)
  with pytest.raises(InputError, match="expected a detection run"):
    predict_detections.load_detector(str(tmp_path))


def test_detection_spread_over_samples():
  from medjax import uncertainty
  final = np.array([[0, 0, 0, 4, 4, 4], [10, 10, 10, 12, 12, 12]], np.float64)
  samples = [np.array([[0, 0, 0, 4, 4, 4]]),
             np.array([[0, 0, 0, 4, 4, 6], [10, 10, 10, 12, 12, 12]]), np.zeros((0, 6))]
  scores = [np.array([0.9]), np.array([0.6, 0.3]), np.zeros(0)]
  out = uncertainty.detection_spread(final, samples, scores, iou_threshold=0.1)
  np.testing.assert_allclose(out["agreement"], [2 / 3, 1 / 3])
  np.testing.assert_allclose(out["score_mean"], [0.5, 0.1])
  np.testing.assert_allclose(out["score_std"], [np.std([0.9, 0.6, 0.0]), np.std([0, 0.3, 0])])
  # the first box's two matches differ in x2 only (4 vs 6): std sqrt(2) in 1 of 6 coordinates
  np.testing.assert_allclose(out["box_std"][0], np.sqrt(2) / 6)
  assert np.isnan(out["box_std"][1])


def test_a_detection_is_explained_by_integrated_gradients_with_completeness():
  from medjax import explain
  from medjax.models import RetinaUNet, anchors_for
  model = RetinaUNet(features=(4, 8), head_levels=(1,), head_features=4, head_convs=1,
                     anchor_sizes=(((2.0,), (2.0,), (2.0,)),))
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 8, 1))
  variables = model.init(jax.random.key(1), x)
  anchors = anchors_for(model, x.shape).boxes
  anchor = detect.anchor_of_box(model, variables, x, anchors, anchors[5], min_iou=0.0)
  assert 0 <= anchor < len(anchors)
  attribution = explain.explain_detection(model, variables, x, anchor, steps=64)
  assert attribution.shape == x.shape
  wrapped = explain.AnchorLogits(model, anchor)
  wv = explain.anchor_variables(variables)
  f = lambda v: float(wrapped.apply(wv, v)[0, 0])
  assert float(attribution.sum()) == pytest.approx(f(x) - f(jnp.zeros_like(x)), rel=0.05, abs=1e-3)
  with pytest.raises(InputError, match="method='lime'"):
    explain.explain_detection(model, variables, x, anchor, method="lime")


def test_connected_components_become_boxes_scored_by_their_best_probability():
  from medjax.detection.components import component_detections
  labels = np.zeros((4, 8, 8), np.uint8)
  labels[0:2, 0:2, 0:2] = 1
  labels[3, 6, 6] = 1  # a single voxel, diagonal neighbour of nothing
  labels[3, 7, 7] = 1  # touches (3, 6, 6) diagonally: the same 26-connected component
  probs = np.zeros((4, 8, 8, 2))
  probs[..., 1] = 0.2
  probs[1, 1, 1, 1] = 0.9
  probs[3, 7, 7, 1] = 0.7
  probs[..., 0] = 1 - probs[..., 1]
  boxes, scores, classes = component_detections(labels, probs)
  np.testing.assert_array_equal(boxes, [[0, 0, 0, 2, 2, 2], [3, 6, 6, 4, 8, 8]])
  np.testing.assert_allclose(scores, [0.9, 0.7])
  np.testing.assert_array_equal(classes, [0, 0])
  boxes, _, _ = component_detections(labels, probs, min_voxels=3)
  assert len(boxes) == 1


@pytest.mark.e2e
def test_unet_components_smoke_config_trains_and_scores_its_components(tmp_path, data_dir):
  from experiments.configs import unet_components_nodules
  config = unet_components_nodules.get_config("smoke")
  config.data_dir = data_dir
  config.num_steps = 2
  results = loop.train_and_evaluate(config, str(tmp_path))
  assert 0.0 <= results["cpm/nodule"] <= 1.0
  assert results["thresholds"]["min_voxels"] in (1, 4)
  assert Workdir(str(tmp_path)).read_detection_thresholds() is not None
  assert "froc.png" in os.listdir(tmp_path / "report")
