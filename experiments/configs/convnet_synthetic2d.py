"""ConvNet lesion classifier on `synthetic_organs/2d`: LeNet-style (default) or VGG-style.

  python -m experiments.main --config=experiments/configs/convnet_synthetic2d.py --workdir=runs/lenet2d
  python -m experiments.main --config=experiments/configs/convnet_synthetic2d.py:vgg --workdir=runs/vgg2d

Runtime and result on a 2-core CPU: see README "Results" (not yet measured).
"""
import ml_collections

from experiments.configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """`variant`: "" or "lenet" (LeCun 1989), "vgg" (Simonyan 2015, small), and
  "smoke" / "vgg,smoke" for a seconds-long run."""
  parts = set(filter(None, variant.split(",")))
  c = common.base_config()
  c.task = "classification"
  c.dataset = "synthetic_organs/2d"
  c.num_classes = 2
  c.class_names = ("no_lesion", "lesion")
  c.spacing = (0.8, 0.8)
  c.patch_size = (128, 128)
  c.flip_axes = (0, 1)
  c.global_batch_size = 32
  c.model.name = "convnet"
  c.model.variant = "vgg" if "vgg" in parts else "lenet"
  if c.model.variant == "vgg":
    c.model.vgg_blocks = ((16, 2), (32, 2), (64, 2), (64, 2))
    c.model.dense = (128,)
    c.model.norm = "batch"
  c.model.dropout = 0.1
  c.loss = ml_collections.ConfigDict({"name": "ce"})
  c.optimizer.learning_rate = 1e-3
  c.num_steps = 1000
  c.checkpoint_every = 200
  c.eval.batch_size = 64
  unknown = parts - {"lenet", "vgg", "smoke"}
  if unknown:
    raise ValueError(f"unknown config variant {sorted(unknown)}: expected lenet, vgg, smoke")
  if "smoke" in parts:
    common.smoke(c)
  return c
