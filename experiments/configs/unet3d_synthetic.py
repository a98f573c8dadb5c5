"""3D U-Net on the built-in synthetic CT dataset (`synthetic_organs/3d`): organ + tumour.

Command (the README's run command):
  python -m experiments.main --config=experiments/configs/unet3d_synthetic.py --workdir=runs/unet3d

Expected (2-core CPU machine, AMD EPYC, jax 0.10.2; README "Results"): with batch
normalisation (Cicek et al. 2016) and the post-processing chosen on the validation
split, means over 3 seeds of the 8 test volumes: dice/organ 0.960, dice/tumour
0.932, hd95 6.1 / 2.1 mm (without normalisation, `--config.model.norm=None`: 0.946
/ 0.922, hd95 8.1 / 2.4 mm; `experiments/results/default_norm_3seeds.md`).
Train ~200 s and eval ~26 s per run, about 4 min with dataset generation.

Ablations are one flag, e.g. `--config.loss.name=ce`, `--config.model.norm=None` (no normalisation),
`--config.kernels=pallas`, `--config.parallel=pmap`.
"""
import ml_collections

from experiments.configs import common
from medjax.models.unet import anisotropic_plan


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The default run; `variant="smoke"` (`--config=...py:smoke`) is a seconds-long
  run on a tiny dataset and model, for tests and for trying the pipeline."""
  c = common.base_config()
  c.dataset = "synthetic_organs/3d"
  c.spacing = (2.5, 0.8, 0.8)
  c.patch_size = (16, 48, 48)
  c.flip_axes = (1, 2)

  c.model.name = "unet"
  c.model.spatial_dims = 3
  c.model.features = (8, 16, 32, 64)
  # nnU-Net planning for anisotropic voxels: 1x3x3 convs and in-plane pooling
  # at the top level, where the slices are 3x thicker than the pixels.
  c.model.kernel_sizes, c.model.pool_sizes = anisotropic_plan(c.spacing, len(c.model.features))
  # Batch norm (3D U-Net, Cicek et al. 2016): better than none on every test metric over 3 seeds
  # (experiments/results/default_norm_3seeds.md); BatchNorm statistics are synchronised over 'data'.
  c.model.norm = ml_collections.FieldReference("batch", field_type=str)
  c.model.dropout = 0.0

  c.loss.name = "dice_ce"
  # nnU-Net's Dice+CE: Dice statistics summed over the batch ("batch dice") and
  # without the background class. Per-patch Dice would score a patch without a
  # tumour 0 for any false-positive voxel, which pushes the rare class to vanish.
  c.loss.batch = True
  c.loss.include_background = False
  c.num_steps = 1000
  # Gaussian blending of half-overlapping windows (nnU-Net) at test time.
  c.eval.mode = "gaussian"
  c.eval.overlap = 0.5

  if variant == "smoke":
    common.smoke(c)
    c.model.features = (4, 8)
    c.model.kernel_sizes, c.model.pool_sizes = anisotropic_plan(c.spacing, 2)
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}: expected '' or 'smoke'")
  return c
