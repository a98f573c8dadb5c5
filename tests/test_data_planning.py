"""Dataset fingerprint and experiment plan (medjax.data.preprocessing.fingerprint, medjax.data.preprocessing.planning)."""
import json

import numpy as np
import pytest

from medjax.data.preprocessing import fingerprint, planning
from medjax.errors import InputError
from medjax.models.unet import anisotropic_plan


def _fingerprint(spacings, shapes, names=("CT",), relative_size=1.0):
  stats = {"mean": 50.0, "std": 25.0, "median": 48.0, "min": -300.0, "max": 900.0,
           "percentile_00_5": -100.0, "percentile_99_5": 200.0, "num_samples": 1000}
  return {"channel_names": list(names), "num_cases": len(spacings),
          "spacings": [list(s) for s in spacings], "shapes_after_crop": [list(s) for s in shapes],
          "median_spacing": np.median(spacings, 0).tolist(), "median_shape": np.median(shapes, 0).tolist(),
          "median_relative_size_after_crop": relative_size, "intensity": [dict(stats) for _ in names]}


def test_case_fingerprint_crops_and_samples_foreground():
  image = np.zeros((6, 8, 10, 2), np.int16)
  image[1:5, 2:7, 3:9, 0] = 10
  image[2:4, 3:5, 4:6, 0] = 100
  image[1:5, 2:7, 3:9, 1] = -7
  label = np.zeros((6, 8, 10), np.uint8)
  label[2:4, 3:5, 4:6] = 1
  fp = fingerprint.case_fingerprint(image, label, (2.0, 1.0, 0.5), seed=3)
  assert fp["shape"] == [6, 8, 10] and fp["shape_after_crop"] == [4, 5, 6]
  assert fp["relative_size_after_crop"] == pytest.approx(120 / 480)
  assert fp["num_foreground_voxels"] == 8
  assert len(fp["foreground_samples"][0]) == fingerprint.SAMPLES_PER_CASE
  assert set(fp["foreground_samples"][0]) == {100.0} and set(fp["foreground_samples"][1]) == {-7.0}
  assert fp["foreground_min"] == [100.0, -7.0] and fp["foreground_max"] == [100.0, -7.0]
  json.dumps(fp)
  empty = fingerprint.case_fingerprint(image, np.zeros_like(label), (2.0, 1.0, 0.5))
  assert empty["foreground_samples"] == [[], []] and empty["foreground_min"] == [None, None]


def test_dataset_fingerprint_statistics_by_hand():
  cases = [{"shape": [10, 20, 20], "spacing": s, "shape_after_crop": c, "relative_size_after_crop": r,
            "num_foreground_voxels": 500, "foreground_samples": [v], "foreground_min": [min(v, default=None)],
            "foreground_max": [max(v, default=None)]}
           for s, c, r, v in [([1.0, 0.5, 0.5], [10, 20, 20], 1.0, list(range(0, 500))),
                              ([3.0, 0.7, 0.7], [8, 18, 16], 0.5, list(range(500, 1000))),
                              ([2.0, 0.6, 0.9], [9, 16, 20], 0.6, [])]]
  fp = fingerprint.dataset_fingerprint(cases, ["CT"])
  assert fp["median_spacing"] == [2.0, 0.6, 0.7] and fp["median_shape"] == [9.0, 18.0, 20.0]
  assert fp["median_relative_size_after_crop"] == 0.6
  stats = fp["intensity"][0]
  # The pooled samples are 0..999: mean 499.5, percentiles by linear interpolation.
  assert stats["mean"] == 499.5 and stats["median"] == 499.5 and stats["num_samples"] == 1000
  assert stats["std"] == pytest.approx(np.sqrt((1000 ** 2 - 1) / 12))
  assert stats["percentile_00_5"] == pytest.approx(4.995) and stats["percentile_99_5"] == pytest.approx(994.005)
  assert "foreground_samples" not in json.dumps(fp)
  with pytest.raises(InputError, match="case 0 has 1 channels, channel_names has 2"):
    fingerprint.dataset_fingerprint(cases, ["T1", "T2"])


def test_target_spacing_median_and_tenth_percentile_rule():
  iso = _fingerprint([(1.0, 0.8, 0.8), (1.5, 0.7, 0.7), (1.2, 0.9, 0.9)], [(200, 512, 512)] * 3)
  assert planning.target_spacing(iso) == ([1.2, 0.8, 0.8], None)
  # Anisotropic spacing and voxels: z gets the 10th percentile of [1, 4, 5 x 8] = 1 + 0.9 * 3.
  z = [1.0, 4.0] + [5.0] * 8
  aniso = _fingerprint([(s, 0.8, 0.8) for s in z], [(80, 512, 512)] * 10)
  spacing, axis = planning.target_spacing(aniso)
  assert axis == 0 and spacing == pytest.approx([3.7, 0.8, 0.8])
  # ... but never finer than the other axes' coarsest spacing.
  fine = _fingerprint([(s, 0.8, 0.8) for s in [0.6, 0.6] + [5.0] * 8], [(80, 512, 512)] * 10)
  assert planning.target_spacing(fine)[0] == pytest.approx([0.8 + 1e-5, 0.8, 0.8])
  # Thick slices but many of them (400 * 3 > 512): the median stays.
  many = _fingerprint([(5.0, 0.8, 0.8)] * 3, [(400, 512, 512)] * 3)
  assert planning.target_spacing(many) == ([5.0, 0.8, 0.8], None)


