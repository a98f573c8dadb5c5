"""ConvNet lesion classifier on `synthetic_organs/2d`: LeNet-style (default) or VGG-style.

  python -m experiments.main --config=experiments/configs/convnet_synthetic2d.py --workdir=runs/lenet2d
  python -m experiments.main --config=experiments/configs/convnet_synthetic2d.py:vgg --workdir=runs/vgg2d

Expected (2-core CPU, jax 0.10.2, one seed, 4000 training / 1000 test slices):
LeNet ~3 min, test accuracy ~0.48 and lesion AUC ~0.49, i.e. chance (also with
global max pooling, and for VGG's training loss after 200 steps). Image-level
labels for a lesion of ~1 % of the pixels at ~30 HU contrast under ~20 HU noise
are a weak signal: even a hand-made feature given the organ mask reaches only
AUC 0.70, while pixel labels make the question easy (the 2D U-Net's largest
tumour probability per slice: `detection_auc/tumour` 1.00,
`unet2d_synthetic.py`). With 400 training slices LeNet memorises them (test AUC
0.43). Details: `experiments/results/convnet_synthetic2d.md`.

`:patches` (and `:vgg,patches`) ask what is at the centre of a 32x32 patch
instead (`synthetic_organs/patches2d`: background / organ / tumour, 1000
each in training, 1000 test patches, same contrast and noise as the slices):

  python -m experiments.main --config=experiments/configs/convnet_synthetic2d.py:patches --workdir=runs/lenet_patches
  python -m experiments.main --config=experiments/configs/convnet_synthetic2d.py:vgg,patches --workdir=runs/vgg_patches

Expected (2-core CPU, one seed, 1000 steps of 64 = 21 epochs): LeNet
(`:patches`) test accuracy 0.92, VGG (`:vgg,patches`, batch norm) 0.96, AUC
0.98-1.00, ECE 0.02; half the remaining errors confuse organ and tumour
(`experiments/results/convnet_synthetic2d.md`).
"""
import ml_collections

from experiments.configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """`variant`: "" or "lenet" (LeCun 1989), "vgg" (Simonyan 2015, small), each
  with "patches" for the class of the patch centre (`synthetic_organs/patches2d`)
  instead of "lesion in the slice?", and "smoke" for a seconds-long run, e.g.
  "vgg,patches,smoke"."""
  parts = set(filter(None, variant.split(",")))
  if "patches" in parts:
    c = common.patch_classification_2d()
  else:
    c = common.lesion_classification_2d()
  c.model.name = "convnet"
  c.model.variant = "vgg" if "vgg" in parts else "lenet"
  if c.model.variant == "vgg":
    c.model.vgg_blocks = ((16, 2), (32, 2), (64, 2), (64, 2))
    c.model.dense = (128,)
    c.model.norm = "batch"
  c.model.dropout = 0.1
  # None: flatten before the dense layers (the papers); "max" / "avg": global pooling.
  c.model.global_pool = ml_collections.FieldReference(None, field_type=str)
  unknown = parts - {"lenet", "vgg", "patches", "smoke"}
  if unknown:
    raise ValueError(f"unknown config variant {sorted(unknown)}: expected lenet, vgg, patches, smoke")
  if "smoke" in parts:
    common.smoke(c)
  return c
