"""Deterministic synthetic data that stands in for real CT (generated locally).

* `organ_ct`: a deformed organ with small hypodense tumours, CT noise and
  partial-volume blur (`make_volume`, `make_slice`).
* `organ_patches`: background / organ / tumour patches cut from it, for patch
  classification.
* `chest_ct`: a chest with lungs, branching vessels and solid / ground-glass
  nodules sized as LUNA16's, for lesion detection (`make_case`).
"""
