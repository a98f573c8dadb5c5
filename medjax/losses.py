"""Segmentation and classification losses for medical images.

Conventions shared by every loss here:

* logits `(N, *S, K)` (any spatial rank, channels last, float of any width;
  softmax and reductions run in at least float32), integer labels `(N, *S)`;
* the result is a scalar: the mean over the batch (and over classes for the
  per-class Dice-family losses);
* every loss is jit-able and has finite gradients for classes absent from the
  labels and for perfect (saturated) predictions;
* every sum or mean over voxels goes through `medjax.spatial` (`voxel_sum`,
  `voxel_mean`, `slab_sum`), so under a "manual" spatial partition, where each
  device holds one depth slab of the patch, the loss is the whole patch's.

`unet_weight_map` is the exception: it is numpy, host side, and meant to be run
once per ground-truth mask in the data pipeline.

References:
  Ronneberger O. et al. (2015) U-Net: convolutional networks for biomedical
    image segmentation. MICCAI.
  Milletari F. et al. (2016) V-Net: fully convolutional neural networks for
    volumetric medical image segmentation. 3DV.
  Sudre C. et al. (2017) Generalised Dice overlap as a deep learning loss
    function for highly unbalanced segmentations. DLMIA.
  Fidon L. et al. (2017) Generalised Wasserstein Dice score for imbalanced
    multi-class segmentation using holistic convolutional networks. BrainLes.
  Salehi S. et al. (2017) Tversky loss function for image segmentation using
    3D fully convolutional deep networks. MLMI.
  Lin T.-Y. et al. (2017) Focal loss for dense object detection. ICCV.
"""
from __future__ import annotations

import functools
import inspect
import warnings
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from medjax import spatial
from medjax.errors import InputError
from medjax_kernels.dispatch import check_kernels
from medjax_kernels.soft_dice import soft_dice_stats

Array = jax.Array
LossFn = Callable[[Array, Array], Array]

ACTIVATIONS = ("softmax", "sigmoid", None)
GDL_WEIGHT_TYPES = ("square", "simple", "uniform")
GWDL_WEIGHTINGS = ("default", "gdl")


# ---------------------------------------------------------------------------
# helpers


def _float_dtype(x: Array):
  """At least float32: bf16/f16 logits are upcast, f64 (x64 mode) is kept."""
  return jnp.promote_types(jnp.asarray(x).dtype, jnp.float32)


def _check_shapes(logits: Array, labels: Array) -> None:
  if logits.ndim < 2 or tuple(logits.shape[:-1]) != tuple(labels.shape):
    raise InputError(
        f"logits shape {tuple(logits.shape)} and labels shape "
        f"{tuple(labels.shape)}: expected logits (N, *S, K) and labels (N, *S)")


def _nll(logits: Array, labels: Array) -> Array:
  """Per-voxel negative log-likelihood `(N, *S)` under a softmax."""
  logp = jax.nn.log_softmax(logits.astype(_float_dtype(logits)), axis=-1)
  labels = labels.astype(jnp.int32)
  return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


def _safe_pow(base: Array, gamma: float) -> Array:
  """`base ** gamma` for base >= 0 with a finite gradient at base == 0."""
  positive = base > 0
  safe = jnp.where(positive, base, 1.0)
  return jnp.where(positive, safe ** gamma, 1.0 if gamma == 0 else 0.0)


# ---------------------------------------------------------------------------
# cross entropy


def cross_entropy(logits: Array, labels: Array, *,
                  ignore_index: Optional[int] = None) -> Array:
  """Softmax cross entropy, mean over every (non-ignored) voxel of the batch.

  Args:
    logits: `(N, *S, K)`.
    labels: `(N, *S)` integer class ids.
    ignore_index: voxels with this label contribute nothing; the mean is over
      the remaining voxels (0 if there are none).
  Returns:
    Scalar loss.
  """
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  _check_shapes(logits, labels)
  if ignore_index is None:
    return spatial.voxel_mean(_nll(logits, labels))
  valid = labels != ignore_index
  nll = _nll(logits, jnp.where(valid, labels, 0))
  count = spatial.voxel_sum(valid.astype(jnp.int32))
  total = spatial.voxel_sum(jnp.where(valid, nll, 0.0))
  return total / jnp.maximum(count, 1).astype(total.dtype)


