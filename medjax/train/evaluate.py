"""Scoring: numbers per case, with each case's real id. Drawing is `report`'s job.

* `score_segmentation(segmenter, cases, ...)`: segments every case with a
  segmenter (one run or a cascade, `medjax.inference.run_predictor`) and scores it per
  class -> an `Evaluation`: the `eval.json` dict and, for the first few
  cases, the image, truth and prediction a report can draw.
* `score_classification(predict_batch, images, ...)`: image-level accuracy,
  ROC AUC and calibration, in the source's order.
* Both take optional calibration / uncertainty scoring (`medjax.calibration`):
  ECE and class-wise ECE before and after temperature scaling, error
  detection by uncertainty (AUROC, retained Dice / accuracy), and the
  reliability-diagram data in `Evaluation.reliability`.
* `summarize(per_case)`: means over cases (non-finite values counted, not averaged);
  `statistics(per_case)`: mean, std, median per metric; `class_rows(per_case, ...)`:
  one row per case and class (`eval.csv`).
* Post-processing (`medjax.postprocess`): `score_segmentation(..., postprocessor=)`
  scores the post-processed prediction under the usual keys and the raw one
  under `postprocessing.raw` (and each case's `raw`), so the effect is visible.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
from absl import logging

from medjax import calibration, metrics, uncertainty

# raw image -> (labels, probabilities[, uncertainty maps])
Segmenter = Callable[[np.ndarray], tuple]
# (labels (*S), spacing in mm) -> post-processed labels (*S)
Postprocessor = Callable[[np.ndarray, tuple], np.ndarray]


@dataclasses.dataclass
class Example:
  """One evaluated case kept for the report: its id, image `(*S)` (first channel,
  as shown to the network), truth, prediction and scores."""
  case: str
  image: np.ndarray
  label: np.ndarray
  pred: np.ndarray
  scores: dict


@dataclasses.dataclass
class Evaluation:
  """`results`: the `eval.json` dict; `examples`: the cases kept for drawing;
  `reliability`: reliability-diagram data (`calibration.SegmentationTrust.reliability`)
  when calibration was scored; `postprocessing`: the `postprocessing.json` dict
  when the post-processing was decided (`medjax.postprocess`)."""
  results: dict
  examples: list = dataclasses.field(default_factory=list)
  reliability: Optional[dict] = None
  postprocessing: Optional[dict] = None


def score_segmentation(segmenter: Segmenter, cases: Iterable[dict], class_names: Sequence[str], *,
                       label_map: Optional[Sequence[int]] = None, surface: bool = True,
                       keep: int = 0,
                       display: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                       trust: Optional[calibration.SegmentationTrust] = None,
                       postprocessor: Optional[Postprocessor] = None) -> Evaluation:
  """Segments and scores every case.

  Args:
    segmenter: raw image `(*S, C)` -> `(labels (*S,), probabilities (*S, K))`
      (or with a third element, uncertainty maps name -> `(*S,)`).
    cases: dicts with `image` `(*S, C)` raw, `label` `(*S,)`, `spacing`, `case`
      (`medjax.data.pipeline.loaders.eval_cases` with the identity normalisation).
    class_names: name of each class id (index 0 is the background).
    label_map: old class id -> new class id applied to the truth (a stage
      that learns merged classes).
    surface: compute the surface metrics (HD, HD95, ASD, NSD).
    keep: keep image, truth and prediction of the first `keep` cases.
    display: raw image `(*S, C)` -> the image kept for the report (e.g. the
      normalised network input, whose CT window shows the soft tissue);
      default the raw image.
    trust: voxel-level calibration and error detection to accumulate (its
      per-case `retained_dice@<r>%/<class>` go into `per_case` and their
      means into `results`, its test-set numbers into `results`; rejection
      and `uncertainty_auroc` use the segmenter's maps, else the predictive
      entropy of the probabilities).
    postprocessor: `(labels (*S), spacing) -> labels (*S)` applied to each
      prediction (`medjax.postprocess.apply` with the rules chosen on the
      validation split); the post-processed prediction is the one scored
      under the usual keys (and drawn, and given to `trust`), the raw one is
      scored too.
  Returns:
    An `Evaluation` whose `results` has `"<metric>/<class>"` keys (means over
    cases; inf distances of a missed structure are left out of the mean and
    counted in `"<metric>/<class>_missing"`) and `"per_case"`: one dict per
    case with the same keys and its `"case"` id. Metrics: those of
    `metrics.segmentation_metrics` with the volume differences and, with
    `surface`, the directed HD95s. Case-level detection from the
    segmentation: `"detection_auc/<class>"` is the ROC AUC of the class's
    largest predicted probability in a case against "the class is in the
    case's truth" (when the cases include both), each case's score in
    `per_case` as `"max_prob/<class>"`. Also (nested, so that sweeps, which
    average the flat keys, are unchanged): `"statistics"` (`statistics`),
    `"missing_structures"`: class -> number of cases without the structure
    in the prediction (`"prediction"`), in the truth (`"truth"`), in the
    prediction only (`"missed"`) and in the truth only (`"spurious"`); with
    a `postprocessor`, `"postprocessing"`: `{"applied": True, "raw": the
    raw prediction's means}`, and each case's raw scores in its `"raw"`.
  """
  lut = np.asarray(label_map, np.int32) if label_map else None
  foreground = {i: n for i, n in enumerate(class_names) if i > 0}
  per_case, raw_per_case, max_probs, present, predicted, examples = [], [], [], [], [], []

  def score(pred, label, spacing):
    return {k: float(v) for k, v in metrics.segmentation_metrics(
        pred, label, foreground, spacing=spacing, surface=surface, volumes=True,
        directed=surface).items()}

  for case in cases:
    output = segmenter(case["image"])
    pred, probs = np.asarray(output[0]), output[1]
    label = np.asarray(case["label"])
    if lut is not None:
      label = lut[label]
    spacing = tuple(float(s) for s in case["spacing"])
    if postprocessor is not None:
      raw_per_case.append(score(pred, label, spacing))
      pred = np.asarray(postprocessor(pred, spacing))
    scores = score(pred, label, spacing)
    if trust is not None:
      scores.update({k: float(v) for k, v in trust.score_case(
          pred, probs, label, uncertainty.prediction_maps(output)).items()})
    per_case.append({"case": str(case["case"]), **scores})
    max_probs.append({n: float(probs[..., c].max()) for c, n in foreground.items()})
    present.append({n: bool((label == c).any()) for c, n in foreground.items()})
    predicted.append({n: bool((pred == c).any()) for c, n in foreground.items()})
    logging.info("case %s: %s", case["case"], {k: round(v, 4) for k, v in scores.items()})
    if len(examples) < keep:
      shown = case["image"] if display is None else display(case["image"])
      examples.append(Example(str(case["case"]), np.asarray(shown)[..., 0], label, pred, scores))
  results = summarize(per_case)
  for name in foreground.values():
    case_max = np.array([m[name] for m in max_probs])
    is_present = np.array([p[name] for p in present])
    if 0 < is_present.sum() < len(is_present):
      results[f"detection_auc/{name}"] = float(metrics.roc_auc(case_max, is_present))
  for case, m in zip(results["per_case"], max_probs):
    case.update({f"max_prob/{name}": v for name, v in m.items()})
  extra = {"statistics": statistics(results["per_case"]),
           "missing_structures": missing_structures(present, predicted)}
  if postprocessor is not None:
    raw = summarize([{"case": c["case"], **r} for c, r in zip(per_case, raw_per_case)])
    for case, raw_case in zip(results["per_case"], raw.pop("per_case")):
      case["raw"] = {k: v for k, v in raw_case.items() if k != "case"}
    extra["postprocessing"] = {"applied": True, "raw": raw}
  if trust is not None:
    extra.update(trust.results())
  results = with_keys_before_per_case(results, extra)
  return Evaluation(results, examples,
                    reliability=None if trust is None else trust.reliability())


def with_keys_before_per_case(results: dict, extra: Mapping) -> dict:
  """`results` with `extra`'s keys added before `per_case` (kept last in `eval.json`)."""
  out = {k: v for k, v in results.items() if k != "per_case"}
  out.update(extra)
  if "per_case" in results:
    out["per_case"] = results["per_case"]
  return out


