"""Sliding-window inference of one volume, medjax and PyTorch + MONAI (`benchmarks.vs_torch`).

Both sides predict the same random `(D, H, W)` volume (one channel, float32;
the network's cost does not depend on the values) with the config's U-Net
(random weights: `build_model` in medjax, `torch_unet.build_model` in
PyTorch, equal parameter counts), windows of the config's patch size,
overlap 0.5, Gaussian blending with sigma = 1/8 of the window, `batch_size`
windows per network call, and return the float32 softmax probabilities of the
whole volume:

* medjax: `medjax.inference.sliding_window` on the jitted `make_predict_fn`;
* PyTorch: MONAI's `sliding_window_inference` (what a PyTorch user would pick)
  on the network in `eval()` mode under `torch.inference_mode()`.

Each first calls the network once on one batch of windows (compilation in
medjax; oneDNN's first-call setup in PyTorch), then times `volumes` whole
volumes with the counters of `benchmarks.usage`.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from benchmarks import usage
from benchmarks.torch_unet import require_torch
from medjax.errors import InputError

OVERLAP = 0.5
MODE = "gaussian"
SIGMA_SCALE = 0.125  # nnU-Net's and MONAI's default


def require_monai() -> Any:
  """MONAI's `sliding_window_inference`, or InputError naming the benchmark extra."""
  try:
    from monai.inferers import sliding_window_inference  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise InputError("the inference baseline needs MONAI: pip install monai==1.6.1 "
                     "(the `bench` extra of setup.py)") from None
  return sliding_window_inference


def _volume(shape: Sequence[int], seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=tuple(shape)).astype(np.float32)


def _summary(records: list[dict], out_shape: tuple, params: int) -> dict:
  times = [r["wall_s"] for r in records]
  return {"volume_times_s": times, "seconds_per_volume": float(np.median(times)),
          **usage.summary(records), "rss_after_mb": usage.rss_mb(),
          "peak_rss_mb": usage.peak_rss_mb(), "output_shape": list(out_shape), "params": params}


def medjax_inference(config, shape: Sequence[int], batch_size: int, volumes: int = 1) -> dict:
  """Times `medjax.inference.sliding_window` of the config's network on one volume."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from medjax import inference  # pylint: disable=import-outside-toplevel
  from medjax.train.model_factory import build_model  # pylint: disable=import-outside-toplevel
  from medjax.train.step import make_predict_fn  # pylint: disable=import-outside-toplevel
  model = build_model(config, training=False)
  roi = tuple(int(r) for r in config.patch_size)
  variables = model.init(jax.random.key(0), jnp.zeros((1, *roi, 1), jnp.float32), train=False)
  params = int(sum(np.prod(p.shape) for p in jax.tree.leaves(variables["params"])))
  predict = make_predict_fn(model)
  fn = lambda x: predict(variables, x)
  volume = _volume(shape)[None, ..., None]  # (1, D, H, W, 1)
  compile_s = usage.timed(lambda: jax.block_until_ready(
      fn(np.zeros((batch_size, *roi, 1), np.float32))))["wall_s"]
  out = {}

  def run():
    out["probs"] = inference.sliding_window(fn, volume, roi, overlap=OVERLAP, mode=MODE,
                                            batch_size=batch_size)
  records = [usage.timed(run) for _ in range(volumes)]
  return {**_summary(records, out["probs"].shape, params), "first_call_s": compile_s,
          "roi": list(roi), "batch_size": batch_size}


def torch_inference(config, shape: Sequence[int], batch_size: int, volumes: int = 1) -> dict:
  """Times MONAI's `sliding_window_inference` of the config's network in PyTorch."""
  torch = require_torch()
  sliding_window_inference = require_monai()
  from benchmarks import torch_unet  # pylint: disable=import-outside-toplevel
  net = torch_unet.build_model(config.model.to_dict(), in_channels=1,
                               num_classes=int(config.num_classes)).eval()
  roi = tuple(int(r) for r in config.patch_size)
  volume = torch.from_numpy(_volume(shape))[None, None]  # (1, 1, D, H, W)
  predictor = lambda x: torch.softmax(net(x), dim=1)
  out = {}
  with torch.inference_mode():
    first = usage.timed(lambda: predictor(torch.zeros((batch_size, 1) + roi)))["wall_s"]

    def run():
      out["probs"] = sliding_window_inference(
          volume, roi, batch_size, predictor, overlap=OVERLAP, mode=MODE,
          sigma_scale=SIGMA_SCALE)
    records = [usage.timed(run) for _ in range(volumes)]
  return {**_summary(records, tuple(out["probs"].shape), torch_unet.count_parameters(net)),
          "first_call_s": first, "roi": list(roi), "batch_size": batch_size,
          "threads": torch.get_num_threads(), "torch_version": torch.__version__}
