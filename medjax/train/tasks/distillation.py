"""Knowledge distillation: a student learns a trained teacher's soft targets
(Hinton et al. 2015), here a soft decision tree distilled from a ConvNet
(Frosst & Hinton 2017, "Distilling a Neural Network Into a Soft Decision Tree").

Config section `distill`:

| field         | meaning                                                                  |
|---------------|--------------------------------------------------------------------------|
| `teacher`     | workdir of a trained classification run ("" with `alpha=1`: no teacher)  |
| `temperature` | T: the targets are `softmax(teacher logits / T)`                         |
| `alpha`       | weight of the hard-label loss; the soft-target loss has weight `1-alpha` |
| `balance`     | lambda of the tree's balance regulariser (`soft_tree.balance_regularizer`)|
| `soft_loss`   | "mixture": CE of the student's output distribution to the targets;      |
|               | "leaf" (trees only): the paper's path-weighted CE of every leaf          |

Loss of a batch: `alpha CE(label, student) + (1 - alpha) CE(softmax(t / T),
student) + balance C(tree)`. As in Frosst & Hinton, only the teacher is
softened: the tree's output is already a distribution (its leaves'
mixture), so the soft-target term has no `T^2` factor (Hinton et al. scale by
`T^2` because their student's logits are divided by T too).

The teacher's logits are computed for every training batch on the host's
first device (jitted, eval mode) and travel in the batch as
`teacher_logits (B, K)`. Evaluation is the classification task's (accuracy,
AUC, ECE), plus the teacher's (`teacher/accuracy`, `teacher/auc/<class>`, ...)
and the student-teacher agreement on the same test images, and for a tree the paper's test-time rule: the class of the
single most probable leaf (`max_path_accuracy`). `write_outputs` draws the
tree's inner-node filters and one test example's path (`tree_report`).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medjax.data.pipeline import loaders
from medjax.errors import InputError
from medjax.inference import restore
from medjax.models.soft_tree import (SoftDecisionTree, balance_regularizer, distillation_loss,
                                     leaf_distillation_loss)
from medjax.train import evaluate, tree_report
from medjax.train.step import LossFn, Objective
from medjax.train.tasks.classification import ClassificationTask, data_options
from medjax.train.workdir import Workdir

SOFT_LOSSES = ("mixture", "leaf")


def uses_teacher(config: ml_collections.ConfigDict) -> bool:
  """Whether the loss has a soft-target term (`alpha < 1`)."""
  return float(config.distill.alpha) < 1.0


def _is_tree(config: ml_collections.ConfigDict) -> bool:
  return config.model.name == "soft_tree"


def _teacher_error(config: ml_collections.ConfigDict, what: str) -> InputError:
  return InputError(f"config.distill.teacher={config.distill.teacher}: {what}")


def check_teacher(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The teacher run's config, after checking that it is a trained
  classification run whose inputs (shape, channels, intensity normalisation)
  and classes match `config`'s."""
  path = str(config.distill.teacher)
  expected = "expected the workdir of a trained classification run"
  if not path or not os.path.isdir(path):
    raise _teacher_error(config, f"no such folder; {expected}")
  workdir = Workdir(path)
  try:
    teacher = workdir.read_config()
  except InputError as e:
    raise _teacher_error(config, str(e)) from None
  if not os.path.isdir(workdir.checkpoint_dir):
    raise _teacher_error(config, f"no checkpoints; {expected}")
  if teacher.get("task") != "classification":
    raise _teacher_error(config, f"a {teacher.get('task')!r} run; {expected}")
  for key in ("num_classes", "in_channels", "patch_size", "intensity_stats"):
    mine, theirs = config.get(key), teacher.get(key)
    if (tuple(mine) if isinstance(mine, (list, tuple)) else mine) != (
        tuple(theirs) if isinstance(theirs, (list, tuple)) else theirs):
      raise _teacher_error(config, f"the teacher has {key}={theirs}, the student {mine}")
  return teacher


