"""Synthetic chest CT for nodule detection: LUNA16 statistics, tissues, vessels vs nodules,
geometry."""
import numpy as np
import pytest
from scipy import ndimage

from medjax.data.phantoms import chest_ct

# Seeds whose nodule plans cover every kind x placement, and a nodule-free case (chosen from
# `nodule_plan`, which is cheap: 0 solid juxtapleural, 1 none, 5 ground-glass juxtavascular,
# 6 solid isolated, 9 solid juxtavascular, 27 ground-glass juxtapleural and isolated).
SEEDS = (0, 1, 5, 6, 9, 27)
SMALL = (24, 48, 48)


@pytest.fixture(scope="module")
def cases():
  return {seed: chest_ct.make_case(seed) for seed in SEEDS}


def _tissue(case, name):
  return case.tissues == chest_ct.TISSUES.index(name)


def test_cited_luna16_counts_are_consistent():
  # 1,186 nodules in 888 scans; the per-scan counts add up to the same nodules.
  assert sum(chest_ct.DIAMETER_BIN_COUNTS) == 1186
  assert sum(chest_ct.NODULES_PER_SCAN.values()) == 888
  assert sum(k * v for k, v in chest_ct.NODULES_PER_SCAN.items()) == 1186
  assert len(chest_ct.DIAMETER_BIN_EDGES_MM) == len(chest_ct.DIAMETER_BIN_COUNTS) + 1


def test_a_third_of_the_cases_have_no_nodule():
  counts = np.array([len(chest_ct.nodule_plan(seed)) for seed in range(3000)])
  assert abs(np.mean(counts == 0) - 287 / 888) < 0.025
  assert counts.max() == chest_ct.MAX_NODULES
  # LUNA16's mean of 1.34 nodules per scan, a little less after capping at 6.
  assert 1.2 < counts.mean() < 1.4


def test_sizes_follow_the_luna16_histogram():
  diameters = np.concatenate([[n.diameter_mm for n in chest_ct.nodule_plan(seed)]
                              for seed in range(3000)])
  assert diameters.size > 3500
  assert diameters.min() >= 3.0 and diameters.max() <= 32.3
  counts, _ = np.histogram(diameters, chest_ct.DIAMETER_BIN_EDGES_MM)
  cited = np.asarray(chest_ct.DIAMETER_BIN_COUNTS) / 1186
  np.testing.assert_allclose(counts / diameters.size, cited, atol=0.02)
  assert abs(np.median(diameters) - 6.4) < 0.4  # LUNA16: median 6.4 mm, mean 8.3 mm
  assert abs(diameters.mean() - 8.3) < 0.5
  kinds = [n.kind for seed in range(3000) for n in chest_ct.nodule_plan(seed)]
  assert abs(np.mean(np.array(kinds) == "ground_glass") - chest_ct.GROUND_GLASS_SHARE) < 0.03


def test_case_is_deterministic_per_seed():
  a, b, c = (chest_ct.make_case(seed, SMALL) for seed in (6, 6, 7))
  np.testing.assert_array_equal(a.image, b.image)
  np.testing.assert_array_equal(a.instances, b.instances)
  np.testing.assert_array_equal(a.affine, b.affine)
  assert a.nodules == b.nodules and a.small_nodules == b.small_nodules
  assert not np.array_equal(a.image, c.image)
  assert a.image.dtype == np.float32 and a.instances.dtype == np.int16
  assert a.image.shape == a.instances.shape == a.tissues.shape == SMALL


def test_tissue_intensities(cases):
  for case in cases.values():
    core = {name: ndimage.binary_erosion(_tissue(case, name))
            for name in ("fat", "soft_tissue", "bone", "lung")}
    assert -900 < np.median(case.image[core["lung"]]) < -800
    assert -130 < np.median(case.image[core["fat"]]) < -70
    assert 20 < np.median(case.image[core["soft_tissue"]]) < 70
    assert np.median(case.image[core["bone"]]) > 200
    assert np.median(case.image[_tissue(case, "air")]) < -950
    # Lungs fill a good part of the chest, bone is a small part.
    assert 0.15 < _tissue(case, "lung").mean() < 0.5
    assert 0.01 < _tissue(case, "bone").mean() < 0.08


def test_noise_level_is_that_of_ct(cases):
  for case in cases.values():
    assert 20 <= case.noise_std <= 40
    muscle = ndimage.binary_erosion(_tissue(case, "soft_tissue") & (np.abs(case.image - 45) < 200),
                                    iterations=2)
    assert muscle.sum() > 5000
    assert abs(case.image[muscle].std() - case.noise_std) < 0.15 * case.noise_std


