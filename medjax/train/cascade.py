"""Cascaded FCNs, trained stage by stage and evaluated jointly (Christ et al. 2016).

Stage 1 learns the organ (organ and tumour merged, `label_map=(0, 1, 1)`) on
whole volumes; stage 2 learns the tumour (`label_map=(0, 0, 1)`) on volumes
cropped to the ground-truth organ bounding box plus a margin, where the tumour
is far less rare. At test time stage 1 segments the organ, stage 2 segments
the tumour inside the stage-1 organ box, and tumour voxels outside the
stage-1 organ mask are removed: the joint map has the classes of a single-stage
3-class network (0 background, 1 organ, 2 tumour), so both are scored alike.

`config.cascade.stage1` / `config.cascade.stage2` hold the fields each stage
overrides (nested like the config itself); the stages run as ordinary
segmentation runs in `<workdir>/stage1` and `<workdir>/stage2` (each resumable).
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from medjax import inference, metrics
from medjax.data import pipeline, transforms
from medjax.models.cascade import crop_to_bbox, organ_bbox, paste_from_bbox
from medjax.train import config_check, evaluate, report
from medjax.train.model_factory import build_model
from medjax.train.step import make_predict_fn

STAGES = ("stage1", "stage2")


class OrganCropSource:
  """A random-access source whose cases are cropped to the box of `label > 0` + margin.

  Args:
    source: cases with `image` and `label` `(*S,)`.
    margin: voxels added on each side, an int or one per spatial axis.
  """

  def __init__(self, source, margin: Sequence[int]):
    self._source = source
    self._margin = tuple(int(m) for m in margin)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = dict(self._source[index])
    label = np.asarray(example["label"])
    bbox = organ_bbox(label > 0, self._margin)
    if bbox is not None:
      example["image"] = crop_to_bbox(np.asarray(example["image"]), bbox)
      example["label"] = crop_to_bbox(label, bbox)
    return example


def _merge(target: ml_collections.ConfigDict, overrides: dict) -> None:
  for key, value in overrides.items():
    if isinstance(value, dict) and isinstance(target.get(key), ml_collections.ConfigDict):
      _merge(target[key], value)
    else:
      target[key] = tuple(value) if isinstance(value, list) else value


def stage_config(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
  """The segmentation config of one stage: `config` minus `cascade`, plus its overrides."""
  base = config.to_dict()
  overrides = base.pop("cascade")[stage]
  out = ml_collections.ConfigDict(base)
  out.task = "segmentation"
  _merge(out, overrides)
  return out


def _normalized(image: np.ndarray) -> np.ndarray:
  """`(*S,)` HU -> `(*S, 1)` as the training pipeline normalises a case."""
  return transforms.normalize_ct(image)[..., None].astype(np.float32)


def predict_joint(stage_fns, image: np.ndarray, configs, margin: Sequence[int]) -> np.ndarray:
  """Joint `(*S,)` labels (0, 1 organ, 2 tumour) of one raw `(*S,)` image in HU.

  Each stage sees its input normalised as in training: stage 1 the whole
  image, stage 2 the organ-box crop normalised with the crop's own statistics.
  """
  organ_fn, tumour_fn = stage_fns
  c1, c2 = configs
  p1 = inference.sliding_window(organ_fn, _normalized(image)[None], tuple(c1.patch_size),
                                overlap=c1.eval.overlap, mode=c1.eval.mode,
                                batch_size=c1.eval.batch_size)[0]
  organ = p1.argmax(-1) > 0
  joint = organ.astype(np.uint8)
  bbox = organ_bbox(organ, margin)
  if bbox is None:
    return joint
  crop = _normalized(crop_to_bbox(image, bbox))
  p2 = inference.sliding_window(tumour_fn, crop[None], tuple(c2.patch_size),
                                overlap=c2.eval.overlap, mode=c2.eval.mode,
                                batch_size=c2.eval.batch_size)[0]
  tumour = paste_from_bbox(p2.argmax(-1) > 0, bbox, organ.shape, fill=False) & organ
  joint[tumour] = 2
  return joint


def train_and_evaluate_cascade(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains both stages (resuming each), then evaluates the joint prediction."""
  from medjax.train import loop  # pylint: disable=import-outside-toplevel
  configs = [stage_config(config, s) for s in STAGES]
  states = []
  for stage, sc in zip(STAGES, configs):
    config_check.validate(sc)
    sub = os.path.join(workdir, stage)
    os.makedirs(sub, exist_ok=True)
    config_check.check_workdir(sc, sub)
    if jax.process_index() == 0:
      loop.write_config(sc, sub)
    result = loop.train(sc, sub)
    if result["stopped"]:
      return {}
    states.append(result["state"])

  device = jax.local_devices()[0]
  fns = []
  for sc, state in zip(configs, states):
    predict = make_predict_fn(build_model(sc, training=False))
    variables = jax.device_put(state.variables(), device)
    fns.append(lambda x, p=predict, v=variables: p(v, x))
  margin = tuple(config.cascade.stage2.crop_margin)
  class_names = {i: n for i, n in enumerate(config.class_names) if i > 0}
  per_case = []
  raw = lambda image: image  # each stage normalises its own input (see predict_joint)
  for i, case in enumerate(pipeline.eval_cases(loop.load_split(config, "test"), normalize=raw)):
    joint = predict_joint(fns, case["image"][..., 0], configs, margin)
    label = np.asarray(case["label"])
    scores = metrics.segmentation_metrics(joint, label, class_names,
                                          spacing=tuple(case["spacing"]),
                                          surface=config.eval.surface_metrics)
    per_case.append({"case": str(case["case"]), **{k: float(v) for k, v in scores.items()}})
    if jax.process_index() == 0 and i < config.eval.report_cases:
      report.plot_case(case["image"][..., 0], label, joint,
                       os.path.join(report.report_dir(workdir), f"case_{i}_{case['case']}.png"),
                       title=f"cascade, case {case['case']}", class_names=config.class_names,
                       focus_class=config.num_classes - 1)
  results = evaluate.summarize(per_case)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results
