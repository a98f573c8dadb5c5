"""FROC and CPM by the LUNA16 protocol, and case- and size-level detection scores.

The LUNA16 protocol (Setio et al. 2017, Medical Image Analysis 42; the
challenge's `noduleCADEvaluationLUNA16.py`, `evaluateCAD` / `computeFROC` /
`computeFROC_bootstrap`):

* a candidate (a point in world mm with a probability) hits a nodule when its
  squared distance to the nodule centre is < (diameter / 2)^2; a negative
  diameter counts as 10 mm;
* a nodule hit by several candidates counts once, with the highest probability
  among them (the others are neither hits nor false positives); a nodule
  without a hit enters the FROC with the lowest probability and is excluded
  from the curve (it lowers the sensitivity ceiling);
* candidates on an excluded finding (`annotations_excluded.csv`) are ignored:
  neither hits nor false positives;
* every other candidate is a false positive; only the `max_candidates` most
  probable candidates of a scan are kept (the script's `maxNumberOfCADMarks`,
  100 in the challenge);
* the FROC curve: sensitivity = hits above a threshold / all nodules, FP rate =
  false positives above it / scans; sensitivities are read by linear
  interpolation at 1/8, 1/4, 1/2, 1, 2, 4, 8 FP/scan and the CPM (competition
  performance metric) is their mean;
* the 95% confidence interval: scans resampled with replacement (1,000 times in
  the challenge; seeded here), the k-th sorted value at `floor(0.025 n)` and
  `floor(0.975 n)`; a resample that drew no nodule at all (sensitivity 0 / 0)
  is left out.

A scan without nodules contributes only false positives; a scan without
candidates only misses. Everything is NumPy on host arrays.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from medjax import metrics

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
_MISSED = -1.0e9  # the script's `minProbValue`
SIZE_BINS_MM = (6.0, 10.0)  # < 6, 6-10, > 10 mm


def _points(values, width: int) -> np.ndarray:
  return np.asarray(values, np.float64).reshape(-1, width)


@dataclasses.dataclass
class ScanFindings:
  """What one scan has and what a detector said about it (world mm).

  Attributes:
    case: the scan's id.
    candidate_centers: `(C, 3)` candidate positions; candidate_scores: `(C,)`.
    nodule_centers: `(M, 3)`; nodule_diameters: `(M,)` mm.
    excluded_centers: `(E, 3)`; excluded_diameters: `(E,)` mm (findings whose
      hits are ignored).
  """
  case: str
  candidate_centers: np.ndarray
  candidate_scores: np.ndarray
  nodule_centers: np.ndarray
  nodule_diameters: np.ndarray
  excluded_centers: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 3)))
  excluded_diameters: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,)))

  def __post_init__(self):
    self.candidate_centers = _points(self.candidate_centers, 3)
    self.candidate_scores = np.asarray(self.candidate_scores, np.float64).reshape(-1)
    self.nodule_centers = _points(self.nodule_centers, 3)
    self.nodule_diameters = np.asarray(self.nodule_diameters, np.float64).reshape(-1)
    self.excluded_centers = _points(self.excluded_centers, 3)
    self.excluded_diameters = np.asarray(self.excluded_diameters, np.float64).reshape(-1)
    if len(self.candidate_centers) != len(self.candidate_scores):
      raise ValueError(f"scan {self.case}: {len(self.candidate_centers)} candidate centres but "
                       f"{len(self.candidate_scores)} scores")
    if len(self.nodule_centers) != len(self.nodule_diameters):
      raise ValueError(f"scan {self.case}: {len(self.nodule_centers)} nodule centres but "
                       f"{len(self.nodule_diameters)} diameters")
    if len(self.excluded_centers) != len(self.excluded_diameters):
      raise ValueError(f"scan {self.case}: {len(self.excluded_centers)} excluded centres but "
                       f"{len(self.excluded_diameters)} diameters")


def _top_candidates(scan: ScanFindings, max_candidates: Optional[int]) -> np.ndarray:
  """Indices of the candidates kept (the script keeps those above the (k+1)-th probability)."""
  num = len(scan.candidate_scores)
  if max_candidates is None or num <= max_candidates:
    return np.arange(num)
  threshold = np.sort(scan.candidate_scores)[::-1][max_candidates]
  above = np.nonzero(scan.candidate_scores > threshold)[0]
  return above[:max_candidates]


def _hits(candidates: np.ndarray, centers: np.ndarray, diameters: np.ndarray) -> np.ndarray:
  """`(M, C)` bool: candidate within the finding's radius (strictly)."""
  radius = np.where(diameters < 0, 10.0, diameters) / 2
  d2 = np.sum((centers[:, None, :] - candidates[None, :, :]) ** 2, axis=-1)
  return d2 < (radius ** 2)[:, None]


