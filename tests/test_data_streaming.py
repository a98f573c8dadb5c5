"""Streamed training cases: random access through a small LRU of decoded cases,
stored foreground locations, channels-last images, label range from the task."""
import numpy as np
import pytest

from experiments.configs import unet3d_synthetic
from medjax.data.phantoms import organ_ct
from medjax.data.pipeline import case_cache, loaders, patches, transforms
from medjax.errors import InputError
from medjax.train import config_check, config_data
from medjax.train.tasks.segmentation import SegmentationTask

PATCH = (8, 12, 12)


class CountingSource:
  """A random-access source that counts its reads."""

  def __init__(self, examples):
    self.examples = examples
    self.reads = []

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, index):
    self.reads.append(index)
    return self.examples[index]


@pytest.fixture(scope="module")
def cases():
  out = []
  for seed in range(3):
    image, label = organ_ct.make_volume(seed, shape=(16, 24, 24))
    out.append({"image": image, "label": label, "case": f"train_{seed}".encode()})
  return out


def _batches(source, **kw):
  args = dict(patch_size=PATCH, global_batch_size=4, seed=3, num_steps=4)
  args.update(kw)
  return list(loaders.train_batches(source, **args))


def _eager_batches(cases, *, seed=3, num_steps=4, global_batch_size=4, forced=1, flip_axes=(0, 1, 2)):
  """The pipeline before streaming: every case normalised and indexed up front."""
  prepared = [patches.prepare_case(transforms.normalize_ct(c["image"]), c["label"], PATCH)
              for c in cases]
  out = []
  for step in range(num_steps):
    images, labels = [], []
    for g in range(global_batch_size):
      rng = np.random.default_rng([seed, step, g])
      case = prepared[int(rng.integers(len(prepared)))]
      image, label = patches.sample_patch(rng, case.image, case.label, PATCH,
                                          force_foreground=g >= global_batch_size - forced,
                                          locations=case.locations)
      image, label = transforms.random_flip(rng, image, label, flip_axes)
      images.append(image)
      labels.append(label)
    out.append((np.stack(images)[..., None], np.stack(labels)))
  return out


def test_streamed_batches_equal_the_eager_pipeline_for_any_cache_size(cases):
  expected = _eager_batches(cases)
  for cache_size in (1, 3):
    source = CountingSource(cases)
    got = _batches(source, cache_size=cache_size)
    for (image, label), batch in zip(expected, got):
      np.testing.assert_array_equal(batch["image"], image.astype(np.float32))
      np.testing.assert_array_equal(batch["label"], label)
    if cache_size == 3:
      assert sorted(source.reads) == [0, 1, 2]  # each case decoded once
    else:
      assert len(source.reads) > 3  # re-read after eviction


def test_lru_keeps_the_most_recently_used_cases(cases):
  source = CountingSource(cases)
  cache = case_cache.CaseCache(source, PATCH, capacity=2)
  for index in (0, 1, 0, 2, 0, 1):
    cache[index]
    assert len(cache.cached) <= 2
  # 0, 1 read; 0 hit; 2 evicts 1 (least recent); 0 hit; 1 evicts 2.
  assert source.reads == [0, 1, 2, 1] and cache.reads == 4
  assert cache.cached == (0, 1)
  with pytest.raises(InputError, match="capacity=0"):
    case_cache.CaseCache(source, PATCH, capacity=0)


def test_byte_budget_keeps_what_fits(cases):
  """Default (no count): cases kept while their decoded bytes fit the budget."""
  source = CountingSource(cases)
  one = case_cache.CaseCache(source, PATCH, capacity=1)
  size = one[0].image.nbytes + one[0].label.nbytes
  assert all(c["image"].shape == cases[0]["image"].shape for c in cases)  # equal sizes
  source.reads.clear()
  cache = case_cache.CaseCache(source, PATCH, max_bytes=2 * size)
  for index in (0, 1, 0, 2, 0, 1):
    cache[index]
    assert cache.cached_bytes <= 2 * size
  assert source.reads == [0, 1, 2, 1] and cache.cached == (0, 1)  # same LRU order as capacity=2
  assert cache.cached_bytes == 2 * size
  tiny = case_cache.CaseCache(source, PATCH, max_bytes=1)  # smaller than a case: keeps one
  tiny[0], tiny[1]
  assert tiny.cached == (1,)
  big = case_cache.CaseCache(CountingSource(cases), PATCH)  # default 1 GiB: all of them
  for _ in range(2):
    for index in range(len(cases)):
      big[index]
  assert big.reads == len(cases) and big.cached_bytes == len(cases) * size
  with pytest.raises(InputError, match="max_bytes=0"):
    case_cache.CaseCache(source, PATCH, max_bytes=0)