def teacher_logits_fn(config: ml_collections.ConfigDict) -> Callable[[np.ndarray], np.ndarray]:
  """`images (B, *S, C) -> teacher logits (B, K)` of the latest checkpoint of
  `config.distill.teacher`, jitted, eval mode, on this host's first device. The restored
  teacher is kept for the process (training and evaluation share it): a new checkpoint in
  the teacher's workdir is a new key."""
  check_teacher(config)
  path = str(config.distill.teacher)
  checkpoints = tuple(sorted(os.listdir(Workdir.of(path).checkpoint_dir)))
  try:
    return _teacher_apply(path, checkpoints)
  except InputError as e:
    raise _teacher_error(config, str(e)) from None


@functools.lru_cache(maxsize=2)
def _teacher_apply(path: str, checkpoints: tuple[str, ...]) -> Callable[[np.ndarray], np.ndarray]:
  del checkpoints  # part of the cache key only: a new checkpoint restores again
  _, model, variables = restore.load_run(path)
  variables = jax.device_put(variables, jax.local_devices()[0])
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False).astype(jnp.float32))
  return lambda images: np.asarray(apply(variables, images))


def distillation_objective(config: ml_collections.ConfigDict, label_loss: LossFn) -> Objective:
  """`alpha label_loss + (1 - alpha) soft-target CE + balance regulariser`
  (module docstring); a tree is called with `return_aux=True`."""
  alpha = float(config.distill.alpha)
  temperature = float(config.distill.temperature)
  lam = float(config.distill.balance)
  soft_loss = config.distill.soft_loss
  tree = _is_tree(config)

  def loss(outputs, batch: dict) -> jax.Array:
    logits, aux = outputs if tree else (outputs, None)
    total = jnp.zeros((), jnp.float32)
    if alpha > 0:
      total = total + alpha * label_loss(logits, batch["label"])
    if alpha < 1:
      teacher = batch["teacher_logits"]
      soft = (leaf_distillation_loss(aux, teacher, temperature) if soft_loss == "leaf"
              else distillation_loss(logits, teacher, temperature))
      total = total + (1 - alpha) * soft
    if tree and lam > 0:
      total = total + balance_regularizer(aux, lam)
    return total

  return Objective(loss, {"return_aux": True} if tree else {})


def _predict_all(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                 batch_size: int) -> np.ndarray:
  """`fn` over `images (N, ...)` in batches -> `(N, K)` float32."""
  return np.concatenate([np.asarray(fn(images[i:i + batch_size]), np.float32)
                         for i in range(0, len(images), batch_size)])


