"""Host memory and speed of sliding-window inference (`medjax.inference.sliding_window`).

`bench_inference(...)` builds one random volume `(1, *shape, C)` float32 and a
window predictor, runs the predictor once on a batch of windows (so the
compilation and the model's buffers belong to the baseline), then times
`sliding_window` over the whole volume `volumes` times and reports:

* `peak_beyond_input_bytes`: the peak resident set size of the process during
  the call minus its resident set size just before it (Linux: the peak counter
  `VmHWM` of `/proc/self/status`, reset through `/proc/self/clear_refs`).
  The input volume and the model are already resident before the call, so
  this is what inference adds: the accumulators, the windows in flight and
  the returned array (which is counted: it is what the caller gets);
* `bytes_per_voxel`: that peak over the number of voxels;
* `output_bytes`: the size of the returned array(s);
* `seconds_per_volume` (median) and `volumes_per_minute`.

Predictors (`predictor=`), functions of windows `(B, *roi, C)` -> softmax
probabilities `(B, *roi, K)`, jitted JAX functions except "fixed":

* "linear": a fixed per-voxel linear map C -> K, then softmax (costs almost
  nothing, so the run measures the window machinery);
* "conv": one fixed 3x3x3 convolution C -> K (`medjax_kernels.conv3d`), then softmax;
* "fixed": returns one precomputed batch of probabilities (a numpy array)
  whatever the windows: no model at all, so the run times the sliding window
  alone (window extraction, blending, emission);
* "default": the 3D U-Net of `experiments/configs/unet3d_synthetic.py`,
  randomly initialised (the weights change neither memory nor speed).

Run as a script (`python -m benchmarks.inference_memory --help`); numbers
from a shared machine are noisy, the memory numbers are not.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from medjax import config_files, inference

_STATUS = "/proc/self/status"


def _status_bytes(field: str) -> int:
  """A `kB` field of `/proc/self/status` (e.g. "VmRSS", "VmHWM") in bytes."""
  with open(_STATUS) as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise RuntimeError(f"{_STATUS} has no {field} field (Linux only)")


def reset_peak_rss() -> int:
  """Resets the process's peak-RSS counter; returns the current RSS in bytes."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
  return _status_bytes("VmRSS")


def peak_rss() -> int:
  """The process's peak RSS in bytes since the last `reset_peak_rss`."""
  return _status_bytes("VmHWM")


def _softmax(logits: jax.Array) -> jax.Array:
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def linear_predictor(channels: int, classes: int) -> Callable:
  """Windows `(B, *roi, C)` -> softmax of a fixed per-voxel linear map, `(B, *roi, K)`."""
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(channels, classes)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(classes,)), jnp.float32)
  return jax.jit(lambda x: _softmax(x @ w + b))


def conv_predictor(channels: int, classes: int) -> Callable:
  """Windows `(B, D, H, W, C)` -> softmax of one fixed 3x3x3 ("SAME") convolution,
  `medjax_kernels.conv3d` (on CPU the library's rule: shifted multiply-adds for a
  few input channels, far faster than XLA's 1-channel convolution)."""
  import medjax_kernels

  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, channels, classes)) * 0.2, jnp.float32)
  return jax.jit(lambda x: _softmax(medjax_kernels.conv3d(x, w)))


def fixed_predictor(window_batch: Sequence[int], classes: int) -> Callable:
  """Whatever the windows, one precomputed softmax batch `(*window_batch, K)` (numpy)."""
  logits = np.random.default_rng(0).normal(size=tuple(window_batch) + (classes,))
  e = np.exp(logits - logits.max(-1, keepdims=True))
  probs = (e / e.sum(-1, keepdims=True)).astype(np.float32)
  return lambda x: probs


def default_model_predictor(classes: Optional[int] = None) -> tuple[Callable, tuple]:
  """The default config's U-Net (random weights) and its patch size (the window)."""
  from medjax.train.model_factory import build_model
  from medjax.train.step import make_predict_fn

  config = config_files.load(config_files.config_path("unet3d_synthetic"))  # the default run
  if classes is not None and classes != config.num_classes:
    raise ValueError(f"classes={classes}: the default config has {config.num_classes}")
  model = build_model(config, training=False)
  roi = tuple(int(r) for r in config.patch_size)
  variables = model.init(jax.random.key(0), jnp.zeros((1, *roi, 1), jnp.float32), train=False)
  predict = make_predict_fn(model)
  return (lambda x: predict(variables, x)), roi