@dataclasses.dataclass
class ScanMatch:
  """The LUNA16 matching of one scan.

  Attributes:
    nodule_scores: `(M,)` best hit probability per nodule (-inf: missed).
    fp_scores: `(F,)` probabilities of the false-positive candidates.
    hit_candidates: `(C,)` bool, the candidate hits some nodule.
    ignored_candidates: `(C,)` bool, the candidate only hits excluded findings.
  """
  nodule_scores: np.ndarray
  fp_scores: np.ndarray
  hit_candidates: np.ndarray
  ignored_candidates: np.ndarray


def match_scan(scan: ScanFindings, *, max_candidates: Optional[int] = 100) -> ScanMatch:
  """Hits, double hits, exclusions and false positives of one scan (LUNA16 rules)."""
  keep = _top_candidates(scan, max_candidates)
  points, scores = scan.candidate_centers[keep], scan.candidate_scores[keep]
  on_nodule = _hits(points, scan.nodule_centers, scan.nodule_diameters)  # (M, C)
  on_excluded = _hits(points, scan.excluded_centers, scan.excluded_diameters)
  nodule_scores = np.where(on_nodule, scores[None, :], -np.inf).max(axis=1, initial=-np.inf)
  hit = on_nodule.any(axis=0)
  ignored = on_excluded.any(axis=0) & ~hit
  fp = ~hit & ~ignored
  full_hit = np.zeros(len(scan.candidate_scores), bool)
  full_ignored = np.zeros(len(scan.candidate_scores), bool)
  full_hit[keep], full_ignored[keep] = hit, ignored
  return ScanMatch(nodule_scores, scores[fp], full_hit, full_ignored)


