"""Kernel microbenchmarks: conv3d, soft-Dice statistics, 2x up-convolution (`bench_kernels`).

`bench_kernels(ops, ...)` first measures the device's peak in the same process
(a large matmul -> TFLOP/s; a large copy -> GB/s), then for each named shape
and implementation: compile time, median time over `reps` runs after a warm-up
with the interquartile range and min/max (`benchmarks.timing`), achieved
TFLOP/s and GB/s with the percentage of the measured peaks, and the speedup
over the XLA baseline measured in the same process. `fwd` times the forward
pass, `fwd+bwd` the forward pass plus the gradients of every differentiable
input. With `torch=True`, each conv3d layer also in PyTorch on the same device
(cuDNN on a GPU, oneDNN on a CPU), channels-last 3D, in the same dtype
(`benchmarks.torch_conv3d`).

On CPU it compares XLA formulations (the Pallas kernels only run in the
interpreter there, which is never timed): conv3d `lax` (`lax.conv` + epilogue,
autodiff) vs `xla` (the per-direction im2col/shifted-matmul mix of
`medjax_kernels.conv_xla`); `upconv2x` (one matmul + depth-to-space) vs
`lax.conv_transpose`; soft-Dice `reference` (autodiff) vs
`soft_dice_stats(kernels="xla")`. On GPU/TPU it compares the Pallas
kernels with the XLA baseline.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing, torch_conv3d
from medjax import layers
from medjax.errors import InputError
from medjax.train.workdir import atomic_write_json
from medjax_kernels.conv3d import (bench_shapes as conv3d_shapes, api as conv3d_api, reference as
                                   conv3d_reference)
from medjax_kernels.soft_dice import (api as sd_api, bench_shapes as sd_shapes, reference as
                                      sd_reference)

OPS = ("conv3d", "soft_dice", "upconv")
DTYPES = ("float32", "bfloat16")


def _time_torch(spec: dict, dtype: str, direction: str, reps: int) -> dict:
  """The PyTorch layer timed like the JAX ones (`compile_s`: its first call)."""
  call, sync = torch_conv3d.layer_call(spec, dtype, direction)
  measured = timing.measure(call, reps=reps, sync=sync)
  measured["compile_s"] = measured["first_s"]
  return measured


def measure_peak(reps: int) -> dict:
  """Peak matmul TFLOP/s and copy GB/s of the default device, measured now."""
  accel = jax.default_backend() != "cpu"
  n = 8192 if accel else 2048
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  mm = timing.time_jitted(lambda a, b: a @ b, (a, b), reps=reps)
  # Copy bandwidth: the best over a few sizes (on CPU the smaller ones run from
  # cache, as do many of the small benchmark shapes).
  best, best_size = 0.0, 0
  for size in ((1 << 28,) if accel else (1 << 20, 1 << 22, 1 << 24)):
    x = jax.random.normal(jax.random.PRNGKey(2), (size,), jnp.float32)
    cp = timing.time_jitted(lambda x: x * 1.0001 + 1.0, (x,), reps=reps)
    if 2 * size * 4 / cp["min_s"] > best:
      best, best_size = 2 * size * 4 / cp["min_s"], size
  return dict(matmul_tflops=2 * n ** 3 / mm["min_s"] / 1e12,
              copy_gbs=best / 1e9, matmul_n=n, copy_bytes=best_size * 4)


def grad_fn(f: Callable, argnums) -> Callable:
  """fwd + gradients of `sum(f(...) * dy)` wrt `argnums` (dy: the last argument)."""
  def loss(*args):
    *a, dy = args
    return jnp.sum(f(*a).astype(jnp.float32) * dy.astype(jnp.float32))
  return jax.grad(loss, argnums=argnums)


def row(op, name, dtype, impl, direction, measured, flop, nbytes, peak):
  """One result row: the timing with achieved TFLOP/s and GB/s and their share of the peaks."""
  t = measured["median_s"]
  return dict(op=op, shape=name, dtype=dtype, implementation=impl, direction=direction,
              **measured, tflops=flop / t / 1e12, gbs=nbytes / t / 1e9,
              pct_peak_flops=100 * flop / t / 1e12 / peak["matmul_tflops"],
              pct_peak_bw=100 * nbytes / t / 1e9 / peak["copy_gbs"])


def bench_conv3d(shapes, dtype, reps, peak, emit, torch_baseline=False):
  accel = jax.default_backend() != "cpu"
  switch = "pallas" if accel else "xla"
  impls = {"lax": None, switch: switch}
  for name, spec in shapes.items():
    x, w, b, r, s = conv3d_shapes.make_inputs(spec, dtype)
    dy = jax.random.normal(jax.random.PRNGKey(9), conv3d_shapes.out_shape(spec)).astype(dtype)
    kw = dict(activation=spec["activation"], stride=spec["stride"], padding=spec["padding"])
    for direction in ("fwd", "fwd+bwd"):
      base = None
      for impl, kernels in impls.items():
        if kernels is None:
          f = lambda x, w, b, r, s: conv3d_reference.conv3d(x, w, b, prelu_slope=s, residual=r,
                                                            **kw)
        else:
          f = lambda x, w, b, r, s, k=kernels: conv3d_api.conv3d(
              x, w, b, prelu_slope=s, residual=r, kernels=k, **kw)
        args = (x, w, b, r, s)
        if direction == "fwd+bwd":
          argnums = (0, 1, 2) + ((3,) if r is not None else ()) + ((4,) if s is not None else ())
          f, args = grad_fn(f, argnums), args + (dy,)
        measured = timing.time_jitted(f, args, reps=reps)
        bwd = direction == "fwd+bwd"
        rr = row("conv3d", name, dtype, impl, direction, measured, conv3d_shapes.flops(spec, bwd),
                 conv3d_shapes.bytes_moved(spec, dtype, bwd), peak)
        base = base or rr["median_s"]
        rr["speedup_vs_xla"] = base / rr["median_s"]
        emit(rr)
      if torch_baseline:
        bwd = direction == "fwd+bwd"
        measured = _time_torch(spec, dtype, direction, reps)
        rr = row("conv3d", name, dtype, "torch", direction, measured,
                 conv3d_shapes.flops(spec, bwd), conv3d_shapes.bytes_moved(spec, dtype, bwd),
                 peak)
        rr["speedup_vs_xla"] = base / rr["median_s"]
        emit(rr)


UPCONV_SMALL = {"cpu_unet_up1_64to32_8x16x16": ((2, 8, 16, 16, 64), 32),
                "cpu_unet_up0_32to16_16x32x32": ((2, 16, 32, 32, 32), 16)}
UPCONV_ALL = {**UPCONV_SMALL,
              "unet3d_128_up2_256to128_16^3": ((2, 16, 16, 16, 256), 128),
              "unet3d_128_up1_128to64_32^3": ((2, 32, 32, 32, 128), 64),
              "unet3d_128_up0_64to32_64^3": ((2, 64, 64, 64, 64), 32)}


def bench_upconv(shapes, dtype, reps, peak, emit):
  conv_t = lambda x, w: jax.lax.conv_transpose(
      x, w, (2, 2, 2), "VALID", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  for name, (x_shape, c_out) in shapes.items():
    x = jax.random.normal(jax.random.PRNGKey(0), x_shape).astype(dtype)
    w = (jax.random.normal(jax.random.PRNGKey(1), (2, 2, 2, x_shape[-1], c_out)) * 0.1
         ).astype(dtype)
    y_shape = (x_shape[0],) + tuple(2 * d for d in x_shape[1:4]) + (c_out,)
    dy = jax.random.normal(jax.random.PRNGKey(2), y_shape).astype(dtype)
    flop = 2.0 * np.prod(x_shape) * 8 * c_out
    nbytes = ((np.prod(x_shape) + np.prod(y_shape) + 8 * x_shape[-1] * c_out)
              * jnp.dtype(dtype).itemsize)
    for direction in ("fwd", "fwd+bwd"):
      base = None
      for impl, f in (("lax.conv_transpose", conv_t), ("upconv2x", layers.upconv2x)):
        args = (x, w)
        bwd = direction == "fwd+bwd"
        if bwd:
          f, args = grad_fn(f, (0, 1)), args + (dy,)
        rr = row("upconv", name, dtype, impl, direction, timing.time_jitted(f, args, reps=reps),
                 flop * (3 if bwd else 1), nbytes * (2 if bwd else 1), peak)
        base = base or rr["median_s"]
        rr["speedup_vs_xla"] = base / rr["median_s"]
        emit(rr)


def bench_soft_dice(which, dtype, reps, peak, emit):
  accel = jax.default_backend() != "cpu"
  shapes = [s for s in sd_shapes.SHAPES if s[3] == dtype]
  if which == "small":  # CPU-sized: the 3D shapes at 48^3 instead of 96^3/128^3
    shapes = [(f"{n.split('_')[0]}_48^3_b2_k{k}_{dt}", (2, 48, 48, 48), k, dt)
              for n, shape, k, dt in shapes if len(shape) == 4 and n.startswith("unet3d")]
  for name, shape, k, dt in shapes:
    logits, labels = sd_shapes.make_inputs(shape, k, dt)
    switch = "pallas" if accel else "xla"
    impls = {"reference": lambda l, y: sd_reference.soft_dice_stats(l, y),
             switch: lambda l, y, k=switch: sd_api.soft_dice_stats(l, y, kernels=k)}
    for direction in ("fwd", "fwd+bwd"):
      base = None
      bwd = direction == "fwd+bwd"
      for impl, f in impls.items():
        if bwd:
          f = jax.grad(lambda l, y, f=f: sum(jnp.sum(t) for t in f(l, y)))
        nbytes = sd_shapes.bytes_moved(shape, k, dt, backward=bwd)
        voxels = np.prod(shape)
        measured = timing.time_jitted(f, (logits, labels), reps=reps)
        rr = row("soft_dice", name, dt, impl, direction, measured,
                 voxels * k * (10.0 if bwd else 6.0), nbytes, peak)
        base = base or rr["median_s"]
        rr["speedup_vs_xla"] = base / rr["median_s"]
        emit(rr)


HEADER = ("| op | shape | dtype | impl | dir | median ms | IQR ms | min–max ms | compile s "
          "| TFLOP/s | GB/s | % peak FLOP | % peak BW | speedup |")


def print_row(r):
  ms = lambda s: 1e3 * s
  print(f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['implementation']} | {r['direction']} "
        f"| {ms(r['median_s']):.1f} | {ms(r['p25_s']):.1f}–{ms(r['p75_s']):.1f} "
        f"| {ms(r['min_s']):.1f}–{ms(r['max_s']):.1f} | {r['compile_s']:.2f} "
        f"| {r['tflops']:.3f} | {r['gbs']:.1f} | {r['pct_peak_flops']:.1f} "
        f"| {r['pct_peak_bw']:.1f} | {r['speedup_vs_xla']:.2f}× |", flush=True)


def bench_kernels(ops: Sequence[str] = OPS, *, dtype: str = "float32", shapes: str = "small",
                  reps: int = 10, name_filter: Optional[str] = None, torch: bool = False,
                  json_path: Optional[str] = None) -> dict:
  """Prints the device, its peaks and one table row per measurement (see the module
  docstring) for `ops` in the order given; with `json_path`, rewrites that JSON file after
  every row (a run cut short keeps its rows). Returns what the JSON holds.

  Raises:
    InputError: an unknown op, dtype or shape set, or `reps` < 1 (one line).
  """
  unknown = sorted(set(ops) - set(OPS))
  if unknown:
    raise InputError(f"--ops: unknown {', '.join(unknown)}; expected some of {', '.join(OPS)}")
  if dtype not in DTYPES:
    raise InputError(f"--dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
  if shapes not in ("small", "all"):
    raise InputError(f"--shapes={shapes!r}: expected small or all")
  if reps < 1:
    raise InputError(f"--reps={reps}: expected at least 1")
  if torch:
    torch_conv3d.require_torch()
  peak = measure_peak(reps)
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
  print(f"peak: matmul {peak['matmul_tflops']:.3f} TFLOP/s (f32 {peak['matmul_n']}^2), "
        f"copy {peak['copy_gbs']:.1f} GB/s")
  print(HEADER)
  print("|" + "---|" * 14)
  rows = []

  def result() -> dict:
    return dict(peak=peak, backend=jax.default_backend(), jax=jax.__version__,
                device=jax.devices()[0].device_kind, rows=rows)

  def emit(r):  # print, and rewrite the JSON after every row: a run cut short keeps its rows
    rows.append(r)
    print_row(r)
    if json_path:
      atomic_write_json(json_path, result())

  select = lambda d: {k: v for k, v in d.items() if not name_filter or name_filter in k}
  for op in ops:  # in the order given
    if op == "conv3d":  # "all": the networks' layers first, the CPU-sized ones last
      named = (conv3d_shapes.SMALL if shapes == "small" else
               {**conv3d_shapes.UNET3D, **conv3d_shapes.VNET, **conv3d_shapes.SMALL})
      bench_conv3d(select(named), dtype, reps, peak, emit, torch)
    elif op == "upconv":
      bench_upconv(select(UPCONV_SMALL if shapes == "small" else UPCONV_ALL), dtype, reps, peak,
                   emit)
    else:
      bench_soft_dice(shapes, dtype, reps, peak, emit)
  if json_path:
    atomic_write_json(json_path, result())
  if torch:
    print_torch_ratios(rows)
  return result()


def torch_ratios(rows: list[dict]) -> list[dict]:
  """Per conv3d layer and direction: medjax's CPU/accelerator path ("xla" or "pallas")
  against PyTorch's conv3d, `ratio` = medjax time / PyTorch time (below 1: faster)."""
  out = []
  for r in rows:
    if r["op"] != "conv3d" or r["implementation"] != "torch":
      continue
    ours = [q for q in rows if q["op"] == "conv3d" and q["shape"] == r["shape"]
            and q["direction"] == r["direction"] and q["implementation"] in ("xla", "pallas")]
    if ours:
      out.append(dict(shape=r["shape"], direction=r["direction"], ours_s=ours[0]["median_s"],
                      torch_s=r["median_s"], ratio=ours[0]["median_s"] / r["median_s"]))
  return out


def print_torch_ratios(rows: list[dict]) -> None:
  """The `torch_ratios` table, one markdown row per layer and direction."""
  print("\n| layer | dir | medjax ms | PyTorch ms | medjax / PyTorch |\n|---|---|---|---|---|")
  for r in torch_ratios(rows):
    print(f"| {r['shape']} | {r['direction']} | {1e3 * r['ours_s']:.1f} "
          f"| {1e3 * r['torch_s']:.1f} | {r['ratio']:.2f}x |", flush=True)
