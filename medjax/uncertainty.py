"""Predictive uncertainty: MC dropout, test-time augmentation, deep ensembles.

Each method draws `T` probability samples `p_t` `(T, ..., K)` of the same
input and summarises them (Gal & Ghahramani 2016; Lakshminarayanan et al.
2017; Wang et al. 2019 for test-time augmentation):

* `mean`: the predictive distribution `p̄ = (1/T) Σ_t p_t`;
* `entropy`: the predictive entropy `H[p̄] = -Σ_k p̄_k ln p̄_k` (nats, in
  `[0, ln K]`): total uncertainty;
* `mutual_information`: `H[p̄] - (1/T) Σ_t H[p_t]` (BALD, Houlsby et al.
  2011): how much the samples disagree, the model ("epistemic") part;
* `variance`: the variance of `p_t` over the samples, averaged over the
  classes: `(1/K) Σ_k (E_t[p_tk²] - p̄_k²)`.

The samples of one method:

* MC dropout (`mc_dropout`, `mc_dropout_fn`): the network in inference mode
  (`train=False`, so BatchNorm uses its running averages and deep-supervision
  heads stay off) with every `flax.linen.Dropout` forced to draw a mask
  (`stochastic_dropout`), `T` masks in one compiled call (`vmap` over the
  dropout keys). A model without dropout (rate 0) gives `T` identical samples:
  the deterministic prediction, mutual information 0.
* test-time augmentation (`tta_fn`): the `2^len(axes)` flips of the input,
  predicted in one batch and flipped back.
* deep ensembles (`summarize_samples` of the members' probabilities;
  `medjax.inference.run_predictor.load_ensemble` over several workdirs).

Through the sliding window (`medjax.inference.sliding_window`), a window
function returns `moments`: the mean probabilities plus two channels, the
mean entropy of the samples and their mean second moment, `(B, *roi, K + 2)`.
All three are means over samples, so blending them over overlapping windows
(and averaging test-time mirrors) gives the moments of the pooled samples of
every window that covers a voxel, and `maps_from_moments` turns the blended
channels into exact entropy, mutual information and variance of that pool.
(Blending per-window entropies instead would give the blend of the windows'
entropies, not the entropy of the blended prediction.)
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Callable, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
from jax.scipy.special import xlogy

from medjax.errors import InputError

#: `config.eval.uncertainty` values.
METHODS = ("none", "mc_dropout", "tta")
#: uncertainty maps of a summary, besides `mean`.
MAP_NAMES = ("entropy", "mutual_information", "variance")
#: extra channels of `moments` after the K mean probabilities.
EXTRA_CHANNELS = 2

ApplyFn = Callable[..., jax.Array]


def check_method(name: str, field: str = "config.eval.uncertainty") -> str:
  """`name` if it is one of `METHODS`; an `InputError` naming `field` otherwise."""
  if name not in METHODS:
    raise InputError(f"{field}={name!r}: expected one of {', '.join(map(repr, METHODS))}")
  return name


def predictive_entropy(probs: jax.Array) -> jax.Array:
  """`H[p] = -Σ_k p_k ln p_k` in nats: probabilities `(..., K)` -> `(...)`."""
  return -jnp.sum(xlogy(probs, probs), axis=-1)


def moments(samples: jax.Array) -> jax.Array:
  """Sample moments that blend linearly: `(T, ..., K)` -> `(..., K + 2)`.

  Channels: the mean probabilities `p̄` (K), the mean entropy of the samples
  `(1/T) Σ_t H[p_t]`, and the mean second moment `(1/T) Σ_t (1/K) Σ_k p_tk²`.
  """
  samples = jnp.asarray(samples, jnp.float32)
  mean = samples.mean(axis=0)
  expected_entropy = predictive_entropy(samples).mean(axis=0)
  second = jnp.mean(jnp.square(samples), axis=(0, -1))
  return jnp.concatenate([mean, expected_entropy[..., None], second[..., None]], axis=-1)


def maps_from_moments(m) -> tuple:
  """`(mean (..., K), {"entropy", "mutual_information", "variance"}: (...))` of
  (possibly blended) `moments` `(..., K + 2)`; works on numpy or jax arrays.

  Mutual information and variance are clipped at 0 (float rounding).
  """
  xp = np if isinstance(m, np.ndarray) else jnp
  mean = m[..., :-EXTRA_CHANNELS]
  entropy = (-np.sum(scipy.special.xlogy(mean, mean), axis=-1) if xp is np
             else predictive_entropy(mean))
  mi = xp.maximum(entropy - m[..., -2], 0.0)
  variance = xp.maximum(m[..., -1] - xp.mean(xp.square(mean), axis=-1), 0.0)
  return mean, {"entropy": entropy, "mutual_information": mi, "variance": variance}


def summarize_samples(samples: jax.Array) -> dict:
  """`{"mean" (..., K), "entropy", "mutual_information", "variance" (...)}` of
  probability samples `(T, ..., K)` (see the module docstring)."""
  mean, maps = maps_from_moments(moments(samples))
  return {"mean": mean, **maps}


def prediction_maps(prediction: tuple) -> dict:
  """The uncertainty maps of a prediction `(labels, probs (*S, K)[, maps])`
  (a segmenter's output, `medjax.inference.run_predictor`): its maps, else
  `{"entropy": predictive_entropy(probs)}` `(*S,)` float32."""
  if len(prediction) > 2:
    return dict(prediction[2])
  return {"entropy": np.asarray(predictive_entropy(jnp.asarray(prediction[1])), np.float32)}


@contextlib.contextmanager
def stochastic_dropout() -> Iterator[None]:
  """Inside this context every `flax.linen.Dropout` draws a mask, whatever its
  `deterministic` flag says.

  MC dropout needs dropout on and everything else in inference mode: calling
  a model with `train=False` keeps BatchNorm on its running averages (and
  deep-supervision heads off), and this interceptor then applies dropout with
  the module's rate, `broadcast_dims` and rng collection ("dropout"), as
  `nn.Dropout` does in training. Works for any Flax Linen model, without a
  flag in the model. Only modules traced inside the context are affected
  (enter it inside the function you `jit`).
  """

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if not isinstance(module, nn.Dropout) or context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    inputs = args[0]
    if module.rate == 0.0:
      return inputs
    if module.rate == 1.0:
      return jnp.zeros_like(inputs)
    keep = 1.0 - module.rate
    rng = kwargs.get("rng")
    if rng is None:
      rng = module.make_rng(module.rng_collection)
    shape = list(inputs.shape)
    for dim in module.broadcast_dims:
      shape[dim] = 1
    mask = jnp.broadcast_to(jax.random.bernoulli(rng, p=keep, shape=shape), inputs.shape)
    return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))

  with nn.intercept_methods(interceptor):
    yield


def _softmax(logits) -> jax.Array:
  if isinstance(logits, tuple):  # (logits, deep-supervision heads)
    logits = logits[0]
  return jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)


def mc_dropout_samples(apply_fn: ApplyFn, variables: Mapping, x: jax.Array, *, samples: int,
                       rng: jax.Array) -> jax.Array:
  """`samples` MC-dropout softmax samples `(T, B, *S, K)` of inputs `(B, *S, C)`.

  `apply_fn(variables, x, rngs={"dropout": key}, train=False)` (e.g. a Flax
  model's `apply`) is called under `stochastic_dropout`, vmapped over
  `jax.random.split(rng, samples)`. Traceable: call it inside `jit`.
  """
  if int(samples) < 1:
    raise InputError(f"samples={samples}: expected at least 1 MC-dropout sample")
  keys = jax.random.split(rng, int(samples))

  def one(key):
    with stochastic_dropout():
      return _softmax(apply_fn(variables, x, rngs={"dropout": key}, train=False))

  return jax.vmap(one)(keys)


def mc_dropout_fn(apply_fn: ApplyFn, *, samples: int = 20) -> Callable:
  """Jitted `f(variables, x, rng) -> summary dict` (see `mc_dropout`), compiled
  once per input shape; use it for repeated calls."""
  return jax.jit(lambda variables, x, rng: summarize_samples(
      mc_dropout_samples(apply_fn, variables, x, samples=samples, rng=rng)))


def mc_dropout(apply_fn: ApplyFn, variables: Mapping, x: jax.Array, *, samples: int = 20,
               rng: jax.Array) -> dict:
  """Monte Carlo dropout (Gal & Ghahramani 2016): `samples` stochastic passes
  in one compiled call, summarised.

  Args:
    apply_fn: `apply_fn(variables, x, rngs={"dropout": key}, train=False)` ->
      logits `(B, *S, K)` (or `(logits, aux)`), e.g. `model.apply`. The
      network runs in inference mode (BatchNorm on running averages) with its
      dropout layers sampling (`stochastic_dropout`).
    variables: the model's variables (`params`, `batch_stats`, ...).
    x: inputs `(B, *S, C)`.
    samples: number of passes `T`.
    rng: a `jax.random` key for the dropout masks.
  Returns:
    `{"mean": (B, *S, K), "entropy", "mutual_information", "variance": (B, *S)}`.
    With dropout rate 0 `mean` is the deterministic softmax and the mutual
    information and variance are 0.
  """
  return mc_dropout_fn(apply_fn, samples=samples)(variables, x, rng)


def flip_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
  """Every subset of `axes` (spatial, 0-based), the empty one (identity) first."""
  return [c for r in range(len(axes) + 1) for c in itertools.combinations(tuple(axes), r)]


def tta_samples(apply_fn: ApplyFn, variables: Mapping, x: jax.Array, *,
                axes: Sequence[int]) -> jax.Array:
  """Softmax samples `(2^len(axes), B, *S, K)` of every flip of `axes` (spatial,
  0-based) of inputs `(B, *S, C)`, in one batched `apply_fn(variables, x, train=False)`
  and flipped back (image-level outputs `(B, K)` give `(2^len(axes), B, K)`). Traceable."""
  combos = flip_combinations(axes)
  flipped = [jnp.flip(x, tuple(a + 1 for a in c)) if c else x for c in combos]
  probs = _softmax(apply_fn(variables, jnp.concatenate(flipped), train=False))
  probs = probs.reshape((len(combos), x.shape[0]) + probs.shape[1:])
  if probs.ndim - 1 != x.ndim:  # image-level outputs (B, K): nothing to flip back
    return probs
  return jnp.stack([jnp.flip(p, tuple(a + 1 for a in c)) if c else p
                    for p, c in zip(probs, combos)])


def window_moments_fn(apply_fn: ApplyFn, variables: Mapping, method: str, *, samples: int = 20,
                      rng: jax.Array | None = None, axes: Sequence[int] = ()
                      ) -> Callable[[np.ndarray], np.ndarray]:
  """A `sliding_window` predict function: windows `(B, *roi, C)` -> `moments`
  `(B, *roi, K + 2)` of the samples of `method` ("mc_dropout": `samples`
  dropout masks from `rng`; "tta": the flips of `axes`; "none": the
  deterministic prediction), one jitted call per batch of windows.

  MC dropout uses the same `samples` keys for every batch of windows, so the
  same image always gives the same maps. Blend its output with
  `sliding_window` and split it with `maps_from_moments`.
  """
  check_method(method)
  if method == "mc_dropout":
    if rng is None:
      raise InputError("mc_dropout needs a dropout rng key")
    sample = lambda v, x: mc_dropout_samples(apply_fn, v, x, samples=samples, rng=rng)
  elif method == "tta":
    sample = lambda v, x: tta_samples(apply_fn, v, x, axes=axes)
  else:
    sample = lambda v, x: _softmax(apply_fn(v, x, train=False))[None]
  compiled = jax.jit(lambda v, x: moments(sample(v, x)))
  return lambda x: np.asarray(compiled(variables, x))


__all__ = ["METHODS", "MAP_NAMES", "check_method", "predictive_entropy", "moments",
           "maps_from_moments", "summarize_samples", "prediction_maps", "stochastic_dropout", "mc_dropout",
           "mc_dropout_fn", "mc_dropout_samples", "tta_samples", "flip_combinations",
           "window_moments_fn"]


def detection_spread(boxes: np.ndarray, sample_boxes: Sequence[np.ndarray],
                     sample_scores: Sequence[np.ndarray], *, iou_threshold: float = 0.1) -> dict:
  """Per-detection uncertainty from `T` detection samples (ensemble members, MC-dropout
  passes or test-time mirror variants), as the Retina U-Net's ensembles report it
  (Jaeger et al. 2018): each final box is matched in every sample to that sample's box of
  highest IoU, a match when the IoU is > `iou_threshold` (score 0 otherwise).

  Args:
    boxes: `(K, 2n)` the final detections (e.g. clustered over all samples).
    sample_boxes, sample_scores: per sample, `(B_t, 2n)` boxes and `(B_t,)` scores.
  Returns:
    `{"score_mean", "score_std": (K,) over the T samples (unmatched = 0),
    "agreement": (K,) fraction of samples with a match, "box_std": (K,) the mean over the
    2n coordinates of the standard deviation of the matched boxes (voxels; NaN with fewer
    than two matches)}`.
  """
  from medjax.detection import boxes as box_ops  # pylint: disable=import-outside-toplevel
  boxes = np.asarray(boxes, np.float64).reshape(len(boxes), -1)
  k, t = len(boxes), len(sample_boxes)
  if t == 0:
    raise ValueError("detection_spread of no samples")
  scores = np.zeros((t, k))
  matched = np.zeros((t, k), bool)
  coords = np.full((t, k, boxes.shape[1]), np.nan)
  for s, (b, p) in enumerate(zip(sample_boxes, sample_scores)):
    b = np.asarray(b, np.float64).reshape(-1, boxes.shape[1])
    if not (len(b) and k):
      continue
    iou = box_ops.box_iou(boxes, b)  # (K, B_t)
    best = iou.argmax(axis=1)
    hit = iou[np.arange(k), best] > iou_threshold
    matched[s] = hit
    scores[s] = np.where(hit, np.asarray(p, np.float64)[best], 0.0)
    coords[s][hit] = b[best[hit]]
  count = matched.sum(axis=0)
  box_std = np.full(k, np.nan)
  for i in np.nonzero(count >= 2)[0]:
    box_std[i] = float(np.mean(np.std(coords[matched[:, i], i], axis=0, ddof=1)))
  return {"score_mean": scores.mean(axis=0), "score_std": scores.std(axis=0),
          "agreement": count / t, "box_std": box_std}
