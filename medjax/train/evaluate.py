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
from medjax.data import datasets, pipeline
from medjax.train import report
from medjax.train.step import make_predict_fn


def evaluate(config: ml_collections.ConfigDict, model: nn.Module, variables: dict, *,
             workdir: Optional[str] = None, split: str = "test") -> dict:
  """Segments every case of `split` and scores it per class.

  Returns a dict with `"<metric>/<class>"` keys (means over cases; inf distances
  of a missed structure are left out of the mean and counted in
  `"<metric>/<class>_missing"`) and `"per_case"`: one dict per case with the
  same keys and a `"case"` id. With `workdir`, writes `report/case_*.png` for
  the first `config.eval.report_cases` cases.
  """
  ecfg = config.eval
  source = datasets.load_source(config.dataset, split, config.data_dir,
                                **(config.dataset_kwargs.to_dict() if config.get("dataset_kwargs") else {}))
  predict = make_predict_fn(model)
  variables = jax.device_put(variables, jax.local_devices()[0])
  predict_fn = lambda x: predict(variables, x)
  class_names = {i: n for i, n in enumerate(config.class_names) if i > 0}
  per_case = []
  for i, case in enumerate(pipeline.eval_cases(source)):
    probs = inference.sliding_window(
        predict_fn, case["image"][None], tuple(config.patch_size), overlap=ecfg.overlap,
        mode=ecfg.mode, batch_size=ecfg.batch_size, mirror_axes=tuple(ecfg.mirror_axes))[0]
    pred = probs.argmax(-1).astype(np.uint8)
    label = np.asarray(case["label"])
    scores = metrics.segmentation_metrics(pred, label, class_names, spacing=tuple(case["spacing"]),
                                          surface=ecfg.surface_metrics)
    scores = {k: float(v) for k, v in scores.items()}
    per_case.append({"case": str(case["case"]), **scores})
    logging.info("case %s: %s", case["case"], {k: round(v, 4) for k, v in scores.items()})
    if workdir and jax.process_index() == 0 and i < ecfg.report_cases:
      focus = config.num_classes - 1  # the innermost structure (e.g. the tumour)
      report.plot_case(case["image"][..., 0], label, pred,
                       os.path.join(report.report_dir(workdir), f"case_{i}_{case['case']}.png"),
                       title=f"case {case['case']}: " + ", ".join(
                           f"{k} {v:.3f}" for k, v in scores.items() if k.startswith("dice/")),
                       class_names=config.class_names, focus_class=focus)
  return summarize(per_case)


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
