"""The PyTorch baseline of `benchmarks.bench_train --torch` for `model.name="resnet"`.

`build_resnet(model_cfg, ...)` mirrors `medjax.models.ResNet` (He et al. 2016,
torchvision's v1.5 layout): a stem conv (`stem_kernel`, stride 2, no bias) ->
BatchNorm -> ReLU (-> 3x3/2 max pool with `stem_pool`), stages of basic or
bottleneck blocks (the first block of stages 2.. strided, a 1x1 projection +
BatchNorm on a shortcut whose stride or width changes), global average
pooling, dropout, a dense head. Parameter counts are equal (checked in the
tests and in every benchmark run). Strided convs pad `kernel // 2` on both
sides, torchvision's grid (medjax's default "same" pads one more at the end
for even sizes): the same shapes and work, a grid one pixel apart.
"""
from __future__ import annotations

from typing import Any

from benchmarks.torch_unet import require_torch
from medjax.errors import InputError


def build_resnet(model_cfg: dict, *, in_channels: int, num_classes: int) -> Any:
  """A `torch.nn.Module` equal in architecture to `medjax.models.ResNet(**model_cfg)`.

  Input `(N, C, *S)` (channels first) -> logits `(N, K)`. Supports 2D/3D,
  basic/bottleneck blocks, `norm` "batch"/None; refuses (InputError) the rest.
  """
  torch = require_torch()
  nn = torch.nn
  nd = int(model_cfg.get("spatial_dims", 2))
  norm = model_cfg.get("norm", "batch")
  norm = None if norm is None or str(norm).lower() == "none" else norm
  if norm not in (None, "batch"):
    raise InputError(f"--torch: model.norm={norm!r} has no PyTorch ResNet baseline "
                     "(expected 'batch' or None)")
  conv_cls = {2: nn.Conv2d, 3: nn.Conv3d}[nd]
  bn_cls = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[nd]
  width = int(model_cfg.get("width", 64))
  bottleneck = model_cfg.get("block", "basic") == "bottleneck"
  expansion = 4 if bottleneck else 1

  def conv_norm(cin: int, cout: int, k: int, stride: int = 1, relu: bool = True):
    layers = [conv_cls(cin, cout, k, stride=stride, padding=k // 2, bias=norm is None)]
    if norm is not None:
      layers.append(bn_cls(cout))
    if relu:
      layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)

  class Block(nn.Module):
    """A basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1 x4) block with its shortcut."""

    def __init__(self, cin: int, features: int, stride: int):
      super().__init__()
      out = features * expansion
      if bottleneck:
        self.body = nn.Sequential(conv_norm(cin, features, 1), conv_norm(features, features, 3, stride),
                                  conv_norm(features, out, 1, relu=False))
      else:
        self.body = nn.Sequential(conv_norm(cin, features, 3, stride),
                                  conv_norm(features, features, 3, relu=False))
      self.shortcut = (conv_norm(cin, out, 1, stride, relu=False)
                       if stride != 1 or cin != out else nn.Identity())

    def forward(self, x):
      return torch.relu(self.body(x) + self.shortcut(x))

  class TorchResNet(nn.Module):
    """medjax's ResNet in PyTorch (see the module docstring)."""

    def __init__(self):
      super().__init__()
      stem = [conv_norm(in_channels, width, int(model_cfg.get("stem_kernel", 7)), 2)]
      if model_cfg.get("stem_pool", True):
        stem.append({2: nn.MaxPool2d, 3: nn.MaxPool3d}[nd](3, 2, 1))
      self.stem = nn.Sequential(*stem)
      blocks, cin = [], width
      for i, n in enumerate(model_cfg.get("stage_sizes", (2, 2, 2, 2))):
        for j in range(int(n)):
          blocks.append(Block(cin, width * 2 ** i, 2 if i > 0 and j == 0 else 1))
          cin = width * 2 ** i * expansion
      self.blocks = nn.Sequential(*blocks)
      self.dropout = nn.Dropout(float(model_cfg.get("dropout", 0.0)))
      self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
      x = self.blocks(self.stem(x))
      return self.head(self.dropout(x.mean(dim=tuple(range(2, x.ndim)))))

  return TorchResNet()