def test_stored_locations_are_used_and_shifted_by_the_padding():
  label = np.zeros((4, 10, 10), np.uint8)
  label[1, 2, 3] = 1
  label[2, 7, 7] = 1
  image = np.zeros((4, 10, 10), np.float32)
  image[1, 2, 3], image[2, 7, 7] = 9.0, 5.0  # markers of the two voxels
  # Stored rows [class, i, j, k] name only the second voxel: forced patches centre on it.
  example = {"image": image, "label": label, "locations": np.array([[1, 2, 7, 7]], np.int32)}
  cache = case_cache.CaseCache([example], (6, 4, 4), normalize=transforms.keep_intensities)
  case = cache[0]
  assert case.image.shape == (6, 10, 10, 1)  # padded by 1 voxel before axis 0
  np.testing.assert_array_equal(case.locations[1], [[3, 7, 7]])
  batch = _batches([example], patch_size=(6, 4, 4), global_batch_size=2, foreground_fraction=1.0,
                   normalize=transforms.keep_intensities, num_steps=3, flip_axes=())
  for b in batch:
    for patch in b["image"]:  # every patch holds the stored voxel, none the other one
      assert (patch == 5.0).sum() == 1 and not (patch == 9.0).any()
  computed = case_cache.CaseCache([dict(example, locations=np.zeros((0, 4), np.int32))], (6, 4, 4))
  assert computed[0].locations == {}
  with pytest.raises(InputError, match=r"case_0: locations of shape \(1, 3\)"):
    case_cache.CaseCache([dict(example, locations=np.ones((1, 3), np.int32))], (6, 4, 4))[0]


def test_channels_last_images_are_kept_as_given():
  rng = np.random.default_rng(0)
  label = (rng.random((10, 12, 12)) > 0.7).astype(np.uint8)
  first = rng.normal(size=(10, 12, 12)).astype(np.float32)
  image = np.stack([first, 3.0 * first + 1.0], axis=-1)  # (*S, 2), normalised already
  batches = _batches([{"image": image, "label": label}], normalize=transforms.keep_intensities,
                     flip_axes=())
  for b in batches:
    assert b["image"].shape == (4, *PATCH, 2)
    np.testing.assert_allclose(b["image"][..., 1], 3.0 * b["image"][..., 0] + 1.0, rtol=1e-6)
    # every patch is a window of the case: find its values in the source image
    assert np.isin(b["image"][..., 0], first).all()
  with pytest.raises(InputError, match=r"case_0: image shape \(10, 12, 13, 2\) does not match"):
    _batches([{"image": np.zeros((10, 12, 13, 2)), "label": label}])


def test_the_task_checks_the_label_range_against_the_config(cases):
  config = unet3d_synthetic.get_config("smoke")
  config.patch_size = PATCH
  config.num_classes, config.class_names = 2, ("background", "organ")
  task = SegmentationTask()
  with pytest.raises(InputError, match=r"train_\d: labels must be in \[0, 2\)"):
    next(iter(task.train_batches(config, cases, start_step=0, process_index=0, process_count=1)))
  config.label_map = (0, 1, 1)  # 3 label values in the data, merged into 2 classes
  batch = next(iter(task.train_batches(config, cases, start_step=0, process_index=0,
                                       process_count=1)))
  assert batch["label"].max() <= 1
  config.normalization = "minmax"
  with pytest.raises(InputError, match="config.normalization='minmax': expected one of "
                                       "'ct_window', 'lung_window', 'none'"):
    config_check.validate(config)
  config.normalization = "none"
  assert config_data.input_normalizer(config) is transforms.keep_intensities
