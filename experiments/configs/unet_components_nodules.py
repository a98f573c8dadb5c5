"""nnDetection's baseline "U-Net + connected components" on `synthetic_nodules`.

Command:
  python -m experiments.main --config=experiments/configs/unet_components_nodules.py \
      --workdir=runs/unet_components_nodules

A 3D U-Net (the Retina U-Net's encoder/decoder: the same features, instance
norm, patches, foreground oversampling and lung window as
`retina_unet_nodules.py`) trained with Dice + CE on the nodules' class map
(`config.task = "detection_components"`); at evaluation each connected
component of its whole-volume segmentation is a box scored by its highest
nodule probability, with the minimum component size and the operating
threshold chosen on the validation split, scored by the same LUNA16 FROC / CPM
as the detectors. `experiments.predict` on such a run writes segmentations (it
is a segmentation network).

Variant: `:smoke` (seconds, for tests). Results: not measured yet (see
`experiments/results/detection_nodules.md`).
"""
import ml_collections

from experiments.configs import common, retina_unet_nodules


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = common.base_config()
  c.task = "detection_components"
  retina_unet_nodules.nodule_data(c)
  c.num_classes = 2
  c.class_names = ("background", "nodule")

  c.model.name = "unet"
  c.model.spatial_dims = 3
  c.model.features = (8, 16, 32, 64)
  c.model.norm = "instance"
  c.model.dropout = 0.0
  c.loss.name = "dice_ce"
  c.loss.batch = True
  c.loss.include_background = False

  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 50
  c.num_steps = 1500
  c.log_every = 50
  c.checkpoint_every = 500

  retina_unet_nodules.detection_eval(c)
  c.eval.detection.min_voxels_grid = (1, 4, 8)  # minimum component size, chosen on validation
  c.eval.roi_size = (64, 96, 96)
  c.eval.mode = "gaussian"
  c.eval.overlap = 0.5
  c.eval.batch_size = 1
  c.eval.mirror_axes = (2,)
  c.eval.surface_metrics = False
  c.eval.postprocess = False
  c.eval.report_cases = 3

  if variant == "smoke":
    c.dataset = "synthetic_nodules/smoke"
    common.smoke_schedule(c)
    c.patch_size = (16, 32, 32)
    c.model.features = (4, 8)
    c.eval.roi_size = ()
    c.eval.batch_size = 2
    c.eval.detection.bootstrap = 20
    c.eval.detection.min_voxels_grid = (1, 4)
    c.eval.report_cases = 1
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}: expected '' or 'smoke'")
  return c