def test_plan_anisotropic_pools_inplane_first_and_fits_the_budget():
  fp = _fingerprint([(5.0, 0.8, 0.8)] * 4, [(80, 512, 512)] * 4)
  plan = planning.make_plan(fp, num_classes=3)
  assert plan["target_spacing"] == [5.0, 0.8, 0.8] and plan["anisotropic_axis"] == 0
  patch, pools, kernels = plan["patch_size"], plan["pool_sizes"], plan["kernel_sizes"]
  assert np.prod(patch) <= plan["max_patch_voxels"] == 128 ** 3 // 2
  # z spacing 5 > 2 x 0.8 and > 2 x 1.6: in-plane-only pooling and 1x3x3 windows at the top two levels.
  assert pools[:2] == [[1, 2, 2], [1, 2, 2]] and kernels[:2] == [[1, 3, 3], [1, 3, 3]]
  assert pools[2][0] == 2 and kernels[2] == [3, 3, 3]
  assert plan["num_levels"] == len(kernels) == len(pools) + 1
  total = np.prod(pools, axis=0)
  assert all(p % t == 0 for p, t in zip(patch, total))
  assert all(p // t >= planning.MIN_FEATURE_MAP for p, t in zip(patch, total))
  assert patch[0] <= 80  # never longer than the median shape along z
  assert plan["normalization"] == [{"scheme": "ct", "clip": [-100.0, 200.0], "mean": 50.0, "std": 25.0}]
  assert json.loads(json.dumps(plan)) == plan


def test_topology_agrees_with_unet_anisotropic_plan():
  pools, kernels, divisor = planning.pool_and_kernel_sizes((2.5, 0.8, 0.8), (256, 256, 256), max_levels=4)
  want_kernels, want_pools = anisotropic_plan((2.5, 0.8, 0.8), 4)
  assert kernels == [list(k) for k in want_kernels] and pools == [list(p) for p in want_pools]
  assert divisor == [4, 8, 8]
  # A small axis stops pooling at a feature map of 4; the others go on.
  pools, _, divisor = planning.pool_and_kernel_sizes((1.0, 1.0, 1.0), (16, 64, 64))
  assert divisor == [4, 16, 16] and pools[-1] == [1, 2, 2]


def test_budget_and_2d():
  fp = _fingerprint([(1.0, 1.0, 1.0)] * 2, [(256, 256, 256)] * 2, names=("T2",))
  small = planning.make_plan(fp, num_classes=2, max_patch_voxels=64 ** 3)
  assert np.prod(small["patch_size"]) <= 64 ** 3 and small["patch_size"] == [64, 64, 64]
  assert small["pool_sizes"] == [[2, 2, 2]] * 4
  two_d = planning.make_plan(_fingerprint([(0.5, 0.5)] * 2, [(600, 300)] * 2), num_classes=2)
  assert np.prod(two_d["patch_size"]) <= 512 ** 2 and len(two_d["patch_size"]) == 2
  assert two_d["patch_size"][1] <= 320


def test_patch_size_override_is_validated():
  fp = _fingerprint([(5.0, 0.8, 0.8)] * 2, [(80, 512, 512)] * 2)
  plan = planning.make_plan(fp, num_classes=2, patch_size=(16, 128, 96))
  assert plan["patch_size"] == [16, 128, 96]
  assert all(p % t == 0 for p, t in zip(plan["patch_size"], np.prod(plan["pool_sizes"], axis=0)))
  with pytest.raises(InputError, match=r"patch_size \[18, 128, 96\]: .*multiple.*e.g. \[20, 128, 96\]"):
    planning.make_plan(fp, num_classes=2, patch_size=(18, 128, 96))
  with pytest.raises(InputError, match="expected 3 positive integers"):
    planning.make_plan(fp, num_classes=2, patch_size=(128, 96))
  with pytest.raises(InputError, match="expected 3 positive integers"):
    planning.make_plan(fp, num_classes=2, patch_size=(16, 0, 96))


def test_normalization_schemes_from_channel_names():
  fp = _fingerprint([(1.0, 1.0, 1.0)] * 2, [(50, 50, 50)] * 2,
                    names=("ct", "T1", "noNorm", "NONE", "FLAIR"), relative_size=0.5)
  specs = planning.make_plan(fp, num_classes=2)["normalization"]
  assert [s["scheme"] for s in specs] == ["ct", "zscore", "none", "none", "zscore"]
  assert specs[1] == {"scheme": "zscore", "use_nonzero_mask": True}  # cropping removed half
  fp["median_relative_size_after_crop"] = 0.9
  assert planning.make_plan(fp, num_classes=2)["normalization"][1]["use_nonzero_mask"] is False
  fp["intensity"][0] = {k: None for k in fp["intensity"][0]}
  with pytest.raises(InputError, match="channel 'ct': CT normalisation needs foreground"):
    planning.make_plan(fp, num_classes=2)
