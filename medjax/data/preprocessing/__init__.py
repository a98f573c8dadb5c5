"""Planning and preprocessing a dataset as nnU-Net does (Isensee et al., Nature Methods 2021).

* `fingerprint`: the dataset fingerprint (spacings, shapes, foreground intensities).
* `planning`: the experiment plan (target spacing, patch size, topology, normalisation).
* `resampling`, `normalization`: the two operations a plan applies per case.
* `apply_plan`: `preprocess_case` (crop -> normalise -> resample under a plan),
  `preprocess_for_inference`, and the inverse `to_native`.
"""
