"""Explanations: which input voxels (or which feature maps) a prediction rests on.

Every method is a pure function of `(model, variables, x, ...)` that runs the
model in inference mode (`model.apply(variables, x, train=False)`: BatchNorm
uses its running statistics, dropout is off) and is compiled with `jax.jit`:

* `saliency`: the vanilla gradient of the target w.r.t. the input
  (Simonyan, Vedaldi & Zisserman 2014, "Deep inside convolutional networks").
* `smoothgrad`: the gradient averaged over noisy copies of the input
  (Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise").
* `integrated_gradients`: the path integral of the gradient from a baseline to
  the input, times the input difference (Sundararajan, Taly & Yan 2017,
  "Axiomatic attribution for deep networks"); its attributions sum to
  `f(x) - f(baseline)` (completeness).
* `grad_cam`: a named layer's feature maps weighted by the spatial mean of the
  target's gradient w.r.t. them, then ReLU (Selvaraju et al. 2017, "Grad-CAM");
  for segmentation networks with the region target below (Vinogradova et al.
  2020, "Towards interpretable semantic segmentation via gradient-weighted
  class activation mapping"). 2D and 3D, any layer with a spatial output.
* `occlusion`: the drop of the target when a sliding patch of the input is
  replaced by a constant (Zeiler & Fergus 2014, "Visualizing and
  understanding convolutional networks").

The target (the scalar per example that is explained):

* a classifier (logits `(N, K)`): the logit of class `c`, `f(x) = z_c(x)`;
  `target_class=None` takes each example's predicted class.
* a segmentation network (logits `(N, *S, K)`): the MEAN of the class-`c`
  logits over a region `R` of output voxels, `f(x) = (1/|R|) sum_{v in R}
  z_{v,c}(x)`. `R` is `mask` when given (`(N, *S)`, e.g. a ground-truth
  structure), else the voxels predicted as `c` for the input `x` itself
  (`predicted_region`), or every voxel when none is. `R` is fixed before the
  gradients are taken, so it does not move along the integration path or
  under the occluding patch. `target_class=None` takes the last class (the
  innermost structure, e.g. the tumour).

Logits are used, not probabilities: a softmax output saturates, and its
gradient vanishes exactly where the network is sure.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medjax.errors import InputError

METHODS = ("saliency", "smoothgrad", "integrated_gradients", "grad_cam", "occlusion")
IG_RULES = ("trapezoid", "riemann_left", "riemann_right", "riemann_middle")
Mask = Optional[Any]
TargetClass = Optional[Union[int, Sequence[int], jax.Array]]


# --- the target ----------------------------------------------------------------------------

def _logits(model: nn.Module, variables: Any, x: jax.Array) -> jax.Array:
  out = model.apply(variables, x, train=False)
  return out.astype(jnp.float32)


# The compiled functions below take the model as a static argument, so a second call
# with the same model and shapes reuses the compilation (Flax modules hash by their
# fields: give tuples, not lists, as a model's sizes).
_forward = jax.jit(_logits, static_argnums=0)


def _score(logits: jax.Array, classes: jax.Array, weights: Optional[jax.Array]) -> jax.Array:
  """`(N,)` target of each example: `z_c` of a classifier, the weighted sum of
  class-c logits over space of a segmentation network (`weights` sum to 1)."""
  onehot = jax.nn.one_hot(classes, logits.shape[-1], dtype=logits.dtype)
  picked = jnp.sum(logits * onehot.reshape((-1,) + (1,) * (logits.ndim - 2) + onehot.shape[-1:]),
                   axis=-1)
  if weights is None:
    return picked
  return jnp.sum(picked * weights, axis=tuple(range(1, picked.ndim)))


def _region_weights(mask: jax.Array) -> jax.Array:
  """`(N, *S)` weights `1/|R|` on the region (uniform over all voxels where it is empty)."""
  m = mask.astype(jnp.float32)
  axes = tuple(range(1, m.ndim))
  count = jnp.sum(m, axis=axes, keepdims=True)
  m = jnp.where(count > 0, m, 1.0)
  return m / jnp.sum(m, axis=axes, keepdims=True)


def _resolve_target(model: nn.Module, variables: Any, x: jax.Array, target_class: TargetClass,
                    mask: Mask) -> tuple[jax.Array, Optional[jax.Array]]:
  """`(classes (N,) int32, region weights (N, *S_out) or None)` for `x` (module docstring)."""
  logits = _forward(model, variables, x)
  n, k = logits.shape[0], logits.shape[-1]
  segmentation = logits.ndim > 2
  if target_class is None:
    classes = (jnp.full((n,), k - 1, jnp.int32) if segmentation
               else jnp.argmax(logits, axis=-1).astype(jnp.int32))
  else:
    classes = jnp.broadcast_to(jnp.asarray(target_class, jnp.int32), (n,))
    bad = [int(c) for c in np.asarray(classes) if not 0 <= int(c) < k]
    if bad:
      raise InputError(f"target_class={bad[0]}: expected a class in [0, {k}) "
                       f"(the model has {k} output classes)")
  if not segmentation:
    if mask is not None:
      raise InputError("mask: only a segmentation model (logits (N, *S, K)) takes a region mask; "
                       f"this model gives logits of shape {tuple(logits.shape)}")
    return classes, None
  if mask is None:
    mask = jnp.argmax(logits, axis=-1) == classes.reshape((-1,) + (1,) * (logits.ndim - 2))
  mask = jnp.asarray(mask)
  if mask.shape != logits.shape[:-1]:
    raise InputError(f"mask: shape {tuple(mask.shape)}; expected the logits' spatial shape "
                     f"{tuple(logits.shape[:-1])} (N, *S)")
  return classes, _region_weights(mask)


def predicted_region(model: nn.Module, variables: Any, x: jax.Array, target_class: int
                     ) -> jax.Array:
  """`(N, *S)` bool: the output voxels a segmentation model predicts as `target_class` for `x`."""
  logits = _forward(model, variables, jnp.asarray(x, jnp.float32))
  return jnp.argmax(logits, axis=-1) == target_class


def target_score(model: nn.Module, variables: Any, x: jax.Array, *,
                 target_class: TargetClass = None, mask: Mask = None) -> jax.Array:
  """`(N,)` the explained scalar `f(x)` of each example (module docstring).

  For a segmentation model without `mask`, the region is predicted from `x`
  itself; to compare `f` at two inputs (completeness of integrated
  gradients) pass the same `mask` to both calls.
  """
  x = jnp.asarray(x, jnp.float32)
  classes, weights = _resolve_target(model, variables, x, target_class, mask)
  return _target_scores(model, variables, x, classes, weights)


@functools.partial(jax.jit, static_argnums=0)
def _target_scores(model, variables, x, classes, weights):
  return _score(_logits(model, variables, x), classes, weights)


def _flatten_stack(xs: jax.Array, classes: jax.Array, weights: Optional[jax.Array]):
  """A stack of inputs `(B, N, *S, C)` as one batch `(B*N, *S, C)`, with the target
  tiled to match (examples are independent in inference mode)."""
  b, n = xs.shape[:2]
  flat = xs.reshape((b * n,) + xs.shape[2:])
  classes = jnp.tile(classes, b)
  weights = None if weights is None else jnp.tile(weights, (b,) + (1,) * (weights.ndim - 1))
  return flat, classes, weights


def _stack_scores(model: nn.Module, variables: Any, xs: jax.Array, classes: jax.Array,
                  weights: Optional[jax.Array]) -> jax.Array:
  """Targets of a stack of inputs `(B, N, *S, C)` -> `(B, N)`, in one batch of `B*N`."""
  flat, classes, weights = _flatten_stack(xs, classes, weights)
  return _score(_logits(model, variables, flat), classes, weights).reshape(xs.shape[:2])


def _stack_grads(model: nn.Module, variables: Any, xs: jax.Array, classes: jax.Array,
                 weights: Optional[jax.Array]) -> jax.Array:
  """Input gradients of the target for a stack of inputs `(B, N, *S, C)` -> `(B, N, *S, C)`,
  in one batch of `B*N`."""
  flat, classes, weights = _flatten_stack(xs, classes, weights)
  grad = jax.grad(lambda a: jnp.sum(_score(_logits(model, variables, a), classes, weights)))
  return grad(flat).reshape(xs.shape)


def _chunks(values: jax.Array, weights: np.ndarray, batch_size: int
            ) -> tuple[jax.Array, jax.Array]:
  """`values`/`weights` `(T, ...)` padded with zero-weight copies to `(T', ...)` and
  reshaped to `(T' / B, B, ...)` chunks (`values` may be PRNG keys)."""
  values = jnp.asarray(values)
  t = values.shape[0]
  b = max(1, min(int(batch_size), t))
  pad = (-t) % b
  values = jnp.concatenate([values] + [values[-1:]] * pad, axis=0)
  weights = np.concatenate([weights, np.zeros((pad,), weights.dtype)])
  return values.reshape((-1, b) + values.shape[1:]), jnp.asarray(weights.reshape(-1, b))


# --- gradient methods ------------------------------------------------------------------------

def saliency(model: nn.Module, variables: Any, x: jax.Array, *,
             target_class: TargetClass = None, mask: Mask = None) -> jax.Array:
  """Vanilla gradient `d f / d x` (Simonyan et al. 2014).

  Args:
    model, variables: a Flax module `__call__(x, *, train)` and its variables.
    x: `(N, *S, C)` inputs (as the network sees them, i.e. normalised).
    target_class, mask: the target (module docstring).
  Returns:
    `(N, *S, C)` float32 gradient (signed; Simonyan et al. show `max_C |g|`).
  """
  x = jnp.asarray(x, jnp.float32)
  classes, weights = _resolve_target(model, variables, x, target_class, mask)
  return _saliency(model, variables, x, classes, weights)


@functools.partial(jax.jit, static_argnums=0)
def _saliency(model, variables, x, classes, weights):
  return _stack_grads(model, variables, x[None], classes, weights)[0]


def smoothgrad(model: nn.Module, variables: Any, x: jax.Array, *,
               target_class: TargetClass = None, mask: Mask = None, samples: int = 25,
               sigma: float = 0.15, rng: Optional[jax.Array] = None,
               batch_size: int = 8) -> jax.Array:
  """SmoothGrad (Smilkov et al. 2017): `mean_i d f / d x (x + e_i)`, `e_i ~ N(0, s^2)`.

  Args:
    x: `(N, *S, C)`.
    samples: number of noisy copies (the paper uses 50; 25 is already smooth).
    sigma: noise level relative to each example's range: `s = sigma *
      (max(x_n) - min(x_n))` (the paper's 10-20 %). `sigma=0` gives `saliency`.
    rng: PRNG key for the noise (default `PRNGKey(0)`).
    batch_size: noisy copies per forward/backward batch (memory bound).
  Returns:
    `(N, *S, C)` float32 mean gradient.
  """
  x = jnp.asarray(x, jnp.float32)
  if samples < 1:
    raise InputError(f"samples={samples}: expected at least 1 noisy copy")
  classes, weights = _resolve_target(model, variables, x, target_class, mask)
  keys = jax.random.split(jax.random.PRNGKey(0) if rng is None else rng, samples)
  key_chunks, w_chunks = _chunks(keys, np.ones((samples,), np.float32) / samples, batch_size)
  return _smoothgrad(model, variables, x, classes, weights, jnp.float32(sigma),
                     key_chunks, w_chunks)


@functools.partial(jax.jit, static_argnums=0)
def _smoothgrad(model, variables, x, classes, weights, sigma, key_chunks, w_chunks):
  axes = tuple(range(1, x.ndim))
  scale = sigma * (jnp.max(x, axis=axes, keepdims=True) - jnp.min(x, axis=axes, keepdims=True))

  def chunk(total, keys_and_weights):
    keys, ws = keys_and_weights
    noise = jax.vmap(lambda k: jax.random.normal(k, x.shape, x.dtype))(keys)
    g = _stack_grads(model, variables, x[None] + scale[None] * noise, classes, weights)
    return total + jnp.tensordot(ws, g, axes=1), None

  total, _ = jax.lax.scan(chunk, jnp.zeros_like(x), (key_chunks, w_chunks))
  return total


def _ig_alphas(steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
  """Path positions `alpha` and quadrature weights for `int_0^1 g(alpha) d alpha`."""
  if rule not in IG_RULES:
    raise InputError(f"rule={rule!r}: expected one of {', '.join(IG_RULES)}")
  if rule == "trapezoid":
    alphas = np.linspace(0.0, 1.0, steps + 1)
    weights = np.full(steps + 1, 1.0 / steps)
    weights[[0, -1]] *= 0.5
  else:
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
    alphas = (np.arange(steps) + offset) / steps
    weights = np.full(steps, 1.0 / steps)
  return alphas.astype(np.float32), weights.astype(np.float32)


def integrated_gradients(model: nn.Module, variables: Any, x: jax.Array, *,
                         target_class: TargetClass = None, mask: Mask = None,
                         baseline: Optional[jax.Array] = None, steps: int = 32,
                         rule: str = "trapezoid", batch_size: int = 8) -> jax.Array:
  """Integrated gradients (Sundararajan et al. 2017).

  `IG_i = (x_i - x'_i) * int_0^1 d f / d x_i (x' + a (x - x')) da`, the
  integral by the trapezoid rule (or a left/right/midpoint Riemann sum) over
  `steps` intervals; all path points are batched (`batch_size` per
  forward/backward pass) inside one compiled function. Completeness:
  `sum_i IG_i = f(x) - f(x')` up to the quadrature error, which falls with
  `steps` (the paper: 20-300 steps, check the sum to within 5 %).

  Args:
    x: `(N, *S, C)`.
    baseline: `x'`, broadcastable to `x` (default zeros: for z-scored CT, the
      mean intensity, i.e. "no contrast").
    steps: number of intervals of the path.
    rule: "trapezoid" | "riemann_left" | "riemann_right" | "riemann_middle".
  Returns:
    `(N, *S, C)` float32 attributions.
  """
  x = jnp.asarray(x, jnp.float32)
  if steps < 1:
    raise InputError(f"steps={steps}: expected at least 1 integration step")
  base = jnp.broadcast_to(jnp.zeros((), jnp.float32) if baseline is None
                          else jnp.asarray(baseline, jnp.float32), x.shape)
  classes, weights = _resolve_target(model, variables, x, target_class, mask)
  alphas, quad = _ig_alphas(steps, rule)
  a_chunks, w_chunks = _chunks(alphas, quad, batch_size)

  return _integrated_gradients(model, variables, x, base, classes, weights,
                               a_chunks, w_chunks)


@functools.partial(jax.jit, static_argnums=0)
def _integrated_gradients(model, variables, x, base, classes, weights, a_chunks, w_chunks):
  delta = x - base

  def chunk(total, alphas_and_weights):
    alphas, ws = alphas_and_weights
    path = base[None] + alphas.reshape((-1,) + (1,) * x.ndim) * delta[None]
    g = _stack_grads(model, variables, path, classes, weights)
    return total + jnp.tensordot(ws, g, axes=1), None

  total, _ = jax.lax.scan(chunk, jnp.zeros_like(x), (a_chunks, w_chunks))
  return delta * total


# --- Grad-CAM --------------------------------------------------------------------------------

def _layer_path(layer: str) -> tuple[str, ...]:
  return tuple(p for p in str(layer).split("/") if p)


def spatial_layers(model: nn.Module, variables: Any, x: jax.Array) -> dict[str, tuple]:
  """Every submodule whose output is a feature map `(N, *S', C')` with the input's
  number of spatial dims: `{"down0/conv0": shape, ...}` in the order their calls
  finish (the last entry at the lowest resolution is the classic Grad-CAM layer).
  Traced abstractly: nothing is computed."""
  found: dict[str, tuple] = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = tuple(context.module.path)
    if (context.method_name == "__call__" and path and hasattr(out, "shape")
        and len(out.shape) == len(x.shape)):
      found.setdefault("/".join(path), tuple(out.shape))
    return out

  def run(v, a):
    with nn.intercept_methods(record):
      return model.apply(v, a, train=False)

  jax.eval_shape(run, variables, jax.ShapeDtypeStruct(x.shape, jnp.float32))
  return found


def default_layer(layers: dict[str, tuple], *, segmentation: bool = False) -> str:
  """The Grad-CAM layer when none is named.

  A classifier: the last-finishing layer among those of lowest resolution
  (its last conv layer, Selvaraju et al.'s choice). A segmentation network:
  the last layer before the output layer (a U-Net's last decoder block,
  `up0`): in its encoder and bottleneck the class-c evidence is often carried
  by negative weights alpha_k, and the ReLU then leaves an all-zero map
  (measured on the default 3D U-Net run), while the last decoder features
  localise the structure.
  """
  names = list(layers)
  if segmentation and len(names) > 1:
    return names[-2]
  if not layers:
    raise InputError("grad_cam: the model has no layer with a spatial output")
  smallest = min(int(np.prod(s[1:-1])) for s in layers.values())
  return [name for name, s in layers.items() if int(np.prod(s[1:-1])) == smallest][-1]


def check_layer(layers: dict[str, tuple], layer: str) -> str:
  """`layer` normalised to 'a/b'; a one-line InputError listing the layers if unknown."""
  name = "/".join(_layer_path(layer))
  if name not in layers:
    raise InputError(f"layer={layer!r}: not a layer with a spatial output; available: "
                     f"{', '.join(layers)}")
  return name


def _forward_with_layer(model: nn.Module, variables: Any, x: jax.Array, path: tuple,
                        delta: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Logits, and the layer's activation `A`, with `A + delta` fed onward (so that
  the gradient w.r.t. `delta` at 0 is the gradient w.r.t. `A`)."""
  store = {}

  def perturb(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if (context.method_name == "__call__" and tuple(context.module.path) == path
        and "act" not in store):  # a shared module: its first call
      store["act"] = out
      out = out + delta.astype(out.dtype)
    return out

  with nn.intercept_methods(perturb):
    logits = _logits(model, variables, x)
  return logits, store["act"]


def grad_cam(model: nn.Module, variables: Any, x: jax.Array, *, layer: Optional[str] = None,
             target_class: TargetClass = None, mask: Mask = None) -> jax.Array:
  """Grad-CAM (Selvaraju et al. 2017) of one named layer, 2D or 3D.

  `alpha_k = mean_{space} d f / d A_k`, `L = ReLU(sum_k alpha_k A_k)` with `A`
  the layer's output `(N, *S', K')`.

  Args:
    x: `(N, *S, C)`.
    layer: '/'-separated module path from the root, e.g. "down0/conv0",
      "bottleneck" or "up1" for `UNet`, "conv1" for the LeNet `ConvNet`,
      "stage4" or "stage4/block1/unit1/conv" for `ResNet`; `spatial_layers`
      lists them. None: `default_layer` (for a model whose logits are
      `(N, *S, K)`, the segmentation choice).
  Returns:
    `(N, *S')` float32, non-negative, at the layer's resolution
    (`resize_map` brings it to the input's).
  Raises:
    InputError: an unknown layer (one line listing the available ones).
  """
  x = jnp.asarray(x, jnp.float32)
  layers = spatial_layers(model, variables, x)
  classes, weights = _resolve_target(model, variables, x, target_class, mask)
  name = (default_layer(layers, segmentation=weights is not None) if layer is None
          else check_layer(layers, layer))
  path = _layer_path(name)
  shape = layers[name]

  return _grad_cam(model, path, variables, x, classes, weights, jnp.zeros(shape, jnp.float32))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _grad_cam(model, path, variables, x, classes, weights, zeros):
  def target(delta):
    logits, act = _forward_with_layer(model, variables, x, path, delta)
    return jnp.sum(_score(logits, classes, weights)), act

  grads, act = jax.grad(target, has_aux=True)(zeros)
  alpha = jnp.mean(grads, axis=tuple(range(1, grads.ndim - 1)))  # (N, K')
  return jax.nn.relu(jnp.einsum("n...k,nk->n...", act.astype(jnp.float32), alpha))


def resize_map(heat: jax.Array, spatial_shape: Sequence[int]) -> jax.Array:
  """`(N, *S')` map -> `(N, *spatial_shape)` by (multi)linear interpolation."""
  heat = jnp.asarray(heat, jnp.float32)
  return jax.image.resize(heat, (heat.shape[0],) + tuple(int(s) for s in spatial_shape),
                          method="linear")


# --- occlusion -------------------------------------------------------------------------------

def _starts(size: int, patch: int, stride: int) -> list[int]:
  """Patch origins covering `[0, size)`: every `stride`, plus one flush with the end."""
  last = max(size - patch, 0)
  starts = list(range(0, last + 1, stride))
  return starts if starts[-1] == last else starts + [last]


def occlusion(model: nn.Module, variables: Any, x: jax.Array, *,
              patch: Union[int, Sequence[int]] = 8, stride: Optional[Union[int, Sequence[int]]] = None,
              value: float = 0.0, target_class: TargetClass = None, mask: Mask = None,
              batch_size: int = 16) -> jax.Array:
  """Occlusion sensitivity (Zeiler & Fergus 2014).

  A patch of every channel is set to `value` at each position of a sliding
  grid; the map at a voxel is the mean, over the patches covering it, of the
  target's drop `f(x) - f(x with the patch occluded)` (positive: the region
  supports the target). Patch positions are batched (`batch_size` occluded
  copies per forward pass) in one compiled loop.

  Args:
    x: `(N, *S, C)`.
    patch: patch size, an int or one per spatial dim (clipped to the image).
    stride: grid step (default `patch`: non-overlapping patches).
    value: the occluding intensity (0: the mean of a z-scored image).
  Returns:
    `(N, *S)` float32.
  """
  x = jnp.asarray(x, jnp.float32)
  spatial = x.shape[1:-1]
  nd = len(spatial)
  as_tuple = lambda v: tuple(int(v) for v in (v if isinstance(v, (tuple, list)) else (v,) * nd))
  patch_t = tuple(min(p, s) for p, s in zip(as_tuple(patch), spatial))
  stride_t = patch_t if stride is None else as_tuple(stride)
  if len(patch_t) != nd or len(stride_t) != nd or min(patch_t + stride_t) < 1:
    raise InputError(f"occlusion: patch={patch}, stride={stride}: expected positive sizes, "
                     f"one or {nd} (one per spatial dim)")
  grids = np.meshgrid(*[_starts(s, p, st) for s, p, st in zip(spatial, patch_t, stride_t)],
                      indexing="ij")
  origins = np.stack([g.ravel() for g in grids], axis=-1).astype(np.int32)  # (P, nd)
  o_chunks, w_chunks = _chunks(origins, np.ones((len(origins),), np.float32), batch_size)
  classes, weights = _resolve_target(model, variables, x, target_class, mask)

  return _occlusion(model, patch_t, variables, x, jnp.float32(value), classes, weights,
                    o_chunks, w_chunks)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _occlusion(model, patch, variables, x, value, classes, weights, o_chunks, w_chunks):
  spatial = x.shape[1:-1]
  nd = len(spatial)

  def patch_mask(origin):  # (*S) bool
    inside = jnp.ones(spatial, bool)
    for d in range(nd):
      idx = jax.lax.broadcasted_iota(jnp.int32, spatial, d)
      inside &= (idx >= origin[d]) & (idx < origin[d] + patch[d])
    return inside

  base = _score(_logits(model, variables, x), classes, weights)  # (N,)

  def chunk(carry, origins_and_weights):
    total, count = carry
    origins, ws = origins_and_weights
    masks = jax.vmap(patch_mask)(origins)  # (B, *S)
    occluded = jnp.where(masks[:, None, ..., None], value, x[None])  # (B, N, *S, C)
    scores = _stack_scores(model, variables, occluded, classes, weights)  # (B, N)
    m = masks.astype(jnp.float32) * ws.reshape((-1,) + (1,) * nd)
    total = total + jnp.einsum("b...,bn->n...", m, base[None] - scores)
    return (total, count + jnp.sum(m, axis=0)), None

  init = (jnp.zeros((x.shape[0],) + spatial, jnp.float32), jnp.zeros(spatial, jnp.float32))
  (total, count), _ = jax.lax.scan(chunk, init, (o_chunks, w_chunks))
  return total / jnp.maximum(count, 1.0)[None]


__all__ = ["METHODS", "saliency", "smoothgrad", "integrated_gradients", "grad_cam", "occlusion",
           "target_score", "predicted_region", "spatial_layers", "default_layer", "check_layer",
           "resize_map"]


# --- detections ----------------------------------------------------------------------------
class AnchorLogits(nn.Module):
  """A detector's class logits at one anchor, `(N, K)`: the detection score explained as a
  classifier's logit, so every method above applies to one detection of a RetinaNet /
  Retina U-Net (`medjax.models.RetinaUNet`, outputs `{"class_logits": (N, A, K), ...}`).

  Its variables are the detector's under `detector` (`anchor_variables`)."""
  detector: nn.Module
  anchor: int

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self.detector(x, train=train)["class_logits"][:, self.anchor, :]


def anchor_variables(variables: Any) -> dict:
  """The detector's `variables` as `AnchorLogits`'s (every collection nested under `detector`)."""
  return {collection: {"detector": tree} for collection, tree in dict(variables).items()}


def explain_detection(model: nn.Module, variables: Any, x: jax.Array, anchor: int, *,
                      method: str = "integrated_gradients", target_class: int = 0,
                      **options) -> jax.Array:
  """Attribution `(N, *S, C)` (Grad-CAM: `(N, *S_layer)`) of the class-`target_class` logit of
  the detection at `anchor` (`medjax.inference.detect.anchor_of_box` finds the anchor of a
  detected box) by `method` (one of `METHODS`, with its keyword `options`)."""
  methods = {"saliency": saliency, "smoothgrad": smoothgrad,
             "integrated_gradients": integrated_gradients, "grad_cam": grad_cam,
             "occlusion": occlusion}
  if method not in methods:
    raise InputError(f"method={method!r}: expected one of {', '.join(METHODS)}")
  return methods[method](AnchorLogits(model, int(anchor)), anchor_variables(variables), x,
                         target_class=target_class, **options)
