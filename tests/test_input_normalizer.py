"""One input normaliser (`config_data.input_normalizer`) for training, evaluation, the
predictor, explanations and classification: its values per config, and that each
consumer applies it."""
import ml_collections
import numpy as np
import pytest

from medjax.data.pipeline import loaders, transforms
from medjax.errors import InputError
from medjax.inference import run_predictor
from medjax.train import config_data
from medjax.train.tasks import classification

RAW = np.array([[-300.0, 50.0], [175.0, 400.0]], np.float32)  # HU, one channel (2, 2)


def _config(**fields):
  return ml_collections.ConfigDict({"in_channels": 1, "label_key": "label", **fields})


def test_fixed_window_of_intensity_stats():
  normalize = config_data.input_normalizer(_config(intensity_stats=(50.0, 125.0)))
  # clipped to [-200, 300] HU, then (x - 50) / 125
  np.testing.assert_allclose(normalize(RAW), [[-2.0, 0.0], [1.0, 2.0]], rtol=1e-6)


def test_named_normalizations():
  clipped = np.clip(RAW, -200, 300)
  expected = (clipped - clipped.mean()) / clipped.std()
  np.testing.assert_allclose(config_data.input_normalizer(_config())(RAW), expected, rtol=1e-5)
  np.testing.assert_array_equal(
      config_data.input_normalizer(_config(normalization="none"))(RAW), RAW)
  with pytest.raises(InputError, match=r"config.normalization='zscore': expected one of"):
    config_data.input_normalizer(_config(normalization="zscore"))
  with pytest.raises(InputError, match=r"config.intensity_stats=\(50.0, 125.0\) and "
                                       r"config.normalization='none'"):
    config_data.input_normalizer(_config(normalization="none", intensity_stats=(50.0, 125.0)))


@pytest.mark.parametrize("fields", [{}, {"normalization": "none"},
                                    {"intensity_stats": (50.0, 125.0)}])
def test_every_consumer_applies_the_same_normalizer(fields):
  config = _config(**fields)
  expected = config_data.input_normalizer(config)(RAW)
  image = np.stack([RAW, RAW + 10.0], -1)  # (2, 2, C=2)
  both = np.stack([expected, config_data.input_normalizer(config)(RAW + 10.0)], -1)
  # the predictor (and the explanations, which go through it), channel by channel
  np.testing.assert_allclose(run_predictor.channel_normalizer(config)(image), both, rtol=1e-6)
  # segmentation training and evaluation
  options = config_data.patch_options(ml_collections.ConfigDict({**config, "num_classes": 2}))
  np.testing.assert_allclose(options["normalize"](RAW), expected, rtol=1e-6)
  # classification training and evaluation: grey images and two-channel images
  source = [{"image": RAW, "label": np.int64(1)}]
  [(_, seen, _)] = loaders.classification_images(source, **classification.data_options(config))
  np.testing.assert_allclose(seen[..., 0], expected, rtol=1e-6)
  source = [{"image": image, "label": np.int64(1)}]
  rgb_like = ml_collections.ConfigDict({**config, "in_channels": 2})
  [(_, seen, _)] = loaders.classification_images(source, **classification.data_options(rgb_like))
  np.testing.assert_allclose(seen, both, rtol=1e-6)


def test_per_channel_lifts_a_normalizer_to_channels_last():
  image = np.stack([RAW, 2 * RAW], -1)
  lifted = transforms.per_channel(transforms.normalize_ct)(image)
  np.testing.assert_allclose(lifted[..., 1], transforms.normalize_ct(2 * RAW), rtol=1e-6)
  assert lifted.dtype == np.float32 and lifted.shape == image.shape
