"""medjax.calibration and the calibration metrics: ECE, class-wise ECE, reliability
bins, temperature scaling, error-detection AUROC, retained Dice."""
import math

import numpy as np
import pytest

from medjax import calibration, metrics
from medjax.errors import InputError


def _toy():
  # 4 samples, 2 classes: confidences 0.9, 0.9, 0.6, 0.6; the first and third right.
  probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
  labels = np.array([0, 0, 0, 0])
  return probs, labels


def test_ece_and_classwise_ece_on_a_hand_made_example():
  probs, labels = _toy()
  # bin of 0.9: accuracy 1/2, confidence 0.9 -> gap 0.4; bin of 0.6: accuracy 1/2, gap 0.1.
  assert metrics.expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
  # class 0, p_0 in bins of 0.9 (1 sample, label 0), 0.1 (1, label 0), 0.6 (1), 0.4 (1):
  # every sample is class 0, so gaps |1 - p_0| = 0.1, 0.9, 0.4, 0.6 -> mean 0.5.
  # class 1: labels never 1, gaps p_1 = 0.1, 0.9, 0.4, 0.6 -> 0.5.
  per_class = metrics.classwise_expected_calibration_error(probs, labels)
  np.testing.assert_allclose(per_class, [0.5, 0.5])
  perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
  np.testing.assert_allclose(
      metrics.classwise_expected_calibration_error(perfect, np.array([0, 1])), [0.0, 0.0])


def test_reliability_bins_hand_checked():
  probs, labels = _toy()
  hist = calibration.CalibrationHistogram(2, n_bins=5)  # bins (0, .2], (.2, .4], ..., (.8, 1]
  hist.update(probs[:2], labels[:2])
  hist.update(probs[2:], labels[2:])  # chunks add up
  rel = hist.reliability()
  assert rel["count"] == [0, 0, 2, 0, 2]  # 0.6 -> bin 2, 0.9 -> bin 4
  assert rel["confidence"][2] == pytest.approx(0.6) and rel["confidence"][4] == pytest.approx(0.9)
  assert rel["accuracy"][2] == pytest.approx(0.5) and rel["accuracy"][4] == pytest.approx(0.5)
  assert math.isnan(rel["accuracy"][0])
  assert hist.ece() == pytest.approx(metrics.expected_calibration_error(probs, labels, n_bins=5))
  np.testing.assert_allclose(hist.classwise_ece(),
                             metrics.classwise_expected_calibration_error(probs, labels, n_bins=5))
  nll = -np.mean(np.log([0.9, 0.1, 0.6, 0.4]))
  assert hist.nll() == pytest.approx(nll)


def test_histogram_ece_matches_the_direct_ece_on_random_volumes():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 6, 7, 8, 3)) * 3
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  labels = rng.integers(0, 3, size=(2, 6, 7, 8))
  hist = calibration.CalibrationHistogram(3)
  for p, y in zip(probs, labels):
    hist.update(p, y)
  assert hist.ece() == pytest.approx(metrics.expected_calibration_error(probs, labels))
  assert hist.total == labels.size


