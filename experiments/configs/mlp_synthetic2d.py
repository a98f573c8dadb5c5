"""MLP lesion classifier on `synthetic_organs/2d` (is there a tumour in this slice?).

From the formal neuron to deep MLPs: `--config.model.hidden='()'` is a single
neuron layer (logistic regression); the default has two hidden layers.

  python -m experiments.main --config=experiments/configs/mlp_synthetic2d.py --workdir=runs/mlp2d

Runtime and result on a 2-core CPU: see README "Results" (not yet measured).
"""
import ml_collections

from experiments.configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = common.lesion_classification_2d()
  c.model.name = "mlp"
  c.model.hidden = (256, 128)
  c.model.activation = "relu"
  c.model.dropout = 0.1
  if variant == "smoke":
    common.smoke(c)
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}: expected '' or 'smoke'")
  return c
