"""The MLPerf 3D U-Net in PyTorch, transcribed from the reference, and its training step.

`Unet3D` below is mlcommons/training `retired_benchmarks/unet3d/pytorch`
(`image_segmentation/pytorch` until its retirement) `model/unet3d.py` and
`model/layers.py` with the `mllog_event` calls removed and the
`weights_init_scale` loop left out (1.0 in the reference run); the loss is
`model/losses.py`'s `DiceCELoss` (Dice with smooth 1e-6 per sample and
foreground class, plus cross-entropy, halved), and the optimizer
`runtime/training.py`'s SGD (momentum 0.9, Nesterov). It is the baseline of
`benchmarks.mlperf_step` and the reference of the parity test
(`tests/test_models_mlperf_unet3d.py`), which copies its weights into
`medjax.models.MLPerfUNet3D` with `to_flax_variables`.

PyTorch is optional: `benchmarks.torch_unet.require_torch` turns its absence into
one error line.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.timing import spread
from benchmarks.torch_unet import require_torch


def build_unet3d(in_channels: int = 1, n_class: int = 3, filters=(32, 64, 128, 256, 320)):
  """`Unet3D(in_channels, n_class, normalization="instancenorm", activation="relu")` of the
  reference (`filters` other than its `[32, 64, 128, 256, 320]` only for small tests)."""
  torch = require_torch()
  nn = torch.nn

  def conv_block_factory(in_channels, out_channels, kernel_size=3, stride=1, padding=1,
                         conv_type="regular", norm_type="instancenorm", activation="relu"):
    conv = {"transpose": nn.ConvTranspose3d, "regular": nn.Conv3d}[conv_type]
    conv = conv(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                padding=padding, bias=norm_type == "none")
    normalization = (nn.InstanceNorm3d(out_channels, affine=True)
                     if norm_type == "instancenorm" else nn.Identity())
    activation = nn.ReLU() if activation == "relu" else nn.Identity()
    return nn.Sequential(conv, normalization, activation)

  class DownsampleBlock(nn.Module):
    def __init__(self, in_channels, out_channels):
      super().__init__()
      self.conv1 = conv_block_factory(in_channels, out_channels, stride=2)
      self.conv2 = conv_block_factory(out_channels, out_channels)

    def forward(self, x):
      return self.conv2(self.conv1(x))

  class UpsampleBlock(nn.Module):
    def __init__(self, in_channels, out_channels):
      super().__init__()
      self.upsample_conv = conv_block_factory(in_channels, out_channels, kernel_size=2, stride=2,
                                              padding=0, conv_type="transpose",
                                              norm_type="none", activation="none")
      self.conv1 = conv_block_factory(2 * out_channels, out_channels)
      self.conv2 = conv_block_factory(out_channels, out_channels)

    def forward(self, x, skip):
      x = self.upsample_conv(x)
      x = torch.cat((x, skip), dim=1)
      return self.conv2(self.conv1(x))

  class InputBlock(nn.Module):
    def __init__(self, in_channels, out_channels):
      super().__init__()
      self.conv1 = conv_block_factory(in_channels, out_channels)
      self.conv2 = conv_block_factory(out_channels, out_channels)

    def forward(self, x):
      return self.conv2(self.conv1(x))

  class OutputLayer(nn.Module):
    def __init__(self, in_channels, n_class):
      super().__init__()
      self.conv = nn.Conv3d(in_channels, n_class, kernel_size=1, stride=1, padding=0, bias=True)

    def forward(self, x):
      return self.conv(x)

  class Unet3D(nn.Module):
    def __init__(self, in_channels, n_class):
      super().__init__()
      self.filters = list(filters)
      self.inp = self.filters[:-1]
      self.out = self.filters[1:]
      input_dim = self.filters[0]
      self.input_block = InputBlock(in_channels, input_dim)
      self.downsample = nn.ModuleList(
          [DownsampleBlock(i, o) for i, o in zip(self.inp, self.out)])
      self.bottleneck = DownsampleBlock(self.filters[-1], self.filters[-1])
      upsample = [UpsampleBlock(self.filters[-1], self.filters[-1])]
      upsample.extend([UpsampleBlock(i, o)
                       for i, o in zip(reversed(self.out), reversed(self.inp))])
      self.upsample = nn.ModuleList(upsample)
      self.output = OutputLayer(input_dim, n_class)

    def forward(self, x):
      x = self.input_block(x)
      outputs = [x]
      for downsample in self.downsample:
        x = downsample(x)
        outputs.append(x)
      x = self.bottleneck(x)
      for upsample, skip in zip(self.upsample, reversed(outputs)):
        x = upsample(x, skip)
      return self.output(x)

  return Unet3D(in_channels, n_class)


def count_parameters(model) -> int:
  return sum(int(p.numel()) for p in model.parameters())


def to_flax_variables(model) -> dict:
  """The reference model's weights as `MLPerfUNet3D` variables (`{"params": ...}`).

  Convs: `(C_out, C_in, kD, kH, kW)` -> `(kD, kH, kW, C_in, C_out)`. Transposed
  convs: `(C_in, C_out, kD, kH, kW)` -> `(kD, kH, kW, C_in, C_out)` with the window
  flipped (`layers.upconv2x` applies it flipped, as `lax.conv_transpose`).
  Instance norms: weight/bias -> scale/bias.
  """
  def conv(c):
    return np.transpose(c.weight.detach().cpu().numpy(), (2, 3, 4, 1, 0))

  def units(block_a, block_b):
    out = {}
    for i, seq in enumerate((block_a, block_b)):
      out[f"conv{i}"] = {"kernel": conv(seq[0])}
      out[f"norm{i}"] = {"scale": seq[1].weight.detach().cpu().numpy(),
                         "bias": seq[1].bias.detach().cpu().numpy()}
    return out

  params = {"input_block": units(model.input_block.conv1, model.input_block.conv2)}
  for i, block in enumerate(model.downsample):
    params[f"down{i}"] = units(block.conv1, block.conv2)
  params["bottleneck"] = units(model.bottleneck.conv1, model.bottleneck.conv2)
  for i, block in enumerate(model.upsample):
    deconv = block.upsample_conv[0]
    w = np.transpose(deconv.weight.detach().cpu().numpy(), (2, 3, 4, 0, 1))[::-1, ::-1, ::-1]
    params[f"up{i}_deconv"] = {"kernel": np.ascontiguousarray(w),
                               "bias": deconv.bias.detach().cpu().numpy()}
    params[f"up{i}"] = units(block.conv1, block.conv2)
  params["output"] = {"kernel": conv(model.output.conv),
                      "bias": model.output.conv.bias.detach().cpu().numpy()}
  return {"params": params}


def dice_ce_loss(torch, logits, label):
  """`model/losses.py` `DiceCELoss(to_onehot_y=True, use_softmax=True, layout="NCDHW",
  include_background=False)`: `(mean(1 - dice) + cross_entropy) / 2`, Dice per sample
  and foreground class with smooth 1e-6 in numerator and denominator."""
  ce = torch.nn.functional.cross_entropy(logits, label.long())
  prob = torch.softmax(logits, dim=1)
  target = torch.nn.functional.one_hot(label.long(), num_classes=logits.shape[1])
  target = target.permute(0, 4, 1, 2, 3).float()
  prob, target = prob[:, 1:], target[:, 1:]
  axes = (2, 3, 4)
  dice = (2.0 * (prob * target).sum(axes) + 1e-6) / (target.sum(axes) + prob.sum(axes) + 1e-6)
  return (torch.mean(1.0 - dice) + ce) / 2


def bench_step(*, patch: int = 128, batch: int = 2, steps: int = 5, warmup: int = 2,
               amp: bool = True, device: str = "auto", threads: int = 0, seed: int = 0,
               filters=(32, 64, 128, 256, 320)) -> dict[str, Any]:
  """Median time of the reference training step (forward, DiceCE, backward, SGD with
  Nesterov momentum 0.9, lr 0.8) on random data: samples/s and the peak device memory.

  `amp`: `torch.autocast` to bfloat16 on CUDA (the reference's `--amp` uses float16
  with a GradScaler; bf16 needs no scaler and is what the medjax step runs).
  """
  torch = require_torch()
  if threads:
    torch.set_num_threads(threads)
  dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto"
                     else device)
  torch.manual_seed(seed)
  model = build_unet3d(filters=tuple(filters)).to(dev)
  opt = torch.optim.SGD(model.parameters(), lr=0.8, momentum=0.9, nesterov=True)
  rng = np.random.default_rng(seed)
  x = torch.from_numpy(rng.normal(size=(batch, 1, patch, patch, patch)).astype(np.float32)).to(dev)
  y = torch.from_numpy(rng.integers(0, 3, size=(batch, patch, patch, patch)).astype(np.int64)).to(dev)
  use_amp = amp and dev.type == "cuda"

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
      loss = dice_ce_loss(torch, model(x).float(), y)
    loss.backward()
    opt.step()
    return loss

  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
  if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  for _ in range(warmup):
    step()
  sync()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - t)
  med = float(np.median(times))
  return {"framework": "pytorch", "torch": torch.__version__, "device": str(dev),
          "dtype": "bfloat16 autocast" if use_amp else "float32", "patch": patch, "batch": batch,
          "step_s": med, "step_spread": spread(times, prefix="step_"), "samples_per_s": batch / med,
          "peak_device_bytes": (int(torch.cuda.max_memory_allocated()) if dev.type == "cuda"
                                else None),
          "parameters": count_parameters(model)}