def missing_structures(present: Sequence[Mapping[str, bool]],
                       predicted: Sequence[Mapping[str, bool]]) -> dict[str, dict[str, int]]:
  """Per class, the number of cases without the structure in the prediction, in the
  truth, in the prediction only (`missed`) and in the truth only (`spurious`)."""
  names = list(present[0]) if present else []
  return {n: {"prediction": sum(not p[n] for p in predicted),
              "truth": sum(not t[n] for t in present),
              "missed": sum(t[n] and not p[n] for t, p in zip(present, predicted)),
              "spurious": sum(p[n] and not t[n] for t, p in zip(present, predicted))}
          for n in names}


def score_classification(predict_batch: Callable[[np.ndarray], np.ndarray],
                         images: Iterable[tuple[str, np.ndarray, int]],
                         class_names: Sequence[str], *, batch_size: int,
                         calibrate: bool = False, temperature: Optional[float] = None
                         ) -> Evaluation:
  """Image-level classification of every image: accuracy, ROC AUC, expected
  calibration error (Guo 2017, 15 bins).

  Args:
    predict_batch: images `(B, *S, C)` -> probabilities `(B, K)`, or
      `(probabilities, {map name: (B,)})` with uncertainty maps (MC dropout, TTA).
    images: `(case id, image (*S, C), label)` in the source's order.
    batch_size: images per call of `predict_batch`.
    calibrate: also score calibration and error detection
      (`calibration.classification_trust`: class-wise ECE, NLL,
      `uncertainty_auroc`, `retained_accuracy@<r>%`; rejection by the
      predictor's entropy map, else the entropy of the probabilities), and,
      with a `temperature` (fitted on the validation split), the same after
      temperature scaling; the reliability data go to `Evaluation.reliability`.
  Returns:
    `results` with `accuracy`, `ece`, `auc/<class>` (binary tasks: the
    positive class; K > 2: one-vs-rest for every class) and `per_case`
    (`case`, `label`, `pred`, `prob` of the positive / predicted class).
  """
  names, probs, labels, batch, maps = [], [], [], [], []

  def flush():
    if batch:
      out = predict_batch(np.stack(batch))
      if isinstance(out, tuple):
        out, batch_maps = out
        maps.append({k: np.asarray(v) for k, v in batch_maps.items()})
      probs.append(np.asarray(out))
      batch.clear()

  for name, image, label in images:
    names.append(name)
    labels.append(int(label))
    batch.append(image)
    if len(batch) == batch_size:
      flush()
  flush()
  probs = np.concatenate(probs)
  labels = np.asarray(labels)
  pred = probs.argmax(-1)
  results = {"accuracy": float((pred == labels).mean()),
             "ece": float(metrics.expected_calibration_error(probs, labels))}
  binary = probs.shape[-1] == 2
  if binary:
    results[f"auc/{class_names[1]}"] = float(metrics.roc_auc(probs[:, 1], labels))
  else:
    for k, name in enumerate(class_names):
      results[f"auc/{name}"] = float(metrics.roc_auc(probs[:, k], labels == k))
  reliability = None
  if calibrate:
    all_maps = ({k: np.concatenate([m[k] for m in maps]) for k in maps[0]} if maps else
                {"entropy": np.asarray(uncertainty.predictive_entropy(probs), np.float32)})
    trust, reliability = calibration.classification_trust(
        probs, labels, class_names, all_maps, temperature=temperature)
    results.update({k: float(v) for k, v in trust.items()})
  results["per_case"] = [{"case": n, "label": int(l), "pred": int(p),
                          "prob": float(probs[i, 1] if binary else probs[i, p])}
                         for i, (n, l, p) in enumerate(zip(names, labels, pred))]
  return Evaluation(results, reliability=reliability)