def test_vessel_cross_sections_look_like_small_solid_nodules(cases):
  """In a single axial slice a vessel is a blob of nodule size and nodule density."""
  solid_small, ground_glass = [], []
  for case in cases.values():
    spacing = case.spacing
    blobs = []
    for z in range(case.image.shape[0]):
      parts, count = ndimage.label(_tissue(case, "vessel")[z])
      if count:
        index = np.arange(1, count + 1)
        area = ndimage.sum(np.ones_like(parts), parts, index) * spacing[1] * spacing[2]
        peak = ndimage.maximum(case.image[z], parts, index)
        blobs.append(np.stack([2 * np.sqrt(area / np.pi), peak], axis=1))
    blobs = np.concatenate(blobs)
    nodule_sized = blobs[(blobs[:, 0] >= 3) & (blobs[:, 0] <= 10)]
    assert len(nodule_sized) > 200  # hundreds of candidates per scan
    assert -120 < np.median(nodule_sized[:, 1]) < 60  # blood, like a solid nodule
    for nodule in case.nodules:
      centre_hu = case.image[tuple(int(round(v)) for v in nodule.centre)]
      if nodule.kind == "solid" and nodule.diameter_mm < 8:
        solid_small.append(centre_hu)
      if nodule.kind == "ground_glass":
        ground_glass.append(centre_hu)
  assert len(solid_small) >= 4 and len(ground_glass) >= 3
  assert -200 < np.median(solid_small) < 100
  # Ground glass: hundreds of HU above lung, hundreds below solid tissue.
  assert all(-700 < hu < -250 for hu in ground_glass)


def test_lesions_are_a_fraction_of_a_percent(cases):
  fractions = []
  for seed, case in cases.items():
    fraction = np.mean(case.instances > 0)
    assert (fraction > 0) == bool(case.nodules)
    assert fraction < 0.01
    fractions.append(fraction)
  assert 1e-5 < np.mean(fractions) < 3e-3
  assert not cases[1].nodules and not cases[1].instances.any()  # a nodule-free case


def test_instances_match_the_drawn_nodules(cases):
  seen = set()
  for case in cases.values():
    assert sorted(np.unique(case.instances)) == list(range(len(case.nodules) + 1))
    lung_like = _tissue(case, "lung") | (case.tissues >= chest_ct.TISSUES.index("vessel"))
    for number, nodule in enumerate(case.nodules, start=1):
      mask = case.instances == number
      seen.add((nodule.kind, nodule.placement))
      assert not nodule.redrawn
      assert mask[tuple(int(round(v)) for v in nodule.centre)] or nodule.placement == "juxtapleural"
      volume = mask.sum() * np.prod(case.spacing)
      if nodule.diameter_mm >= 5:
        assert 0.8 < (6 * volume / np.pi) ** (1 / 3) / nodule.diameter_mm < 1.15
      near = ndimage.binary_dilation(mask)
      if nodule.placement == "juxtapleural":
        assert (near & ~lung_like).any()  # touches the pleura
      if nodule.placement == "juxtavascular":
        assert (near & _tissue(case, "vessel")).any()
      # Wholly inside the field of view and inside the lungs.
      assert not (mask & ~lung_like).any()
    for centre, diameter in case.small_nodules:
      assert 1.5 <= diameter <= 3.0 and case.instances[tuple(int(round(v)) for v in centre)] == 0
  assert seen == {(k, p) for k in chest_ct.NODULE_KINDS for p in chest_ct.PLACEMENTS}


def test_affine_is_a_ct_series_in_ras():
  affine = chest_ct.array_affine((64, 96, 96), (2.0, 1.5, 1.5), (10.0, -20.0, -150.0))
  middle = np.array([31.5, 47.5, 47.5, 1.0])
  np.testing.assert_allclose((affine @ middle)[:3], [10.0, -20.0, -150.0])
  # axis 0 superior, axis 1 posterior (-y), axis 2 to the patient's left (-x), at the spacing
  np.testing.assert_allclose(affine[:3, :3], [[0, 0, -1.5], [0, -1.5, 0], [2.0, 0, 0]])


def test_small_field_of_view_keeps_nodules_inside():
  for seed in (6, 9, 27):
    case = chest_ct.make_case(seed, SMALL)
    planned = chest_ct.nodule_plan(seed)
    assert len(case.nodules) <= len(planned)
    for number, nodule in enumerate(case.nodules, start=1):
      where = np.argwhere(case.instances == number)
      assert where.size
      match = [p for p in planned if p.kind == nodule.kind and p.placement == nodule.placement]
      assert nodule.diameter_mm <= max(p.diameter_mm for p in match) + 1e-9
