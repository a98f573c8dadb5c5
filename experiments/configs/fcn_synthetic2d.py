"""FCN-8s (Long 2015) segmenting organ and tumour in `synthetic_organs/2d` slices.

  python -m experiments.main --config=experiments/configs/fcn_synthetic2d.py --workdir=runs/fcn2d
  (variants: `:32s`, `:16s`, `:8s`)

Expected (2-core CPU, jax 0.10.2, one seed, FCN-8s, dataset prepared): 1000
steps in ~5.5 min (batch 8 of 128x128); over the 100 test slices dice/organ 0.96,
dice/tumour 0.83 (0.72 on the slices with a tumour), hd95/tumour 4.4 mm,
`detection_auc/tumour` 1.00: half the U-Net's time, a coarser tumour outline
(`experiments/results/fcn_synthetic2d.md`).
"""
import ml_collections

from experiments.configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  parts = set(filter(None, variant.split(",")))
  c = common.base_config()
  c.dataset = "synthetic_organs/2d"
  c.spacing = (0.8, 0.8)
  c.patch_size = (128, 128)  # divisible by 32, FCN's total stride
  c.flip_axes = (0, 1)
  c.global_batch_size = 8
  c.model.name = "fcn"
  c.model.spatial_dims = 2
  c.model.variant = next((p for p in parts if p in ("32s", "16s", "8s")), "8s")
  c.model.backbone_features = (16, 32, 64, 128, 128)
  c.model.fc_features = 256
  c.loss.name = "dice_ce"
  c.loss.batch = True
  c.loss.include_background = False
  c.optimizer.learning_rate = 1e-3
  c.num_steps = 1000
  c.checkpoint_every = 200
  unknown = parts - {"32s", "16s", "8s", "smoke"}
  if unknown:
    raise ValueError(f"unknown config variant {sorted(unknown)}: expected 32s, 16s, 8s, smoke")
  if "smoke" in parts:
    common.smoke(c)
  return c
