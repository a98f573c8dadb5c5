"""Patch classification data (synthetic_organs/patches2d, patches3d): determinism,
disjoint splits, balance, centre classes, contrast and noise as in the volumes."""
import numpy as np
import pytest
from scipy import ndimage

from medjax.data.builders import datasets
from medjax.data.builders.synthetic_organs import SEED_OFFSETS, SyntheticOrgans
from medjax.data.phantoms import organ_ct, organ_patches
from medjax.data.pipeline import loaders
from medjax.errors import InputError

GEOMETRY_2D = dict(ndim=2, shape=(128, 128), spacing=(0.8, 0.8), patch_size=(32, 32))
TINY = dict(shape=(48, 48), patch_size=(16, 16),
            split_sizes={"train": 12, "validation": 3, "test": 6})


@pytest.fixture(scope="module")
def default_2d():
  """90 patches of the default 2D geometry (30 per class), train seeds."""
  return list(organ_patches.generate(0, 90, per_image=2, **GEOMETRY_2D))


@pytest.fixture(scope="module")
def tiny_splits(data_dir):
  return {split: [s[i] for i in range(len(s))]
          for split in ("train", "validation", "test")
          for s in [datasets.load_source("synthetic_organs/patches2d", split, data_dir, **TINY)]}


def test_builtin_patch_configs():
  configs = {c.name: c for c in SyntheticOrgans.BUILDER_CONFIGS}
  for name, patch in (("patches2d", (32, 32)), ("patches3d", (16, 32, 32))):
    assert configs[name].patch_size == patch
    assert dict(configs[name].split_sizes) == {"train": 3000, "validation": 500, "test": 1000}
  assert organ_patches.class_counts(3000) == (1000, 1000, 1000)
  assert organ_patches.class_counts(7) == (3, 2, 2)