class DistillationTask(ClassificationTask):
  """Classification from a teacher's soft targets (module docstring)."""

  summary_metrics = ("accuracy", "auc", "ece", "max_path_accuracy", "teacher_agreement",
                     "teacher")

  def validate(self, config: ml_collections.ConfigDict) -> None:
    super().validate(config)
    if "distill" not in config:
      raise InputError("config.distill: missing; expected a section with teacher, temperature, "
                       "alpha, balance, soft_loss")
    d = config.distill
    for key in ("teacher", "temperature", "alpha", "balance", "soft_loss"):
      if key not in d:
        raise InputError(f"config.distill.{key}: missing")
    if not float(d.temperature) > 0:
      raise InputError(f"config.distill.temperature={d.temperature}: expected a positive number")
    if not 0.0 <= float(d.alpha) <= 1.0:
      raise InputError(f"config.distill.alpha={d.alpha}: expected a value in [0, 1]")
    if float(d.balance) < 0:
      raise InputError(f"config.distill.balance={d.balance}: expected a value >= 0")
    if d.soft_loss not in SOFT_LOSSES:
      raise InputError(f"config.distill.soft_loss={d.soft_loss!r}: expected one of "
                       f"{', '.join(map(repr, SOFT_LOSSES))}")
    if not _is_tree(config) and (d.soft_loss == "leaf" or float(d.balance) > 0):
      raise InputError(f"config.distill: soft_loss='leaf' and balance > 0 need "
                       f"model.name='soft_tree' (got {config.model.name!r})")
    if uses_teacher(config):
      check_teacher(config)

  def objective(self, config: ml_collections.ConfigDict, label_loss: LossFn) -> Objective:
    return distillation_objective(config, label_loss)

  def train_batches(self, config: ml_collections.ConfigDict, source, *, start_step,
                    process_index, process_count) -> Iterator[dict[str, np.ndarray]]:
    """The classification batches, plus `teacher_logits (B, K)` when `alpha < 1`."""
    batches = super().train_batches(config, source, start_step=start_step,
                                    process_index=process_index, process_count=process_count)
    if not uses_teacher(config):
      return batches
    teacher = teacher_logits_fn(config)
    return ({**batch, "teacher_logits": teacher(batch["image"])} for batch in batches)

  def evaluate(self, config, model, variables, source) -> evaluate.Evaluation:
    """The classification scores; for a tree also `max_path_accuracy` and
    `max_path_agreement` (with the mixture's prediction) and the tree drawing;
    with a teacher `teacher/<metric>` on the same images and `teacher_agreement`."""
    evaluation = super().evaluate(config, model, variables, source)
    results = dict(evaluation.results)
    per_case = results.pop("per_case")
    loaded = list(loaders.classification_images(source, **data_options(config)))
    images = np.stack([image for _, image, _ in loaded])
    labels = np.array([label for _, _, label in loaded])
    pred = np.array([case["pred"] for case in per_case])
    batch_size = int(config.eval.batch_size)
    class_names = tuple(config.class_names)
    examples = list(evaluation.examples)
    if isinstance(model, SoftDecisionTree):
      variables = jax.device_put(variables, jax.local_devices()[0])
      max_path = jax.jit(lambda x: model.apply(variables, x, method=model.max_path_logits))
      path_pred = _predict_all(max_path, images, batch_size).argmax(-1)
      results["max_path_accuracy"] = float((path_pred == labels).mean())
      results["max_path_agreement"] = float((path_pred == pred).mean())
      examples.append(tree_drawing(model, variables, loaded, class_names))
    if uses_teacher(config):
      logits = teacher_logits_fn(config)
      teacher = evaluate.score_classification(
          lambda x: jax.nn.softmax(logits(x), axis=-1), iter(loaded), class_names,
          batch_size=batch_size).results
      results.update({f"teacher/{k}": v for k, v in teacher.items() if k != "per_case"})
      teacher_pred = np.array([case["pred"] for case in teacher["per_case"]])
      results["teacher_agreement"] = float((teacher_pred == pred).mean())
    results["per_case"] = per_case
    return dataclasses.replace(evaluation, results=results, examples=examples)

  def write_outputs(self, config, evaluation, workdir) -> Optional[list[str]]:
    """`report/tree_filters.png` and `report/tree_path.png` for a tree."""
    paths = list(super().write_outputs(config, evaluation, workdir) or [])
    for drawing in evaluation.examples:
      if isinstance(drawing, tree_report.TreeDrawing):
        for name, plot in (("tree_filters.png", tree_report.plot_filters),
                           ("tree_path.png", tree_report.plot_path)):
          path = workdir.report_path(name)
          plot(drawing, path)
          paths.append(path)
    return paths


def tree_drawing(model: SoftDecisionTree, variables: dict,
                 loaded: Sequence[tuple[str, np.ndarray, int]],
                 class_names: Sequence[str]) -> tree_report.TreeDrawing:
  """The filters `(2^d - 1, H, W)` (first input channel), the leaves'
  distributions and the path of one test image: the first of the last class
  (e.g. a tumour), else the first."""
  params = variables["params"]
  spatial = loaded[0][1].shape
  kernel = np.asarray(params["inner"]["kernel"])  # (prod(spatial), nodes)
  filters = kernel.T.reshape((-1,) + spatial)[..., 0]
  leaf_dist = np.asarray(jax.nn.softmax(params["leaves"], axis=-1))
  last = len(class_names) - 1
  case, image, label = next((e for e in loaded if e[2] == last), loaded[0])
  _, aux = model.apply(variables, image[None], train=False, return_aux=True)
  return tree_report.TreeDrawing(filters=filters, leaf_dist=leaf_dist, class_names=class_names,
                                 case=case, image=image[..., 0], label=int(label),
                                 split_probs=np.asarray(aux["split_probs"][0]))


__all__ = ["DistillationTask", "distillation_objective", "teacher_logits_fn", "check_teacher",
           "tree_drawing", "uses_teacher", "SOFT_LOSSES"]
