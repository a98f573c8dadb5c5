"""LUNA16 FROC / CPM, operating point, size bins, case AUROC, IoU FROC / mAP and WBC by hand."""
import math

import numpy as np
import pytest

from medjax.detection import clustering, froc, iou_metrics


def _scans():
  """Four scans whose FROC is worked out by hand in `test_froc_cpm_by_hand`."""
  a = froc.ScanFindings(
      case="A",
      candidate_centers=[[1, 0, 0], [0, 2, 0], [50, 0, 2], [100, 0, 0], [200, 0, 0]],
      candidate_scores=[0.9, 0.6, 0.3, 0.8, 0.7],
      nodule_centers=[[0, 0, 0], [50, 0, 0]], nodule_diameters=[12, 6],
      excluded_centers=[[200, 0, 0]], excluded_diameters=[4])
  b = froc.ScanFindings("B", [[10, 10, 10], [20, 20, 20]], [0.5, 0.95], np.zeros((0, 3)), [])
  c = froc.ScanFindings("C", np.zeros((0, 3)), [], [[0, 0, 0]], [4])
  d = froc.ScanFindings("D", np.zeros((0, 3)), [], np.zeros((0, 3)), [])
  return [a, b, c, d]


def test_luna16_matching_by_hand():
  match = froc.match_scan(_scans()[0])
  # nodule 1 hit twice (0.9 and 0.6: counts once, at 0.9), nodule 2 hit at 0.3 (distance 2 < 3),
  # the candidate on the excluded finding is ignored, the one at x=100 is a false positive
  np.testing.assert_array_equal(match.nodule_scores, [0.9, 0.3])
  np.testing.assert_array_equal(match.fp_scores, [0.8])
  np.testing.assert_array_equal(match.hit_candidates, [True, True, True, False, False])
  np.testing.assert_array_equal(match.ignored_candidates, [False, False, False, False, True])
  missed = froc.match_scan(_scans()[2])
  assert missed.nodule_scores.tolist() == [-np.inf] and len(missed.fp_scores) == 0


