"""ResNet-18-style classifier of the patch centre on `synthetic_organs/patches2d` (He 2016).

Background / organ / tumour at the centre of a 32x32 patch (3 balanced
classes, `medjax.data.phantoms.organ_patches`). A small ResNet-18: basic blocks
(2, 2, 2, 2), width 32 (32..256 channels), a 3x3 stride-2 stem without max
pooling (the paper's 7x7/2 conv + pool would leave 8x8 after the stem).
`:3d` is the same on `synthetic_organs/patches3d` (16x32x32 patches,
`spatial_dims=3`).

  python -m experiments.main --config=experiments/configs/resnet_patches2d.py --workdir=runs/resnet_patches2d
  python -m experiments.main --config=experiments/configs/resnet_patches2d.py:3d --workdir=runs/resnet_patches3d

Expected (2-core CPU, jax 0.10.2, one seed, dataset prepared), 2D: 1000 steps
of 64 (21 epochs of the 3000 training patches), ~5 min of CPU time; test
accuracy 0.96 on the 1000 test patches, one-vs-rest AUC 0.99-1.00, ECE 0.03: as
the VGG of `convnet_synthetic2d.py:vgg,patches`, more than the LeNet (0.92) and
the MLP (0.90).

3D (`:3d`: width 16, 400 steps of 32 = 4.3 epochs): ~8 min of training, test
accuracy 0.96, AUC 0.99-1.00, ECE 0.01. One seed, fewer steps and another width
than the 2D run: not a 2D-vs-3D comparison. Details:
`experiments/results/resnet_patches2d.md`.
"""
import ml_collections

from experiments.configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """`variant`: "" (2D patches), "3d" (3D patches), with "smoke" for a seconds-long run."""
  parts = set(filter(None, variant.split(",")))
  unknown = parts - {"3d", "smoke"}
  if unknown:
    raise ValueError(f"unknown config variant {sorted(unknown)}: expected 3d, smoke")
  c = common.patch_classification_3d() if "3d" in parts else common.patch_classification_2d()
  c.model.name = "resnet"
  c.model.spatial_dims = len(c.patch_size)
  c.model.stage_sizes = (2, 2, 2, 2)
  c.model.block = "basic"
  c.model.width = 32
  c.model.stem_kernel = 3
  c.model.stem_pool = False
  c.model.norm = "batch"
  c.model.dropout = 0.0
  if "3d" in parts:
    # 16x32x32 patches cost ~8x the voxels and 3x the kernel of 2D: half the
    # width and 400 steps keep the run within minutes on a CPU.
    c.model.width = 16
    c.num_steps = 400
  if "smoke" in parts:
    common.smoke(c)
    c.model.stage_sizes = (1, 1)  # one block in two stages: compiles in seconds
    c.model.width = 8
  return c
