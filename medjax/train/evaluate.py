"""Evaluation on whole test volumes with sliding-window inference -> `eval.json` dict."""
from __future__ import annotations

import os
from typing import Optional

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging

from medjax import inference, metrics
from medjax.data import pipeline
from medjax.train import report
from medjax.train.step import make_predict_fn


def evaluate(config: ml_collections.ConfigDict, model: nn.Module, variables: dict, source, *,
             workdir: Optional[str] = None) -> dict:
  """Segments every case of `source` (e.g. the test split) and scores it per class.

  Returns a dict with `"<metric>/<class>"` keys (means over cases; inf distances
  of a missed structure are left out of the mean and counted in
  `"<metric>/<class>_missing"`) and `"per_case"`: one dict per case with the
  same keys and a `"case"` id. Case-level detection from the segmentation:
  `"detection_auc/<class>"` is the ROC AUC of the class's largest predicted
  probability in a case against "the class is in the case's label" (when the
  test cases include both; e.g. "is there a tumour in this slice?" answered by
  a segmentation network, comparable with an image-level classifier's
  `auc/lesion`), with each case's score in `per_case` as `"max_prob/<class>"`.
  With `workdir`, writes `report/case_*.png` for
  the first `config.eval.report_cases` cases.
  """
  ecfg = config.eval
  lut = np.asarray(config.label_map, np.int32) if config.get("label_map") else None
  predict = make_predict_fn(model)
  variables = jax.device_put(variables, jax.local_devices()[0])
  predict_fn = lambda x: predict(variables, x)
  class_names = {i: n for i, n in enumerate(config.class_names) if i > 0}
  per_case, max_probs, present = [], [], []
  for i, case in enumerate(pipeline.eval_cases(source)):
    probs = inference.sliding_window(
        predict_fn, case["image"][None], tuple(config.patch_size), overlap=ecfg.overlap,
        mode=ecfg.mode, batch_size=ecfg.batch_size, mirror_axes=tuple(ecfg.mirror_axes))[0]
    pred = probs.argmax(-1).astype(np.uint8)
    label = np.asarray(case["label"])
    if lut is not None:
      label = lut[label]
    scores = metrics.segmentation_metrics(pred, label, class_names, spacing=tuple(case["spacing"]),
                                          surface=ecfg.surface_metrics)
    scores = {k: float(v) for k, v in scores.items()}
    per_case.append({"case": str(case["case"]), **scores})
    max_probs.append({n: float(probs[..., c].max()) for c, n in class_names.items()})
    present.append({n: bool((label == c).any()) for c, n in class_names.items()})
    logging.info("case %s: %s", case["case"], {k: round(v, 4) for k, v in scores.items()})
    if workdir and jax.process_index() == 0 and i < ecfg.report_cases:
      focus = config.num_classes - 1  # the innermost structure (e.g. the tumour)
      report.plot_case(case["image"][..., 0], label, pred,
                       os.path.join(report.report_dir(workdir), f"case_{i}_{case['case']}.png"),
                       title=f"case {case['case']}: " + ", ".join(
                           f"{k} {v:.3f}" for k, v in scores.items() if k.startswith("dice/")),
                       class_names=config.class_names, focus_class=focus)
  out = summarize(per_case)
  for name in class_names.values():
    case_max = np.array([m[name] for m in max_probs])
    is_present = np.array([p[name] for p in present])
    if 0 < is_present.sum() < len(is_present):
      out[f"detection_auc/{name}"] = float(metrics.roc_auc(case_max, is_present))
  for case, m in zip(out["per_case"], max_probs):
    case.update({f"max_prob/{name}": v for name, v in m.items()})
  return out


def summarize(per_case: list[dict]) -> dict:
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


def evaluate_classification(config: ml_collections.ConfigDict, model: nn.Module, variables: dict,
                            source) -> dict:
  """Image-level classification of every image in `source`: accuracy, ROC AUC of the
  positive class (binary tasks), expected calibration error (Guo 2017, 15 bins)."""
  batches = pipeline.classification_batches(
      source, global_batch_size=len(source), seed=0, start_step=0, num_steps=1)
  batch = next(iter(batches))
  predict = make_predict_fn(model)
  variables = jax.device_put(variables, jax.local_devices()[0])
  bs = config.eval.batch_size
  probs = np.concatenate([np.asarray(predict(variables, batch["image"][i:i + bs]))
                          for i in range(0, len(batch["image"]), bs)])
  labels = batch["label"]
  pred = probs.argmax(-1)
  out = {"accuracy": float((pred == labels).mean()),
         "ece": float(metrics.expected_calibration_error(probs, labels))}
  if probs.shape[-1] == 2:
    out[f"auc/{config.class_names[1]}"] = float(metrics.roc_auc(probs[:, 1], labels))
  out["per_case"] = [{"case": str(i), "label": int(l), "pred": int(p),
                      "prob": float(probs[i, 1] if probs.shape[-1] == 2 else probs[i, p])}
                     for i, (l, p) in enumerate(zip(labels, pred))]
  return out
