"""Retina U-Net lung-nodule detection on `synthetic_nodules` (the default detection run).

Command:
  python -m experiments.main --config=experiments/configs/retina_unet_nodules.py \
      --workdir=runs/retina_unet_nodules
  python -m experiments.predict --workdir=runs/retina_unet_nodules --input=scans/ --output=out/

A Retina U-Net (Jaeger et al. 2018) as nnDetection trains it (Baumgartner et al.
2021): a 4-level U-Net with instance norm, RetinaNet heads on the stride-2 and
stride-4 decoder levels with anchors planned from the phantom's nodule sizes
(`medjax.detection.plan_anchors`: mean best IoU 0.72 against 0.59 for the
default `(2s, 3s)` anchors), ATSS matching, BCE on hard-negative-sampled
anchors, GIoU regression and the Dice + CE segmentation head; patches of
32x48x48 voxels (2 per step) with half the samples centred near a nodule;
evaluation on the whole volume in one window, mirrored along the last axis, and
weighted box clustering, the clustering IoU, minimum size and operating threshold chosen on
the validation split (`detection_thresholds.json`). The image is shown to the
network through a lung window (-1000..400 HU).

Variants: `:smoke` (seconds: tiny phantom and model, for tests), `:retinanet`
(no segmentation head: RetinaNet on the same U-Net, the ablation of the Retina
U-Net's extra supervision), `:retinanet_smoke`.

Expected: see `experiments/results/detection_nodules.md` (CPM on the 48 test
scans of the default phantom, wall time on the 2-core CPU machine).
"""
import ml_collections

from experiments.configs import common

# Planned on the phantom's nodule sizes (3,000 cases' plans, voxels at 2 x 1.5 x 1.5 mm):
# per head level, per axis, two sizes.
PLANNED_ANCHORS = (((2.2, 3.2), (3.0, 4.4), (3.0, 4.4)),
                   ((4.5, 6.5), (6.0, 8.8), (6.0, 8.8)))


def detection_eval(c: ml_collections.ConfigDict) -> None:
  """`c.eval.detection`: window boxes, clustering grids and the operating point."""
  c.eval.detection = ml_collections.ConfigDict()
  c.eval.detection.top_k = 256  # anchors per window before NMS
  c.eval.detection.window_nms_iou = 0.5
  c.eval.detection.window_detections = 32
  c.eval.detection.min_score = 0.01
  c.eval.detection.iou_grid = (0.1, 0.2, 0.3)  # clustering IoU, chosen on validation
  c.eval.detection.min_size_grid_mm = (0.0, 3.0)  # minimum largest side, chosen on validation
  c.eval.detection.target_fp_per_scan = 1.0  # the operating threshold's false positives per scan
  c.eval.detection.score_threshold = 0.5  # used only when there is no validation case
  c.eval.detection.max_detections = 100  # candidates per scan (LUNA16 scores 100)
  c.eval.detection.bootstrap = 1000  # resamples of the scans for the FROC CIs


def nodule_data(c: ml_collections.ConfigDict) -> None:
  """The data, input window and patch sampling of every nodule config, so that the detectors
  and the U-Net + components baseline are compared on the same inputs."""
  c.dataset = "synthetic_nodules"
  c.dataset_kwargs = common.dataset_options("synthetic_nodules")
  c.normalization = "lung_window"
  c.spacing = (2.0, 1.5, 1.5)
  c.patch_size = (32, 48, 48)
  c.flip_axes = (0, 1, 2)
  c.foreground_fraction = 0.5
  c.global_batch_size = 2


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = common.base_config()
  c.task = "detection"
  nodule_data(c)
  c.num_classes = 1  # foreground classes of the detector
  c.class_names = ("nodule",)

  c.model.name = "retina_unet"
  c.model.spatial_dims = 3
  c.model.features = (8, 16, 32, 64)
  c.model.head_levels = (1, 2)
  c.model.anchor_sizes = PLANNED_ANCHORS
  c.model.head_features = 16
  c.model.head_convs = 2
  c.model.norm = "instance"
  c.model.head_norm = "instance"
  c.model.segmentation_head = True
  c.model.dropout = 0.0

  c.detection_loss = ml_collections.ConfigDict()
  c.detection_loss.matcher = "atss"
  c.detection_loss.classification = "bce_hnm"
  c.detection_loss.regression = "giou"
  c.detection_loss.segmentation_weight = 1.0
  c.loss.name = "dice_ce"  # unused: the detection objective replaces it

  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 50
  c.num_steps = 1500
  c.log_every = 50
  c.checkpoint_every = 500

  detection_eval(c)
  # The whole 64x96x96 volume in one window (the network is fully convolutional): one
  # forward pass per case and mirror instead of 12 overlapping windows on this CPU.
  c.eval.roi_size = (64, 96, 96)
  c.eval.overlap = 0.5
  c.eval.batch_size = 1
  c.eval.mirror_axes = (2,)
  c.eval.detection.top_k = 1000
  c.eval.detection.window_detections = 100
  c.eval.report_cases = 3
  c.eval.surface_metrics = False
  c.eval.postprocess = False

  base, _, smoke = variant.partition("_")
  if base == "smoke" or smoke == "smoke":
    c.dataset = "synthetic_nodules/smoke"
    common.smoke_schedule(c)
    c.patch_size = (16, 32, 32)
    c.model.features = (4, 8)
    c.model.head_levels = (1,)
    c.model.anchor_sizes = (((2.0, 4.0), (3.0, 6.0), (3.0, 6.0)),)
    c.model.head_features = 8
    c.model.head_convs = 1
    c.eval.roi_size = ()
    c.eval.batch_size = 2
    c.eval.detection.top_k = 256
    c.eval.detection.window_detections = 32
    c.eval.detection.bootstrap = 20
    c.eval.detection.iou_grid = (0.1, 0.3)
    c.eval.detection.min_size_grid_mm = (0.0,)
    c.eval.mirror_axes = (2,)
    c.eval.report_cases = 1
  if base == "retinanet":
    c.model.segmentation_head = False
    c.detection_loss.segmentation_weight = 0.0
  if variant not in ("", "smoke", "retinanet", "retinanet_smoke"):
    raise ValueError(f"unknown config variant {variant!r}: expected '', 'smoke', 'retinanet' "
                     "or 'retinanet_smoke'")
  return c
