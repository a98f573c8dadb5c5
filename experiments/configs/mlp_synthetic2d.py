"""MLP lesion classifier on `synthetic_organs/2d` (is there a tumour in this slice?).

From the formal neuron to deep MLPs: `--config.model.hidden='()'` is a single
neuron layer (logistic regression); the default has two hidden layers.

  python -m experiments.main --config=experiments/configs/mlp_synthetic2d.py --workdir=runs/mlp2d

Expected (2-core CPU, jax 0.10.2, one seed, dataset prepared): ~40 s; test
accuracy ~0.47 and lesion AUC 0.50 on the 1000 test slices, i.e. chance: a fully
connected net on raw 128x128 slices does not find a lesion of ~1 % of the pixels
at ~30 HU contrast from image-level labels (no translation invariance; also with
400 training slices). Details: `experiments/results/mlp_synthetic2d.md`.

`:patches` asks what is at the centre of a 32x32 patch instead
(`synthetic_organs/patches2d`: background / organ / tumour, 1000 each in
training, 1000 test patches, same contrast and noise as the slices):

  python -m experiments.main --config=experiments/configs/mlp_synthetic2d.py:patches --workdir=runs/mlp_patches

Expected (2-core CPU, one seed): 1000 steps of 64 (21 epochs), ~20 s of
training, test accuracy 0.90, one-vs-rest AUC 0.96-0.99, ECE 0.02; most errors
confuse organ and tumour (`experiments/results/mlp_synthetic2d.md`).
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
