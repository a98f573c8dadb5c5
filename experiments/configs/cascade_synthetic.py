"""Cascaded FCNs (Christ 2016) on `synthetic_organs/3d`: organ first, then the
tumour inside the organ's bounding box; compare with the single-stage 3-class
`unet3d_synthetic.py` (same network per stage, same steps per stage).

  python -m experiments.main --config=experiments/configs/cascade_synthetic.py --workdir=runs/cascade

Expected (2-core CPU, jax 0.10.2, one seed): ~11 min for both stages and the
joint evaluation; dice/organ 0.93, dice/tumour 0.83, tumour HD95 3.2 mm (README
"Nested structures").
"""
import ml_collections

from experiments.configs import unet3d_synthetic


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = unet3d_synthetic.get_config(variant)
  c.task = "cascade"
  c.cascade = ml_collections.ConfigDict()
  # stage 1: organ (tumour merged into it) on whole volumes
  c.cascade.stage1 = ml_collections.ConfigDict({
      "num_classes": 2, "class_names": ("background", "organ"), "label_map": (0, 1, 1),
  })
  # stage 2: tumour vs rest on volumes cropped to the organ box + margin (voxels)
  c.cascade.stage2 = ml_collections.ConfigDict({
      "num_classes": 2, "class_names": ("background", "tumour"), "label_map": (0, 0, 1),
      "crop_margin": (2, 6, 6),
  })
  return c
