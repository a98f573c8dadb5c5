"""MLP lesion classifier on `synthetic_organs/2d` (is there a tumour in this slice?).

From the formal neuron to deep MLPs: `--config.model.hidden='()'` is a single
neuron layer (logistic regression); the default has two hidden layers.

  python -m experiments.main --config=experiments/configs/mlp_synthetic2d.py --workdir=runs/mlp2d

Measured on the 2-core CPU CI machine (jax 0.10.2, 2026-11-25, one seed, the
dataset already prepared): 43 s wall (38 s training), test accuracy 0.467 and
lesion AUC 0.50 on the 1000 test slices, i.e. chance. A fully connected net on
raw 128x128 slices does not find a lesion of ~1 % of the pixels at ~30 HU
contrast from 4000 image-level labels (no translation invariance; the earlier
400-slice training set gave the same: accuracy 0.51, AUC 0.50).

`:patches` asks what is at the centre of a 32x32 patch instead
(`synthetic_organs/patches2d`: background / organ / tumour, 1000 each in
training, 1000 test patches, same contrast and noise as the slices):

  python -m experiments.main --config=experiments/configs/mlp_synthetic2d.py:patches --workdir=runs/mlp_patches

Measured on a 2-core CPU CI-type machine shared with other jobs and loaded
at the time (load average 7-10; jax 0.10.2, 2026-11-26, one seed, dataset
already prepared -- generating it took 17 s): 1000 steps of 64 (21 epochs),
20 s training, test accuracy 0.900, one-vs-rest AUC background 0.988 / organ 0.962 /
tumour 0.968, ECE 0.021; recall background 0.94, organ 0.87, tumour 0.89
(61 of the 100 errors confuse organ and tumour).
"""
import ml_collections

from experiments.configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """`variant`: "" (lesion in the slice?), "patches" (class of the patch centre,
  `synthetic_organs/patches2d`), and "smoke" / "patches,smoke" for a seconds-long run."""
  parts = set(filter(None, variant.split(",")))
  unknown = parts - {"patches", "smoke"}
  if unknown:
    raise ValueError(f"unknown config variant {sorted(unknown)}: expected patches, smoke")
  if "patches" in parts:
    c = common.patch_classification_2d()
  else:
    c = common.lesion_classification_2d()
  c.model.name = "mlp"
  c.model.hidden = (256, 128)
  c.model.activation = "relu"
  c.model.dropout = 0.1
  if "smoke" in parts:
    common.smoke(c)
  return c