def froc_curve(nodule_scores: np.ndarray, fp_scores: np.ndarray, num_scans: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`(fps_per_scan, sensitivity, thresholds)` over decreasing thresholds.

  Starts at (0, 0) with threshold +inf, then one point per distinct probability
  (sklearn's `roc_curve` rescaled as the script's `computeFROC` does). Missed
  nodules (-inf) count in the sensitivity's denominator only.
  """
  nodule_scores = np.asarray(nodule_scores, np.float64)
  fp_scores = np.asarray(fp_scores, np.float64)
  total = len(nodule_scores)
  detected = nodule_scores[np.isfinite(nodule_scores)]
  scores = np.concatenate([detected, fp_scores])
  is_hit = np.concatenate([np.ones(len(detected)), np.zeros(len(fp_scores))])
  order = np.argsort(-scores, kind="mergesort")
  scores, is_hit = scores[order], is_hit[order]
  tp, fp = np.cumsum(is_hit), np.cumsum(1 - is_hit)
  last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1] if len(scores) else np.zeros(0, int)
  tp, fp, thresholds = tp[last], fp[last], scores[last]
  fps = np.r_[0.0, fp / max(num_scans, 1)]
  sensitivity = np.r_[0.0, tp / total] if total else np.full(len(tp) + 1, np.nan)
  return fps, sensitivity, np.r_[np.inf, thresholds]


def sensitivity_at(fps: np.ndarray, sensitivity: np.ndarray,
                   fp_rates: Sequence[float] = FP_RATES) -> np.ndarray:
  """Sensitivities interpolated linearly at the FP rates (flat past the curve's end)."""
  return np.interp(np.asarray(fp_rates, np.float64), fps, sensitivity)


@dataclasses.dataclass
class FrocResult:
  """LUNA16 FROC of a set of scans.

  Attributes:
    fp_rates: the FP/scan points; sensitivity: `(R,)` at them; cpm: their mean.
    ci_low, ci_high: `(R,)` bootstrap confidence bounds; cpm_ci: `(low, high)`.
    fps, curve, thresholds: the full curve.
    num_scans, num_nodules, num_detected, num_false_positives: counts.
  """
  fp_rates: tuple
  sensitivity: np.ndarray
  cpm: float
  ci_low: np.ndarray
  ci_high: np.ndarray
  cpm_ci: tuple
  fps: np.ndarray
  curve: np.ndarray
  thresholds: np.ndarray
  num_scans: int
  num_nodules: int
  num_detected: int
  num_false_positives: int


def _percentile_bounds(samples: np.ndarray, confidence: float):
  """The script's `compute_mean_ci`: sorted[floor(p n)] and sorted[floor((1 - p) n)] per column,
  over the resamples whose sensitivity is defined (a resample without nodules has none)."""
  samples = samples.reshape(samples.shape[0], -1)
  samples = samples[np.all(np.isfinite(samples), axis=1)]
  n = samples.shape[0]
  if n == 0:
    return np.full(samples.shape[1], np.nan), np.full(samples.shape[1], np.nan)
  tail = (1.0 - confidence) / 2.0
  ordered = np.sort(samples, axis=0)
  return ordered[int(math.floor(tail * n))], ordered[min(int(math.floor((1 - tail) * n)), n - 1)]


def froc_luna16(scans: Sequence[ScanFindings], *, fp_rates: Sequence[float] = FP_RATES,
                bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95,
                max_candidates: Optional[int] = 100) -> FrocResult:
  """FROC, sensitivities at `fp_rates`, CPM and bootstrap CIs (LUNA16 protocol).

  Args:
    scans: every evaluated scan, including those without nodules or candidates.
    bootstrap: resamplings of the scans for the CIs (0 skips them: NaN bounds).
    seed: seeds the resampling.
    max_candidates: candidates kept per scan (None: all).
  """
  if not scans:
    raise ValueError("FROC of no scans")
  matches = [match_scan(s, max_candidates=max_candidates) for s in scans]
  nodule = [m.nodule_scores for m in matches]
  fp = [m.fp_scores for m in matches]
  fps, curve, thresholds = froc_curve(np.concatenate(nodule), np.concatenate(fp), len(scans))
  sens = sensitivity_at(fps, curve, fp_rates)
  cpm = float(np.mean(sens))
  ci_low = ci_high = np.full(len(fp_rates), np.nan)
  cpm_ci = (math.nan, math.nan)
  if bootstrap > 0:
    rng = np.random.default_rng(seed)
    samples = np.zeros((bootstrap, len(fp_rates)))
    for b in range(bootstrap):
      pick = rng.integers(0, len(scans), len(scans))
      b_fps, b_curve, _ = froc_curve(np.concatenate([nodule[i] for i in pick]),
                                     np.concatenate([fp[i] for i in pick]), len(scans))
      samples[b] = sensitivity_at(b_fps, b_curve, fp_rates)
    ci_low, ci_high = _percentile_bounds(samples, confidence)
    low, high = _percentile_bounds(samples.mean(axis=1), confidence)
    cpm_ci = (float(low[0]), float(high[0]))
  all_nodules = np.concatenate(nodule)
  return FrocResult(tuple(fp_rates), sens, cpm, ci_low, ci_high, cpm_ci, fps, curve, thresholds,
                    len(scans), len(all_nodules), int(np.isfinite(all_nodules).sum()),
                    int(sum(len(f) for f in fp)))


# ----------------------------------------------------------------------------- operating point


@dataclasses.dataclass
class OperatingPoint:
  """Sensitivity and false positives per scan at one score threshold.

  Attributes:
    threshold: candidates with score >= this count.
    sensitivity: detected nodules / nodules (NaN without nodules).
    fp_per_scan: false-positive candidates / scans.
    by_size: `{"<6mm": ..., "6-10mm": ..., ">10mm": ...}` sensitivity per
      nodule diameter bin (NaN for an empty bin); size_counts: nodules per bin.
  """
  threshold: float
  sensitivity: float
  fp_per_scan: float
  by_size: dict
  size_counts: dict


def size_bin_names(bins_mm: Sequence[float] = SIZE_BINS_MM) -> tuple[str, ...]:
  """`("<6mm", "6-10mm", ">10mm")` for the default bins."""
  edges = [f"{b:g}" for b in bins_mm]
  middle = [f"{a}-{b}mm" for a, b in zip(edges[:-1], edges[1:])]
  return (f"<{edges[0]}mm", *middle, f">{edges[-1]}mm")


def _size_bin(diameters: np.ndarray, bins_mm: Sequence[float]) -> np.ndarray:
  """Bin index per diameter: 0 for d < b0, i for b(i-1) <= d <= b(i) (the first such i),
  len(bins) for d > b_last."""
  edges = np.asarray(bins_mm, np.float64)
  index = np.searchsorted(edges, diameters, side="left")
  return np.where(diameters < edges[0], 0, np.maximum(index, 1))


def operating_point(scans: Sequence[ScanFindings], threshold: float, *,
                    max_candidates: Optional[int] = 100,
                    size_bins_mm: Sequence[float] = SIZE_BINS_MM) -> OperatingPoint:
  """Sensitivity, FP/scan and sensitivity per nodule size at a score threshold (LUNA16 hits)."""
  matches = [match_scan(s, max_candidates=max_candidates) for s in scans]
  nodule_scores = np.concatenate([m.nodule_scores for m in matches]) if matches else np.zeros(0)
  diameters = np.concatenate([s.nodule_diameters for s in scans]) if scans else np.zeros(0)
  detected = nodule_scores >= threshold
  fps = sum(int(np.sum(m.fp_scores >= threshold)) for m in matches)
  names = size_bin_names(size_bins_mm)
  bins = _size_bin(np.where(diameters < 0, 10.0, diameters), size_bins_mm)
  by_size, counts = {}, {}
  for k, name in enumerate(names):
    in_bin = bins == k
    counts[name] = int(in_bin.sum())
    by_size[name] = float(detected[in_bin].mean()) if in_bin.any() else math.nan
  sensitivity = float(detected.mean()) if len(detected) else math.nan
  return OperatingPoint(float(threshold), sensitivity, fps / max(len(scans), 1), by_size, counts)


def case_auroc(scans: Sequence[ScanFindings]) -> float:
  """ROC AUC of the scan's highest candidate score (0 without candidates) for "has a nodule"."""
  best = np.asarray([s.candidate_scores.max() if len(s.candidate_scores) else 0.0 for s in scans])
  positive = np.asarray([len(s.nodule_diameters) > 0 for s in scans])
  return float(metrics.roc_auc(best, positive))
