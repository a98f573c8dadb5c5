"""ConvNet lesion classifier on `synthetic_organs/2d`: LeNet-style (default) or VGG-style.

  python -m experiments.main --config=experiments/configs/convnet_synthetic2d.py --workdir=runs/lenet2d
  python -m experiments.main --config=experiments/configs/convnet_synthetic2d.py:vgg --workdir=runs/vgg2d

Measured on the 2-core CPU CI machine (jax 0.10.2, 2026-11-25, one seed, the
dataset already prepared; 4000 training / 1000 test slices):

| variant | wall (train) | test accuracy | lesion AUC |
|---|---|---|---|
| LeNet (flatten, the paper) | 179 s (172 s) | 0.483 | 0.49 |
| LeNet, `--config.model.global_pool=max` (machine under load) | (313 s) | 0.481 | 0.49 |

All at chance. VGG (`:vgg`) was not run to the end (0.58 steps/s while
sharing the machine with another run, so 1000 steps would take well over
10 min); with global max pooling its training loss was still ~0.7 (chance)
after 200 steps. With the builder's 400 training slices LeNet memorised them
(training loss 0.004, test AUC 0.43); with 4000 it no longer memorises but
does not learn either (training loss 0.69 -> 0.63). Image-level labels for a
lesion of ~1 % of the pixels at ~30 HU contrast under ~20 HU noise are a weak
signal: even a hand-made feature that is given the organ mask (the darkest
smoothed value inside it) reaches only AUC 0.70 on the builder's 100 test
slices. Pixel labels make the same question easy: on those 100 slices the 2D
U-Net's largest tumour probability per slice reaches `detection_auc/tumour`
0.996 (`experiments/configs/unet2d_synthetic.py`).

`:patches` (and `:vgg,patches`) ask what is at the centre of a 32x32 patch
instead (`synthetic_organs/patches2d`: background / organ / tumour, 1000
each in training, 1000 test patches, same contrast and noise as the slices):

  python -m experiments.main --config=experiments/configs/convnet_synthetic2d.py:patches --workdir=runs/lenet_patches
  python -m experiments.main --config=experiments/configs/convnet_synthetic2d.py:vgg,patches --workdir=runs/vgg_patches

Measured on a 2-core CPU CI-type machine shared with other jobs and loaded
at the time (load average 9-14, so the wall times are 2-4x the CPU time;
jax 0.10.2, 2026-11-26, one seed, dataset already prepared; 1000 steps of 64,
21 epochs; AUC one-vs-rest per class):

| variant | training | test accuracy | AUC background / organ / tumour | ECE | recall bg / organ / tumour |
|---|---|---|---|---|---|
| LeNet (`:patches`) | 76 s | 0.917 | 0.990 / 0.983 / 0.982 | 0.022 | 0.93 / 0.90 / 0.91 |
| VGG (`:vgg,patches`, batch norm) | 489 s | 0.958 | 0.998 / 0.993 / 0.995 | 0.023 | 0.97 / 0.94 / 0.96 |

Half the remaining errors confuse organ and tumour (VGG: 22 of 42; LeNet: 37
of 83); VGG calls no background centre tumour, and 2 tumour centres background.
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