def test_temperature_scaling_recovers_t5_and_lowers_nll():
  rng = np.random.default_rng(1)
  n, k = 20000, 3
  true_logits = rng.normal(size=(n, k)) * 2.0
  p = np.exp(true_logits) / np.exp(true_logits).sum(-1, keepdims=True)
  labels = (rng.random(n)[:, None] > np.cumsum(p, -1)).sum(-1)  # y ~ softmax(true logits)
  over_confident = 5.0 * true_logits
  t = calibration.fit_temperature(over_confident, labels)
  assert t == pytest.approx(5.0, rel=0.05)
  before = calibration.negative_log_likelihood(over_confident, labels)
  after = calibration.negative_log_likelihood(over_confident, labels, t)
  assert after < 0.6 * before
  # from probabilities: ln p is the logits up to a per-sample constant
  probs = np.exp(over_confident - over_confident.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  assert calibration.fit_temperature(calibration.log_probabilities(probs), labels) == (
      pytest.approx(t, rel=1e-3))
  scaled = calibration.scaled_probabilities(probs, t)
  assert metrics.expected_calibration_error(scaled, labels) < 0.5 * (
      metrics.expected_calibration_error(probs, labels))


def test_error_detection_auroc_is_one_for_the_error_indicator():
  rng = np.random.default_rng(2)
  wrong = rng.random(1000) < 0.1
  hist = calibration.ErrorDetectionHistogram(1.0)
  hist.update(wrong.astype(float), wrong)
  assert hist.auroc() == 1.0
  assert metrics.roc_auc(wrong.astype(float), wrong) == 1.0
  u = rng.random(1000)
  hist = calibration.ErrorDetectionHistogram(1.0)
  hist.update(u[:500], wrong[:500])
  hist.update(u[500:], wrong[500:])
  assert hist.auroc() == pytest.approx(metrics.roc_auc(u, wrong), abs=1e-4)


def test_roc_auc_from_counts_ties_count_half():
  # positives in bins 1 and 2, negatives in bins 0 and 2: pairs (1 vs 0) 1, (1 vs 2) 0,
  # (2 vs 0) 1, (2 vs 2) 1/2 -> 2.5 / 4
  assert metrics.roc_auc_from_counts([0, 1, 1], [1, 0, 1]) == pytest.approx(0.625)
  assert math.isnan(metrics.roc_auc_from_counts([0, 0], [1, 1]))


def test_retained_dice_rejects_the_most_uncertain_voxels():
  label = np.zeros((4, 5), int)
  label[1:3, 1:4] = 1  # 6 voxels
  pred = label.copy()
  pred[0, 0] = 1  # one false positive
  pred[1, 1] = 0  # one false negative
  u = np.zeros((4, 5))
  u[0, 0], u[1, 1] = 1.0, 0.9
  before = calibration.retained_dice(pred, label, u, 0.0, {1: "organ"})["organ"]
  assert before == pytest.approx(2 * 5 / (6 + 6))
  assert calibration.retained_dice(pred, label, u, 0.05, {1: "organ"})["organ"] == (
      pytest.approx(2 * 5 / (6 + 5)))  # 1 of 20 voxels rejected: the false positive
  assert calibration.retained_dice(pred, label, u, 0.1, {1: "organ"})["organ"] == 1.0
  assert calibration.retained_accuracy(pred == label, u, 0.1) == 1.0
  assert calibration.rate_key("retained_dice", 0.1) == "retained_dice@10%"
  with pytest.raises(InputError, match="rate"):
    calibration.retained_dice(pred, label, u, 1.0, {1: "organ"})


def test_segmentation_trust_results():
  rng = np.random.default_rng(3)
  label = rng.integers(0, 3, size=(6, 8, 8))
  probs = np.full(label.shape + (3,), 0.1, np.float32)
  np.put_along_axis(probs, label[..., None], 0.8, axis=-1)
  flip = rng.random(label.shape) < 0.2  # 20 % wrong, with a flatter distribution
  probs[flip] = [0.5, 0.3, 0.2]
  pred = probs.argmax(-1)
  entropy = -(probs * np.log(probs)).sum(-1)
  trust = calibration.SegmentationTrust(("background", "organ", "tumour"), temperature=2.0)
  per_case = trust.score_case(pred, probs, label, {"entropy": entropy})
  assert set(per_case) == {f"retained_dice@{r}%/{n}" for r in (5, 10, 20)
                           for n in ("organ", "tumour")}
  results = trust.results()
  assert results["ece"] == pytest.approx(metrics.expected_calibration_error(probs, label))
  assert results["temperature"] == 2.0
  scaled = calibration.scaled_probabilities(probs, 2.0)
  assert results["ece_after_temperature"] == pytest.approx(
      metrics.expected_calibration_error(scaled, label), abs=1e-6)
  assert results["ece/organ"] == pytest.approx(
      metrics.classwise_expected_calibration_error(probs, label)[1])
  assert results["uncertainty_auroc"] == pytest.approx(metrics.roc_auc(entropy, pred != label),
                                                       abs=1e-3)
  assert set(trust.reliability()) == {"before", "after"}


def test_score_classification_three_classes_with_calibration_and_maps():
  from medjax.train import evaluate  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(4)
  labels = np.repeat([0, 1, 2], 20)
  logits = np.eye(3)[labels] * 2.0 + rng.normal(size=(60, 3))
  probs = np.exp(4 * logits) / np.exp(4 * logits).sum(-1, keepdims=True)  # over-confident
  images = [(f"img{i}", np.full((2, 2, 1), i, np.float32), int(l)) for i, l in enumerate(labels)]

  def predict_batch(batch):
    index = batch[:, 0, 0, 0].astype(int)
    entropy = -(probs[index] * np.log(probs[index])).sum(-1)
    return probs[index], {"entropy": entropy, "mutual_information": 0.5 * entropy}

  t = calibration.fit_temperature(calibration.log_probabilities(probs), labels)
  ev = evaluate.score_classification(predict_batch, images, ("a", "b", "c"), batch_size=16,
                                     calibrate=True, temperature=t)
  r = ev.results
  for k, name in enumerate("abc"):
    assert r[f"auc/{name}"] == pytest.approx(metrics.roc_auc(probs[:, k], labels == k))
  assert r["ece"] == pytest.approx(metrics.expected_calibration_error(probs, labels))
  assert r["ece_classwise"] == pytest.approx(
      metrics.classwise_expected_calibration_error(probs, labels).mean())
  assert r["temperature"] == t
  assert r["nll_after_temperature"] < r["nll"]  # T fitted on the same images
  wrong = probs.argmax(-1) != labels
  entropy = -(probs * np.log(probs)).sum(-1)
  assert r["uncertainty_auroc"] == pytest.approx(metrics.roc_auc(entropy, wrong))
  assert r["uncertainty_auroc_mi"] == pytest.approx(r["uncertainty_auroc"])
  assert r["retained_accuracy@10%"] == pytest.approx(
      calibration.retained_accuracy(~wrong, entropy, 0.1))
  assert set(ev.reliability) == {"before", "after"}
  plain = evaluate.score_classification(lambda b: predict_batch(b)[0], images, ("a", "b", "c"),
                                        batch_size=16)
  assert "temperature" not in plain.results and plain.reliability is None
