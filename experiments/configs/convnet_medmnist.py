"""ConvNet (LeNet-style) classifier on a MedMNIST v2 dataset from its local `.npz`.

  python -m experiments.main --config=experiments/configs/convnet_medmnist.py:pneumoniamnist \
      --config.dataset_kwargs.manual_dir=DIR --workdir=runs/pneumoniamnist
  python -m experiments.main --config=experiments/configs/convnet_medmnist.py:organmnist3d,64 \
      --config.dataset_kwargs.manual_dir=DIR --workdir=runs/organmnist3d_64

`DIR` holds MedMNIST's files as distributed (`pneumoniamnist.npz`,
`organmnist3d_64.npz`, ...; `medjax.data.builders.medmnist`); the official
train/val/test splits are used as they are. The variant is the flag, then
optionally the size (28 by default; 64, 128, 224 in 2D, 64 in 3D) and
``smoke`` (a seconds-long run). Grey 2D flags, the RGB flags (pathmnist,
dermamnist, retinamnist, bloodmnist: `in_channels=3`) and the 3D flags train;
the multi-label chestmnist is refused, because the classification task takes
one class per image. Images are uint8 0..255, scaled as `(x - 127.5) / 64`
(`intensity_stats`, every channel alike); no flips, since organ labels such as
left and right kidney are not mirror-symmetric.

Not measured yet: no accuracy is claimed for any flag.
"""
import ml_collections

from experiments.configs import common
from medjax.data.builders import medmnist


def get_config(variant: str = "pneumoniamnist") -> ml_collections.ConfigDict:
  """`variant`: "<flag>[,<size>][,smoke]", e.g. "organamnist,64" or "nodulemnist3d,smoke"."""
  parts = [p for p in variant.split(",") if p]
  flags = [p for p in parts if p in medmnist.FLAGS]
  sizes = [int(p) for p in parts if p.isdigit()]
  unknown = sorted(set(parts) - set(flags) - {str(s) for s in sizes} - {"smoke"})
  if unknown or len(flags) > 1 or len(sizes) > 1:
    raise ValueError(f"unknown config variant {unknown or parts}: expected one MedMNIST flag of "
                     f"{sorted(medmnist.FLAGS)}, optionally a size and 'smoke'")
  flag = flags[0] if flags else "pneumoniamnist"
  info = medmnist.FLAGS[flag]
  size = sizes[0] if sizes else 28
  if size not in medmnist.SIZES[info.ndim]:
    raise ValueError(f"unknown config variant: size {size} of {flag}; expected one of "
                     f"{medmnist.SIZES[info.ndim]}")
  if info.task.startswith("multi-label"):
    raise ValueError(f"unknown config variant {flag}: a multi-label MedMNIST flag needs a "
                     "multi-label classification task (not available)")
  c = common.patch_classification_2d()
  c.dataset = f"medmnist/{flag}"
  c.dataset_kwargs = common.dataset_options("medmnist")
  c.dataset_kwargs.manual_dir = ""
  c.dataset_kwargs.size = size
  c.num_classes = info.num_classes
  c.class_names = tuple(f"class_{i}" for i in range(info.num_classes))
  c.in_channels = info.channels
  c.intensity_stats = (127.5, 64.0)
  c.spacing = (1.0,) * info.ndim
  c.patch_size = (size,) * info.ndim
  c.flip_axes = ()
  c.model.name = "convnet"
  c.model.variant = "lenet"
  c.model.spatial_dims = info.ndim
  c.model.dropout = 0.1
  c.model.global_pool = ml_collections.FieldReference(None, field_type=str)
  if "smoke" in parts:
    common.smoke_schedule(c)
  return c
