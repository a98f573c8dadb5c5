"""medmnist builder: MedMNIST v2 .npz files (2D grey/RGB, 3D, multi-label), sizes, official splits."""
import os
import zipfile

import dataset_writers as writers
import numpy as np
import pytest

from medjax.data.builders import datasets, medmnist
from medjax.errors import InputError


def _splits(data_dir, flag, raw, **kwargs):
  out = {}
  for split in ("train", "validation", "test"):
    source = datasets.load_source(f"medmnist/{flag}", split, str(data_dir), manual_dir=str(raw),
                                  **kwargs)
    out[split] = [source[i] for i in range(len(source))]
  return out


@pytest.mark.parametrize("flag, size, shape", [
    ("pneumoniamnist", 28, (28, 28)),          # 2D grey
    ("pathmnist", 64, (64, 64, 3)),            # 2D RGB, a MedMNIST+ size
    ("organmnist3d", 28, (28, 28, 28)),        # 3D
])
def test_images_labels_and_splits_as_in_the_file(tmp_path, flag, size, shape):
  truth = writers.write_medmnist(str(tmp_path / "raw"), flag, size)
  kwargs = {"size": size} if size != 28 else {}
  prepared = _splits(tmp_path / "data", flag, tmp_path / "raw", **kwargs)
  assert [len(prepared[s]) for s in ("train", "validation", "test")] == [6, 2, 3]
  for split, examples in prepared.items():
    for index, example in enumerate(examples):
      assert example["image"].shape == shape and example["image"].dtype == np.uint8
      np.testing.assert_array_equal(example["image"], truth[split]["images"][index])
      assert np.ndim(example["label"]) == 0  # a class index (TFDS returns a scalar as int)
      assert int(example["label"]) == int(truth[split]["labels"][index, 0])
      assert example["case"].decode() == f"{split}_{index:06d}"
  builder = datasets.get_builder(f"medmnist/{flag}", str(tmp_path / "data"),
                                 manual_dir=str(tmp_path / "raw"), **kwargs)
  info = medmnist.FLAGS[flag]
  assert builder.info.metadata["num_classes"] == info.num_classes
  assert builder.info.metadata["size"] == size


def test_multilabel_chestmnist_keeps_the_label_vector(tmp_path):
  truth = writers.write_medmnist(str(tmp_path / "raw"), "chestmnist", counts=(3, 1, 1))
  train = _splits(tmp_path / "data", "chestmnist", tmp_path / "raw")["train"]
  assert train[2]["label"].shape == (14,)
  np.testing.assert_array_equal(train[2]["label"], truth["train"]["labels"][2])


def test_every_flag_and_size_is_a_config():
  configs = {c.name for c in medmnist.Medmnist.BUILDER_CONFIGS}
  assert len(configs) == 18 and {"pathmnist", "organmnist3d", "synapsemnist3d"} <= configs
  assert medmnist.file_name("bloodmnist", 28) == "bloodmnist.npz"
  assert medmnist.file_name("bloodmnist", 224) == "bloodmnist_224.npz"
  assert medmnist.image_shape("vesselmnist3d", 64) == (64, 64, 64)


