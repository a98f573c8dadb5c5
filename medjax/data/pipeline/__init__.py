"""The input pipeline: from a random-access source to training batches on the device.

* `loaders`: resumable, multi-host grain pipelines (`train_batches`, `eval_cases`,
  `classification_batches`, `classification_images`).
* `patches`: nnU-Net's foreground-oversampled patch sampling.
* `detection_batches`: detection patches with their visible boxes, padded to `max_boxes`.
* `case_cache`: training cases decoded on demand, kept up to a byte budget, so a
  dataset larger than RAM trains.
* `augment`: nnU-Net's augmentation in JAX, run on the device inside the training step.
* `transforms`: small named ops on numpy arrays (`normalize_ct`, `random_flip`,
  `check_image`, `check_labels`).
* `crop`: organ bounding boxes and `OrganCropSource` (a cascade's stage-2 cases).
"""
