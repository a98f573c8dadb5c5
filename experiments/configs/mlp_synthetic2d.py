"""MLP lesion classifier on `synthetic_organs/2d` (is there a tumour in this slice?).

From the formal neuron to deep MLPs: `--config.model.hidden='()'` is a single
neuron layer (logistic regression); the default has two hidden layers.

  python -m experiments.main --config=experiments/configs/mlp_synthetic2d.py --workdir=runs/mlp2d

Runtime and result on a 2-core CPU: see README "Results" (not yet measured).
"""
import ml_collections

from experiments.configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = common.base_config()
  c.task = "classification"
  c.dataset = "synthetic_organs/2d"
  c.num_classes = 2
  c.class_names = ("no_lesion", "lesion")
  c.spacing = (0.8, 0.8)
  c.patch_size = (128, 128)  # the whole image
  c.flip_axes = (0, 1)
  c.global_batch_size = 32
  c.model.name = "mlp"
  c.model.hidden = (256, 128)
  c.model.activation = "relu"
  c.model.dropout = 0.1
  c.loss = ml_collections.ConfigDict({"name": "ce"})
  c.optimizer.learning_rate = 1e-3
  c.num_steps = 1000
  c.checkpoint_every = 200
  c.eval.batch_size = 64
  if variant == "smoke":
    common.smoke(c)
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}: expected '' or 'smoke'")
  return c
