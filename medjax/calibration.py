"""Calibration and error detection of predicted probabilities, at any scale.

* Reliability (Guo et al. 2017): `CalibrationHistogram` accumulates bin counts
  of the top-label confidence and of every class's one-vs-rest probability
  over any number of chunks (a test set of 3D volumes is millions of voxels:
  only `n_bins` numbers per class are kept), and gives the ECE, the
  class-wise ECE (Kull et al. 2019), the NLL and reliability-diagram data.
* Temperature scaling (Guo et al. 2017): one scalar `T > 0` dividing the
  logits, fitted by minimising the NLL on held-out data (`fit_temperature`, a
  1-D bounded search over `ln T`). From probabilities, the logits are
  `ln p` (`log_probabilities`): `softmax(ln p / T) = softmax(z / T)` exactly
  for `p = softmax(z)`; where sliding windows blend several windows'
  probabilities it scales the blended prediction instead.
* Error detection: how well an uncertainty flags misclassified voxels or
  images: the AUROC of the uncertainty for "prediction != label"
  (`ErrorDetectionHistogram` accumulates it over voxels in fine bins), and
  the Dice (or accuracy) of what remains after rejecting the most uncertain
  fraction (`retained_dice`, `retained_accuracy`; Jungo & Reyes 2019,
  Mehrtash et al. 2020).
* `SegmentationTrust` / `classification_trust`: all of the above for an
  evaluation, as flat `eval.json` keys.

References:
  Guo C. et al. (2017) On calibration of modern neural networks. ICML.
  Kull M. et al. (2019) Beyond temperature scaling: obtaining well-calibrated
    multiclass probabilities with Dirichlet calibration. NeurIPS.
  Jungo A., Reyes M. (2019) Assessing reliability and challenges of
    uncertainty estimations for medical image segmentation. MICCAI.
  Mehrtash A. et al. (2020) Confidence calibration and predictive uncertainty
    estimation for deep medical image segmentation. IEEE TMI.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np
import scipy.optimize
import scipy.special

from medjax import metrics
from medjax.errors import InputError

N_BINS = 15  # reliability bins (Guo 2017)
REJECTION_RATES = (0.05, 0.10, 0.20)  # fractions of the most uncertain voxels / images rejected
TEMPERATURE_BOUNDS = (0.05, 20.0)
TINY = 1e-30  # probabilities below this are taken as TINY before the log


def log_probabilities(probs) -> np.ndarray:
  """`ln p` `(..., K)` float64 (p clipped at 1e-30): logits up to a per-sample constant."""
  return np.log(np.maximum(np.asarray(probs, np.float64), TINY))


def scaled_probabilities(probs, temperature: float) -> np.ndarray:
  """Temperature-scaled probabilities `softmax(ln p / T)` `(..., K)` float32."""
  return scipy.special.softmax(log_probabilities(probs) / float(temperature),
                               axis=-1).astype(np.float32)


def negative_log_likelihood(logits, labels, temperature: float = 1.0) -> float:
  """Mean NLL `-ln softmax(z / T)[y]` of logits `(M, K)` and labels `(M,)`."""
  z = np.asarray(logits, np.float64) / float(temperature)
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  z = z.reshape(labels.size, -1)
  lse = scipy.special.logsumexp(z, axis=-1)
  return float(np.mean(lse - z[np.arange(labels.size), labels]))


def fit_temperature(logits, labels, *, bounds: tuple = TEMPERATURE_BOUNDS) -> float:
  """Temperature scaling (Guo 2017): `argmin_T NLL(softmax(z / T), y)`.

  A bounded 1-D search over `ln T` (`scipy.optimize.minimize_scalar`): the NLL
  is smooth in `T`, and the search in `ln T` treats over- and
  under-confidence alike.

  Args:
    logits: `(M, K)` (or `(N, *S, K)`) logits of held-out samples (the
      validation split), e.g. `log_probabilities(probs)`.
    labels: `(M,)` (or `(N, *S)`) integer labels.
    bounds: the range of `T` searched.
  Returns:
    The fitted temperature `T` (> 1: the model was over-confident).
  """
  z = np.asarray(logits, np.float64)
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  z = z.reshape(-1, z.shape[-1])
  if z.shape[0] != labels.size or labels.size == 0:
    raise InputError(f"logits {z.shape} and labels ({labels.size}): expected one row of logits "
                     "per label and at least one sample")
  lo, hi = (math.log(b) for b in bounds)
  res = scipy.optimize.minimize_scalar(
      lambda log_t: negative_log_likelihood(z, labels, math.exp(log_t)), bounds=(lo, hi),
      method="bounded", options={"xatol": 1e-4})
  return float(math.exp(res.x))


def subsample_voxels(probs, labels, *, max_voxels: int, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
  """At most `max_voxels` random voxels `(M, K)`, `(M,)` of `probs (*S, K)`,
  `labels (*S)` (all of them when there are fewer), drawn with `seed`."""
  probs = np.asarray(probs).reshape(-1, np.shape(probs)[-1])
  labels = np.asarray(labels).reshape(-1)
  if labels.size <= max_voxels:
    return probs, labels
  index = np.random.default_rng(seed).choice(labels.size, max_voxels, replace=False)
  return probs[index], labels[index]


class CalibrationHistogram:
  """Reliability bins accumulated over chunks of `(probs (..., K), labels (...))`.

  Top-label bins (confidence = max probability, correct = argmax == label)
  and one-vs-rest bins per class (confidence = p_k, correct = label == k),
  plus the summed NLL. Chunking does not change the result.
  """

  def __init__(self, num_classes: int, *, n_bins: int = N_BINS):
    self.num_classes = int(num_classes)
    self.n_bins = int(n_bins)
    zeros = lambda *shape: np.zeros(shape + (3, self.n_bins))
    self.top = zeros()
    self.classwise = zeros(self.num_classes)
    self.nll_sum = 0.0
    self.total = 0

  @staticmethod
  def _stack(bins: dict) -> np.ndarray:
    return np.stack([bins["count"], bins["confidence_sum"], bins["correct_sum"]])

  def update(self, probs, labels) -> None:
    probs = np.asarray(probs)
    labels = np.asarray(labels).astype(np.int64)
    if probs.shape[-1] != self.num_classes or probs.shape[:-1] != labels.shape:
      raise InputError(f"probs {probs.shape} and labels {labels.shape}: expected "
                       f"(..., {self.num_classes}) and (...)")
    probs = probs.reshape(-1, self.num_classes)
    labels = labels.reshape(-1)
    self.top += self._stack(metrics.reliability_bins(
        probs.max(-1), probs.argmax(-1) == labels, n_bins=self.n_bins))
    for k in range(self.num_classes):
      self.classwise[k] += self._stack(metrics.reliability_bins(
          probs[:, k], labels == k, n_bins=self.n_bins))
    picked = probs[np.arange(labels.size), labels].astype(np.float64)
    self.nll_sum += float(-np.log(np.maximum(picked, TINY)).sum())
    self.total += labels.size

  def ece(self) -> float:
    """Top-label ECE (Guo 2017)."""
    return metrics.ece_from_bins(*self.top)

  def classwise_ece(self) -> np.ndarray:
    """`(K,)` one-vs-rest ECE per class (Kull 2019); their mean is the class-wise ECE."""
    return np.array([metrics.ece_from_bins(*b) for b in self.classwise])

  def nll(self) -> float:
    """Mean negative log-likelihood of the labels."""
    return self.nll_sum / max(self.total, 1)

  def reliability(self) -> dict:
    """Top-label reliability-diagram data: `edges (n_bins + 1,)`, per bin
    `count`, mean `confidence` and `accuracy` (NaN in empty bins), as lists."""
    count, conf, correct = self.top
    with np.errstate(invalid="ignore", divide="ignore"):
      return {"edges": np.linspace(0, 1, self.n_bins + 1).tolist(), "count": count.tolist(),
              "confidence": (conf / count).tolist(), "accuracy": (correct / count).tolist(),
              "ece": self.ece()}


class ErrorDetectionHistogram:
  """AUROC of an uncertainty in `[0, max_value]` for "prediction is wrong",
  from per-bin counts of wrong and right voxels (`n_bins` equal bins; values
  in the same bin tie), accumulated over chunks."""

  def __init__(self, max_value: float, *, n_bins: int = 1 << 16):
    self.max_value = float(max_value)
    self.n_bins = int(n_bins)
    self.wrong = np.zeros(self.n_bins)
    self.right = np.zeros(self.n_bins)

  def update(self, uncertainty, wrong) -> None:
    u = np.asarray(uncertainty, np.float64).reshape(-1)
    wrong = np.asarray(wrong, bool).reshape(-1)
    bins = np.clip((u / self.max_value * self.n_bins).astype(np.int64), 0, self.n_bins - 1)
    self.wrong += np.bincount(bins[wrong], minlength=self.n_bins)
    self.right += np.bincount(bins[~wrong], minlength=self.n_bins)

  def auroc(self) -> float:
    return metrics.roc_auc_from_counts(self.wrong, self.right)


def rejected_mask(uncertainty, rate: float) -> np.ndarray:
  """Boolean mask of the `round(rate * M)` most uncertain of `M` values (ties broken by position)."""
  u = np.asarray(uncertainty).reshape(-1)
  n = int(round(float(rate) * u.size))
  mask = np.zeros(u.size, bool)
  if n > 0:
    mask[np.argpartition(-u, n - 1)[:n]] = True
  return mask.reshape(np.shape(uncertainty))


def retained_dice(pred, label, uncertainty, rate: float, classes: Mapping[int, str]
                  ) -> dict[str, float]:
  """Dice per class on the voxels kept after rejecting the `rate` most uncertain ones.

  Args:
    pred, label: `(*S)` integer label maps.
    uncertainty: `(*S)` per-voxel uncertainty (e.g. predictive entropy).
    rate: fraction of voxels rejected, in [0, 1).
    classes: class id -> name of the classes scored.
  Returns:
    `{name: dice}` (`metrics.dice` on the retained voxels).
  """
  if not 0.0 <= rate < 1.0:
    raise InputError(f"rate={rate}: expected a fraction in [0, 1)")
  keep = ~rejected_mask(uncertainty, rate)
  pred, label = np.asarray(pred)[keep], np.asarray(label)[keep]
  return {name: metrics.dice(pred == c, label == c) for c, name in classes.items()}


def retained_accuracy(correct, uncertainty, rate: float) -> float:
  """Accuracy of the samples kept after rejecting the `rate` most uncertain ones."""
  keep = ~rejected_mask(uncertainty, rate)
  return float(np.asarray(correct, np.float64)[keep].mean())


def rate_key(metric: str, rate: float) -> str:
  """`retained_dice`, 0.1 -> `retained_dice@10%`."""
  return f"{metric}@{100 * rate:g}%"


def map_range(name: str, num_classes: int) -> float:
  """Largest value of an uncertainty map: `ln K` for entropy and mutual information, 1/4 for variance."""
  return 0.25 if name == "variance" else math.log(num_classes)


def auroc_key(name: str) -> str:
  """eval.json key of the error-detection AUROC of map `name` (entropy: plain `uncertainty_auroc`)."""
  return {"entropy": "uncertainty_auroc", "mutual_information": "uncertainty_auroc_mi"}.get(
      name, f"uncertainty_auroc_{name}")


def calibration_results(hist: CalibrationHistogram, class_names: Sequence[str],
                        suffix: str = "") -> dict:
  """`ece`, `ece_classwise`, `ece/<class>`, `nll` (each with `suffix`) of a histogram."""
  per_class = hist.classwise_ece()
  out = {f"ece{suffix}": hist.ece(), f"ece_classwise{suffix}": float(per_class.mean()),
         f"nll{suffix}": hist.nll()}
  out.update({f"ece{suffix}/{n}": float(e) for n, e in zip(class_names, per_class)})
  return out


class SegmentationTrust:
  """Voxel-level calibration and error detection over the cases of an evaluation.

  `score_case` accumulates one case and returns its per-case numbers
  (`retained_dice@<r>%/<class>` at `REJECTION_RATES`, rejecting by predictive
  entropy); `results` gives the test-set numbers: `ece`, `ece_classwise`,
  `ece/<class>`, `nll`, with a `temperature` the same after temperature
  scaling (`..._after_temperature`), and `uncertainty_auroc` (entropy),
  `uncertainty_auroc_mi` / `_variance` when the predictor sampled.
  """

  def __init__(self, class_names: Sequence[str], *, temperature: Optional[float] = None,
               n_bins: int = N_BINS, rates: Sequence[float] = REJECTION_RATES):
    self.class_names = tuple(class_names)
    self.temperature = temperature
    self.rates = tuple(rates)
    k = len(self.class_names)
    self.before = CalibrationHistogram(k, n_bins=n_bins)
    self.after = CalibrationHistogram(k, n_bins=n_bins) if temperature else None
    self.detect: dict[str, ErrorDetectionHistogram] = {}

  def score_case(self, pred, probs, label, maps: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Accumulates one case (`pred`, `label` `(*S)`, `probs` `(*S, K)`, maps
    name -> `(*S)`) and returns its retained Dice per class and rate."""
    k = len(self.class_names)
    self.before.update(probs, label)
    if self.after is not None:
      self.after.update(scaled_probabilities(probs, self.temperature), label)
    wrong = np.asarray(pred) != np.asarray(label)
    for name, u in maps.items():
      hist = self.detect.setdefault(name, ErrorDetectionHistogram(map_range(name, k)))
      hist.update(u, wrong)
    foreground = {i: n for i, n in enumerate(self.class_names) if i > 0}
    out = {}
    for rate in self.rates:
      dice = retained_dice(pred, label, maps["entropy"], rate, foreground)
      out.update({f"{rate_key('retained_dice', rate)}/{n}": v for n, v in dice.items()})
    return out

  def results(self) -> dict:
    out = calibration_results(self.before, self.class_names)
    if self.after is not None:
      out["temperature"] = float(self.temperature)
      out.update(calibration_results(self.after, self.class_names, "_after_temperature"))
    out.update({auroc_key(n): h.auroc() for n, h in self.detect.items()})
    return out

  def reliability(self) -> dict:
    """`{"before": bins, "after": bins (with temperature)}` for `report.plot_reliability`."""
    out = {"before": self.before.reliability()}
    if self.after is not None:
      out["after"] = {**self.after.reliability(), "temperature": float(self.temperature)}
    return out


