"""Soft decision tree on `synthetic_organs/patches2d` (background / organ / tumour
at the centre of a 32x32 patch), trained on the hard labels or distilled from a
trained ConvNet's soft targets (Frosst & Hinton 2017).

  # the teacher: a LeNet on the same patches
  python -m experiments.main --config=experiments/configs/convnet_synthetic2d.py:patches \\
      --workdir=runs/convnet_patches2d
  # the tree distilled from it (default variant), and the tree on the hard labels
  python -m experiments.main --config=experiments/configs/soft_tree_patches.py \\
      --workdir=runs/tree_distilled --config.distill.teacher=runs/convnet_patches2d
  python -m experiments.main --config=experiments/configs/soft_tree_patches.py:hard \\
      --workdir=runs/tree_hard

Both variants are the `distillation` task with the same tree (depth 4: 15
inner nodes, 16 leaves), optimiser, steps and balance regulariser; `hard` sets
`distill.alpha=1` (hard-label cross-entropy only, no teacher), `distilled`
`alpha=0` (the teacher's targets at temperature `distill.temperature` only).
Evaluation adds the paper's max-path rule (`max_path_accuracy`: the class of
the single most probable leaf), the teacher's scores on the same test patches
and `report/tree_filters.png`, `report/tree_path.png`. The plain
classification task trains the same tree too (`--config.task=classification`,
mixture cross-entropy, no regulariser, no tree report).

Measured numbers: the README's "Soft decision tree" table.
"""
import ml_collections

from experiments.configs import common


def get_config(variant: str = "distilled") -> ml_collections.ConfigDict:
  """`variant`: "distilled" (default) or "hard", and "smoke" for a seconds-long
  run (e.g. "hard,smoke")."""
  parts = set(filter(None, variant.split(",")))
  unknown = parts - {"distilled", "hard", "smoke"}
  if unknown or {"distilled", "hard"} <= parts:
    raise ValueError(f"unknown config variant {sorted(parts)}: expected distilled or hard, "
                     "and smoke")
  c = common.patch_classification_2d()
  c.task = "distillation"
  c.model = ml_collections.ConfigDict({"name": "soft_tree", "depth": 4})
  c.optimizer.learning_rate = 1e-2
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher = "runs/convnet_patches2d"
  c.distill.temperature = 4.0
  c.distill.alpha = 0.0
  c.distill.balance = 0.1
  c.distill.soft_loss = "mixture"  # "leaf": the paper's path-weighted loss per leaf
  if "hard" in parts:
    c.distill.teacher = ""
    c.distill.alpha = 1.0
  if "smoke" in parts:
    common.smoke(c)
  return c
