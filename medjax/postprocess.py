"""Post-processing of label maps, decided on the validation split as nnU-Net does.

Rules (Isensee et al., "nnU-Net: a self-configuring method for deep
learning-based biomedical image segmentation", Nature Methods 2021; nnU-Net
v2's `determine_postprocessing`):

* `largest_component` of a set of classes: the union of those classes is
  split into connected components (`scipy.ndimage.label`, face
  connectivity: 6-neighbourhood in 3D, 4 in 2D) and every voxel outside the
  largest one is set to background (0). With all foreground classes it is
  nnU-Net's "keep the largest foreground region"; with one class, "keep the
  largest region of class c".
* `min_volume` of a class: its connected components smaller than
  `min_volume_ml` millilitres (voxel count x `prod(spacing)` mm^3 / 1000)
  are set to background. Not in nnU-Net; it can remove a small false alarm
  in a case without the structure, which `largest_component` keeps.

The decision (`decide`) follows nnU-Net: on the validation cases, keep the
foreground-union rule if it raises the mean over foreground classes of the
mean Dice; then, with the kept rules applied, keep each class's
largest-component rule if it raises that class's mean Dice; then (medjax's
addition) the `min_volume` threshold among `MIN_VOLUMES_ML` that raises that
class's mean Dice most, if any does. "Raises" is strict: a rule that changes
nothing is not kept.

API (used by the segmentation task's evaluation and by `experiments.predict`):

  rules = Workdir.of(workdir).read_postprocessing_rules()   # -> tuple[Rule, ...] | None
  labels = postprocess.apply(labels, rules, spacing)   # (*S) int -> (*S), same dtype

`read_postprocessing_rules` (`medjax.train.workdir`, the owner of the file) returns None when the workdir has no `postprocessing.json` (a run
evaluated before post-processing existed, or with `config.eval.postprocess`
off) and an empty tuple when the validation split kept no rule; `apply` with
None or () returns the labels unchanged. `postprocessing.json` holds
`{"rules": [...], "validation": {...}}`: the rules in the order they are
applied, and the validation Dice of every rule tried.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage

from medjax import metrics
from medjax.errors import InputError

RULE_KINDS = ("largest_component", "min_volume")
# Candidate thresholds of the min_volume rule, in mL (a 0.8 x 0.8 x 2.5 mm voxel is 0.0016 mL).
MIN_VOLUMES_ML = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


@dataclasses.dataclass(frozen=True)
class Rule:
  """One post-processing step.

  Attributes:
    kind: "largest_component" | "min_volume".
    classes: class ids it acts on (largest_component: their union).
    min_volume_ml: for "min_volume", the smallest component kept, in mL.
  """
  kind: str
  classes: tuple[int, ...]
  min_volume_ml: float = 0.0

  def __post_init__(self):
    if self.kind not in RULE_KINDS:
      raise InputError(f"post-processing rule kind {self.kind!r}: expected one of {RULE_KINDS}")
    object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
    if not self.classes or min(self.classes) < 1:
      raise InputError(f"post-processing rule classes {self.classes}: expected foreground ids >= 1")

  def to_json(self) -> dict:
    out = {"kind": self.kind, "classes": list(self.classes)}
    if self.kind == "min_volume":
      out["min_volume_ml"] = self.min_volume_ml
    return out

  @classmethod
  def from_json(cls, raw: Mapping) -> "Rule":
    return cls(raw["kind"], tuple(raw["classes"]), float(raw.get("min_volume_ml", 0.0)))


Rules = Sequence[Rule]


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Component ids `(*S)` (0 outside the mask) and voxel counts per id (index 0: unused)."""
  ids, n = ndimage.label(mask)
  sizes = np.bincount(ids.reshape(-1), minlength=n + 1)
  sizes[0] = 0
  return ids, sizes


