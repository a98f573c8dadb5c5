"""Transforms, nnU-Net patch sampling and the resumable multi-host grain pipelines."""
import numpy as np
import pytest

from medjax.data.phantoms import organ_ct
from medjax.data.pipeline import loaders, patches, transforms
from medjax.errors import InputError

PATCH = (8, 12, 12)


@pytest.fixture(scope="module")
def cases():
  out = []
  for seed in range(3):
    image, label = organ_ct.make_volume(seed, shape=(16, 24, 24))
    out.append({"image": image, "label": label, "spacing": np.array([2.5, 0.8, 0.8], np.float32),
                "case": f"train_{seed}".encode()})
  return out


@pytest.fixture(scope="module")
def slices():
  out = []
  for seed in range(10):
    image, label, lesion = organ_ct.make_slice(seed, shape=(32, 32))
    out.append({"image": image, "label": label, "lesion": lesion, "case": f"s{seed}"})
  return out


# ---------------------------------------------------------------- transforms

def test_normalize_ct_clips_and_zscores():
  image = np.array([-1000.0, -200.0, 50.0, 300.0, 2000.0], np.float32)
  out = transforms.normalize_ct(image)
  clipped = np.array([-200.0, -200.0, 50.0, 300.0, 300.0])
  np.testing.assert_allclose(out, (clipped - clipped.mean()) / clipped.std(), rtol=1e-5)
  np.testing.assert_allclose(transforms.normalize_ct(image, mean=50.0, std=250.0),
                             (clipped - 50.0) / 250.0, rtol=1e-6)
  assert out.dtype == np.float32


def test_random_flip_flips_image_and_label_together():
  image = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
  label = (image % 5).astype(np.uint8)
  flipped_any = False
  for seed in range(8):
    a, b = transforms.random_flip(np.random.default_rng(seed), image, label, (0, 1, 2))
    np.testing.assert_array_equal(b, (a % 5).astype(np.uint8))
    flipped_any |= not np.array_equal(a, image)
  assert flipped_any
  with pytest.raises(InputError, match="flip_axes"):
    transforms.random_flip(np.random.default_rng(0), image, label, (3,))


def test_checks_raise_one_line_input_errors():
  with pytest.raises(InputError, match=r"^case7: image has 1 NaN/inf"):
    transforms.check_image(np.array([0.0, np.nan]), "case7")
  transforms.check_image(np.zeros(3), "ok")
  with pytest.raises(InputError, match=r"^case8: labels must be in \[0, 3\), found values in \[0, 3\]"):
    transforms.check_labels(np.array([0, 1, 3]), 3, "case8")
  with pytest.raises(InputError, match="case9"):
    transforms.check_labels(np.array([-1, 0]), 3, "case9")
  transforms.check_labels(np.array([0, 2]), 3, "ok")


# ------------------------------------------------------------------- patches

def test_class_locations_index_each_present_class():
  label = np.zeros((4, 5, 6), np.uint8)
  label[1, 2, 3] = 2
  label[0, :2, :2] = 1
  locs = patches.class_locations(label)
  assert sorted(locs) == [1, 2]
  np.testing.assert_array_equal(locs[2], [[1, 2, 3]])
  assert len(locs[1]) == 4


def test_forced_patches_pick_rare_classes_and_contain_them():
  label = np.zeros((20, 40, 40), np.uint8)
  label[2:18, 5:35, 5:35] = 1
  label[10, 30, 30] = 2  # a single-voxel "tumour"
  image = label.astype(np.float32)
  locs = patches.class_locations(label)
  rng = np.random.default_rng(0)
  with_tumour = 0
  for _ in range(200):
    img, lab = patches.sample_patch(rng, image, label, (8, 8, 8), force_foreground=True, locations=locs)
    assert img.shape == lab.shape == (8, 8, 8)
    assert (lab > 0).any()
    with_tumour += (lab == 2).any()
  # Classes are chosen uniformly among those present: ~half contain the tumour.
  assert 70 <= with_tumour <= 130


def test_small_volumes_are_padded_with_minimum_and_background():
  image = np.full((3, 4, 4), 5.0, np.float32)
  image[0, 0, 0] = -7.0
  label = np.ones((3, 4, 4), np.uint8)
  img, lab = patches.sample_patch(np.random.default_rng(0), image, label, (6, 6, 6), force_foreground=True)
  assert img.shape == lab.shape == (6, 6, 6)
  assert lab.sum() == label.sum() and img.min() == -7.0
  assert np.all(img[lab == 0] == -7.0)


def test_uniform_patches_cover_the_volume():
  image = np.arange(10 * 10, dtype=np.float32).reshape(10, 10)
  label = np.zeros((10, 10), np.uint8)
  starts = set()
  rng = np.random.default_rng(1)
  for _ in range(600):
    img, _ = patches.sample_patch(rng, image, label, (4, 4), force_foreground=False)
    starts.add(int(img[0, 0]))
  assert len(starts) == 49  # all 7 x 7 positions


