"""Tasks: what a run learns from its data and how it is scored.

A task owns its training batches, its evaluation and the outputs it writes
(`base.Task`); `medjax.train.loop` calls the task named by `config.task` and
knows no task names itself. Adding a task (distillation, fine-tuning, ...) is
one new module with a `Task` subclass plus one line in `TASKS`.
"""
from __future__ import annotations

from medjax.errors import InputError
from medjax.train.tasks.base import Task
from medjax.train.tasks.classification import ClassificationTask
from medjax.train.tasks.components_detection import ComponentsDetectionTask
from medjax.train.tasks.detection import DetectionTask
from medjax.train.tasks.distillation import DistillationTask
from medjax.train.tasks.mlperf import MLPerfUNet3DTask
from medjax.train.tasks.segmentation import SegmentationTask
from medjax.train.tasks.transfer import FinetuneTask, LinearProbeTask

TASKS: dict[str, type[Task]] = {
    "segmentation": SegmentationTask,
    "classification": ClassificationTask,
    "finetune": FinetuneTask,
    "linear_probe": LinearProbeTask,
    "distillation": DistillationTask,
    "mlperf_unet3d": MLPerfUNet3DTask,
    "detection": DetectionTask,
    "detection_components": ComponentsDetectionTask,
}


def get_task(name: str) -> Task:
  """The task for `config.task`; InputError naming the field otherwise."""
  if name not in TASKS:
    raise InputError(f"config.task={name!r}: expected one of {', '.join(map(repr, TASKS))} "
                     "(or a config with a 'cascade' section, run by medjax.train.cascade)")
  return TASKS[name]()


__all__ = ["Task", "TASKS", "get_task", "SegmentationTask", "ClassificationTask",
           "DistillationTask", "DetectionTask",
           "ComponentsDetectionTask", "FinetuneTask", "LinearProbeTask", "MLPerfUNet3DTask"]
