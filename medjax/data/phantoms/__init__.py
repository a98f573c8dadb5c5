"""Deterministic synthetic data that stands in for real CT (generated locally).

* `organ_ct`: a deformed organ with small hypodense tumours, CT noise and
  partial-volume blur (`make_volume`, `make_slice`).
* `organ_patches`: background / organ / tumour patches cut from it, for patch
  classification.
"""
