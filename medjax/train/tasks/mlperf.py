"""The MLPerf 3D U-Net task: segmentation with the reference's input pipeline and run rules.

Differs from `SegmentationTask` in what MLPerf fixes (mlcommons/training
`retired_benchmarks/unet3d/pytorch`): the training batches are the reference
data loader's (`medjax.data.pipeline.mlperf_sampler`: epochs over the cases,
balanced crops with oversampling `config.mlperf.oversampling`, its flips,
brightness and noise), and the run is measured in epochs with MLPerf's log,
evaluations and stop rule (`medjax.mlperf.run.MLPerfRun`, a loop callback).
The evaluation at the end of the run is the ordinary segmentation evaluation
(`eval.json`, `report/`) of `config.eval.split`.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import ml_collections
import numpy as np

from medjax.data.pipeline import mlperf_sampler
from medjax.errors import InputError
from medjax.train import epochs
from medjax.train.callbacks import Callback
from medjax.train.tasks.segmentation import SegmentationTask
from medjax.train.workdir import Workdir


class MLPerfUNet3DTask(SegmentationTask):
  """`config.task="mlperf_unet3d"` (module docstring)."""

  def validate(self, config: ml_collections.ConfigDict) -> None:
    super().validate(config)
    if not epochs.is_epoch_based(config) or "mlperf" not in config:
      raise InputError("config.task='mlperf_unet3d': needs the config's epochs and mlperf "
                       "sections (experiments/configs/mlperf_unet3d_kits19.py)")
    if config.get("label_map"):
      raise InputError("config.label_map: the MLPerf task scores the dataset's own classes; "
                       "expected ()")

  def callbacks(self, config: ml_collections.ConfigDict, workdir: Workdir, *,
                start_step: int = 0) -> Sequence[Callback]:
    from medjax.mlperf.run import MLPerfRun  # pylint: disable=import-outside-toplevel
    return (MLPerfRun(config, workdir, start_step=start_step),)

  def train_batches(self, config, source, *, start_step, process_index, process_count
                    ) -> Iterator[dict[str, np.ndarray]]:
    return mlperf_sampler.train_batches(
        source, patch_size=tuple(config.patch_size), global_batch_size=config.global_batch_size,
        seed=config.seed, start_step=start_step, num_steps=config.num_steps,
        oversampling=float(config.mlperf.oversampling), process_index=process_index,
        process_count=process_count, worker_count=config.get("data_workers", 0),
        cache_size=int(config.get("cached_cases", 0) or 0))
