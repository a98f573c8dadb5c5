"""2D U-Net (Ronneberger 2015, "same" padding, small widths) on `synthetic_organs/2d`.

  python -m experiments.main --config=experiments/configs/unet2d_synthetic.py --workdir=runs/unet2d

Expected (2-core CPU, jax 0.10.2, one seed, dataset prepared): 1000 steps in
~11 min (batch 8 of 128x128); over the 100 test slices dice/organ 0.98,
dice/tumour 0.86 (an empty prediction on a tumour-free slice scores 1; 0.81 on
the slices with a tumour), hd95/tumour 4.9 mm; slice-level detection from the
largest tumour probability `detection_auc/tumour` 1.00 (an image-level ConvNet
stays at chance: `convnet_synthetic2d.py`). Details:
`experiments/results/unet2d_synthetic.md`.
"""
import ml_collections

from experiments.configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = common.base_config()
  c.dataset = "synthetic_organs/2d"
  c.spacing = (0.8, 0.8)
  c.patch_size = (128, 128)
  c.flip_axes = (0, 1)
  c.global_batch_size = 8
  c.model.name = "unet"
  c.model.spatial_dims = 2
  c.model.features = (16, 32, 64, 128)
  c.model.norm = ml_collections.FieldReference(None, field_type=str)
  c.model.dropout = 0.0
  c.loss.name = "dice_ce"
  c.loss.batch = True
  c.loss.include_background = False
  c.num_steps = 1000
  c.checkpoint_every = 200
  if variant == "smoke":
    common.smoke(c)
    c.model.features = (4, 8)
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}: expected '' or 'smoke'")
  return c
