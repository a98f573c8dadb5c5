"""Lesion detection: boxes, anchors, matching, box coding, NMS, box clustering, FROC.

One module per job:

* `boxes`: the canonical layout (3D `(z1, y1, x1, z2, y2, x2)`, 2D `(y1, x1,
  y2, x2)`, half-open voxel extents, array-axis order), IoU / GIoU, voxel <->
  world mm, boxes of an instance map, nnDetection and MONAI layouts;
* `anchors`: anchors per pyramid level and their sizes planned from the
  training boxes (nnDetection);
* `matching`: IoU and ATSS matchers, hard-negative sampling (fixed shapes);
* `coder`: box deltas relative to anchors (Faster R-CNN);
* `nms`: a jit-compiled greedy NMS and its NumPy reference;
* `clustering`: weighted box clustering over windows, mirrors and models (Retina U-Net);
* `froc`: the LUNA16 FROC / CPM with bootstrap CIs, operating point, size bins, case AUROC;
* `iou_metrics`: IoU-matched FROC and COCO-style mAP (nnDetection);
* `losses`: focal / sampled BCE / GIoU / smooth-L1 per anchor;
* `objective`: `detection_loss`, the whole training objective of a (Retina U-)Net.

The model is `medjax.models.RetinaUNet` (`medjax.models.anchors_for` gives its anchors).
"""
from medjax.detection.anchors import (AnchorPlan, AnchorSet, grid_anchors, mean_best_iou,
                                      multilevel_anchors, plan_anchors)
from medjax.detection.boxes import (aligned_box_giou, aligned_box_iou, box_centers, box_giou,
                                    box_iou, box_sizes, box_volume, boxes_from_instances,
                                    boxes_inside, boxes_to_world, centers_to_world, clip_boxes,
                                    from_monai, from_nndetection, to_monai, to_nndetection,
                                    voxel_to_world, world_boxes_to_voxel, world_to_voxel)
from medjax.detection.clustering import weighted_box_clustering
from medjax.detection.coder import decode_boxes, encode_boxes
from medjax.detection.froc import (FrocResult, ScanFindings, case_auroc, froc_luna16,
                                   operating_point)
from medjax.detection.iou_metrics import coco_map, froc_iou
from medjax.detection.matching import atss_matcher, hard_negative_masks, iou_matcher
from medjax.detection.nms import batched_nms, nms, nms_numpy
from medjax.detection.objective import DetectionLossConfig, detection_loss

__all__ = [
    "box_iou", "box_giou", "aligned_box_iou", "aligned_box_giou", "box_centers", "box_sizes",
    "box_volume", "clip_boxes", "boxes_inside", "boxes_from_instances", "voxel_to_world",
    "world_to_voxel", "boxes_to_world", "world_boxes_to_voxel", "centers_to_world",
    "to_nndetection", "from_nndetection", "to_monai", "from_monai",
    "AnchorSet", "AnchorPlan", "grid_anchors", "multilevel_anchors", "plan_anchors",
    "mean_best_iou", "iou_matcher", "atss_matcher", "hard_negative_masks",
    "encode_boxes", "decode_boxes", "nms", "batched_nms", "nms_numpy",
    "weighted_box_clustering", "ScanFindings", "FrocResult", "froc_luna16", "operating_point",
    "case_auroc", "froc_iou", "coco_map", "DetectionLossConfig", "detection_loss",
]