def weighted_cross_entropy(logits: Array, labels: Array,
                           weights: Array) -> Array:
  """Weighted softmax cross entropy `sum_x w(x) CE(x) / sum_x w(x)`.

  The sums run over every voxel of the batch, so the result is a weighted mean
  that does not change when all weights are scaled (as `torch`'s weighted
  `CrossEntropyLoss(reduction="mean")`); an all-zero weight map gives 0.

  Args:
    logits: `(N, *S, K)`.
    labels: `(N, *S)` integer class ids.
    weights: either a per-voxel map `(N, *S)` (e.g. `unet_weight_map`,
      Ronneberger 2015) or per-class weights `(K,)`, in which case voxel x gets
      `weights[labels[x]]`. A shape equal to `labels.shape` is read as a
      per-voxel map.
  Returns:
    Scalar loss.
  """
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  _check_shapes(logits, labels)
  weights = jnp.asarray(weights)
  k = logits.shape[-1]
  if tuple(weights.shape) == tuple(labels.shape):
    w = weights
  elif tuple(weights.shape) == (k,):
    w = weights[labels.astype(jnp.int32)]
  else:
    raise InputError(
        f"weights shape {tuple(weights.shape)}: expected a per-voxel map "
        f"{tuple(labels.shape)} or per-class weights ({k},)")
  nll = _nll(logits, labels)
  w = jax.lax.stop_gradient(w.astype(nll.dtype))
  total_w = spatial.voxel_sum(w)
  return spatial.voxel_sum(w * nll) / jnp.where(total_w > 0, total_w, 1.0)


def unet_weight_map(labels, w0: float = 10., sigma: float = 5.,
                    class_weights: Optional[Sequence[float]] = None, *,
                    spatial_dims: Optional[int] = None) -> np.ndarray:
  """U-Net pixel-wise loss weights (Ronneberger 2015, eq. 2), numpy, host side.

  `w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))`

  * `w_c` balances the class frequencies: by default `w_c(x) = 1 / f_{y(x)}`
    with `f_c` the fraction of the image's voxels of class c, rescaled so that
    the mean of `w_c` over the image is 1 (i.e. `1 / (f_c * C_present)`);
    `class_weights[c]` (indexed by class id) replaces it when given.
  * `d1`, `d2` are the Euclidean distances (in voxels) to the nearest and the
    second-nearest foreground object, objects being the connected components
    (face connectivity, `scipy.ndimage.label`) of `labels > 0`; each distance is
    `distance_transform_edt` of one component's complement. The border term is
    added on background voxels only -- the separating gaps between touching
    objects that the paper wants the network to learn (inside an object d1 is
    0 and the term would only blur the object) -- and is 0 when the image holds
    fewer than two objects.

  Args:
    labels: `(N, *S)` or `(*S)` integer labels, 0 = background.
    w0, sigma: border weight and width (paper: 10 and 5 pixels).
    class_weights: optional per-class weights, indexed by class id.
    spatial_dims: number of spatial axes. Default: a 1- or 2-D array is one
      image; with 3 or more axes the first one is the batch. Pass it for a
      single 3-D volume (`spatial_dims=3`).
  Returns:
    float32 weights with the shape of `labels`.
  """
  labels = np.asarray(labels)
  if spatial_dims is None:
    spatial_dims = labels.ndim if labels.ndim <= 2 else labels.ndim - 1
  if not 1 <= spatial_dims <= labels.ndim:
    raise InputError(f"spatial_dims={spatial_dims}: labels have {labels.ndim} axes")
  if labels.ndim == spatial_dims:
    return _unet_weight_map_one(labels, w0, sigma, class_weights)
  batch_shape = labels.shape[:labels.ndim - spatial_dims]
  flat = labels.reshape((-1,) + labels.shape[len(batch_shape):])
  out = np.stack([_unet_weight_map_one(x, w0, sigma, class_weights) for x in flat])
  return out.reshape(labels.shape)


