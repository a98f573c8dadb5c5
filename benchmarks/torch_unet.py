"""The PyTorch baseline of `benchmarks.train_speed`: the same U-Net, loss and optimizer.

`TorchUNet` mirrors `medjax.models.UNet` with `padding="same"` (the default
configs): per level two (conv -> [norm] -> ReLU) units, max pooling down,
transposed convolutions with window == stride up, skip concatenation
`[skip, up]`, a 1x1 head; parameter counts are equal (checked by
`count_parameters` in the tests). The training step is the medjax step's:
forward, soft Dice (+ cross entropy for "dice_ce"), backward, Adam.

PyTorch is optional: it is imported when a function here is called, and
`require_torch()` turns its absence into a one-line `InputError`.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from benchmarks import timing, usage
from medjax.errors import InputError


def require_torch() -> Any:
  """The `torch` module, or `InputError` naming the missing optional extra."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise InputError("--torch: PyTorch is not installed (pip install torch; it is optional)") from None
  return torch


def _per_level(value, levels: int, nd: int) -> list[tuple[int, ...]]:
  values = [3] * levels if value is None else list(value)
  return [tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * nd for v in values]


def build_unet(model_cfg: dict, *, in_channels: int, num_classes: int):
  """A `torch.nn.Module` equal in architecture to `medjax.models.UNet(**model_cfg)`.

  Supports `padding="same"`, `norm` None/"batch"/"instance", `kernel_sizes`,
  `pool_sizes`, `dropout`; refuses (InputError) what it does not mirror.
  Input `(N, C, *S)` (channels first, PyTorch's layout) -> logits `(N, K, *S)`.
  """
  torch = require_torch()
  nn = torch.nn
  nd = int(model_cfg.get("spatial_dims", 3))
  features = [int(f) for f in model_cfg.get("features", (16, 32, 64, 128))]
  levels = len(features)
  for key, default in (("padding", "same"), ("double_in_level", False),
                       ("deep_supervision", False)):
    if model_cfg.get(key, default) != default:
      raise InputError(f"--torch: model.{key}={model_cfg[key]!r} has no PyTorch baseline "
                       f"(expected {default!r})")
  kernels = _per_level(model_cfg.get("kernel_sizes"), levels, nd)
  pools = _per_level(model_cfg.get("pool_sizes") or [2] * (levels - 1), levels - 1, nd)
  norm = model_cfg.get("norm")
  norm = None if norm is None or str(norm).lower() == "none" else norm
  upconv_bias = bool(model_cfg.get("upconv_bias", True))
  conv_cls = {2: nn.Conv2d, 3: nn.Conv3d}[nd]
  up_cls = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[nd]
  pool_cls = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[nd]
  norm_cls = {"batch": {2: nn.BatchNorm2d, 3: nn.BatchNorm3d},
              "instance": {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}}

  def block(cin: int, cout: int, k: tuple[int, ...]):
    layers = []
    for i in range(2):
      layers.append(conv_cls(cin if i == 0 else cout, cout, k, padding="same", bias=norm is None))
      if norm is not None:
        layers.append(norm_cls[norm][nd](cout, **({"affine": True} if norm == "instance" else {})))
      layers.append(nn.ReLU(inplace=True))
    if float(model_cfg.get("dropout", 0.0)) > 0:
      layers.append(nn.Dropout(float(model_cfg["dropout"])))
    return nn.Sequential(*layers)

  class TorchUNet(nn.Module):
    """medjax's UNet in PyTorch (see the module docstring)."""

    def __init__(self):
      super().__init__()
      self.down = nn.ModuleList()
      cin = in_channels
      for level in range(levels):
        self.down.append(block(cin, features[level], kernels[level]))
        cin = features[level]
      self.pools = nn.ModuleList(pool_cls(p, p) for p in pools)
      self.ups = nn.ModuleList()
      self.up_blocks = nn.ModuleList()
      for level in reversed(range(levels - 1)):
        self.ups.append(up_cls(cin, features[level], pools[level], stride=pools[level],
                               bias=upconv_bias))
        self.up_blocks.append(block(2 * features[level], features[level], kernels[level]))
        cin = features[level]
      self.head = conv_cls(cin, num_classes, 1)

    def forward(self, x):
      skips = []
      for level in range(levels - 1):
        x = self.down[level](x)
        skips.append(x)
        x = self.pools[level](x)
      x = self.down[-1](x)
      for up, blk, skip in zip(self.ups, self.up_blocks, reversed(skips)):
        x = blk(torch.cat([skip, up(x)], dim=1))
      return self.head(x)

  return TorchUNet()


