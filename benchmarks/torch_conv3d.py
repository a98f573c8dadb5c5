"""The PyTorch baseline of `benchmarks.bench_kernels --torch`: one conv3d layer.

`conv_fn(spec, dtype)` returns the layer of a `medjax_kernels.conv3d.bench_shapes`
entry in PyTorch (cuDNN on a GPU, oneDNN on a CPU): `torch.nn.functional.conv3d`
with bias, the residual added, then the activation (PReLU with its per-channel
slope), on channels-last 3D tensors (`torch.channels_last_3d`, the layout cuDNN's
fastest 3D kernels take and the one medjax's `(N, D, H, W, C)` arrays have) in the
benchmark's dtype. `layer_call` gives the forward pass, or the forward pass plus
the gradients of every input (`sum(y * dy)` backwards), as a call that
`benchmarks.timing.measure` times the way it times JAX.

PyTorch is optional (`torch_unet.require_torch`).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from benchmarks import timing
from benchmarks.torch_unet import require_torch


def _device(torch) -> Any:
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_inputs(spec: dict, dtype: str, seed: int = 0) -> dict[str, Any]:
  """x, w, b, residual, slope, dy as torch tensors (channels-last 3D; values as
  `bench_shapes.make_inputs` draws them, not the same numbers)."""
  torch = require_torch()
  from medjax_kernels.conv3d import bench_shapes  # pylint: disable=import-outside-toplevel
  dev, dt = _device(torch), getattr(torch, dtype)
  g = torch.Generator().manual_seed(seed)
  c_in, c_out, k = spec["x"][-1], spec["c_out"], spec["k"]
  out = bench_shapes.out_shape(spec)
  ncdhw = lambda shape: tuple(shape[:1]) + tuple(shape[-1:]) + tuple(shape[1:-1])
  rand = lambda shape, scale=1.0: (torch.randn(shape, generator=g) * scale)
  cl = lambda t: t.to(dev, dt).contiguous(memory_format=torch.channels_last_3d)
  return dict(
      x=cl(rand(ncdhw(spec["x"]))),
      w=cl(rand((c_out, c_in, k, k, k), 1 / np.sqrt(k ** 3 * c_in))),
      b=rand((c_out,), 0.1).to(dev, dt),
      r=cl(rand(ncdhw(out))) if spec["residual"] else None,
      s=torch.full((c_out,), 0.25).to(dev, dt) if spec["activation"] == "prelu" else None,
      dy=cl(rand(ncdhw(out))))


def conv_fn(spec: dict) -> Callable[..., Any]:
  """`f(x, w, b, r, s)`: conv3d + bias (+ residual) -> activation, in PyTorch."""
  torch = require_torch()
  fn = torch.nn.functional
  from medjax_kernels import conv_xla  # pylint: disable=import-outside-toplevel
  k, stride = spec["k"], spec["stride"]
  pads = conv_xla.explicit_padding(spec["x"][1:4], (k,) * 3, (stride,) * 3, spec["padding"])
  even = all(lo == hi for lo, hi in pads)
  torch_pads = [p for lo_hi in reversed(pads) for p in lo_hi]  # F.pad: last axis first

  def f(x, w, b, r, s):
    if even:
      y = fn.conv3d(x, w, b, stride=stride, padding=tuple(lo for lo, _ in pads))
    else:  # XLA's SAME puts the odd pixel high; conv3d's padding= is symmetric
      y = fn.conv3d(fn.pad(x, torch_pads), w, b, stride=stride)
    if r is not None:
      y = y + r
    act = spec["activation"]
    if act == "relu":
      y = fn.relu(y)
    elif act == "leaky_relu":
      y = fn.leaky_relu(y, 0.01)
    elif act == "prelu":
      y = fn.prelu(y, s)
    return y
  return f


def layer_call(spec: dict, dtype: str, direction: str) -> tuple[Callable[[], Any], Callable]:
  """`(call, sync)` for `benchmarks.timing.measure`: `call()` runs the layer forward
  ("fwd", without autograd) or forward plus the gradients of every input ("fwd+bwd",
  `sum(y * dy)` backwards) on fixed inputs; `sync` waits for the device."""
  torch = require_torch()
  t = make_inputs(spec, dtype)
  f = conv_fn(spec)
  args = [t["x"], t["w"], t["b"], t["r"], t["s"]]
  if direction == "fwd":
    def call():
      with torch.no_grad():
        return f(*args)
  else:
    leaves = [a.detach().requires_grad_(True) if a is not None else None for a in args]

    def call():
      for a in leaves:
        if a is not None:
          a.grad = None
      y = f(*leaves)
      y.backward(t["dy"])
      return y
  return call, timing.torch_sync(torch)