def _unet_weight_map_one(labels: np.ndarray, w0: float, sigma: float,
                         class_weights) -> np.ndarray:
  labels = labels.astype(np.int64)
  if class_weights is None:
    _, inverse, counts = np.unique(labels, return_inverse=True,
                                   return_counts=True)
    freq = counts / labels.size
    wc = (1.0 / (freq * len(counts)))[inverse].reshape(labels.shape)
  else:
    wc = np.asarray(class_weights, np.float64)[labels]
  components, n_objects = ndimage.label(labels > 0)
  if n_objects < 2:
    return wc.astype(np.float32)
  # Distances to each object, keeping only the two smallest as we go.
  d1 = np.full(labels.shape, np.inf)
  d2 = np.full(labels.shape, np.inf)
  for i in range(1, n_objects + 1):
    d = ndimage.distance_transform_edt(components != i)
    d2 = np.minimum(d2, np.maximum(d1, d))
    d1 = np.minimum(d1, d)
  border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma ** 2))
  return (wc + border * (labels == 0)).astype(np.float32)


# ---------------------------------------------------------------------------
# Dice family


def _kernels(kernels: str, implementation: Optional[str]) -> str:
  """The `kernels` switch, given as such or by its deprecated name `implementation=`.

  `implementation=` is accepted as a deprecated name of the switch, with a
  DeprecationWarning (`kernels` is its name from the config down to the kernel).
  Giving both, with different values, is an error.
  """
  if implementation is not None:
    if kernels not in ("auto", implementation):
      raise ValueError(f"kernels={kernels!r} and implementation={implementation!r}: "
                       "implementation= is the deprecated name of kernels=; give one")
    warnings.warn("medjax.losses: implementation= is deprecated, use kernels=",
                  DeprecationWarning, stacklevel=4)
    kernels = implementation
  return check_kernels(kernels)


def dice_statistics(logits: Array, labels: Array, *, squared: bool = False,
                    activation: Optional[str] = "softmax", kernels: str = "auto",
                    implementation: Optional[str] = None):
  """Per-(sample, class) soft Dice statistics.

  With `p = activation(logits)` and `t = one_hot(labels)`, summed over space:
  `intersection = sum p t`, `pred_sum = sum p` (`sum p^2` if `squared`),
  `target_sum = sum t`. Computed by `medjax_kernels.soft_dice_stats` (its
  plain-JAX definition is `medjax_kernels.soft_dice.reference`).

  Args:
    logits: `(N, *S, K)`.
    labels: `(N, *S)` integer class ids.
    squared: V-Net denominators (Milletari 2016).
    activation: "softmax" (over K), "sigmoid" (per channel) or None (the
      inputs already are probabilities: plain JAX, nothing to fuse).
    kernels: "auto" (the fused Pallas kernel when lowered for GPU/TPU, plain
      JAX otherwise), "xla" (plain JAX) or "pallas" (the kernel; lowered for
      CPU it runs in the Pallas interpreter, a correctness check, not speed).
    implementation: deprecated name of `kernels`.
  Returns:
    `(intersection, pred_sum, target_sum)`, each `(N, K)`, float32 (float64
    for float64 logits).
  """
  kernels = _kernels(kernels, implementation)
  if activation not in ACTIVATIONS:
    raise ValueError(f"activation={activation!r}: expected softmax, sigmoid or None")
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  _check_shapes(logits, labels)
  return spatial.slab_sum(soft_dice_stats(logits, labels, squared=squared,
                                          activation=activation, kernels=kernels))


def _drop_background(stats, include_background: bool):
  if include_background:
    return stats
  return tuple(s[:, 1:] for s in stats)


def _sum_batch(stats, batch: bool):
  if not batch:
    return stats
  return tuple(jnp.sum(s, axis=0, keepdims=True) for s in stats)


def soft_dice(logits: Array, labels: Array, *, include_background: bool = True,
              squared: bool = False, smooth_nr: float = 1e-5,
              smooth_dr: float = 1e-5, batch: bool = False,
              activation: Optional[str] = "softmax", kernels: str = "auto",
              implementation: Optional[str] = None) -> Array:
  """Soft Dice loss (Milletari 2016).

  Per sample n and class k: `1 - (2 I + smooth_nr) / (P + T + smooth_dr)` with
  `I = sum p t`, `P = sum p` (`sum p^2` if `squared`, the V-Net form),
  `T = sum t`; averaged over classes and samples. With `batch=True` the
  statistics are first summed over the batch (one Dice per class, as MONAI's
  `DiceLoss(batch=True)`). A class absent from both prediction and target
  scores a loss of 0 thanks to the smoothing terms.

  Args:
    logits: `(N, *S, K)`; labels: `(N, *S)` integer.
    include_background: if False, class 0 is left out.
    activation, kernels, implementation: see `dice_statistics`.
  Returns:
    Scalar loss in [0, 1].
  """
  stats = dice_statistics(logits, labels, squared=squared, activation=activation,
                          kernels=kernels, implementation=implementation)
  inter, psum, tsum = _sum_batch(_drop_background(stats, include_background), batch)
  score = (2.0 * inter + smooth_nr) / (psum + tsum + smooth_dr)
  return jnp.mean(1.0 - score)