def bench_inference(shape: Sequence[int], roi: Optional[Sequence[int]], *, classes: int = 3,
                    channels: int = 1, predictor: str = "linear", overlap: float = 0.5,
                    mode: str = "gaussian", batch_size: int = 4, volumes: int = 1,
                    window_kwargs: Optional[dict] = None) -> dict:
  """Peak host memory and speed of `sliding_window` on a random `(1, *shape, channels)`.

  `roi` None: the default config's patch size (with `predictor="default"`).
  `window_kwargs` are passed on to `sliding_window` (e.g. `output="labels"`).
  """
  if predictor == "default":
    fn, default_roi = default_model_predictor(classes)
    roi = tuple(roi or default_roi)
  elif predictor in ("linear", "conv", "fixed"):
    roi = tuple(int(r) for r in roi)
    fn = {"linear": linear_predictor, "conv": conv_predictor,
          "fixed": lambda c, k: fixed_predictor((batch_size, *roi), k)}[predictor](
              channels, classes)
  else:
    raise ValueError(f"predictor={predictor!r}: expected 'linear', 'conv', 'fixed' or "
                     "'default'")
  roi = tuple(int(r) for r in roi)
  kwargs = dict(window_kwargs or {})
  volume = np.random.default_rng(0).normal(size=(1, *shape, channels)).astype(np.float32)
  jax.block_until_ready(fn(np.zeros((batch_size, *roi, channels), np.float32)))  # compile
  times, peaks, out_bytes = [], [], 0
  for _ in range(int(volumes)):
    before = reset_peak_rss()
    start = time.perf_counter()
    out = inference.sliding_window(fn, volume, roi, overlap=overlap, mode=mode,
                                   batch_size=batch_size, **kwargs)
    times.append(time.perf_counter() - start)
    peaks.append(peak_rss() - before)
    out_bytes = sum(a.nbytes for a in (out if isinstance(out, tuple) else (out,)))
    del out
  voxels = int(np.prod(shape))
  seconds = statistics.median(times)
  return {
      "shape": list(shape), "roi": list(roi), "classes": classes, "channels": channels,
      "predictor": predictor, "overlap": overlap, "mode": mode, "batch_size": batch_size,
      "window_kwargs": {k: str(v) for k, v in kwargs.items()},
      "input_bytes": int(volume.nbytes), "output_bytes": int(out_bytes),
      "peak_beyond_input_bytes": int(max(peaks)),
      "bytes_per_voxel": max(peaks) / voxels,
      "seconds_per_volume": seconds, "seconds_all": times,
      "volumes_per_minute": 60.0 / seconds,
      "machine": f"{platform.processor() or platform.machine()}, {jax.devices()[0].platform}",
      "jax": jax.__version__,
      "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
  }


def _ints(text: str) -> tuple:
  return tuple(int(v) for v in text.split(","))


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.inference_memory",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--shape", type=_ints, default=(512, 512, 512))
  parser.add_argument("--roi", type=_ints, default=None,
                      help="window; default 128,128,128, or the default config's patch "
                           "size with --predictor=default")
  parser.add_argument("--classes", type=int, default=3)
  parser.add_argument("--predictor", default="linear", choices=["linear", "conv", "fixed", "default"])
  parser.add_argument("--overlap", type=float, default=0.5)
  parser.add_argument("--mode", default="gaussian")
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--volumes", type=int, default=1)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a keyword of sliding_window, e.g. output=labels, dtype=float16")
  parser.add_argument("--json", default=None, help="also write the result here")
  args = parser.parse_args(argv)
  kwargs = {}
  for item in args.set:
    key, _, value = item.partition("=")
    kwargs[key] = value
  roi = args.roi or (None if args.predictor == "default" else (128, 128, 128))
  result = bench_inference(args.shape, roi, classes=args.classes, predictor=args.predictor,
                           overlap=args.overlap, mode=args.mode, batch_size=args.batch_size,
                           volumes=args.volumes, window_kwargs=kwargs)
  print(json.dumps(result, indent=1))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