# ------------------------------------------------------------------ pipeline

def _batches(cases, **kw):
  args = dict(patch_size=PATCH, global_batch_size=4, seed=3, num_steps=5)
  args.update(kw)
  return list(loaders.train_batches(cases, **args))


def test_train_batches_shapes_and_dtypes(cases):
  batches = _batches(cases)
  assert len(batches) == 5
  for b in batches:
    assert b["image"].shape == (4, *PATCH, 1) and b["image"].dtype == np.float32
    assert b["label"].shape == (4, *PATCH) and b["label"].dtype == np.uint8  # as the cases'
    assert np.all(np.isfinite(b["image"]))
    assert set(np.unique(b["label"])) <= {0, 1, 2}
  wide = [dict(c, label=c["label"].astype(np.int16)) for c in cases]  # not uint8: int32
  for got, want in zip(_batches(wide), batches):
    assert got["label"].dtype == np.int32
    np.testing.assert_array_equal(got["label"], want["label"])


def test_resumed_iterator_equals_tail_of_uninterrupted(cases):
  full = _batches(cases)
  resumed = _batches(cases, start_step=2)
  assert len(resumed) == 3
  for a, b in zip(full[2:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  threaded = _batches(cases, worker_count=2)
  for a, b in zip(full, threaded):
    np.testing.assert_array_equal(a["image"], b["image"])
  other_seed = _batches(cases, seed=4)
  assert not np.array_equal(full[0]["image"], other_seed[0]["image"])


def test_processes_read_disjoint_shares_of_the_global_batch(cases):
  full = _batches(cases)
  p0 = _batches(cases, process_index=0, process_count=2)
  p1 = _batches(cases, process_index=1, process_count=2)
  for a, b, f in zip(p0, p1, full):
    assert a["image"].shape[0] == b["image"].shape[0] == 2
    assert not np.array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(np.concatenate([a["image"], b["image"]]), f["image"])
    np.testing.assert_array_equal(np.concatenate([a["label"], b["label"]]), f["label"])
  with pytest.raises(InputError, match="global_batch_size=4"):
    _batches(cases, process_count=3)


def test_foreground_fraction_of_each_batch_is_forced(cases):
  assert loaders.num_foreground_samples(4, 0.33) == 1
  assert loaders.num_foreground_samples(2, 0.1) == 1  # at least one
  assert loaders.num_foreground_samples(9, 0.33) == 3
  assert loaders.num_foreground_samples(8, 0.0) == 0
  batches = _batches(cases, global_batch_size=6, foreground_fraction=0.5, num_steps=12)
  for b in batches:
    assert np.all([(lab > 0).any() for lab in b["label"][3:]])  # the last 3 are forced
  tumour_hits = sum((lab == 2).any() for b in batches for lab in b["label"][3:])
  assert tumour_hits >= 8  # tumour chosen about half the time among 36 forced patches


def test_train_batches_reject_bad_data(cases):
  bad = [dict(cases[0], image=np.where(cases[0]["label"] == 2, np.nan, cases[0]["image"]))]
  with pytest.raises(InputError, match="train_0: image has"):
    _batches(bad)
  with pytest.raises(InputError, match=r"train_\d: labels must be in \[0, 2\)"):  # first case drawn
    _batches(cases, num_classes=2)


def test_eval_cases_yield_full_normalized_cases(cases):
  out = list(loaders.eval_cases(cases))
  assert [c["case"] for c in out] == ["train_0", "train_1", "train_2"]
  assert out[0]["image"].shape == (16, 24, 24, 1) and out[0]["label"].dtype == np.int32
  assert abs(float(out[0]["image"].mean())) < 1e-3
  np.testing.assert_allclose(out[0]["spacing"], [2.5, 0.8, 0.8])


def test_classification_batches_cover_each_epoch_and_resume(slices):
  batches = list(loaders.classification_batches(slices, global_batch_size=5, seed=0, num_steps=4))
  assert batches[0]["image"].shape == (5, 32, 32, 1) and batches[0]["label"].dtype == np.int32
  # Two steps = one epoch of 10 images: each label seen exactly as often as in the data.
  epoch = np.concatenate([b["label"] for b in batches[:2]])
  assert epoch.sum() == sum(s["lesion"] for s in slices)
  resumed = list(loaders.classification_batches(slices, global_batch_size=5, seed=0,
                                                 start_step=3, num_steps=4))
  np.testing.assert_array_equal(resumed[0]["image"], batches[3]["image"])
  with pytest.raises(InputError):
    list(loaders.classification_batches(slices, global_batch_size=5, seed=0, num_steps=1,
                                         process_count=2))