def _gdl_weights(target_sum: Array, weight_type: str) -> Array:
  """Sudre 2017 class weights; an absent class gets the largest finite weight."""
  if weight_type == "uniform":
    return jnp.ones_like(target_sum)
  present = target_sum > 0
  safe = jnp.where(present, target_sum, 1.0)
  w = 1.0 / (safe * safe) if weight_type == "square" else 1.0 / safe
  w = jnp.where(present, w, 0.0)
  w_max = jnp.max(w, axis=-1, keepdims=True)
  return jax.lax.stop_gradient(jnp.where(present, w, w_max))


def generalized_dice(logits: Array, labels: Array, *, weight_type: str = "square",
                     include_background: bool = True, smooth_nr: float = 1e-5,
                     smooth_dr: float = 1e-5, batch: bool = False, kernels: str = "auto",
                     implementation: Optional[str] = None) -> Array:
  """Generalised Dice loss (Sudre 2017).

  Per sample: `1 - (2 sum_k w_k I_k + smooth_nr) / (sum_k w_k (P_k + T_k) + smooth_dr)`
  with `w_k = 1 / T_k^2` ("square", the paper), `1 / T_k` ("simple") or 1
  ("uniform"); mean over the batch (`batch=True`: statistics summed over the
  batch first). A class absent from the target (`T_k = 0`) would get an
  infinite weight; as MONAI's `GeneralizedDiceLoss`, it gets the largest
  finite weight of the sample instead (0 if no class is present), so value and
  gradient stay finite. Weights are constants of the labels (no gradient).

  Args:
    logits: `(N, *S, K)`; labels: `(N, *S)` integer.
    kernels, implementation: see `dice_statistics`.
  Returns:
    Scalar loss in [0, 1].
  """
  if weight_type not in GDL_WEIGHT_TYPES:
    raise ValueError(f"weight_type={weight_type!r}: expected one of "
                     f"{', '.join(GDL_WEIGHT_TYPES)}")
  stats = dice_statistics(logits, labels, squared=False, activation="softmax",
                          kernels=kernels, implementation=implementation)
  inter, psum, tsum = _sum_batch(_drop_background(stats, include_background), batch)
  w = _gdl_weights(tsum, weight_type)
  numer = 2.0 * jnp.sum(w * inter, axis=-1) + smooth_nr
  denom = jnp.sum(w * (psum + tsum), axis=-1) + smooth_dr
  return jnp.mean(1.0 - numer / denom)


def default_dist_matrix(num_classes: int) -> np.ndarray:
  """Label-distance matrix with 0 on the diagonal and 1 elsewhere."""
  return 1.0 - np.eye(num_classes, dtype=np.float32)


