"""Cascaded FCNs as an orchestrator of two ordinary runs (Christ et al. 2016).

Stage 1 learns the organ (organ and tumour merged, `label_map=(0, 1, 1)`) on
whole volumes; stage 2 learns the tumour (`label_map=(0, 0, 1)`) on volumes
cropped to the ground-truth organ bounding box plus a margin, where the tumour
is far less rare. Each stage is an ordinary segmentation run of
`medjax.train.loop` in `<workdir>/stage1` and `<workdir>/stage2` (each
resumable); stage 2 is handed its training source, the organ crops
(`medjax.data.pipeline.crop.OrganCropSource`), explicitly.

At test time the joint predictor (`medjax.inference.run_predictor.CascadeSegmenter`,
i.e. `medjax.inference.cascade_predict`) segments the organ, then the tumour
inside the stage-1 organ box, and removes tumour voxels outside the organ:
the joint map has the classes of a single-stage 3-class network (0
background, 1 organ, 2 tumour), so both are scored alike. The same predictor
serves `experiments.predict --workdir=<cascade run>`.

`config.cascade.stage1` / `config.cascade.stage2` hold the fields each stage
overrides (nested like the config itself).
"""
from __future__ import annotations

import time

import jax
import ml_collections

from medjax.data.pipeline.crop import OrganCropSource
from medjax.errors import InputError
from medjax.inference.run_predictor import (CASCADE_STAGES, CascadeSegmenter, cascade_margin,
                                            stage_configs, window_predictor)
from medjax.train import config_check, loop
from medjax.train.model_factory import build_model
from medjax.train.config_data import load_split
from medjax.train.tasks import segmentation
from medjax.train.workdir import Workdir

STAGES = CASCADE_STAGES


def _train_source(stage: str, stage_config: ml_collections.ConfigDict):
  """Stage 1 trains on whole cases; stage 2 on cases cropped to the organ box."""
  if stage == "stage1":
    return None  # the config's own train split
  return OrganCropSource(load_split(stage_config, "train"), stage_config.crop_margin)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Trains both stages (resuming each), then evaluates the joint prediction.

  Writes `<workdir>/config.json`, one ordinary workdir per stage, and
  `<workdir>/eval.json`, `eval.csv`, `report/` and `postprocessing.json` (the
  post-processing decided on the validation split) of the joint segmentation.
  """
  workdir = Workdir.of(workdir)
  configs = stage_configs(config)
  if "crop_margin" not in configs[1]:
    raise InputError("config.cascade.stage2.crop_margin: missing; expected the organ-box "
                     "margin in voxels, one per spatial axis")
  for stage, stage_config in zip(STAGES, configs):  # check everything before writing anything
    config_check.validate(stage_config)
    config_check.check_workdir(stage_config, workdir.stage(stage))
  workdir.create()
  if jax.process_index() == 0:
    workdir.write_config(config)
  t0 = time.perf_counter()
  predictors = []
  for stage, stage_config in zip(STAGES, configs):
    stage_dir = loop.prepare_workdir(stage_config, workdir.stage(stage))
    result = loop.train(stage_config, stage_dir,  # SIGTERM: loop.TrainingStopped
                        train_source=_train_source(stage, stage_config))
    predictors.append(window_predictor(stage_config, build_model(stage_config, training=False),
                                       result["state"].variables()))
  t1 = time.perf_counter()
  segmenter = CascadeSegmenter(*predictors, margin=cascade_margin(config))
  evaluation = segmentation.score_cases(segmenter, config, load_split(config, "test"))
  if jax.process_index() == 0:
    segmentation.write_evaluation_outputs(config, evaluation, workdir, title="cascade, case")
  task = segmentation.SegmentationTask
  loop.finish(workdir, evaluation, item_name=task.item_name, metric_prefixes=task.summary_metrics,
              seconds=f"train {t1 - t0:.0f} s, eval {time.perf_counter() - t1:.0f} s; ")
  return evaluation.results
