"""Synthetic CT generator: determinism, tumour fraction, anatomy, contrast, noise."""
import numpy as np
import pytest
from scipy import ndimage

from medjax.data.phantoms import organ_ct

TINY = (16, 24, 24)


def test_class_names():
  assert organ_ct.CLASS_NAMES == ("background", "organ", "tumour")


def test_volume_is_deterministic_per_seed():
  a_image, a_label = organ_ct.make_volume(7, shape=TINY)
  b_image, b_label = organ_ct.make_volume(7, shape=TINY)
  c_image, c_label = organ_ct.make_volume(8, shape=TINY)
  np.testing.assert_array_equal(a_image, b_image)
  np.testing.assert_array_equal(a_label, b_label)
  assert not np.array_equal(a_image, c_image)
  assert not np.array_equal(a_label, c_label)
  assert a_image.dtype == np.float32 and a_label.dtype == np.uint8
  assert a_image.shape == a_label.shape == TINY


def _tumours_inside_organ(label):
  tumour = label == 2
  # Every neighbour of a tumour voxel is organ or tumour: tumours never touch
  # the organ border.
  return bool(np.all(label[ndimage.binary_dilation(tumour)] > 0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_volume_anatomy_contrast_and_noise(seed):
  image, label = organ_ct.make_volume(seed)
  assert image.shape == (64, 96, 96)
  fraction = np.mean(label == 2)
  assert 0.003 <= fraction <= 0.015
  assert 0.03 < np.mean(label == 1) < 0.5
  assert _tumours_inside_organ(label)
  parts, count = ndimage.label(label == 2)
  assert 1 <= count <= 3
  assert np.median(image[[0, -1]][:, :3, :3]) < -900  # air in the corners
  organ, tumour = image[label == 1], image[label == 2]
  contrast = np.median(organ) - np.median(tumour)
  assert 20 <= contrast <= 50, contrast
  core = ndimage.binary_erosion(label == 1, iterations=2)
  assert 12 <= image[core].std() <= 35
  # Hard, as in real CT: the contrast is of the order of the noise.
  assert contrast < 3 * image[core].std()


def test_tumour_fraction_enforced_over_seeds_and_small_shapes():
  fractions = []
  for seed in range(12):
    _, label = organ_ct.make_volume(seed, shape=TINY)
    fractions.append(np.mean(label == 2))
    assert _tumours_inside_organ(label)
  assert 0.003 <= min(fractions) and max(fractions) <= 0.015


def test_volume_is_physical_in_anisotropic_spacing():
  # The organ is measured in mm: its extent along z (2.5 mm voxels) covers
  # fewer voxels than in-plane (0.8 mm) relative to its radius.
  _, label = organ_ct.make_volume(3)
  z, y, x = np.nonzero(label > 0)
  extent_mm = np.array([np.ptp(z) * 2.5, np.ptp(y) * 0.8, np.ptp(x) * 0.8])
  assert 60 <= extent_mm[0] <= 140  # 2 x (40-60) mm, deformed
  assert np.all((35 <= extent_mm[1:]) & (extent_mm[1:] <= 80))


def test_slices_lesion_flag_and_balance():
  flags = []
  for seed in range(40):
    image, label, lesion = organ_ct.make_slice(seed, shape=(64, 64))
    assert image.shape == label.shape == (64, 64)
    assert lesion == int((label == 2).any())
    if lesion:
      assert 0.003 <= np.mean(label == 2) <= 0.015
      assert _tumours_inside_organ(label)
    flags.append(lesion)
  assert 0.25 <= np.mean(flags) <= 0.75
  a = organ_ct.make_slice(5)
  b = organ_ct.make_slice(5)
  np.testing.assert_array_equal(a[0], b[0])
  assert a[2] == b[2]
