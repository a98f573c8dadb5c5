"""Metrics: hand-built masks and score sets with known answers."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from medjax import metrics
from medjax.errors import InputError


def close(a, b, tol=1e-9):
  np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def _box(shape, lo, hi):
  m = np.zeros(shape, bool)
  m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
  return m


# --------------------------------------------------------------------------
# overlap


def test_dice_iou_hand_masks():
  pred = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
  target = np.array([[1, 0, 0, 0], [1, 1, 1, 0]])
  # |P| = 3, |T| = 4, |P & T| = 2, |P | T| = 5
  close(metrics.dice(pred, target), 4 / 7)
  close(metrics.iou(pred, target), 2 / 5)
  close(metrics.dice(jnp.asarray(pred), jnp.asarray(target)), 4 / 7)
  empty = np.zeros_like(pred)
  assert metrics.dice(empty, empty) == 1.0 and metrics.iou(empty, empty) == 1.0
  assert metrics.dice(pred, empty) == 0.0 and metrics.iou(empty, target) == 0.0


def test_confusion_and_rates():
  pred = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
  target = np.array([1, 1, 0, 1, 0, 0, 0, 0], bool)
  assert metrics.confusion_counts(pred, target) == {"tp": 2, "fp": 1, "fn": 1, "tn": 4}
  close(metrics.sensitivity(pred, target), 2 / 3)
  close(metrics.specificity(pred, target), 4 / 5)
  close(metrics.precision(pred, target), 2 / 3)
  empty = np.zeros(8, bool)
  assert metrics.sensitivity(pred, empty) == 1.0
  assert metrics.precision(empty, target) == 1.0


def test_shape_mismatch_is_an_input_error():
  with pytest.raises(InputError, match="expected equal shapes"):
    metrics.dice(np.zeros((2, 3)), np.zeros((3, 2)))
  with pytest.raises(InputError, match="spacing"):
    metrics.hausdorff(np.ones((2, 3)), np.ones((2, 3)), spacing=(1.0,))


# --------------------------------------------------------------------------
# surface distances


def test_hausdorff_two_points_anisotropic():
  pred = np.zeros((5, 6, 7), bool)
  target = np.zeros((5, 6, 7), bool)
  pred[1, 1, 1] = True
  target[3, 4, 1] = True
  spacing = (2.5, 0.5, 1.0)
  expected = math.hypot(2 * 2.5, 3 * 0.5)
  close(metrics.hausdorff(pred, target, spacing=spacing), expected)
  close(metrics.hausdorff(pred, target, spacing=spacing, percentile=95), expected)
  close(metrics.average_surface_distance(pred, target, spacing=spacing), expected)
  close(metrics.hausdorff(pred, pred, spacing=spacing), 0.0)


def test_hausdorff_two_cubes_anisotropic():
  shape = (12, 12, 12)
  # cube A: [2, 5) on every axis; cube B: A shifted by 3 voxels along axis 2.
  a = _box(shape, (2, 2, 2), (5, 5, 5))
  b = _box(shape, (2, 2, 5), (5, 5, 8))
  # The face x=2 of A is 6 voxels from B's far face and 3 from its near face;
  # every surface voxel of A has its nearest B-surface voxel along axis 2.
  close(metrics.hausdorff(a, b), 3.0)
  close(metrics.hausdorff(a, b, spacing=(1.0, 1.0, 2.0)), 6.0)
  # Along axis 0 with 3 mm voxels the same shift is 9 mm.
  c = _box(shape, (5, 2, 2), (8, 5, 5))
  close(metrics.hausdorff(a, c, spacing=(3.0, 1.0, 1.0)), 9.0)


def test_hausdorff_empty_masks():
  a = _box((6, 6), (1, 1), (3, 3))
  empty = np.zeros((6, 6), bool)
  assert metrics.hausdorff(a, empty) == math.inf
  assert metrics.hausdorff(empty, a, percentile=95) == math.inf
  assert metrics.hausdorff(empty, empty) == 0.0
  assert metrics.average_surface_distance(a, empty) == math.inf
  assert metrics.average_surface_distance(empty, empty) == 0.0
  assert metrics.surface_dice(empty, empty, 1.0, (1, 1)) == 1.0
  assert metrics.surface_dice(a, empty, 1.0, (1, 1)) == 0.0


def test_hd95_against_hand_built_distance_sets():
  # 1-D masks of isolated voxels: each voxel is its own surface, so the
  # directed distance sets are explicit.
  target = np.zeros(101, bool)
  target[0] = True
  pred = np.zeros(101, bool)
  pred[[0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]] = True
  # pred -> target: {0, 10, ..., 100}; target -> pred: {0}.
  d_pt = np.arange(0, 101, 10, dtype=float)
  close(metrics.hausdorff(pred, target, percentile=95), np.percentile(d_pt, 95))
  close(np.percentile(d_pt, 95), 95.0)  # linear interpolation between 90 and 100
  close(metrics.hausdorff(pred, target), 100.0)
  # MONAI's convention is the max of the two directed percentiles; medpy takes
  # the percentile of the union. Make them differ: target points all on pred.
  target[[10, 20, 30, 40, 50, 60, 70, 80, 90]] = True
  # pred -> target: {0 x10, 10}; target -> pred: {0 x10}.
  close(metrics.hausdorff(pred, target, percentile=95), np.percentile(
      [0.0] * 10 + [10.0], 95))  # = 5.0
  union = np.percentile([0.0] * 10 + [10.0] + [0.0] * 10, 95)
  assert union == 0.0 and metrics.hausdorff(pred, target, percentile=95) == 5.0
  with pytest.raises(InputError, match="percentile"):
    metrics.hausdorff(pred, target, percentile=101)


def test_directed_hausdorff_hand_sets():
  # 1-D isolated voxels, 2 mm: pred {0, 3, 9}, target {0, 1}.
  pred = np.zeros(10, bool)
  pred[[0, 3, 9]] = True
  target = np.zeros(10, bool)
  target[[0, 1]] = True
  # pred -> target: {0, 2, 8} voxels; target -> pred: {0, 1}
  close(metrics.hausdorff(pred, target, spacing=(2.0,), directed="pred_to_target"), 16.0)
  close(metrics.hausdorff(pred, target, spacing=(2.0,), directed="target_to_pred"), 2.0)
  close(metrics.hausdorff(pred, target, spacing=(2.0,)), 16.0)  # symmetric = the larger
  close(metrics.hausdorff(pred, target, spacing=(2.0,), directed="pred_to_target",
                          percentile=50), 4.0)
  close(metrics.hausdorff(pred, target, spacing=(2.0,), directed="target_to_pred",
                          percentile=50), 1.0)
  assert metrics.hausdorff(pred, np.zeros(10, bool), directed="target_to_pred") == math.inf
  with pytest.raises(InputError, match="directed"):
    metrics.hausdorff(pred, target, directed="both")


def test_volume_differences_anisotropic():
  spacing = (2.5, 0.8, 0.5)  # 1 mm^3 per voxel
  pred = _box((10, 10, 10), (0, 0, 0), (5, 4, 3))  # 60 voxels
  target = _box((10, 10, 10), (0, 0, 0), (2, 5, 5))  # 50 voxels
  close(metrics.volume_ml(pred, spacing), 0.060)
  close(metrics.volume_difference(pred, target, spacing=spacing), 0.010)
  close(metrics.volume_difference(target, pred, spacing=(2.0, 2.0, 2.0)), -10 * 8 / 1000)
  close(metrics.relative_volume_difference(pred, target), 10 / 50)
  close(metrics.relative_volume_difference(target, pred), -10 / 60)
  empty = np.zeros((10, 10, 10), bool)
  assert metrics.relative_volume_difference(empty, empty) == 0.0
  assert metrics.relative_volume_difference(pred, empty) == math.inf
  close(metrics.relative_volume_difference(empty, pred), -1.0)


def test_average_surface_distance_hand_sets():
  target = np.zeros(10, bool)
  target[0] = True
  pred = np.zeros(10, bool)
  pred[[0, 3, 9]] = True
  # pred -> target: {0, 3, 9}; target -> pred: {0}; spacing 2 mm.
  close(metrics.average_surface_distance(pred, target, spacing=(2.0,)),
        2 * (0 + 3 + 9 + 0) / 4)
  close(metrics.average_surface_distance(pred, target, spacing=(2.0,),
                                         symmetric=False), 2 * 12 / 3)


def test_surface_is_mask_minus_erosion():
  m = _box((7, 7), (1, 1), (6, 6))
  s = metrics.surface(m)
  assert s.sum() == 25 - 9 and not s[2:5, 2:5].any()
  full = np.ones((3, 3), bool)  # voxels on the array border are surface
  assert metrics.surface(full).sum() == 8


def test_surface_dice_tolerances():
  shape = (10, 10)
  a = _box(shape, (2, 2), (6, 6))  # surface: 12 voxels
  b = _box(shape, (2, 3), (6, 7))  # shifted by one voxel along axis 1
  # Coincident border voxels: rows 2 and 5 at columns 3..5 -> 6 per mask.
  close(metrics.surface_dice(a, b, 0.0, (1.0, 1.0)), (6 + 6) / 24)
  close(metrics.surface_dice(a, b, 1.0, (1.0, 1.0)), 1.0)
  # 2 mm columns: the end voxels of rows 2 and 5 and the near side voxels are
  # 2 mm off; the far side voxels (3, 5), (4, 5) are 1 mm from rows 2 / 5.
  # Within 1 mm: 3 + 3 + 2 per mask.
  close(metrics.surface_dice(a, b, 1.0, (1.0, 2.0)), 16 / 24)
  close(metrics.surface_dice(a, b, 2.0, (1.0, 2.0)), 1.0)
  close(metrics.surface_dice(a, b, 100.0, (1.0, 2.0)), 1.0)
  close(metrics.surface_dice(a, a, 0.0, (1.0, 2.0)), 1.0)


# --------------------------------------------------------------------------
# per-class summary


def test_segmentation_metrics_keys_and_values():
  pred = np.zeros((8, 8), int)
  target = np.zeros((8, 8), int)
  pred[1:4, 1:4] = 1
  target[1:4, 1:4] = 1
  target[6, 6] = 2  # tumour missed
  out = metrics.segmentation_metrics(pred, target, {0: "bg", 1: "liver", 2: "tumour"},
                                     spacing=(1.0, 2.0))
  assert set(out) == {f"{m}/{c}" for m in ("dice", "iou", "sensitivity", "precision",
                                            "hd", "hd95", "asd", "nsd")
                      for c in ("liver", "tumour")}
  assert out["dice/liver"] == 1.0 and out["hd95/liver"] == 0.0
  assert out["nsd/liver"] == 1.0
  assert out["dice/tumour"] == 0.0 and out["hd95/tumour"] == math.inf
  assert out["nsd/tumour"] == 0.0
  assert all(isinstance(v, float) for v in out.values())
  out2 = metrics.segmentation_metrics(pred, target, {1: "liver"}, surface=False)
  assert set(out2) == {"dice/liver", "iou/liver", "sensitivity/liver", "precision/liver"}



def test_segmentation_metrics_volumes_and_directed_hd95():
  pred = np.zeros((8, 8), int)
  target = np.zeros((8, 8), int)
  pred[1:4, 1:4] = 1  # 9 voxels
  target[1:4, 1:3] = 1  # 6 voxels
  pred[7, 7] = 1  # a far false-positive voxel
  target[6, 6] = 2  # tumour missed
  spacing = (1.0, 2.0)
  out = metrics.segmentation_metrics(pred, target, {1: "liver", 2: "tumour"}, spacing=spacing,
                                     volumes=True, directed=True)
  close(out["volume_diff_ml/liver"], (10 - 6) * 2.0 / 1000)
  close(out["volume_diff_rel/liver"], 4 / 6)
  close(out["volume_diff_rel/tumour"], -1.0)
  assert out["hd95_pred_to_truth/tumour"] == out["hd95_truth_to_pred/tumour"] == math.inf
  # truth -> pred surface: the 6 truth voxels (all surface) lie on the pred box's border except
  # (2, 2), the box's centre, 1 mm from its border: {0 x5, 1}, 95th percentile 0.75 mm
  close(out["hd95_truth_to_pred/liver"], 0.75)
  # pred -> truth: pred's surface (the box border and the island) to the truth's surface
  d = metrics.surface_distances(pred == 1, target == 1, spacing)[0]
  close(out["hd95_pred_to_truth/liver"], np.percentile(d, 95))
  close(d.max(), math.hypot(7 - 3, 2.0 * (7 - 2)))  # island (7,7) to truth corner (3,2)
  assert out["hd95/liver"] == max(out["hd95_pred_to_truth/liver"], out["hd95_truth_to_pred/liver"])


# --------------------------------------------------------------------------
# classification and calibration


def test_roc_auc_with_ties():
  scores = [0.1, 0.4, 0.4, 0.8, 0.4, 0.9]
  labels = [0, 0, 1, 1, 0, 1]
  # Positives {0.4, 0.8, 0.9} vs negatives {0.1, 0.4, 0.4}: pairs won
  # 0.4: 1 win (0.1) + 2 ties; 0.8: 3; 0.9: 3 -> (1 + 1 + 3 + 3) / 9.
  close(metrics.roc_auc(scores, labels), 8 / 9)
  close(metrics.roc_auc([1, 1, 1, 1], [0, 1, 0, 1]), 0.5)
  assert math.isnan(metrics.roc_auc([0.2, 0.3], [1, 1]))


def test_expected_calibration_error_hand_example():
  probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
  labels = np.array([0, 1, 1, 0])
  # n_bins=5, top-label confidences 0.9 (right), 0.8 (wrong), 0.7 (right),
  # 0.55 (wrong). Bins (0.6,0.8]: {0.8, 0.7}: acc 0.5, conf 0.75.
  # (0.8,1.0]: {0.9 right}: gap 0.1. (0.4,0.6]: {0.55 wrong}: gap 0.55.
  expected = 0.25 * 0.55 + 0.5 * 0.25 + 0.25 * 0.1
  close(metrics.expected_calibration_error(probs, labels, n_bins=5), expected)
  # (N, *S, K) layout gives the same.
  close(metrics.expected_calibration_error(probs.reshape(1, 2, 2, 2),
                                           labels.reshape(1, 2, 2), n_bins=5),
        expected)
  perfect = np.eye(3)[[0, 1, 2, 1]]
  close(metrics.expected_calibration_error(perfect, [0, 1, 2, 1]), 0.0)


def test_brier_score():
  probs = np.array([[0.8, 0.2], [0.3, 0.7]])
  labels = np.array([0, 0])
  # (0.04 + 0.04 + 0.49 + 0.49) / 2
  close(metrics.brier_score(probs, labels), 0.53)
  close(metrics.brier_score(np.array([0.9, 0.2]), np.array([1, 0])),
        (0.01 + 0.04) / 2)