def count_parameters(module) -> int:
  return int(sum(p.numel() for p in module.parameters()))


def soft_dice_ce(logits, labels, *, num_classes: int, name: str = "dice",
                 include_background: bool = True, batch: bool = False):
  """medjax's `soft_dice` (Milletari 2016; + `cross_entropy` for "dice_ce") in PyTorch.

  logits `(N, K, *S)`, labels `(N, *S)` int64 -> scalar.
  """
  torch = require_torch()
  probs = torch.softmax(logits, dim=1)
  onehot = torch.nn.functional.one_hot(labels, num_classes).movedim(-1, 1).to(probs.dtype)
  dims = tuple(range(2, logits.ndim))
  inter, psum, tsum = ((probs * onehot).sum(dims), probs.sum(dims), onehot.sum(dims))
  if not include_background:
    inter, psum, tsum = inter[:, 1:], psum[:, 1:], tsum[:, 1:]
  if batch:
    inter, psum, tsum = inter.sum(0), psum.sum(0), tsum.sum(0)
  loss = (1.0 - (2.0 * inter + 1e-5) / (psum + tsum + 1e-5)).mean()
  if name == "dice_ce":
    loss = loss + torch.nn.functional.cross_entropy(logits, labels)
  return loss


def build_model(model_cfg: dict, *, in_channels: int, num_classes: int) -> Any:
  """The PyTorch twin of a medjax model config (`model_cfg["name"]`: "unet" or "resnet")."""
  name = model_cfg.get("name", "unet")
  cfg = {k: v for k, v in model_cfg.items() if k != "name"}
  if name == "unet":
    return build_unet(cfg, in_channels=in_channels, num_classes=num_classes)
  if name == "resnet":
    from benchmarks import torch_resnet  # pylint: disable=import-outside-toplevel
    return torch_resnet.build_resnet(cfg, in_channels=in_channels, num_classes=num_classes)
  raise InputError(f"--torch: model.name={name!r} has no PyTorch baseline (unet, resnet)")


def time_training(model_cfg: dict, loss_cfg: dict, *, in_channels: int, num_classes: int,
                  batch_shape: Sequence[int], learning_rate: float, steps: int,
                  warmup: int = 1, seed: int = 0) -> dict:
  """Times PyTorch training steps of `build_model(model_cfg)` on one random batch `(N, *S)`.

  A segmentation model (U-Net) is trained with medjax's soft Dice (+ cross
  entropy for "dice_ce") on per-voxel labels, a classifier (ResNet) with cross
  entropy on per-image labels. Returns `{"first_step_s", "step_median_s",
  "step_p25_s", "step_p75_s", "step_min_s", "step_max_s", "steps", "params",
  "threads", "torch_version", "loss"}` and the per-step counters of
  `benchmarks.usage` (`user_s_median`, `sys_s_median`, `minor_faults_median`,
  `rss_after_steps_mb`).
  """
  torch = require_torch()
  torch.manual_seed(seed)
  model = build_model(model_cfg, in_channels=in_channels, num_classes=num_classes)
  opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
  rng = np.random.default_rng(seed)
  n, spatial = int(batch_shape[0]), tuple(int(s) for s in batch_shape[1:])
  x = torch.from_numpy(rng.normal(size=(n, in_channels) + spatial).astype(np.float32))
  classifier = model_cfg.get("name", "unet") != "unet"
  label_shape = (n,) if classifier else (n,) + spatial
  y = torch.from_numpy(rng.integers(0, num_classes, size=label_shape).astype(np.int64))
  name = "dice_ce" if loss_cfg.get("name") == "dice_ce" else "dice"
  kwargs = dict(num_classes=num_classes, name=name,
                include_background=bool(loss_cfg.get("include_background", True)),
                batch=bool(loss_cfg.get("batch", False)))
  if classifier:
    name = "ce"
    loss_fn = lambda logits, labels: torch.nn.functional.cross_entropy(logits, labels)
  else:
    loss_fn = lambda logits, labels: soft_dice_ce(logits, labels, **kwargs)

  def step() -> None:
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    loss.detach().item()

  model.train()
  first = usage.timed(step)["wall_s"]
  for _ in range(warmup):
    step()
  records = [usage.timed(step) for _ in range(steps)]
  times = np.asarray([r["wall_s"] for r in records])
  return dict(first_step_s=first, **timing.spread(times, prefix="step_"), steps=steps, **usage.summary(records),
              step_times_s=times.tolist(),
              rss_after_steps_mb=usage.rss_mb(), params=count_parameters(model),
              threads=torch.get_num_threads(), torch_version=torch.__version__, loss=name)