def classification_trust(probs, labels, class_names: Sequence[str], maps: Mapping[str, np.ndarray],
                         *, temperature: Optional[float] = None, n_bins: int = N_BINS,
                         rates: Sequence[float] = REJECTION_RATES) -> tuple[dict, dict]:
  """Image-level calibration and error detection: `(results, reliability)`.

  `results`: `ece` (top-label, as `metrics.expected_calibration_error`),
  `ece_classwise`, `ece/<class>`, `nll`, the same after
  temperature scaling (with `temperature`, `ece_after_temperature`),
  `uncertainty_auroc[_mi|_variance]` (exact AUROC of each map for
  misclassification) and `retained_accuracy@<r>%` (rejecting by entropy).
  """
  probs = np.asarray(probs, np.float32)
  labels = np.asarray(labels).astype(np.int64)
  hist = CalibrationHistogram(len(class_names), n_bins=n_bins)
  hist.update(probs, labels)
  results = calibration_results(hist, class_names)
  reliability = {"before": hist.reliability()}
  if temperature:
    after = CalibrationHistogram(len(class_names), n_bins=n_bins)
    after.update(scaled_probabilities(probs, temperature), labels)
    results["temperature"] = float(temperature)
    results.update(calibration_results(after, class_names, "_after_temperature"))
    reliability["after"] = {**after.reliability(), "temperature": float(temperature)}
  wrong = probs.argmax(-1) != labels
  for name, u in maps.items():
    results[auroc_key(name)] = metrics.roc_auc(u, wrong)
  for rate in rates:
    results[rate_key("retained_accuracy", rate)] = retained_accuracy(~wrong, maps["entropy"], rate)
  return results, reliability


__all__ = ["N_BINS", "REJECTION_RATES", "log_probabilities", "scaled_probabilities",
           "negative_log_likelihood", "fit_temperature", "subsample_voxels",
           "CalibrationHistogram", "ErrorDetectionHistogram", "rejected_mask", "retained_dice",
           "retained_accuracy", "SegmentationTrust", "classification_trust"]
