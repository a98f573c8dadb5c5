"""Host memory and speed of sliding-window inference (`medjax.inference.sliding_window`).

`bench_inference(...)` builds one random volume `(1, *shape, C)` float32 and a
window predictor, runs the predictor once on a batch of windows (so the
compilation and the model's buffers belong to the baseline), then times
`sliding_window` over the whole volume `volumes` times and reports:

* `peak_beyond_input_bytes`: the peak resident set size of the process during
  the call minus its resident set size just before it (`benchmarks.memory.rss`:
  the peak counter `VmHWM`, reset before the call).
  The input volume and the model are already resident before the call, so
  this is what inference adds: the accumulators, the windows in flight and
  the returned array (which is counted: it is what the caller gets);
* `bytes_per_voxel`: that peak over the number of voxels;
* `output_bytes`: the size of the returned array(s);
* `seconds_per_volume` (median, `benchmarks.timing.spread`) and `volumes_per_minute`.

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

Launcher: `python -m benchmarks.inference_memory --help`. Times from a shared
machine are noisy, the memory numbers are not.
"""
from __future__ import annotations

import datetime
import inspect
import platform
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from benchmarks.memory import rss
from medjax import config_files, inference
from medjax.errors import InputError

PREDICTORS = ("linear", "conv", "fixed", "default")


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


def _check(shape, roi, predictor: str, classes: int, volumes: int, window_kwargs: dict) -> None:
  """InputError (one line, naming the launcher's flag) for arguments `bench_inference` refuses."""
  if predictor not in PREDICTORS:
    raise InputError(f"--predictor={predictor!r}: expected one of {', '.join(PREDICTORS)}")
  if not shape or any(int(s) < 1 for s in shape):
    raise InputError(f"--shape={','.join(map(str, shape))}: expected positive sizes")
  if roi is None and predictor != "default":
    raise InputError(f"--roi: expected a window size for --predictor={predictor}")
  if roi is not None and len(roi) != len(shape):
    raise InputError(f"--roi={','.join(map(str, roi))}: expected {len(shape)} sizes, one per "
                     "axis of --shape")
  if classes < 1 or volumes < 1:
    raise InputError(f"--classes={classes}, --volumes={volumes}: expected at least 1")
  known = set(inspect.signature(inference.sliding_window).parameters) - {
      "predict_fn", "volume", "roi_size", "overlap", "mode", "batch_size"}
  unknown = sorted(set(window_kwargs) - known)
  if unknown:
    raise InputError(f"--set {unknown[0]}=...: not a keyword of sliding_window "
                     f"(expected one of {', '.join(sorted(known))})")


def bench_inference(shape: Sequence[int], roi: Optional[Sequence[int]], *, classes: int = 3,
                    channels: int = 1, predictor: str = "linear", overlap: float = 0.5,
                    mode: str = "gaussian", batch_size: int = 4, volumes: int = 1,
                    window_kwargs: Optional[dict] = None) -> dict:
  """Peak host memory and speed of `sliding_window` on a random `(1, *shape, channels)`.

  `roi` None: the default config's patch size (with `predictor="default"`).
  `window_kwargs` are passed on to `sliding_window` (e.g. `output="labels"`).

  Raises:
    InputError: an unknown predictor or keyword, sizes that do not fit, or a value
      `sliding_window` refuses (one line).
  """
  kwargs = dict(window_kwargs or {})
  _check(shape, roi, predictor, classes, volumes, kwargs)
  if predictor == "default":
    try:
      fn, default_roi = default_model_predictor(classes)
    except ValueError as e:
      raise InputError(f"--classes: {e}") from None
    roi = tuple(roi or default_roi)
  else:
    roi = tuple(int(r) for r in roi)
    fn = {"linear": linear_predictor, "conv": conv_predictor,
          "fixed": lambda c, k: fixed_predictor((batch_size, *roi), k)}[predictor](
              channels, classes)
  roi = tuple(int(r) for r in roi)
  volume = np.random.default_rng(0).normal(size=(1, *shape, channels)).astype(np.float32)
  jax.block_until_ready(fn(np.zeros((batch_size, *roi, channels), np.float32)))  # compile
  peaks, out_bytes = [], []

  def one_volume():
    before = rss.reset_peak()
    try:
      out = inference.sliding_window(fn, volume, roi, overlap=overlap, mode=mode,
                                     batch_size=batch_size, **kwargs)
    except ValueError as e:  # raised by its argument checks, before any window is predicted
      raise InputError(f"sliding_window: {e}") from None
    peaks.append(rss.peak() - before)
    out_bytes.append(sum(a.nbytes for a in (out if isinstance(out, tuple) else (out,))))

  _, times = timing.timed_calls(one_volume, reps=volumes, warmup=0, sync=lambda _: None)
  voxels = int(np.prod(shape))
  seconds = timing.spread(times)["median_s"]
  return {
      "shape": list(shape), "roi": list(roi), "classes": classes, "channels": channels,
      "predictor": predictor, "overlap": overlap, "mode": mode, "batch_size": batch_size,
      "window_kwargs": {k: str(v) for k, v in kwargs.items()},
      "input_bytes": int(volume.nbytes), "output_bytes": int(out_bytes[-1]),
      "peak_beyond_input_bytes": int(max(peaks)),
      "bytes_per_voxel": max(peaks) / voxels,
      "seconds_per_volume": seconds, "seconds_all": times,
      "volumes_per_minute": 60.0 / seconds,
      "machine": f"{platform.processor() or platform.machine()}, {jax.devices()[0].platform}",
      "jax": jax.__version__,
      "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
  }
