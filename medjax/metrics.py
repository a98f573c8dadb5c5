"""Evaluation metrics for segmentation, classification and calibration.

Everything here runs on the host with numpy/scipy: inputs may be numpy or jax
arrays (they are copied to numpy). Masks are boolean or integer (non-zero is
foreground); `spacing` is the voxel size in mm, one value per array axis, in
the same order as the axes (default: 1 mm isotropic).

Conventions for empty masks (chosen so that a case where a structure is
correctly absent scores perfectly, and a miss scores worst):
  * overlap metrics (`dice`, `iou`, `surface_dice`, and the rates
    `sensitivity`, `specificity`, `precision` whose denominator is 0): 1.0 when
    both masks are empty, 0.0 when exactly one is;
  * distances (`hausdorff`, `average_surface_distance`): 0.0 when both are
    empty, `inf` when exactly one is.

Surfaces are the border voxels of a mask: the mask minus its binary erosion
(face connectivity; voxels on the array border count as surface), as in MONAI
and medpy. Distances from one surface to the other come from
`scipy.ndimage.distance_transform_edt(~surface, sampling=spacing)`, i.e. they
are measured between voxel centres, in mm.

References:
  Nikolov S. et al. (2021) Clinically applicable segmentation of head and neck
    anatomy for radiotherapy: deep learning algorithm development and
    validation study. JMIR. (normalised surface Dice)
  Guo C. et al. (2017) On calibration of modern neural networks. ICML. (ECE)
  Kull M. et al. (2019) Beyond temperature scaling: obtaining well-calibrated
    multiclass probabilities with Dirichlet calibration. NeurIPS. (class-wise ECE)
  Brier G. W. (1950) Verification of forecasts expressed in terms of
    probability. Monthly Weather Review.
  Mann H. B., Whitney D. R. (1947) On a test of whether one of two random
    variables is stochastically larger than the other. (AUC)
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage, stats

from medjax.errors import InputError

Spacing = Optional[Sequence[float]]


# ---------------------------------------------------------------------------
# helpers


def _masks(pred, target) -> tuple[np.ndarray, np.ndarray]:
  pred = np.asarray(pred).astype(bool)
  target = np.asarray(target).astype(bool)
  if pred.shape != target.shape:
    raise InputError(f"prediction shape {pred.shape} and target shape "
                     f"{target.shape}: expected equal shapes")
  return pred, target


def _spacing(spacing: Spacing, ndim: int) -> tuple[float, ...]:
  if spacing is None:
    return (1.0,) * ndim
  spacing = tuple(float(s) for s in np.atleast_1d(np.asarray(spacing)))
  if len(spacing) != ndim or any(s <= 0 for s in spacing):
    raise InputError(f"spacing {spacing}: expected {ndim} positive values "
                     "(mm, one per array axis)")
  return spacing


def surface(mask) -> np.ndarray:
  """Border voxels of a boolean mask: `mask & ~binary_erosion(mask)`."""
  mask = np.asarray(mask).astype(bool)
  if not mask.any():
    return mask
  return mask & ~ndimage.binary_erosion(mask)


def surface_distances(pred, target, spacing: Spacing = None):
  """Directed surface distances in mm, or None if either mask is empty.

  Returns:
    `(d_pred_to_target, d_target_to_pred)`: for every surface voxel of `pred`,
    the distance to the nearest surface voxel of `target`, and conversely.
  """
  pred, target = _masks(pred, target)
  if not pred.any() or not target.any():
    return None
  sampling = _spacing(spacing, pred.ndim)
  s_pred, s_target = surface(pred), surface(target)
  dt_target = ndimage.distance_transform_edt(~s_target, sampling=sampling)
  dt_pred = ndimage.distance_transform_edt(~s_pred, sampling=sampling)
  return dt_target[s_pred], dt_pred[s_target]


def _empty_distance(pred: np.ndarray, target: np.ndarray) -> float:
  return 0.0 if not pred.any() and not target.any() else float("inf")


# ---------------------------------------------------------------------------
# overlap


def dice(pred, target) -> float:
  """Dice coefficient `2 |P & T| / (|P| + |T|)`; both empty -> 1.0."""
  pred, target = _masks(pred, target)
  total = int(pred.sum()) + int(target.sum())
  if total == 0:
    return 1.0
  return 2.0 * int(np.logical_and(pred, target).sum()) / total


def iou(pred, target) -> float:
  """Intersection over union (Jaccard) `|P & T| / |P | T|`; both empty -> 1.0."""
  pred, target = _masks(pred, target)
  union = int(np.logical_or(pred, target).sum())
  if union == 0:
    return 1.0
  return int(np.logical_and(pred, target).sum()) / union


def confusion_counts(pred, target) -> dict[str, int]:
  """Voxel counts `{"tp", "fp", "fn", "tn"}` of two boolean masks."""
  pred, target = _masks(pred, target)
  tp = int(np.sum(pred & target))
  fp = int(np.sum(pred & ~target))
  fn = int(np.sum(~pred & target))
  return {"tp": tp, "fp": fp, "fn": fn, "tn": pred.size - tp - fp - fn}


def _rate(num: int, den: int) -> float:
  return 1.0 if den == 0 else num / den


def sensitivity(pred, target) -> float:
  """Recall / true-positive rate `TP / (TP + FN)`; 1.0 if the target is empty."""
  c = confusion_counts(pred, target)
  return _rate(c["tp"], c["tp"] + c["fn"])


def specificity(pred, target) -> float:
  """True-negative rate `TN / (TN + FP)`; 1.0 if the target fills the array."""
  c = confusion_counts(pred, target)
  return _rate(c["tn"], c["tn"] + c["fp"])


def precision(pred, target) -> float:
  """Positive predictive value `TP / (TP + FP)`; 1.0 if the prediction is empty."""
  c = confusion_counts(pred, target)
  return _rate(c["tp"], c["tp"] + c["fp"])


# ---------------------------------------------------------------------------
# surface distances


def _check_percentile(percentile: Optional[float]) -> None:
  if percentile is not None and not 0 <= percentile <= 100:
    raise InputError(f"percentile={percentile}: expected a value in [0, 100]")


def _directed_from(d: np.ndarray, percentile: Optional[float]) -> float:
  return float(d.max() if percentile is None else np.percentile(d, percentile))


def _hausdorff_from(distances, percentile: Optional[float]) -> float:
  d_pt, d_tp = distances
  return max(_directed_from(d_pt, percentile), _directed_from(d_tp, percentile))


DIRECTIONS = (None, "pred_to_target", "target_to_pred")


def hausdorff(pred, target, *, percentile: Optional[float] = None,
              spacing: Spacing = None, directed: Optional[str] = None) -> float:
  """Hausdorff distance between the mask surfaces, in mm; symmetric by default.

  `percentile=None`: `max(max d(P->T), max d(T->P))`. `percentile=q` (95 for
  HD95) follows MONAI's `compute_hausdorff_distance`: the larger of the two
  directed q-th percentiles, `max(pct_q d(P->T), pct_q d(T->P))`
  (numpy's linear interpolation). medpy's `hd95` instead takes the q-th
  percentile of the union of both distance sets; the two agree when the
  surfaces are symmetric and differ slightly otherwise.

  `directed="pred_to_target"`: only the distances from the prediction's
  surface to the target's, `max d(P->T)` (or its q-th percentile): large when
  the prediction has voxels far from the truth (false-positive islands);
  `directed="target_to_pred"`: `max d(T->P)`, large when part of the truth is
  missed. The symmetric distance is the larger of the two.

  Returns:
    The distance; 0.0 if both masks are empty, `inf` if exactly one is (in
    both directions).
  """
  _check_percentile(percentile)
  if directed not in DIRECTIONS:
    raise InputError(f"directed={directed!r}: expected one of {DIRECTIONS}")
  pred, target = _masks(pred, target)
  distances = surface_distances(pred, target, spacing)
  if distances is None:
    return _empty_distance(pred, target)
  if directed is None:
    return _hausdorff_from(distances, percentile)
  return _directed_from(distances[0 if directed == "pred_to_target" else 1], percentile)


def _asd_from(distances, symmetric: bool) -> float:
  d_pt, d_tp = distances
  if symmetric:
    return float(np.concatenate([d_pt, d_tp]).mean())
  return float(d_pt.mean())


def average_surface_distance(pred, target, *, spacing: Spacing = None,
                             symmetric: bool = True) -> float:
  """Average surface distance in mm.

  `symmetric=True` (ASSD): the mean over the union of both directed distance
  sets, `(sum d(P->T) + sum d(T->P)) / (|S_P| + |S_T|)` (as MONAI's
  `compute_average_surface_distance(symmetric=True)`); otherwise the mean
  distance from the prediction's surface to the target's.

  Returns:
    The distance; 0.0 if both masks are empty, `inf` if exactly one is.
  """
  pred, target = _masks(pred, target)
  distances = surface_distances(pred, target, spacing)
  if distances is None:
    return _empty_distance(pred, target)
  return _asd_from(distances, symmetric)


def _nsd_from(distances, tolerance_mm: float) -> float:
  d_pt, d_tp = distances
  within = int(np.sum(d_pt <= tolerance_mm)) + int(np.sum(d_tp <= tolerance_mm))
  return within / (d_pt.size + d_tp.size)


def surface_dice(pred, target, tolerance_mm: float, spacing: Spacing) -> float:
  """Normalised surface Dice at a tolerance (Nikolov 2021).

  The fraction of the surface points of both masks that lie within
  `tolerance_mm` of the other mask's surface:
  `(|{p in S_P: d(p, S_T) <= tau}| + |{t in S_T: d(t, S_P) <= tau}|) / (|S_P| + |S_T|)`.

  Approximation: each border voxel counts as one surface point. DeepMind's
  `surface-distance` package instead weights each surface element by its area
  (marching-cubes surfels), which matters with strongly anisotropic spacing
  and at tolerances below a voxel; with this voxel count, tolerance 0 counts
  only coincident border voxels.

  Returns:
    A value in [0, 1]; 1.0 if both masks are empty, 0.0 if exactly one is.
  """
  if tolerance_mm < 0:
    raise InputError(f"tolerance_mm={tolerance_mm}: expected >= 0")
  pred, target = _masks(pred, target)
  distances = surface_distances(pred, target, spacing)
  if distances is None:
    return 1.0 if not pred.any() and not target.any() else 0.0
  return _nsd_from(distances, tolerance_mm)


# ---------------------------------------------------------------------------
# volumes


def volume_ml(mask, spacing: Spacing = None) -> float:
  """Volume of a mask in millilitres: voxel count x voxel volume (`prod(spacing)` mm^3) / 1000."""
  mask = np.asarray(mask).astype(bool)
  return float(mask.sum()) * float(np.prod(_spacing(spacing, mask.ndim))) / 1000.0


def volume_difference(pred, target, *, spacing: Spacing = None) -> float:
  """Signed volume difference `V(P) - V(T)` in mL (positive: over-segmentation)."""
  pred, target = _masks(pred, target)
  voxel_ml = float(np.prod(_spacing(spacing, pred.ndim))) / 1000.0
  return (float(pred.sum()) - float(target.sum())) * voxel_ml


def relative_volume_difference(pred, target) -> float:
  """Signed relative volume difference `(|P| - |T|) / |T|` (spacing cancels);
  0.0 if both masks are empty, `inf` if only the target is."""
  pred, target = _masks(pred, target)
  n_pred, n_target = float(pred.sum()), float(target.sum())
  if n_target == 0:
    return 0.0 if n_pred == 0 else float("inf")
  return (n_pred - n_target) / n_target


# ---------------------------------------------------------------------------
# per-class summary for eval.json


def segmentation_metrics(pred_labels, target_labels,
                         class_names: Mapping[int, str], *,
                         spacing: Spacing = None, surface: bool = True,
                         nsd_tolerance_mm: float = 2.0, volumes: bool = False,
                         directed: bool = False) -> dict[str, float]:
  """All segmentation metrics of one case, keyed `metric/class_name`.

  For every class id in `class_names` except 0 (background), the class is the
  voxel set `labels == id` in both label maps (for nested structures, merge
  labels before calling, e.g. liver = liver | tumour). Keys: `dice/`, `iou/`,
  `sensitivity/`, `precision/` and, with `surface=True`, `hd/`, `hd95/`
  (MONAI's convention, see `hausdorff`), `asd/` (symmetric) and `nsd/` (at
  `nsd_tolerance_mm`). With `volumes=True` also `volume_diff_ml/` and
  `volume_diff_rel/` (`volume_difference`, `relative_volume_difference`);
  with `directed=True` and `surface=True` also the directed HD95s
  `hd95_pred_to_truth/` (far false positives) and `hd95_truth_to_pred/`
  (missed parts). Empty-mask conventions as in the module docstring (a
  distance can be `inf`).

  Args:
    pred_labels, target_labels: integer label maps `(*S)`, same shape.
    class_names: class id -> name, e.g. `{1: "liver", 2: "tumour"}`.
    spacing: voxel size in mm per axis (default 1 mm).
  Returns:
    A flat dict of Python floats, e.g. `{"dice/liver": 0.95, "hd95/liver": 3.2, ...}`.
  """
  pred_labels = np.asarray(pred_labels)
  target_labels = np.asarray(target_labels)
  if pred_labels.shape != target_labels.shape:
    raise InputError(f"prediction shape {pred_labels.shape} and target shape "
                     f"{target_labels.shape}: expected equal shapes")
  spacing = _spacing(spacing, pred_labels.ndim)
  out: dict[str, float] = {}
  for class_id, name in sorted(class_names.items()):
    if class_id == 0:
      continue
    p, t = pred_labels == class_id, target_labels == class_id
    out[f"dice/{name}"] = dice(p, t)
    out[f"iou/{name}"] = iou(p, t)
    out[f"sensitivity/{name}"] = sensitivity(p, t)
    out[f"precision/{name}"] = precision(p, t)
    if volumes:
      out[f"volume_diff_ml/{name}"] = volume_difference(p, t, spacing=spacing)
      out[f"volume_diff_rel/{name}"] = relative_volume_difference(p, t)
    if surface:
      distances = surface_distances(p, t, spacing)
      directed_keys = (f"hd95_pred_to_truth/{name}", f"hd95_truth_to_pred/{name}")
      if distances is None:
        empty = _empty_distance(p, t)
        out[f"hd/{name}"] = out[f"hd95/{name}"] = out[f"asd/{name}"] = empty
        out[f"nsd/{name}"] = 1.0 if empty == 0.0 else 0.0
        if directed:
          out.update(dict.fromkeys(directed_keys, empty))
      else:
        out[f"hd/{name}"] = _hausdorff_from(distances, None)
        out[f"hd95/{name}"] = _hausdorff_from(distances, 95)
        out[f"asd/{name}"] = _asd_from(distances, True)
        out[f"nsd/{name}"] = _nsd_from(distances, nsd_tolerance_mm)
        if directed:
          out.update({k: _directed_from(d, 95) for k, d in zip(directed_keys, distances)})
  return out


# ---------------------------------------------------------------------------
# classification and calibration


def roc_auc(scores, labels) -> float:
  """Binary ROC AUC as the Mann-Whitney U statistic.

  `AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)` with `R_pos` the sum
  of the positives' ranks among all scores, tied scores sharing their average
  rank -- i.e. the probability that a random positive scores higher than a
  random negative, ties counting 1/2.

  Args:
    scores: `(M,)` (or any shape) real scores, higher = more positive.
    labels: same shape, binary (non-zero = positive).
  Returns:
    The AUC in [0, 1]; NaN if only one class is present.
  """
  scores = np.asarray(scores, np.float64).reshape(-1)
  labels = np.asarray(labels).reshape(-1).astype(bool)
  if scores.shape != labels.shape:
    raise InputError(f"scores ({scores.size}) and labels ({labels.size}): "
                     "expected the same number of values")
  n_pos = int(labels.sum())
  n_neg = labels.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = stats.rankdata(scores)  # ties get their average rank
  u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def roc_auc_from_counts(positive_counts, negative_counts) -> float:
  """Binary ROC AUC from histograms of the scores of positives and negatives
  over the same ordered bins (ties inside a bin count 1/2): the Mann-Whitney
  statistic of the binned scores, for data too large to rank (every voxel of
  a test set). NaN if either class is empty.
  """
  pos = np.asarray(positive_counts, np.float64).reshape(-1)
  neg = np.asarray(negative_counts, np.float64).reshape(-1)
  if pos.shape != neg.shape:
    raise InputError(f"positive_counts ({pos.size}) and negative_counts ({neg.size}): "
                     "expected the same bins")
  n_pos, n_neg = pos.sum(), neg.sum()
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  below = np.cumsum(neg) - neg  # negatives in lower bins
  return float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))


def _probs_labels(probs, labels) -> tuple[np.ndarray, np.ndarray]:
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels).astype(np.int64)
  if probs.shape[:-1] != labels.shape:
    raise InputError(f"probs shape {probs.shape} and labels shape "
                     f"{labels.shape}: expected probs (M, K) or (N, *S, K) "
                     "and labels (M,) or (N, *S)")
  return probs.reshape(-1, probs.shape[-1]), labels.reshape(-1)


def calibration_bins(confidence, n_bins: int) -> np.ndarray:
  """Bin index in `[0, n_bins)` of each confidence: equal-width bins
  `(i/n, (i+1)/n]` (0 falls in the first), as in Guo 2017."""
  if n_bins < 1:
    raise InputError(f"n_bins={n_bins}: expected >= 1")
  edges = np.linspace(0.0, 1.0, n_bins + 1)
  return np.clip(np.searchsorted(edges, np.asarray(confidence), side="left") - 1, 0, n_bins - 1)


def reliability_bins(confidence, correct, *, n_bins: int = 15) -> dict[str, np.ndarray]:
  """Reliability-diagram data (Guo 2017): per confidence bin, the number of
  samples and the sums of their confidences and of their correctness.

  Args:
    confidence: `(M,)` predicted probabilities in [0, 1].
    correct: `(M,)` 1 where the prediction is right (for a class-wise diagram:
      where the label is that class).
  Returns:
    `{"count", "confidence_sum", "correct_sum"}`, each `(n_bins,)` float64;
    the bin means are the sums over the counts.
  """
  confidence = np.asarray(confidence, np.float64).reshape(-1)
  correct = np.asarray(correct, np.float64).reshape(-1)
  bins = calibration_bins(confidence, n_bins)
  return {"count": np.bincount(bins, minlength=n_bins).astype(np.float64),
          "confidence_sum": np.bincount(bins, confidence, minlength=n_bins),
          "correct_sum": np.bincount(bins, correct, minlength=n_bins)}


def ece_from_bins(count, confidence_sum, correct_sum) -> float:
  """`ECE = Σ_b |B_b| / M · |accuracy(B_b) - confidence(B_b)|` from per-bin
  counts and sums (`reliability_bins`); 0 for no samples."""
  count = np.asarray(count, np.float64)
  total = count.sum()
  if total == 0:
    return 0.0
  gaps = np.abs(np.asarray(correct_sum, np.float64) - np.asarray(confidence_sum, np.float64))
  return float(gaps.sum() / total)  # |B| * |acc - conf| = |Σ correct - Σ conf|


def expected_calibration_error(probs, labels, *, n_bins: int = 15) -> float:
  """Top-label expected calibration error (Guo 2017).

  Each sample's confidence is its largest class probability; samples fall in
  `n_bins` equal-width bins `(i/n, (i+1)/n]` of confidence, and
  `ECE = sum_b |B_b| / M * |accuracy(B_b) - mean confidence(B_b)|`.

  Args:
    probs: `(M, K)` or `(N, *S, K)` class probabilities.
    labels: `(M,)` or `(N, *S)` integer labels.
  Returns:
    The ECE in [0, 1].
  """
  if n_bins < 1:
    raise InputError(f"n_bins={n_bins}: expected >= 1")
  probs, labels = _probs_labels(probs, labels)
  bins = reliability_bins(probs.max(axis=-1), probs.argmax(axis=-1) == labels, n_bins=n_bins)
  return ece_from_bins(**bins)


def classwise_expected_calibration_error(probs, labels, *, n_bins: int = 15) -> np.ndarray:
  """Class-wise ECE (Kull et al. 2019, NeurIPS): for each class k, the ECE of
  the one-vs-rest forecast `p_k` against `1[y = k]` over all samples, binned
  on `p_k`. Its mean over classes is the class-wise ECE.

  Args:
    probs: `(M, K)` or `(N, *S, K)` class probabilities.
    labels: `(M,)` or `(N, *S)` integer labels.
  Returns:
    `(K,)` per-class ECEs in [0, 1].
  """
  if n_bins < 1:
    raise InputError(f"n_bins={n_bins}: expected >= 1")
  probs, labels = _probs_labels(probs, labels)
  return np.array([ece_from_bins(**reliability_bins(probs[:, k], labels == k, n_bins=n_bins))
                   for k in range(probs.shape[-1])])


def brier_score(probs, labels) -> float:
  """Brier score: mean squared error of the predicted probabilities (Brier 1950).

  Multi-class, probs `(M, K)` or `(N, *S, K)`: the mean over samples of
  `sum_k (p_k - 1[y = k])^2` (in [0, 2]). Binary, probs with the shape of
  labels (the positive-class probability): the mean of `(p - y)^2`.
  """
  probs_arr = np.asarray(probs, np.float64)
  labels_arr = np.asarray(labels)
  if probs_arr.shape == labels_arr.shape:
    return float(np.mean((probs_arr - labels_arr.astype(np.float64)) ** 2))
  probs_arr, labels_arr = _probs_labels(probs_arr, labels_arr)
  onehot = np.eye(probs_arr.shape[-1])[labels_arr]
  return float(np.mean(np.sum((probs_arr - onehot) ** 2, axis=-1)))