def _metric_keys(per_case: Sequence[Mapping]) -> list[str]:
  """The numeric per-case keys (not `case`, not nested dicts such as `raw`)."""
  return [k for k, v in per_case[0].items()
          if k != "case" and (v is None or isinstance(v, (int, float)))] if per_case else []


def summarize(per_case: list[Mapping]) -> dict:
  """Means over cases of every metric; non-finite values are counted, not averaged."""
  keys = _metric_keys(per_case)
  out = {}
  for k in keys:
    values = np.array([c[k] for c in per_case], np.float64)
    finite = np.isfinite(values)
    out[k] = float(values[finite].mean()) if finite.any() else None
    if not finite.all():
      out[f"{k}_missing"] = int((~finite).sum())
  out["per_case"] = [{k: (v if not isinstance(v, float) or np.isfinite(v) else None)
                      for k, v in c.items()} for c in per_case]
  return out


def statistics(per_case: Sequence[Mapping]) -> dict[str, dict]:
  """Per metric key: `mean`, `std` (sample, ddof=1; 0.0 for one case), `median`
  over the cases where it is finite, `n` (those cases) and `nonfinite` (the
  others: None, inf or NaN, e.g. the distance to a missed structure); the
  statistics are None when no case is finite."""
  out = {}
  for k in _metric_keys(per_case):
    values = np.array([np.nan if c[k] is None else c[k] for c in per_case], np.float64)
    finite = values[np.isfinite(values)]
    n = int(finite.size)
    out[k] = {"mean": float(finite.mean()) if n else None,
              "std": (float(finite.std(ddof=1)) if n > 1 else 0.0) if n else None,
              "median": float(np.median(finite)) if n else None,
              "n": n, "nonfinite": int(values.size - n)}
  return out


def class_rows(per_case: Sequence[Mapping], class_names: Sequence[str]) -> tuple[list[str], list[dict]]:
  """`eval.csv`'s table: one row per case and foreground class.

  Columns: `case`, `class`, then each metric `m` whose `m/<class>` key is in
  the per-case dicts (in their order), then `raw_<m>` from each case's `raw`
  scores (post-processing applied). A value is the per-case value (None: not
  finite, e.g. the distance to a missed structure).
  Returns:
    `(columns, rows)`, rows as dicts keyed by the columns.
  """
  foreground = list(class_names[1:])
  metric_names: list[str] = []
  raw_names: list[str] = []
  for case in per_case:
    for key in case:
      m, _, cls = key.rpartition("/")
      if cls in foreground and m not in metric_names:
        metric_names.append(m)
    for key in case.get("raw", {}):
      m, _, cls = key.rpartition("/")
      if cls in foreground and m not in raw_names:
        raw_names.append(m)
  columns = ["case", "class"] + metric_names + [f"raw_{m}" for m in raw_names]
  rows = []
  for case in per_case:
    for cls in foreground:
      row = {"case": case["case"], "class": cls}
      row.update({m: case.get(f"{m}/{cls}") for m in metric_names})
      row.update({f"raw_{m}": case.get("raw", {}).get(f"{m}/{cls}") for m in raw_names})
      rows.append(row)
  return columns, rows