def generalized_wasserstein_dice(logits: Array, labels: Array, dist_matrix, *,
                                 weighting: str = "default",
                                 smooth: float = 1e-5) -> Array:
  """Generalised Wasserstein Dice loss (Fidon 2017), MONAI semantics.

  `M` is the `(K, K)` label-distance matrix, rescaled by its maximum (so the
  largest distance is 1, as MONAI's `GeneralizedWassersteinDiceLoss`). Per
  voxel, the Wasserstein distance between the predicted distribution `p` and
  the one-hot label y is `W(x) = sum_k M[y, k] p_k` (eq. 6; M is normally
  symmetric). Per sample, with class weights `alpha`:

  * "default" (the paper): `alpha = [0, 1, ..., 1]` (class 0 is background),
    `TP = sum_x alpha[y(x)] (1 - W(x))`, `score = 2 TP / (2 TP + sum_x W(x))`;
  * "gdl" (Tilborghs 2020 appendix): `alpha_k = 1 / (|class k| + 1)`, and
    `score = 2 TP / sum_x alpha[y(x)] (2 - W(x))`.

  Loss `1 - (2 TP + smooth) / (denominator + smooth)`, mean over the batch.

  Args:
    logits: `(N, *S, K)`; labels: `(N, *S)` integer.
    dist_matrix: `(K, K)` non-negative distances between classes.
    weighting: "default" or "gdl" (case-insensitive; MONAI spells it "GDL").
    smooth: added to numerator and denominator.
  Returns:
    Scalar loss in [0, 1].
  """
  weighting = weighting.lower()
  if weighting not in GWDL_WEIGHTINGS:
    raise ValueError(f"weighting={weighting!r}: expected default or gdl")
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  _check_shapes(logits, labels)
  n, k = logits.shape[0], logits.shape[-1]
  dtype = _float_dtype(logits)
  m = jnp.asarray(dist_matrix, dtype)
  if m.shape != (k, k):
    raise InputError(f"dist_matrix shape {tuple(m.shape)}: expected ({k}, {k})")
  m_max = jnp.max(m)
  m = m / jnp.where(m_max > 0, m_max, 1.0)
  probs = jax.nn.softmax(logits.astype(dtype).reshape(n, -1, k), axis=-1)
  y = labels.reshape(n, -1).astype(jnp.int32)
  wass = jnp.sum(m[y] * probs, axis=-1)  # (N, V)
  if weighting == "gdl":
    volumes = spatial.voxel_sum(jax.nn.one_hot(y, k, dtype=dtype), axis=1)  # (N, K)
    alpha = 1.0 / (volumes + 1.0)
  else:
    alpha = jnp.ones((n, k), dtype).at[:, 0].set(0.0)
  alpha_x = jnp.take_along_axis(alpha, y, axis=1)  # (N, V)
  true_pos = spatial.voxel_sum(alpha_x * (1.0 - wass), axis=1)
  if weighting == "gdl":
    denom = spatial.voxel_sum(alpha_x * (2.0 - wass), axis=1)
  else:
    denom = 2.0 * true_pos + spatial.voxel_sum(wass, axis=1)
  score = (2.0 * true_pos + smooth) / (denom + smooth)
  return jnp.mean(1.0 - score)


def tversky(logits: Array, labels: Array, *, alpha: float = 0.5,
            beta: float = 0.5, include_background: bool = True,
            smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, kernels: str = "auto",
            implementation: Optional[str] = None) -> Array:
  """Tversky loss (Salehi 2017).

  Per sample and class: `1 - (I + smooth_nr) / (I + alpha FP + beta FN + smooth_dr)`
  with `FP = sum p (1 - t) = P - I` and `FN = sum (1 - p) t = T - I`; mean over
  classes and samples. `alpha = beta = 0.5` is the soft Dice loss; larger beta
  penalises false negatives more (the paper's 0.3/0.7 for small lesions).

  Args:
    logits: `(N, *S, K)`; labels: `(N, *S)` integer.
    kernels, implementation: see `dice_statistics`.
  Returns:
    Scalar loss in [0, 1].
  """
  stats = dice_statistics(logits, labels, squared=False, activation="softmax",
                          kernels=kernels, implementation=implementation)
  inter, psum, tsum = _drop_background(stats, include_background)
  fp, fn = psum - inter, tsum - inter
  score = (inter + smooth_nr) / (inter + alpha * fp + beta * fn + smooth_dr)
  return jnp.mean(1.0 - score)


def focal(logits: Array, labels: Array, *, gamma: float = 2.0,
          alpha: Optional[Union[float, Sequence[float], Array]] = None) -> Array:
  """Multi-class softmax focal loss (Lin 2017), mean over voxels.

  `FL(x) = -alpha_{y} (1 - p_y)^gamma log p_y`. `alpha`: None (all 1), a
  sequence of K per-class weights, or a scalar a meaning `1 - a` for class 0
  (background) and `a` for every other class (the paper's binary alpha, as
  MONAI's softmax focal loss). `gamma = 0` and `alpha = None` is the cross
  entropy. Lin normalises by the number of positive anchors; for dense
  segmentation every voxel is a sample, so this takes the mean over voxels.

  Args:
    logits: `(N, *S, K)`; labels: `(N, *S)` integer.
  Returns:
    Scalar loss.
  """
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  _check_shapes(logits, labels)
  nll = _nll(logits, labels)
  p_t = jnp.exp(-nll)
  loss = _safe_pow(1.0 - p_t, gamma) * nll
  if alpha is not None:
    k = logits.shape[-1]
    a = jnp.asarray(alpha, loss.dtype)
    if a.ndim == 0:
      a = jnp.concatenate([1.0 - a[None], jnp.broadcast_to(a, (k - 1,))])
    elif a.shape != (k,):
      raise InputError(f"alpha shape {tuple(a.shape)}: expected a scalar or ({k},)")
    loss = a[labels.astype(jnp.int32)] * loss
  return spatial.voxel_mean(loss)