def largest_component(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
  """`labels` with every voxel of `classes` outside the largest connected
  component of their union set to 0 (ties: the component found first)."""
  mask = np.isin(labels, classes)
  if not mask.any():
    return labels
  ids, sizes = _components(mask)
  out = labels.copy()
  out[mask & (ids != int(np.argmax(sizes)))] = 0
  return out


def remove_small_components(labels: np.ndarray, class_id: int, min_volume_ml: float,
                            spacing: Sequence[float]) -> np.ndarray:
  """`labels` with the connected components of `class_id` smaller than
  `min_volume_ml` mL set to 0 (volume = voxels x `prod(spacing)` mm^3 / 1000)."""
  mask = labels == class_id
  if not mask.any():
    return labels
  ids, sizes = _components(mask)
  voxel_ml = float(np.prod(spacing)) / 1000.0
  small = np.flatnonzero(sizes * voxel_ml < min_volume_ml)
  out = labels.copy()
  out[mask & np.isin(ids, small)] = 0
  return out


def apply(labels, rules: Optional[Rules], spacing: Sequence[float]) -> np.ndarray:
  """Applies `rules` in order to a label map.

  Args:
    labels: integer label map `(*S)` (0 = background).
    rules: from `Workdir.read_postprocessing_rules` / `decide`; None or () leaves `labels` unchanged.
    spacing: voxel size in mm, one value per axis of `labels`.
  Returns:
    The post-processed label map `(*S)`, same dtype (removed voxels are 0).
  """
  labels = np.asarray(labels)
  spacing = tuple(float(s) for s in spacing)
  if len(spacing) != labels.ndim:
    raise InputError(f"spacing {spacing}: expected {labels.ndim} values (mm, one per axis of "
                     f"the label map {labels.shape})")
  for rule in rules or ():
    if rule.kind == "largest_component":
      labels = largest_component(labels, rule.classes)
    else:
      for c in rule.classes:
        labels = remove_small_components(labels, c, rule.min_volume_ml, spacing)
  return labels


@dataclasses.dataclass
class ValidationCase:
  """A validation case for `decide`: predicted and true label maps `(*S)`, spacing in mm."""
  pred: np.ndarray
  label: np.ndarray
  spacing: tuple[float, ...]


def mean_dice(cases: Sequence[ValidationCase], class_ids: Sequence[int],
              rules: Rules = ()) -> dict[int, float]:
  """Mean Dice over `cases` of each class after `rules` (both empty: 1.0, `metrics.dice`)."""
  return _mean_dice([apply(c.pred, rules, c.spacing) for c in cases], cases, class_ids)


def _mean_dice(preds: Sequence[np.ndarray], cases: Sequence[ValidationCase],
               class_ids: Sequence[int]) -> dict[int, float]:
  sums = dict.fromkeys(class_ids, 0.0)
  for pred, case in zip(preds, cases):
    for c in class_ids:
      sums[c] += metrics.dice(pred == c, case.label == c)
  return {c: s / len(cases) for c, s in sums.items()}


def decide(cases: Sequence[ValidationCase], class_ids: Sequence[int], *,
           min_volumes_ml: Iterable[float] = MIN_VOLUMES_ML) -> tuple[tuple[Rule, ...], dict]:
  """Chooses the post-processing rules that raise the validation Dice (nnU-Net).

  Order (each step with the rules kept so far applied): the largest component
  of the union of all foreground classes (kept if the mean over classes of
  the mean Dice rises; tried only with two or more classes, else it is the
  per-class rule); the largest component of each class (kept if that class's
  mean Dice rises); the best `min_volume` threshold of each class (kept if it
  raises that class's mean Dice).

  Each candidate is applied once per case to the predictions with the kept
  rules already applied (held in memory: one label map per validation case).

  Args:
    cases: validation predictions and truths.
    class_ids: foreground class ids (>= 1).
    min_volumes_ml: candidate `min_volume` thresholds in mL.
  Returns:
    `(rules, record)`: the kept rules in the order to apply them, and a JSON
    dict of what was measured: `cases`, `dice_raw` and `dice_final` (class ->
    mean Dice), `tried`: one entry per rule tried with its Dice before/after
    and whether it was kept.
  """
  class_ids = [int(c) for c in class_ids]
  if not cases:
    return (), {"cases": 0, "tried": [], "note": "no validation cases: no rule kept"}
  rules: list[Rule] = []
  tried: list[dict] = []
  preds = [np.asarray(c.pred) for c in cases]  # with the kept rules applied
  raw = current = _mean_dice(preds, cases, class_ids)

  def score(candidates: Sequence[Rule], score_classes: Sequence[int]) -> None:
    """Tries each candidate after the kept rules; keeps the best if it raises the score."""
    nonlocal current, preds
    before = float(np.mean([current[c] for c in score_classes]))
    entries = []
    for rule in candidates:
      after = _mean_dice([apply(p, [rule], c.spacing) for p, c in zip(preds, cases)], cases,
                         class_ids)
      entries.append({"rule": rule, "after": after, "dice_before": before,
                      "dice_after": float(np.mean([after[c] for c in score_classes])),
                      "kept": False})
    tried.extend(entries)
    best = max(entries, key=lambda e: e["dice_after"])
    if best["dice_after"] > before:
      best["kept"] = True
      rules.append(best["rule"])
      current = best["after"]
      preds = [apply(p, [best["rule"]], c.spacing) for p, c in zip(preds, cases)]

  if len(class_ids) > 1:
    score([Rule("largest_component", tuple(class_ids))], class_ids)
  for c in class_ids:
    score([Rule("largest_component", (c,))], (c,))
  thresholds = [float(v) for v in min_volumes_ml]
  for c in class_ids:
    if thresholds:
      score([Rule("min_volume", (c,), v) for v in thresholds], (c,))
  record = {"cases": len(cases), "dice_raw": {str(c): v for c, v in raw.items()},
            "dice_final": {str(c): v for c, v in current.items()},
            "tried": [{"rule": e["rule"].to_json(), "dice_before": e["dice_before"],
                       "dice_after": e["dice_after"], "kept": e["kept"]} for e in tried]}
  return tuple(rules), record


def rules_to_json(rules: Rules, record: Optional[dict] = None,
                  class_names: Optional[Sequence[str]] = None) -> dict:
  """The `postprocessing.json` dict: `rules` (in order), `validation` (the record), `class_names`."""
  out = {"rules": [r.to_json() for r in rules], "validation": record or {}}
  if class_names is not None:
    out["class_names"] = list(class_names)
  return out


def rules_from_json(raw: Mapping, *, path: str = "postprocessing.json") -> tuple[Rule, ...]:
  """The rules of a `postprocessing.json` dict; InputError naming `path` if malformed."""
  try:
    return tuple(Rule.from_json(r) for r in raw["rules"])
  except (KeyError, TypeError, ValueError) as e:
    raise InputError(f"{path}: malformed post-processing rules ({type(e).__name__}: {e}); "
                     "expected {'rules': [{'kind': ..., 'classes': [...]}, ...]}") from None