def test_froc_cpm_by_hand():
  result = froc.froc_luna16(_scans(), bootstrap=0)
  # 4 scans, 3 nodules: hits at 0.9 and 0.3, one miss; false positives 0.95, 0.8, 0.5.
  # Curve by decreasing threshold: (FP/scan, sens) = (0, 0), (.25, 0), (.25, 1/3), (.5, 1/3),
  # (.75, 1/3), (.75, 2/3): interpolated at 1/8 .. 8 -> 0, 1/3, 1/3, 2/3, 2/3, 2/3, 2/3
  np.testing.assert_allclose(result.fps, [0, 0.25, 0.25, 0.5, 0.75, 0.75])
  np.testing.assert_allclose(result.curve, [0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3])
  np.testing.assert_allclose(result.sensitivity, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
  assert result.cpm == pytest.approx(10 / 21)
  assert (result.num_scans, result.num_nodules, result.num_detected,
          result.num_false_positives) == (4, 3, 2, 3)
  assert np.all(np.isnan(result.ci_low)) and math.isnan(result.cpm_ci[0])


def test_froc_no_candidates_no_nodules_and_negative_diameter():
  silent = [froc.ScanFindings("x", np.zeros((0, 3)), [], [[0, 0, 0]], [5]),
            froc.ScanFindings("y", np.zeros((0, 3)), [], np.zeros((0, 3)), [])]
  result = froc.froc_luna16(silent, bootstrap=0)
  assert result.cpm == 0 and np.all(result.sensitivity == 0)
  # a diameter of -1 counts as 10 mm: a candidate 4.9 mm away hits
  scan = froc.ScanFindings("z", [[4.9, 0, 0]], [0.5], [[0, 0, 0]], [-1])
  assert froc.match_scan(scan).nodule_scores.tolist() == [0.5]
  with pytest.raises(ValueError, match="scan q"):
    froc.ScanFindings("q", [[0, 0, 0]], [0.1, 0.2], np.zeros((0, 3)), [])


def test_max_candidates_per_scan():
  scan = froc.ScanFindings("m", [[0, 0, 0], [30, 0, 0], [60, 0, 0]], [0.2, 0.9, 0.5],
                           [[0, 0, 0]], [6])
  assert froc.match_scan(scan, max_candidates=2).nodule_scores.tolist() == [-np.inf]
  assert froc.match_scan(scan, max_candidates=None).nodule_scores.tolist() == [0.2]


def test_bootstrap_is_seeded_and_brackets_a_perfect_detector():
  scans = [froc.ScanFindings(str(i), [[0, 0, 0], [90, 0, 0]], [0.9, 0.1], [[0, 0, 0]], [8])
           for i in range(6)]
  perfect = froc.froc_luna16(scans, bootstrap=50, seed=3)
  np.testing.assert_array_equal(perfect.sensitivity, np.ones(7))
  np.testing.assert_array_equal(perfect.ci_low, np.ones(7))
  assert perfect.cpm_ci == (1.0, 1.0)
  first = froc.froc_luna16(_scans(), bootstrap=200, seed=7)
  again = froc.froc_luna16(_scans(), bootstrap=200, seed=7)
  np.testing.assert_array_equal(first.ci_low, again.ci_low)
  assert first.cpm_ci == again.cpm_ci
  assert np.all(first.ci_low <= first.ci_high)
  assert first.cpm_ci[0] <= first.cpm <= first.cpm_ci[1]


def test_operating_point_sizes_and_case_auroc():
  point = froc.operating_point(_scans(), 0.6)
  # detected at >= 0.6: the 12 mm nodule (0.9); not the 6 mm (0.3) nor the 4 mm (missed);
  # false positives >= 0.6: 0.8 (A) and 0.95 (B) over 4 scans
  assert point.sensitivity == pytest.approx(1 / 3)
  assert point.fp_per_scan == pytest.approx(0.5)
  assert point.by_size == {"<6mm": 0.0, "6-10mm": 0.0, ">10mm": 1.0}
  assert point.size_counts == {"<6mm": 1, "6-10mm": 1, ">10mm": 1}
  assert froc.size_bin_names() == ("<6mm", "6-10mm", ">10mm")
  # max score per scan: A 0.9 (+), B 0.95 (-), C 0 (+), D 0 (-): pairs won 1 + 0.5 of 4
  assert froc.case_auroc(_scans()) == pytest.approx(0.375)


# ----------------------------------------------------------------------------- IoU metrics


def _iou_case():
  gt = np.array([[0, 0, 0, 4, 4, 4], [10, 10, 10, 14, 14, 14]], np.float32)
  det = np.array([[0, 0, 0, 4, 4, 4],            # exact: matches gt 0
                  [1, 0, 0, 5, 4, 4],            # IoU 0.6 with gt 0, already taken: FP
                  [12, 10, 10, 16, 14, 14],      # IoU 1/3 with gt 1
                  [40, 40, 40, 44, 44, 44]], np.float32)
  return det, np.array([0.9, 0.8, 0.7, 0.6]), gt


def test_iou_matching_froc_and_map_by_hand():
  det, scores, gt = _iou_case()
  matched, sorted_scores = iou_metrics.match_detections(det, scores, gt, (0.1, 0.5))
  np.testing.assert_array_equal(matched, [[1, 0, 1, 0], [1, 0, 0, 0]])
  np.testing.assert_array_equal(sorted_scores, scores)
  curves = iou_metrics.froc_iou([(det, scores, gt)])
  np.testing.assert_allclose(curves[0.1]["sensitivity"], [.5, .5, .5, 1, 1, 1, 1])
  assert curves[0.1]["score"] == pytest.approx(5.5 / 7)
  assert curves[0.5]["score"] == pytest.approx(0.5)
  # AP@0.1: precision 1 up to recall 0.5 (51 points), then 2/3 (50 points);
  # AP@0.5: 1 up to recall 0.5, 0 beyond
  ap_low, ap_high = (51 + 50 * 2 / 3) / 101, 51 / 101
  result = iou_metrics.coco_map([(det, scores, gt), (np.zeros((0, 6)), [], np.zeros((0, 6)))])
  assert result["AP@0.10"] == pytest.approx(ap_low)
  assert result["AP@0.50"] == pytest.approx(ap_high)
  # IoU 1/3 matches at thresholds 0.10 .. 0.30 (5 of 9) and not from 0.35
  assert result["mAP"] == pytest.approx((5 * ap_low + 4 * ap_high) / 9)


# ----------------------------------------------------------------------------- WBC


def test_wbc_of_identical_boxes_returns_that_box():
  box = np.array([3, 4, 5, 9, 12, 11], np.float64)
  boxes = np.tile(box, (5, 1))
  scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
  out_boxes, out_scores, _ = clustering.weighted_box_clustering(
      boxes, scores, iou_threshold=0.5, patch_ids=np.arange(5), n_expected=5)
  np.testing.assert_allclose(out_boxes, [box], rtol=1e-12)
  np.testing.assert_allclose(out_scores, [0.7])
  # ten predictions expected, five made: the five missing ones weigh like the mean
  _, half, _ = clustering.weighted_box_clustering(boxes, scores, iou_threshold=0.5,
                                                  patch_ids=np.arange(5), n_expected=10)
  np.testing.assert_allclose(half, [0.35])


def test_wbc_weights_by_hand_and_separate_clusters():
  boxes = np.array([[0, 0, 0, 4, 4, 4], [0, 0, 0, 4, 4, 5], [30, 30, 30, 33, 33, 33]], np.float64)
  scores = np.array([0.8, 0.6, 0.4])
  out_boxes, out_scores, _ = clustering.weighted_box_clustering(boxes, scores,
                                                                iou_threshold=0.5)
  # cluster 1: weights IoU * volume = 64 and 0.8 * 80 = 64; score-weighted: 51.2 and 38.4
  np.testing.assert_allclose(out_scores, [0.7, 0.4])
  np.testing.assert_allclose(out_boxes[0], [0, 0, 0, 4, 4, (51.2 * 4 + 38.4 * 5) / 89.6])
  np.testing.assert_allclose(out_boxes[1], boxes[2])
  per_class = clustering.weighted_box_clustering(boxes, scores, iou_threshold=0.5,
                                                 classes=np.array([0, 1, 1]))
  assert sorted(per_class[2].tolist()) == [0, 1, 1]
  none = clustering.weighted_box_clustering(np.zeros((0, 6)), np.zeros(0), iou_threshold=0.5)
  assert none[0].shape == (0, 6)


def test_wbc_factors_and_thousands_of_boxes():
  assert clustering.patch_center_factor(np.array([[6, 6, 6, 10, 10, 10.]]), (16, 16, 16))[0] == 1
  corner = clustering.patch_center_factor(np.array([[-1, -1, -1, 1, 1, 1.]]), (16, 16, 16))[0]
  assert corner == pytest.approx(math.exp(-1 / (2 * 0.64)))
  counts = np.random.default_rng(0).integers(1, 5, (10, 12, 14)).astype(float)
  some = np.array([[1, 2, 3, 4, 7, 9], [0, 0, 0, 10, 12, 14], [2.5, 3.2, 1, 4.1, 5, 2.]])
  expected = [counts[1:4, 2:7, 3:9].mean(), counts.mean(), counts[2:5, 3:5, 1:2].mean()]
  np.testing.assert_allclose(clustering.mean_over_boxes(counts, some), expected)
  rng = np.random.default_rng(1)
  centers = rng.uniform(0, 100, (300, 3))[rng.integers(0, 300, 4000)] + rng.normal(0, 1, (4000, 3))
  size = rng.uniform(4, 10, (4000, 1))
  many = np.concatenate([centers - size / 2, centers + size / 2], 1)
  out_boxes, out_scores, _ = clustering.weighted_box_clustering(
      many, rng.uniform(0.2, 1, 4000), iou_threshold=0.3, patch_ids=rng.integers(0, 8, 4000),
      n_expected=2)
  assert 250 <= len(out_scores) < 4000 and np.all(np.diff(out_scores) <= 0)