def dice_ce(logits: Array, labels: Array, *, dice_weight: float = 1.0,
            ce_weight: float = 1.0, **dice_kwargs) -> Array:
  """`dice_weight * soft_dice(**dice_kwargs) + ce_weight * cross_entropy`.

  The Dice term handles class imbalance, the CE term gives well-behaved
  gradients early in training (the combination nnU-Net and MONAI's DiceCELoss
  use). See `soft_dice` (Milletari 2016) for `dice_kwargs`.
  """
  return (dice_weight * soft_dice(logits, labels, **dice_kwargs)
          + ce_weight * cross_entropy(logits, labels))


# ---------------------------------------------------------------------------
# selection by name (the trainer's `config.loss.name`)


def inverse_frequency_weights(labels: Array, num_classes: int) -> Array:
  """Per-class weights `(K,)` from the labels, Laplace-smoothed inverse frequency.

  `w_k = (V + K) / (K (n_k + 1))` with `n_k` voxels of class k among V: a
  balanced batch gives weights near 1, a rare class a large but finite weight,
  an absent class the largest (unused) weight. No gradient.
  """
  counts = spatial.voxel_sum(jax.nn.one_hot(labels.reshape(-1), num_classes,
                                            dtype=jnp.float32), axis=0)
  total = jnp.sum(counts)
  w = (total + num_classes) / (num_classes * (counts + 1.0))
  return jax.lax.stop_gradient(w)


def _wce_from_batch(logits, labels, *, weights=None):
  if weights is None:
    weights = inverse_frequency_weights(jnp.asarray(labels), logits.shape[-1])
  return weighted_cross_entropy(logits, labels, weights)


def _gwdl_default(logits, labels, *, dist_matrix=None, **kwargs):
  if dist_matrix is None:
    dist_matrix = default_dist_matrix(logits.shape[-1])
  return generalized_wasserstein_dice(logits, labels, dist_matrix, **kwargs)


_LOSSES = {
    "ce": cross_entropy,
    "wce": _wce_from_batch,
    "dice": soft_dice,
    "gdl": generalized_dice,
    "gwdl": _gwdl_default,
    "dice_ce": dice_ce,
    "tversky": tversky,
    "focal": focal,
}
_EXTRA_OPTIONS = {
    "gwdl": ("weighting", "smooth"),
    "dice_ce": tuple(inspect.signature(soft_dice).parameters)[2:],
}


def loss_options(name: str) -> tuple[str, ...]:
  """The keyword options `get_loss(name, ...)` accepts."""
  if name not in _LOSSES:
    raise InputError(f"loss.name={name!r}: expected one of {', '.join(_LOSSES)}")
  allowed = [p.name for p in inspect.signature(_LOSSES[name]).parameters.values()
             if p.kind == inspect.Parameter.KEYWORD_ONLY]
  return tuple(allowed) + tuple(_EXTRA_OPTIONS.get(name, ()))


def get_loss(name: str, **kwargs) -> LossFn:
  """The loss called `name`, with its options bound: `fn(logits, labels) -> scalar`.

  Names: "ce" (`cross_entropy`), "wce" (`weighted_cross_entropy` with per-class
  weights from `inverse_frequency_weights` of each batch's labels, unless
  `weights=` is given -- a class-imbalance default that needs no
  precomputation), "dice" (`soft_dice`), "gdl" (`generalized_dice`), "gwdl"
  (`generalized_wasserstein_dice`; `dist_matrix` defaults to 0 on the
  diagonal and 1 elsewhere for the logits' K), "dice_ce", "tversky", "focal".

  Raises:
    InputError: unknown name (field `loss.name`) or option (`loss.<option>`).
  """
  fn = _LOSSES.get(name)
  allowed = loss_options(name)
  for key in kwargs:
    if key not in allowed:
      raise InputError(f"loss.{key}: not an option of loss {name!r}; expected "
                       f"one of {', '.join(allowed) or '(none)'}")
  return functools.partial(fn, **kwargs)
