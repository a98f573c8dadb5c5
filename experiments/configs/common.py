"""Fields every experiment config shares: optimisation, logging, parallelism, evaluation.

Each experiment file calls `base_config()` and sets its data, model and loss;
size or hardware variants override a few fields. `config.dataset_kwargs` holds
every option of the dataset's builder (`dataset_options`), so each can be set
on the command line (`--config.dataset_kwargs.shape=(16,32,32)`).
"""
import dataclasses

import ml_collections
from ml_collections import config_dict

from medjax.data.pipeline import augment


def _is_named_values(value) -> bool:
  """A tuple of `(name, value)` pairs, e.g. `split_sizes=(("train", 24), ...)`."""
  return (isinstance(value, tuple) and bool(value) and
          all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in value))


def dataset_options(builder: str) -> ml_collections.ConfigDict:
  """Every option of the TFDS builder `builder` (e.g. "synthetic_organs", "nnunet_raw"),
  unset: the `dataset_kwargs` of a config.

  One field per field of the builder's config dataclass (TFDS's own fields aside)
  and per load-time option of a folder dataset (`fold`, `num_folds`), each None
  (the named dataset's own value: `medjax.train.config_data.dataset_kwargs`
  passes only the fields set) and typed like the option, so that
  `--config.dataset_kwargs.FIELD=VALUE` is accepted; an option made of
  `(name, value)` pairs (`split_sizes`) is a section with one such field per
  name (the names not set keep the named dataset's values).
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from medjax.data.builders import datasets, folder_datasets
  del datasets  # imported to register the builders
  cls = tfds.builder_cls(builder.partition("/")[0])
  example = cls.BUILDER_CONFIGS[0]
  tfds_fields = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
  options = ml_collections.ConfigDict()
  for field in dataclasses.fields(example):
    if field.name in tfds_fields:
      continue
    value = getattr(example, field.name)
    if _is_named_values(value):
      options[field.name] = ml_collections.ConfigDict(
          {name: config_dict.placeholder(type(v)) for name, v in value})
    else:
      options[field.name] = config_dict.placeholder(type(value))
  if cls.name in folder_datasets.BUILDERS:
    for name in folder_datasets.LOAD_TIME_KWARGS:
      options[name] = config_dict.placeholder(int)
  return options


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "segmentation"  # "segmentation" | "classification"
  # Data: TFDS builder generated locally into data_dir (nothing is downloaded).
  c.dataset = "synthetic_organs/3d"
  c.data_dir = "~/.cache/medjax/datasets"
  c.dataset_kwargs = dataset_options("synthetic_organs")  # None: the named dataset's value
  c.num_classes = 3
  c.class_names = ("background", "organ", "tumour")
  c.label_map = ()  # e.g. (0, 1, 1): organ incl. tumour; (0, 0, 1): tumour only
  c.in_channels = 1
  c.spacing = (2.5, 0.8, 0.8)  # the dataset's voxel spacing (mm), array axis order
  c.patch_size = (16, 48, 48)
  c.global_batch_size = 2
  c.foreground_fraction = 0.33  # nnU-Net's oversample_foreground_percent
  c.flip_axes = (1, 2)
  c.data_workers = 0
  # Augmentation on the device, inside the jitted step (medjax.data.pipeline.augment):
  # nnU-Net's default transforms and per-sample probabilities (a probability
  # of 0 switches one off). Off by default (it lowered the default 1000-step
  # run's tumour Dice 0.928 -> 0.897, benchmarks/RESULTS.md); `--config.augment.enabled=True`
  # turns the set on. `anisotropic`: "auto" rotates/scales/deforms in-plane
  # only when the largest spacing is > 3x the smallest (nnU-Net), "in_plane", "full".
  # Fields and defaults: `medjax.data.pipeline.augment.Augmentation` (rotation_p 0.2 / 30 degrees,
  # scale_p 0.2, elastic off as in nnU-Net, noise, blur, brightness, contrast, low
  # resolution, gamma; mirror_axes: device mirroring, the host pipeline's flips are
  # flip_axes; border_mode "mirror" | "nearest" | "constant").
  c.augment = ml_collections.ConfigDict(augment.config_section())
  # Warm start (medjax.train.warm_start): a trained workdir or a weights file;
  # "OLD->NEW" path-prefix renames of its variables; prefixes kept fresh.
  c.init_from = ""
  c.init_mapping = ()
  c.init_exclude = ()

  c.model = ml_collections.ConfigDict()
  c.loss = ml_collections.ConfigDict()
  c.loss.name = "dice_ce"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 3e-3
  c.optimizer.schedule = "poly"
  c.optimizer.warmup_steps = 20
  c.optimizer.grad_clip_norm = 1.0
  c.optimizer.momentum = 0.99
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 1e-4
  # Fine-tuning (medjax.train.optim): parameter path prefixes with no
  # update (and BatchNorm in inference mode); when `trainable` is not empty,
  # everything outside it is frozen; {prefix: learning-rate factor}.
  c.optimizer.frozen = ()
  c.optimizer.trainable = ()
  c.optimizer.lr_multipliers = ml_collections.ConfigDict()

  c.num_steps = 600
  c.log_every = 10
  c.checkpoint_every = 100
  c.progress_bar = True
  c.kernels = "auto"  # "auto" | "xla" | "pallas"
  c.parallel = "shard_map"  # "shard_map" | "pmap"
  # The device mesh (medjax.parallel): 'data' splits the batch (-1: all devices left over),
  # 'spatial' splits the depth of every patch and inference window over that many devices
  # (medjax.spatial), for patches or volumes beyond one device's memory: e.g.
  # `--config.mesh.spatial=8` for a 256^3 MLPerf U-Net patch on 8 GPUs.
  c.mesh = ml_collections.ConfigDict({"data": -1, "spatial": 1})
  # Speed (medjax.train.compile_cache, model_factory): JAX's persistent
  # compilation cache (a second launch skips compiling); the compute dtype
  # ("bfloat16": bf16 activations, float32 parameters, optimizer state and
  # loss); rematerialisation of each U-Net/V-Net stage in the backward pass.
  c.compilation_cache = True
  c.compilation_cache_dir = ""  # "" -> ~/.cache/medjax/jax_cache
  c.dtype = "float32"  # "float32" | "bfloat16"
  c.remat = False
  c.remat_policy = "nothing_saveable"  # a jax.checkpoint_policies name, e.g. "dots_saveable"

  c.eval = ml_collections.ConfigDict()
  c.eval.overlap = 0.25
  c.eval.mode = "constant"
  c.eval.batch_size = 4
  # The sliding window; () = the training patch. A larger window (up to a whole volume)
  # works for fully convolutional models; with config.mesh.spatial > 1 it is split in depth.
  c.eval.roi_size = ()
  c.eval.mirror_axes = ()
  c.eval.surface_metrics = True
  c.eval.report_cases = 3
  # Post-processing as nnU-Net (medjax.postprocess): rules chosen on the validation split,
  # stored in postprocessing.json, applied to the test cases (Workdir.read_postprocessing_rules for predict).
  c.eval.postprocess = True
  # Uncertainty and calibration (medjax.uncertainty / medjax.calibration), off by default:
  c.eval.uncertainty = "none"  # "none" | "mc_dropout" (needs model.dropout > 0) | "tta" (flips)
  c.eval.uncertainty_samples = 20  # MC-dropout passes
  c.eval.calibration = False  # ECE, temperature scaling on validation, report/reliability.png
  return c


def lesion_classification_2d() -> ml_collections.ConfigDict:
  """`base_config()` for "is there a tumour in this slice?" on `synthetic_organs/2d`."""
  c = base_config()
  c.task = "classification"
  c.dataset = "synthetic_organs/2d"
  c.num_classes = 2
  c.class_names = ("no_lesion", "lesion")
  c.label_key = "lesion"  # the dataset's image-level integer label
  # Ten times the builder's default slices (400 / 50 / 100): a 1 % lesion at
  # ~30 HU contrast from image-level labels needs more than 400 examples (a
  # LeNet memorised them at chance test accuracy), and 1000 steps of 32 are then
  # 8 epochs instead of 80. Slices are cheap to generate (~4 ms each).
  c.dataset_kwargs.split_sizes = {"train": 4000, "validation": 500, "test": 1000}
  c.spacing = (0.8, 0.8)
  c.patch_size = (128, 128)  # the whole image
  c.flip_axes = (0, 1)
  c.global_batch_size = 32
  c.loss = ml_collections.ConfigDict({"name": "ce"})
  c.optimizer.learning_rate = 1e-3
  c.num_steps = 1000
  c.checkpoint_every = 200
  c.eval.batch_size = 64
  return c


def patch_classification_2d() -> ml_collections.ConfigDict:
  """`base_config()` for the class at the centre of a 32x32 patch, `synthetic_organs/patches2d`.

  Three balanced classes (0 background, 1 organ, 2 tumour; 3000 / 500 / 1000
  patches, `medjax.data.phantoms.organ_patches`): the patch-level setting of
  PatchCamelyon / MedMNIST, where the lesion fills the centre of the input
  instead of ~1 % of a slice. Patches keep the volumes' contrast and noise.
  """
  c = base_config()
  c.task = "classification"
  c.dataset = "synthetic_organs/patches2d"
  c.label_key = "label"
  c.num_classes = 3
  c.class_names = ("background", "organ", "tumour")
  # One fixed window for every patch: [-200, 300] HU -> (x - 50) / 125, i.e.
  # [-2, 2]. A patch's own mean and std (the per-image z-score of the slices)
  # would erase its HU level, the cue that tells muscle (~40 HU) from organ (~60 HU).
  c.intensity_stats = (50.0, 125.0)
  c.spacing = (0.8, 0.8)
  c.patch_size = (32, 32)  # the whole patch (the dataset's patch_size)
  c.flip_axes = (0, 1)
  c.global_batch_size = 64
  c.loss = ml_collections.ConfigDict({"name": "ce"})
  c.optimizer.learning_rate = 1e-3
  c.num_steps = 1000
  c.log_every = 50
  c.checkpoint_every = 500
  c.eval.batch_size = 250
  return c


def patch_classification_3d() -> ml_collections.ConfigDict:
  """`patch_classification_2d()` on `synthetic_organs/patches3d`: 16x32x32 patches
  at (2.5, 0.8, 0.8) mm (models need `spatial_dims=3`)."""
  c = patch_classification_2d()
  c.dataset = "synthetic_organs/patches3d"
  c.spacing = (2.5, 0.8, 0.8)
  c.patch_size = (16, 32, 32)
  c.flip_axes = (1, 2)  # in-plane only: the through-plane axis is not symmetric in spacing
  c.global_batch_size = 32
  c.eval.batch_size = 100
  return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to a seconds-long run on a tiny dataset (tests, first tries)."""
  if c.dataset.startswith("synthetic_organs/patches"):
    # Patches of 16 (8x16x16) from 48x48 images: any smaller and few images
    # have a tumour voxel where a whole patch fits.
    two_d = len(c.patch_size) == 2
    c.dataset_kwargs.shape = (48, 48) if two_d else (16, 48, 48)
    c.dataset_kwargs.patch_size = (16, 16) if two_d else (8, 16, 16)
    c.dataset_kwargs.split_sizes = {"train": 12, "validation": 3, "test": 6}
    c.patch_size = c.dataset_kwargs.patch_size
  elif c.task == "classification" or len(c.patch_size) == 2:
    c.dataset_kwargs.shape = (32, 32)
    c.dataset_kwargs.split_sizes = {"train": 8, "validation": 2, "test": 4}
    c.patch_size = (32, 32)
  else:
    c.dataset_kwargs.shape = (16, 32, 32)
    c.dataset_kwargs.split_sizes = {"train": 3, "validation": 1, "test": 2}
    c.patch_size = (8, 16, 16)
  return smoke_schedule(c)


def smoke_schedule(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run-length part of `smoke`: a few steps of a small batch, logged and
  checkpointed every step or two, one case drawn (also for configs of a local
  dataset, which cannot be shrunk)."""
  c.global_batch_size = 4
  c.num_steps = 6
  c.log_every = 1
  c.checkpoint_every = 2
  c.progress_bar = False
  c.eval.batch_size = 2
  c.eval.report_cases = 1
  return c
