"""Transfer with few labels: pretrain on `patches2d`, transfer to patches generated differently.

Source task: background / organ / tumour at the centre of a 32x32 patch of
`synthetic_organs/patches2d` (3000 training patches, 0.8 mm, generator seed 0).
Target task: the same three classes on patches cut from images generated
with another generator seed (50000: no source image is reused) at another
voxel spacing: 1.2 mm (default) or 2.0 mm (`,far`) instead of 0.8 mm, so
every structure is 1.5x / 2.5x smaller in pixels and a 32x32 patch covers
38 / 64 mm instead of 26 mm (contrast and noise per pixel as generated,
nothing made easier), with only 50, 200 or 1000 labelled training patches
(`dataset_kwargs.split_sizes.train`); test: the same 1000 target patches for
every budget. Three ways to learn the target (variants of this file):

* `scratch`: `task="classification"` from a fresh initialisation;
* `linear_probe`: `task="linear_probe"`, the pretrained network frozen
  (BatchNorm in inference mode), only `head` trained (Azizpour et al. 2016);
* `finetune`: `task="finetune"`, every parameter trained from the pretrained
  ones (Tajbakhsh et al. 2016).

The network is a small ResNet (basic blocks (1, 1, 1), 16..64 channels, 3x3
stride-2 stem without pooling, BatchNorm; 77,299 parameters). Pretraining:
1500 steps of 32. All target runs: 300 steps of 32 (Adam, poly schedule, 20
warm-up steps); learning rate 1e-3, 1e-2 for the probe (one linear layer on
fixed features); no tuning per arm.

  # 1. pretrain (source): 98 s of training; test accuracy 0.946, AUC 0.990-0.995
  python -m experiments.main --config=experiments/configs/transfer_patches2d.py:pretrain \
      --workdir=runs/transfer/pretrain
  # 2. the three arms x 3 label budgets x 3 seeds (~70 s a run); add ',far' for 2.0 mm
  python -m experiments.sweep --config=experiments/configs/transfer_patches2d.py:scratch \
      --sweep='dataset_kwargs.split_sizes.train=50,200,1000' --seeds=3 \
      --workdir=runs/transfer/scratch
  for arm in linear_probe finetune; do
    python -m experiments.sweep --config=experiments/configs/transfer_patches2d.py:$arm \
        --sweep='dataset_kwargs.split_sizes.train=50,200,1000' --seeds=3 \
        --set=init_from=runs/transfer/pretrain --workdir=runs/transfer/$arm
  done
  # the pretrained network on the target without any target training (head at lr 0):
  python -m experiments.main --config=experiments/configs/transfer_patches2d.py:linear_probe \
      --config.init_from=runs/transfer/pretrain --config.optimizer.learning_rate=0 \
      --config.num_steps=1 --workdir=runs/transfer/zero_shot

Results (2-core CPU, one seed per cell; README "Transfer"):
`experiments/results/transfer_patches2d_*`.
At 1.2 mm the pretrained network already scores 0.951 on the target without
any target label: that target is no real shift. `,far` (2.0 mm) is: 0.739.
(The `,smoke` suffix, e.g. `:finetune,smoke`, gives a seconds-long run.)
"""
import ml_collections

from experiments.configs import common

ARMS = ("pretrain", "scratch", "linear_probe", "finetune")
TARGET_SEED = 50_000  # train images 50000.., far from the source's 0.. (and < validation's 100000)
TARGET_SPACING = (1.2, 1.2)
FAR_TARGET_SPACING = (2.0, 2.0)  # ",far": a real domain shift (the source model drops to 0.74)


def get_config(variant: str = "pretrain") -> ml_collections.ConfigDict:
  """`variant`: one of `ARMS`, optionally with ",far" (target at 2.0 mm) and ",smoke"."""
  parts = [p for p in variant.split(",") if p]
  arms = [p for p in parts if p in ARMS]
  unknown = [p for p in parts if p not in ARMS + ("far", "smoke")]
  if unknown or len(arms) != 1:
    raise ValueError(f"config variant {variant!r}: expected one of {', '.join(ARMS)} "
                     "(optionally ',far' and ',smoke')")
  arm = arms[0]
  c = common.patch_classification_2d()
  c.model = ml_collections.ConfigDict(dict(
      name="resnet", spatial_dims=2, stage_sizes=(1, 1, 1), block="basic", width=16,
      stem_kernel=3, stem_pool=False, norm="batch", dropout=0.0))
  c.global_batch_size = 32
  c.checkpoint_every = 500
  c.log_every = 50
  c.eval.batch_size = 500
  if arm == "pretrain":
    c.num_steps = 1500
  else:
    c.dataset_kwargs.seed = TARGET_SEED
    spacing = FAR_TARGET_SPACING if "far" in parts else TARGET_SPACING
    c.dataset_kwargs.spacing = spacing
    c.spacing = spacing
    c.dataset_kwargs.split_sizes = {"train": 200, "validation": 100, "test": 1000}
    c.num_steps = 300
    c.checkpoint_every = 300
    c.log_every = 25
  if arm == "linear_probe":
    c.task = "linear_probe"
    c.optimizer.trainable = ("head",)
    c.optimizer.learning_rate = 1e-2
  elif arm == "finetune":
    c.task = "finetune"
  if "smoke" in parts:
    common.smoke(c)
    if arm != "pretrain":
      c.dataset_kwargs.seed = TARGET_SEED
  return c
