"""The MLPerf Training 3D U-Net benchmark on KiTS19 (the reference's recipe).

Command (a GPU node; `KITS19` is a clone of github.com/neheller/kits19 with its imaging
fetched, or its `data/` folder):
  pip install -e ".[gpu,mlperf]"
  python -m experiments.main --config=experiments/configs/mlperf_unet3d_kits19.py \
      --config.dataset_kwargs.manual_dir=KITS19/data --workdir=runs/mlperf_unet3d

The reference is mlcommons/training `image_segmentation/pytorch` (retired to
`retired_benchmarks/unet3d/pytorch`): `run_and_time.sh`, `runtime/arguments.py`,
`runtime/training.py`, `runtime/inference.py`, `model/losses.py`. Its recipe:

* data: the `kits19` builder (MLPerf's preprocessing, 168 training cases, the 42
  `evaluation_cases.txt` cases as `validation`);
* model: `MLPerfUNet3D` (filters 32-64-128-256-320, instance norm, 31,190,243 parameters);
* batch 2 per device (`global_batch_size` = 2 x devices), 128^3 patches, balanced crops
  with oversampling 0.4, flips / brightness / noise (`mlperf_sampler`);
* loss `DiceCELoss`: `(mean over samples and foreground classes of 1 - Dice + CE) / 2`,
  Dice per sample with smooth 1e-6 (`dice_ce` with weights 0.5 / 0.5);
* SGD, momentum 0.9, Nesterov, no weight decay, learning rate 0.8 after a 200-epoch
  warm-up from 1e-4 (set once per epoch); no decay;
* evaluation from epoch 1000 every 20 epochs (both scaled as `CEILING(E * 168 /
  samples_per_epoch)` for other global batch sizes), sliding windows of 128^3, overlap
  0.5, the reference's Gaussian weights; stop at mean Dice (kidney, tumour) 0.908 or at
  the epoch limit (10000 at 168 samples per epoch, the reference README's rule;
  `run_and_time.sh` uses 4000).

medjax's own choices: bfloat16 activations (`dtype`; the reference runs float32 or float16
AMP), the Pallas kernels on GPU/TPU (`kernels="auto"`). The MLPerf log is
`RUN/mlperf.log` (check it with `python -m mlperf_logging.compliance_checker --ruleset
4.0.0 RUN/mlperf.log`); `RUN/eval.json` holds medjax's evaluation of the final model on
the 42 cases.

Runtime and result: not measured yet (no GPU run). Predicted from the compiled program
and published figures: `benchmarks/RESULTS.md` ("MLPerf 3D U-Net"). The reference
converges in a median of 2640 epochs at batch 2 (MLPerf's reference convergence points,
`rcps_unet3d.json`, `unet3d_ref_2_fp32`, 87 runs).

`:smoke`: the same run on a tiny generated KiTS19 folder (tests): 32^3 patches, a narrow
network, evaluations from epoch 2, a few epochs.
"""
import ml_collections

from experiments.configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = common.base_config()
  c.task = "mlperf_unet3d"
  c.dataset = "kits19"
  c.dataset_kwargs = common.dataset_options("kits19")  # None: the builder's value (min_shape 128^3)
  c.dataset_kwargs.manual_dir = ""
  c.dataset_kwargs.allow_missing_cases = False
  c.num_classes = 3
  c.class_names = ("background", "kidney", "tumour")
  c.spacing = (1.6, 1.2, 1.2)
  c.normalization = "none"  # normalised at prepare time (clip, mean 101, std 76.9)
  c.patch_size = (128, 128, 128)
  c.global_batch_size = 2  # x the number of devices for a multi-device run
  c.cached_cases = 168  # every training case decoded in memory (~9 GB), as the page cache
  c.data_workers = 8

  c.model.name = "mlperf_unet3d"
  c.model.filters = (32, 64, 128, 256, 320)
  c.model.norm = "instance"
  c.dtype = "bfloat16"

  c.loss = ml_collections.ConfigDict(dict(
      name="dice_ce", dice_weight=0.5, ce_weight=0.5, include_background=False, batch=False,
      smooth_nr=1e-6, smooth_dr=1e-6))
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.8
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True
  c.optimizer.schedule = "constant"
  c.optimizer.grad_clip_norm = 0.0
  c.optimizer.warmup_init = 1e-4  # --init_learning_rate
  c.optimizer.warmup_every = 0  # filled in: one epoch's steps
  c.optimizer.weight_decay = 0.0

  c.epochs = ml_collections.ConfigDict(dict(
      max=10000, warmup=200, reference_samples=168,
      # filled in when the run starts (medjax.train.epochs.resolve)
      train_cases=0, steps_per_epoch=0, samples_per_epoch=0, max_epochs=0))
  c.mlperf = ml_collections.ConfigDict(dict(
      target=0.908, eval_start=1000, eval_every=20, oversampling=0.4,
      org="medjax", division="closed", status="research", platform=""))
  c.num_steps = 0  # epochs.max_epochs x steps per epoch
  c.checkpoint_every = 1000
  c.log_every = 50
  c.flip_axes = ()  # the sampler flips (probability 1/3 per axis)

  c.eval.split = "validation"
  c.eval.mode = "gaussian_cbrt"
  c.eval.overlap = 0.5
  c.eval.batch_size = 2
  c.eval.postprocess = False
  c.eval.surface_metrics = True

  if variant == "smoke":
    c.dataset_kwargs.allow_missing_cases = True
    c.dataset_kwargs.min_shape = (32, 32, 32)
    c.patch_size = (32, 32, 32)
    c.global_batch_size = 4  # the tests' 4 CPU devices
    c.model.filters = (4, 8, 8, 8, 8)
    c.dtype = "float32"
    c.cached_cases = 8
    c.data_workers = 0
    c.epochs.max = 6
    c.epochs.warmup = 2
    c.epochs.reference_samples = 0
    c.mlperf.eval_start = 2
    c.mlperf.eval_every = 2
    c.checkpoint_every = 4
    c.log_every = 1
    c.progress_bar = False
    c.eval.batch_size = 2
    c.eval.surface_metrics = False
    c.eval.report_cases = 1
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}: expected '' or 'smoke'")
  return c