def test_generation_is_deterministic_and_balanced(default_2d):
  again = list(organ_patches.generate(0, 90, per_image=2, **GEOMETRY_2D))
  for a, b in zip(default_2d, again, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["label"] == b["label"] and a["image_index"] == b["image_index"]
  assert np.bincount([p["label"] for p in default_2d]).tolist() == [30, 30, 30]
  # every image used gives 2 of each class: 15 images
  assert len({p["image_index"] for p in default_2d}) == 15
  assert all(p["image"].shape == (32, 32) and p["image"].dtype == np.float32 for p in default_2d)


def test_patches_are_cut_from_the_synthetic_slices_unchanged(default_2d):
  """Same pixels as the slice of that seed: the volumes' contrast, blur and noise."""
  for patch in default_2d[:12]:
    image, label, lesion = organ_ct.make_slice(patch["image_index"], (128, 128), (0.8, 0.8))
    assert lesion == 1  # slices without a tumour are skipped
    box = tuple(slice(c - 16, c + 16) for c in patch["centre"])
    np.testing.assert_array_equal(patch["image"], image[box])
    np.testing.assert_array_equal(patch["mask"], label[box])


def test_the_centre_has_the_labelled_class(default_2d):
  half = 8  # centre region: the central 16x16
  for p in default_2d:
    mask, image = p["mask"], p["image"]
    assert mask[16, 16] == p["label"]
    region = mask[16 - half:16 + half, 16 - half:16 + half]
    if p["label"] in (0, 1):
      assert not (region == 2).any()
    if p["label"] == 0:
      assert image[16, 16] > -500  # in the body, not air
  # background centres lie near the organ: most background patches show some organ
  background = [p for p in default_2d if p["label"] == 0]
  assert np.mean([(p["mask"] > 0).any() for p in background]) > 0.5


def test_tumour_patches_are_as_hard_as_the_volumes(default_2d):
  """Contrast (median organ - median tumour) 20-50 HU under a noise std of 12-35 HU
  in the organ, measured as tests/test_data_synthetic.py measures the volumes."""
  tumour = [p for p in default_2d if p["label"] == 2]
  contrasts, noises = [], []
  for p in tumour:
    organ = ndimage.binary_erosion(p["mask"] == 1, iterations=2)
    if organ.sum() < 50:
      continue
    contrasts.append(np.median(p["image"][organ]) - np.median(p["image"][p["mask"] == 2]))
    noises.append(p["image"][organ].std())
  assert len(contrasts) >= 20
  contrast, noise = np.median(contrasts), np.median(noises)
  assert 15 <= contrast <= 50, contrast
  assert 12 <= noise <= 35, noise
  assert contrast < 3 * noise  # of the order of the noise, as in real CT
  # the centre pixel alone does not separate them: about a third of the tumour
  # centres are brighter than the darkest tenth of the organ centres
  centre = {c: np.array([p["image"][16, 16] for p in default_2d if p["label"] == c])
            for c in (1, 2)}
  assert np.mean(centre[2] > np.percentile(centre[1], 10)) > 0.2


def test_3d_patches():
  patches = list(organ_patches.generate(
      7, 6, ndim=3, shape=(16, 48, 48), spacing=(2.5, 0.8, 0.8), patch_size=(8, 16, 16),
      per_image=2))
  assert [p["label"] for p in patches] == [0, 0, 1, 1, 2, 2]
  for p in patches:
    assert p["image"].shape == p["mask"].shape == (8, 16, 16)
    assert p["mask"][4, 8, 8] == p["label"]


def test_builder_splits_are_disjoint_and_balanced(tiny_splits):
  sizes = {"train": 12, "validation": 3, "test": 6}
  seen = set()
  for split, examples in tiny_splits.items():
    assert len(examples) == sizes[split]
    counts = np.bincount([int(ex["label"]) for ex in examples], minlength=3)
    assert counts.tolist() == list(organ_patches.class_counts(sizes[split]))
    assert sorted(ex["case"] for ex in examples) == [
        f"{split}_{i:05d}".encode() for i in range(sizes[split])]
    assert all(ex["source"].startswith(split.encode()) for ex in examples)
    for ex in examples:
      assert ex["image"].shape == (16, 16) and ex["mask"][8, 8] == ex["label"]
      np.testing.assert_allclose(ex["spacing"], [0.8, 0.8])
    digests = {ex["image"].tobytes() for ex in examples}
    assert not digests & seen
    seen |= digests
  # a test patch comes from the slice of seed SEED_OFFSETS["test"] + its source index
  ex = next(e for e in tiny_splits["test"] if e["case"] == b"test_00000")
  index = int(ex["source"].decode().split("_")[1])
  image, _, _ = organ_ct.make_slice(SEED_OFFSETS["test"] + index, (48, 48), (0.8, 0.8))
  box = tuple(slice(c - 8, c + 8) for c in ex["centre"])
  np.testing.assert_array_equal(ex["image"], image[box])


def test_classification_batches_read_patch_labels_in_3d():
  rng = np.random.default_rng(0)
  source = [{"image": rng.normal(50, 20, (4, 6, 6)).astype(np.float32), "label": np.int64(i % 3),
             "case": f"p{i}"} for i in range(6)]
  norm = loaders.fixed_window(50.0, 125.0)
  batches = list(loaders.classification_batches(
      source, global_batch_size=6, seed=0, num_steps=1, label_key="label", normalize=norm,
      flip_axes=(1, 2), image_shape=(4, 6, 6)))
  assert batches[0]["image"].shape == (6, 4, 6, 6, 1)
  assert sorted(batches[0]["label"].tolist()) == [0, 0, 1, 1, 2, 2]
  # fixed window: (x - 50) / 125, not the image's own z-score
  _, image, _ = next(loaders.classification_images(source, label_key="label", normalize=norm))
  np.testing.assert_allclose(image[..., 0], (np.clip(source[0]["image"], -200, 300) - 50) / 125,
                             rtol=1e-5)
  with pytest.raises(InputError, match=r"p0: image shape \(4, 6, 6\); expected \(32, 32\)"):
    list(loaders.classification_batches(source, global_batch_size=2, seed=0, num_steps=1,
                                         label_key="label", image_shape=(32, 32)))
  with pytest.raises(InputError, match="p0: no 'lesion' feature"):
    list(loaders.classification_batches(source, global_batch_size=2, seed=0, num_steps=1))
  with pytest.raises(InputError, match="axis 3 out of range for 3D images"):
    list(loaders.classification_batches(source, global_batch_size=2, seed=0, num_steps=1,
                                         label_key="label", flip_axes=(3,)))


def test_bad_patch_config_is_refused():
  with pytest.raises(InputError, match="patch_size"):
    datasets.get_builder("synthetic_organs/patches2d", "/tmp/unused", patch_size=(200, 200))
