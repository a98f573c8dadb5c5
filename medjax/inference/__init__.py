"""Inference: from a trained run to predictions, in one place (as nnU-Net's `inference/`).

Which module does what, from the array to the file:

* `windows`: `sliding_window(predict_fn, volume, roi_size, ...)`, a network
  trained on patches applied to a whole volume with Gaussian-weighted
  overlapping windows and test-time mirroring; `WindowPredictor`, one network
  as a function of a raw image (normalise, slide, blend).
* `cascade`: `cascade_predict`, the organ -> lesion rule of cascaded FCNs.
* `restore`: a trained workdir's config, eval-mode model and latest parameters.
* `run_predictor` (model side): a trained run, cascade or deep ensemble as a
  function of a raw image array (`load_predictor`, `load_ensemble`,
  `RunPredictor`): the plan's preprocessing and its inverse, TTA, MC dropout;
  evaluation and `experiments.predict` share it.
* `predict_files` (file side): image files and DICOM series in, NIfTI / DICOM SEG
  segmentations and summaries out (`predict_folder`, `experiments.predict`).
* `detect`: lesion detection with a RetinaNet / Retina U-Net (`WindowDetector`):
  windows, per-window decoding, top-k and jit NMS, mirror TTA, ensemble members,
  weighted box clustering, the thresholds of `detection_thresholds.json`.
* `predict_detections` (file side of `detect`): per-case detection JSON, the LUNA16
  `candidates.csv` and a boxes NIfTI (`experiments.predict` on a detection run).

The array-level names of `windows` and `cascade` are re-exported here
(`medjax.inference.sliding_window`); `run_predictor`, `restore` and
`predict_files` read workdirs and load on import only when asked for.
"""
from medjax.inference.cascade import cascade_predict, foreground_probability
from medjax.inference.windows import (ACCUMULATE, OUTPUTS, ImageFn, PredictFn, WindowPredictor,
                                      accumulator_bytes, importance_map, importance_weights,
                                      slab_axis, sliding_window, window_progress, window_starts)

__all__ = ["ACCUMULATE", "OUTPUTS", "ImageFn", "PredictFn", "WindowPredictor",
           "accumulator_bytes", "cascade_predict", "foreground_probability", "importance_map",
           "importance_weights", "sliding_window", "slab_axis", "window_progress",
           "window_starts"]