def test_bad_files(tmp_path):
  raw, data = tmp_path / "raw", str(tmp_path / "data")
  with pytest.raises(InputError, match=r"size=224; expected one of \(28, 64\) for a 3D flag"):
    datasets.load_source("medmnist/organmnist3d", "train", data, manual_dir=str(raw), size=224)
  with pytest.raises(InputError, match=r"breastmnist.npz: no such file \(MedMNIST breastmnist at size 28\)"):
    datasets.load_source("medmnist/breastmnist", "train", data, manual_dir=str(raw))
  writers.write_medmnist(str(raw), "breastmnist", 64)  # the file of another size
  os.rename(raw / "breastmnist_64.npz", raw / "breastmnist.npz")
  with pytest.raises(InputError, match=r"train_images has images of shape \(64, 64\); expected "
                                       r"\(28, 28\) for breastmnist at size 28"):
    datasets.load_source("medmnist/breastmnist", "train", data, manual_dir=str(raw))
  arrays = dict(np.load(raw / "breastmnist.npz"))
  for key in ("train", "val", "test"):
    arrays[f"{key}_images"] = arrays[f"{key}_images"][:, :28, :28]
  arrays["val_labels"][1] = 2
  del arrays["test_labels"]
  np.savez(raw / "breastmnist.npz", **arrays)
  with pytest.raises(InputError, match=r"val_labels\[1\] = \[2\]; expected values in 0..1"):
    datasets.load_source("medmnist/breastmnist", "train", data, manual_dir=str(raw))
  arrays["val_labels"][1] = 1
  np.savez(raw / "breastmnist.npz", **arrays)
  with pytest.raises(InputError, match="breastmnist.npz: no array 'test_labels'"):
    datasets.load_source("medmnist/breastmnist", "train", data, manual_dir=str(raw))
  arrays["test_labels"] = arrays["val_labels"]
  np.savez(raw / "breastmnist.npz", **arrays)
  with pytest.raises(InputError, match=r"test_labels has shape \(2, 1\); expected \(3, 1\)"):
    datasets.load_source("medmnist/breastmnist", "train", data, manual_dir=str(raw))
  blob = (raw / "breastmnist.npz").read_bytes()
  (raw / "breastmnist.npz").write_bytes(blob[:len(blob) // 2])
  with pytest.raises(InputError, match="breastmnist.npz: not a readable .npz file"):
    datasets.load_source("medmnist/breastmnist", "train", data, manual_dir=str(raw))
  assert not [p for p in os.listdir(tmp_path / "data" / "medmnist") if not p.startswith(".")]


def test_truncated_array_inside_the_archive(tmp_path):
  images = np.zeros((4, 28, 28), np.uint8)
  with zipfile.ZipFile(tmp_path / "octmnist.npz", "w") as archive:
    with archive.open("train_images.npy", "w") as member:
      np.lib.format.write_array(member, images)
    with archive.open("train_labels.npy", "w") as member:
      header = np.zeros((4, 1), np.uint8)
      np.lib.format.write_array_header_1_0(member, np.lib.format.header_data_from_array_1_0(header))
      member.write(b"\x00\x01")  # 2 of 4 labels
    for key in ("val", "test"):
      for part, array in (("images", images), ("labels", np.zeros((4, 1), np.uint8))):
        with archive.open(f"{key}_{part}.npy", "w") as member:
          np.lib.format.write_array(member, array)
  with pytest.raises(InputError, match="train_labels' is truncated at example 2 of 4"):
    datasets.load_source("medmnist/octmnist", "train", str(tmp_path / "data"),
                         manual_dir=str(tmp_path))


def test_grey_flag_feeds_the_classification_pipeline(tmp_path):
  from medjax.data.pipeline import loaders  # pylint: disable=g-import-not-at-top
  truth = writers.write_medmnist(str(tmp_path / "raw"), "pneumoniamnist", counts=(4, 1, 1))
  source = datasets.load_source("medmnist/pneumoniamnist", "train", str(tmp_path / "data"),
                                manual_dir=str(tmp_path / "raw"))
  batch = next(loaders.classification_batches(source, global_batch_size=4, seed=0, num_steps=1,
                                               label_key="label"))
  assert batch["image"].shape == (4, 28, 28, 1)
  assert sorted(batch["label"].tolist()) == sorted(truth["train"]["labels"][:, 0].tolist())


def test_rgb_flag_feeds_the_classification_pipeline_with_three_channels(tmp_path):
  """pathmnist (RGB): `(B, 28, 28, 3)` batches, every channel scaled as the config's
  `intensity_stats`; a grey dataset read as 3 channels is one line naming the image."""
  from medjax.data.pipeline import loaders  # pylint: disable=g-import-not-at-top
  truth = writers.write_medmnist(str(tmp_path / "raw"), "pathmnist", counts=(4, 1, 1))
  source = datasets.load_source("medmnist/pathmnist", "train", str(tmp_path / "data"),
                                manual_dir=str(tmp_path / "raw"))
  batch = next(loaders.classification_batches(
      source, global_batch_size=4, seed=0, num_steps=1, label_key="label", channels=3,
      normalize=loaders.fixed_window(127.5, 64.0)))
  assert batch["image"].shape == (4, 28, 28, 3) and batch["image"].dtype == np.float32
  stored = (truth["train"]["images"].astype(np.float32) - 127.5) / 64.0
  got = sorted(batch["image"].reshape(4, -1).tolist())
  np.testing.assert_allclose(got, sorted(stored.reshape(4, -1).tolist()), atol=1e-6)
  grey = writers.write_medmnist(str(tmp_path / "raw_grey"), "pneumoniamnist", counts=(2, 1, 1))
  del grey
  source = datasets.load_source("medmnist/pneumoniamnist", "train", str(tmp_path / "data"),
                                manual_dir=str(tmp_path / "raw_grey"))
  with pytest.raises(InputError, match=r"expected 3 channels on its last axis"):
    next(loaders.classification_batches(source, global_batch_size=2, seed=0, num_steps=1,
                                         label_key="label", channels=3))


@pytest.mark.e2e
def test_an_rgb_flag_trains_and_evaluates(tmp_path):
  """`convnet_medmnist.py:pathmnist,smoke` end to end on a small random RGB file: the
  ConvNet's first kernel takes 3 channels, and the test images are scored."""
  import jax  # pylint: disable=g-import-not-at-top

  from experiments.configs import convnet_medmnist  # pylint: disable=g-import-not-at-top
  from medjax.inference import restore
  from medjax.train import loop  # pylint: disable=g-import-not-at-top
  writers.write_medmnist(str(tmp_path / "raw"), "pathmnist", counts=(8, 2, 3))
  config = convnet_medmnist.get_config("pathmnist,smoke")
  assert config.in_channels == 3
  config.data_dir = str(tmp_path / "data")
  config.dataset_kwargs.manual_dir = str(tmp_path / "raw")
  results = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert len(results["per_case"]) == 3 and 0.0 <= results["accuracy"] <= 1.0
  _, _, variables = restore.load_run(str(tmp_path / "run"))
  kernels = [k for k in jax.tree.leaves(variables["params"]) if k.ndim == 4]
  assert kernels[0].shape[2] == 3  # (kh, kw, C_in, C_out) of the first conv


def test_convnet_medmnist_config_variants():
  from experiments.configs import convnet_medmnist  # pylint: disable=g-import-not-at-top
  config = convnet_medmnist.get_config("organmnist3d,64,smoke")
  assert config.dataset == "medmnist/organmnist3d" and config.dataset_kwargs.size == 64
  assert config.patch_size == (64, 64, 64) and config.model.spatial_dims == 3
  assert config.num_classes == 11 and config.label_key == "label" and config.num_steps == 6
  rgb = convnet_medmnist.get_config("bloodmnist,64")
  assert rgb.in_channels == 3 and rgb.patch_size == (64, 64) and rgb.num_classes == 8
  for variant in ("chestmnist", "organmnist3d,224", "kits"):
    with pytest.raises(ValueError, match="unknown config variant"):
      convnet_medmnist.get_config(variant)
