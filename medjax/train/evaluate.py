"""Scoring: numbers per case, with each case's real id. Drawing is `report`'s job.

* `score_segmentation(segmenter, cases, ...)`: segments every case with a
  segmenter (one run or a cascade, `medjax.train.predictor`) and scores it per
  class -> an `Evaluation`: the `eval.json` dict and, for the first few
  cases, the image, truth and prediction a report can draw.
* `score_classification(predict_batch, images, ...)`: image-level accuracy,
  ROC AUC and calibration, in the source's order.
* `summarize(per_case)`: means over cases (non-finite values counted, not averaged).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
from absl import logging

from medjax import metrics

Segmenter = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


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
  """`results`: the `eval.json` dict; `examples`: the cases kept for drawing."""
  results: dict
  examples: list = dataclasses.field(default_factory=list)


def score_segmentation(segmenter: Segmenter, cases: Iterable[dict], class_names: Sequence[str], *,
                       label_map: Optional[Sequence[int]] = None, surface: bool = True,
                       keep: int = 0,
                       display: Optional[Callable[[np.ndarray], np.ndarray]] = None
                       ) -> Evaluation:
  """Segments and scores every case.

  Args:
    segmenter: raw image `(*S, C)` -> `(labels (*S,), probabilities (*S, K))`.
    cases: dicts with `image` `(*S, C)` raw, `label` `(*S,)`, `spacing`, `case`
      (`medjax.data.pipeline.eval_cases` with the identity normalisation).
    class_names: name of each class id (index 0 is the background).
    label_map: old class id -> new class id applied to the truth (a stage
      that learns merged classes).
    surface: compute the surface metrics (HD, HD95, ASD, NSD).
    keep: keep image, truth and prediction of the first `keep` cases.
    display: raw image `(*S, C)` -> the image kept for the report (e.g. the
      normalised network input, whose CT window shows the soft tissue);
      default the raw image.
  Returns:
    An `Evaluation` whose `results` has `"<metric>/<class>"` keys (means over
    cases; inf distances of a missed structure are left out of the mean and
    counted in `"<metric>/<class>_missing"`) and `"per_case"`: one dict per
    case with the same keys and its `"case"` id. Case-level detection from
    the segmentation: `"detection_auc/<class>"` is the ROC AUC of the class's
    largest predicted probability in a case against "the class is in the
    case's truth" (when the cases include both), each case's score in
    `per_case` as `"max_prob/<class>"`.
  """
  lut = np.asarray(label_map, np.int32) if label_map else None
  foreground = {i: n for i, n in enumerate(class_names) if i > 0}
  per_case, max_probs, present, examples = [], [], [], []
  for case in cases:
    pred, probs = segmenter(case["image"])
    label = np.asarray(case["label"])
    if lut is not None:
      label = lut[label]
    scores = metrics.segmentation_metrics(pred, label, foreground, spacing=tuple(case["spacing"]),
                                          surface=surface)
    scores = {k: float(v) for k, v in scores.items()}
    per_case.append({"case": str(case["case"]), **scores})
    max_probs.append({n: float(probs[..., c].max()) for c, n in foreground.items()})
    present.append({n: bool((label == c).any()) for c, n in foreground.items()})
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
  return Evaluation(results, examples)


def score_classification(predict_batch: Callable[[np.ndarray], np.ndarray],
                         images: Iterable[tuple[str, np.ndarray, int]],
                         class_names: Sequence[str], *, batch_size: int) -> Evaluation:
  """Image-level classification of every image: accuracy, ROC AUC of the positive
  class (binary tasks), expected calibration error (Guo 2017, 15 bins).

  Args:
    predict_batch: images `(B, *S, C)` -> probabilities `(B, K)`.
    images: `(case id, image (*S, C), label)` in the source's order.
    batch_size: images per call of `predict_batch`.
  Returns:
    `results` with `accuracy`, `ece`, `auc/<positive class>` and `per_case`
    (`case`, `label`, `pred`, `prob` of the positive / predicted class).
  """
  names, probs, labels, batch = [], [], [], []

  def flush():
    if batch:
      probs.append(np.asarray(predict_batch(np.stack(batch))))
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
  results["per_case"] = [{"case": n, "label": int(l), "pred": int(p),
                          "prob": float(probs[i, 1] if binary else probs[i, p])}
                         for i, (n, l, p) in enumerate(zip(names, labels, pred))]
  return Evaluation(results)


def summarize(per_case: list[Mapping]) -> dict:
  """Means over cases of every metric; non-finite values are counted, not averaged."""
  keys = [k for k in per_case[0] if k != "case"] if per_case else []
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
