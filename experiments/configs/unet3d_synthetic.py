"""3D U-Net on the built-in synthetic CT dataset (`synthetic_organs/3d`): organ + tumour.

Command (the README's run command):
  python -m experiments.main --config=experiments/configs/unet3d_synthetic.py --workdir=runs/unet3d

Runtime and result on a 2-core CPU (measured, see README "Results"): filled in
from the measured run.

Ablations are one flag, e.g. `--config.loss.name=ce`, `--config.model.norm=batch`,
`--config.kernels=pallas`, `--config.parallel=pmap`.
"""
import ml_collections

from medjax.models.unet import anisotropic_plan


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The default run; `variant="smoke"` (`--config=...py:smoke`) is a seconds-long
  run on a tiny dataset and model, for tests and for trying the pipeline."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "segmentation"  # "segmentation" | "classification"
  # Data: TFDS builder generated locally into data_dir (nothing is downloaded).
  c.dataset = "synthetic_organs/3d"
  c.data_dir = "~/.cache/medjax/datasets"
  c.dataset_kwargs = ml_collections.ConfigDict()
  c.num_classes = 3
  c.class_names = ("background", "organ", "tumour")
  c.label_map = ()  # e.g. (0, 1, 1): organ incl. tumour; (0, 0, 1): tumour only
  c.in_channels = 1
  c.spacing = (2.5, 0.8, 0.8)  # the dataset's voxel spacing (mm), (D, H, W)
  c.patch_size = (16, 48, 48)
  c.global_batch_size = 2
  c.foreground_fraction = 0.33  # nnU-Net's oversample_foreground_percent
  c.flip_axes = (1, 2)
  c.data_workers = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "unet"
  c.model.spatial_dims = 3
  c.model.features = (8, 16, 32, 64)
  # nnU-Net planning for anisotropic voxels: 1x3x3 convs and in-plane pooling
  # at the top level, where the slices are 3x thicker than the pixels.
  c.model.kernel_sizes, c.model.pool_sizes = anisotropic_plan(c.spacing, len(c.model.features))
  c.model.norm = ml_collections.FieldReference(None, field_type=str)
  c.model.dropout = 0.0

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "dice_ce"
  # nnU-Net's Dice+CE: Dice statistics summed over the batch ("batch dice") and
  # without the background class. Per-patch Dice would score a patch without a
  # tumour 0 for any false-positive voxel, which pushes the rare class to vanish.
  c.loss.batch = True
  c.loss.include_background = False

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 3e-3
  c.optimizer.schedule = "poly"
  c.optimizer.warmup_steps = 20
  c.optimizer.grad_clip_norm = 1.0
  c.optimizer.momentum = 0.99
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 1e-4

  c.num_steps = 600
  c.log_every = 10
  c.checkpoint_every = 100
  c.progress_bar = True
  c.kernels = "auto"  # "auto" | "xla" | "pallas"
  c.parallel = "shard_map"  # "shard_map" | "pmap"

  c.eval = ml_collections.ConfigDict()
  c.eval.overlap = 0.25
  c.eval.mode = "constant"
  c.eval.batch_size = 4
  c.eval.mirror_axes = ()
  c.eval.surface_metrics = True
  c.eval.report_cases = 3

  if variant == "smoke":
    c.dataset_kwargs.shape = (16, 32, 32)
    c.dataset_kwargs.split_sizes = {"train": 3, "validation": 1, "test": 2}
    c.patch_size = (8, 16, 16)
    c.global_batch_size = 4
    c.model.features = (4, 8)
    c.model.kernel_sizes, c.model.pool_sizes = anisotropic_plan(c.spacing, 2)
    c.num_steps = 6
    c.log_every = 1
    c.checkpoint_every = 2
    c.progress_bar = False
    c.eval.batch_size = 2
    c.eval.report_cases = 1
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}: expected '' or 'smoke'")
  return c
