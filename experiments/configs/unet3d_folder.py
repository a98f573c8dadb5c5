"""3D U-Net on your own data: a local folder in the nnU-Net v2 raw, Decathlon or LiTS layout.

Command (nnU-Net raw folder; `--config.dataset=decathlon` or `lits` for the others):
  python -m experiments.main --config=experiments/configs/unet3d_folder.py \
      --config.dataset=nnunet_raw --config.dataset_kwargs.manual_dir=DIR --workdir=RUN \
      [--config.dataset_kwargs.fold=0 --config.dataset_kwargs.num_folds=5]

The first run prepares the folder once (`medjax.data.builders.folder_datasets`:
fingerprint, nnU-Net plan, crop / normalise / resample every case) under
`config.data_dir`. Fields left empty here are filled in from the prepared
dataset when the run starts (`medjax.train.config_data.resolve_dataset`): the
classes and their names (`dataset.json` labels), the input channels, the
target spacing, the patch size and the U-Net's depth, kernel and pool sizes
(the plan; features 32, 64, ... up to 320 per level, as nnU-Net). Set any of
them to override the plan, e.g. `--config.patch_size=(64,128,128)` or
`--config.model.features=(16,32,64,128)` (fewer levels than planned take the
plan's first kernel/pool sizes). Images come normalised by the plan (CT:
clipped to the foreground 0.5/99.5 percentiles and z-scored with the
dataset's statistics; other modalities per-image z-score), so training and
prediction apply no second window (`normalization="none"`). Training cases
are streamed (`config.cached_cases` decoded at a time). The split and the
plan are written to the workdir (`splits.json`, `plan.json`);
`python -m experiments.predict --workdir=RUN ...` applies the plan to new
images and writes predictions on their own grid.

Runtime and result: depends on the dataset; the plan is nnU-Net's, sized for a
GPU (brain-MR-sized cases of 24x256x256 at 5x0.94x0.94 mm plan 20x224x224
patches and features 32..320). After its first logged steps every run prints
its time per step and the time projected to `num_steps` (compilation not
counted). CPU-sized: `--config.patch_size=(20,128,128)
--config.model.features=(16,32,64,128)` (the plan's first four levels; about
3.4 GB of host memory), or a smaller plan with
`--config.dataset_kwargs.max_patch_voxels=N` (prepares the folder again).
The `:smoke` variant (a few steps, tiny model) is what the tests run on a
generated folder.
"""
import ml_collections

from experiments.configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The folder run; `variant="smoke"` (`--config=...py:smoke`): seconds-long, a tiny
  model, 2 folds (for folders with few cases)."""
  c = common.base_config()
  c.dataset = "nnunet_raw"  # | "decathlon" | "lits"
  # Every option of the folder builders (medjax.data.builders.folder_datasets.FolderConfig);
  # unset (None): ndim 3, and the plan's patch_size and patch budget (max_patch_voxels).
  c.dataset_kwargs = common.dataset_options("nnunet_raw")
  c.dataset_kwargs.manual_dir = ""
  c.dataset_kwargs.fold = 0
  c.dataset_kwargs.num_folds = 5
  c.dataset_kwargs.skip_bad_cases = False  # True: leave bad cases out (printed, skipped_cases.json)
  # Empty: from the prepared dataset (config_data.resolve_dataset).
  c.num_classes = 0
  c.class_names = ()
  c.in_channels = 0
  c.spacing = ()
  c.patch_size = ()
  c.normalization = "none"  # normalised by the plan at prepare time
  c.cached_cases = 4
  c.flip_axes = (0, 1, 2)  # nnU-Net mirrors every axis
  c.global_batch_size = 2

  c.model.name = "unet"
  c.model.spatial_dims = 3
  c.model.features = ()
  c.model.kernel_sizes = ()
  c.model.pool_sizes = ()
  c.model.norm = "instance"  # nnU-Net's
  c.model.dropout = 0.0

  c.loss.name = "dice_ce"
  c.loss.batch = True
  c.loss.include_background = False
  c.num_steps = 1000
  c.checkpoint_every = 250
  c.eval.mode = "gaussian"
  c.eval.overlap = 0.5
  c.eval.batch_size = 2

  if variant == "smoke":
    c.dataset_kwargs.num_folds = 2
    c.model.features = (4, 8)
    common.smoke_schedule(c)
    c.num_steps = c.checkpoint_every = 3
    c.eval.surface_metrics = False
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}: expected '' or 'smoke'")
  return c
