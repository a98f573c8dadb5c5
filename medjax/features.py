"""Deep features and linear probes for transfer learning.

"Deep features" (Azizpour et al. 2016, "Factors of Transferability for a
Generic ConvNet Representation"; Razavian et al. 2014): the activations of an
intermediate layer of a network trained on a source task, pooled into a
fixed-size vector per image, used as input to a simple classifier for the
target task. The choice of layer matters: earlier layers transfer better
to tasks far from the source (e.g. medical images from ImageNet features).

* `extract(model, variables, images, layer=...)`: global-average-pooled
  output of the named submodule, `(N, F)`.
* `linear_probe_fit` / `linear_probe_predict`: a linear classifier on those
  features (closed-form ridge regression on one-hot targets).
* In a training run, the same two ideas are tasks
  (`medjax.train.tasks.transfer`): `linear_probe` trains only the head on the
  frozen network loaded from `config.init_from` (by SGD/Adam in the loop,
  instead of the closed-form ridge probe here), `finetune` trains it all or
  all but some frozen stages (Tajbakhsh et al. 2016); warm start in
  `medjax.train.warm_start`, frozen stages and per-stage learning rates in
  `medjax.train.optim`.

No pretrained weights are downloaded (there is no network at run time); load
your own checkpoint (`medjax.inference.restore.load_run`) or weights file
(`medjax.weights`) into `variables`.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _pool(y: jax.Array) -> jax.Array:
  return y if y.ndim == 2 else jnp.mean(y, axis=tuple(range(1, y.ndim - 1)))


def extract(model: nn.Module, variables: Any, images, *, layer: str,
            batch_size: Optional[int] = None) -> jax.Array:
  """Deep features: global-average-pooled activations of one layer.

  Args:
    model: a Flax module whose `__call__` takes `(x, train=False)`.
    variables: its variables (params, batch_stats...).
    images: `(N, *S, C)`.
    layer: '/'-separated path of module names from the root, e.g. "stage3"
      for `ResNet`, "down2" or "bottleneck" for `UNet`; the output of that
      submodule's `__call__` is used.
    batch_size: process the images in chunks of this size (None: all at once).
  Returns:
    `(N, F)` features, F = the layer's channels (spatial dims averaged; an
    output that is already `(N, F)` is returned as is).
  """
  path = tuple(p for p in layer.split("/") if p)

  def capture(mdl: nn.Module, method_name: str) -> bool:
    return method_name == "__call__" and tuple(mdl.path) == path

  def run(x):
    _, state = model.apply(variables, x, train=False, capture_intermediates=capture,
                           mutable=["intermediates"])
    node = state.get("intermediates", {})
    for p in path:
      if p not in node:
        return None
      node = node[p]
    return _pool(node["__call__"][0])

  images = jnp.asarray(images)
  n = images.shape[0]
  step = n if not batch_size else batch_size
  # Trace once without compiling to check that the layer exists.
  if jax.eval_shape(run, jax.ShapeDtypeStruct((min(step, n),) + images.shape[1:],
                                              images.dtype)) is None:
    raise ValueError(f"extract: no submodule at layer={layer!r} in {type(model).__name__} "
                     "(give the '/'-separated module names, e.g. 'stage3')")
  run = jax.jit(run)
  chunks = [run(images[i:i + step]) for i in range(0, n, step)]
  return jnp.concatenate(chunks, axis=0)


def linear_probe_fit(features, labels, l2: float = 1e-3,
                     num_classes: Optional[int] = None) -> dict:
  """Linear classifier on fixed features, in closed form.

  Ridge regression of one-hot targets on standardised features (a
  least-squares classifier): `W = (X^T X + l2 n I)^-1 X^T Y` with X the
  standardised, centred features and Y the centred one-hot labels. Closed
  form keeps it deterministic, tuning-free apart from `l2`, and exact;
  Azizpour et al. used a linear SVM, which ranks features the same way in
  practice. Predict with `linear_probe_predict`; `argmax` of its scores is
  the class.

  Args:
    features: `(N, F)`; labels: `(N,)` ints in [0, K).
    l2: ridge penalty, relative to N.
  Returns:
    {"w": (F, K), "b": (K,), "mean": (F,), "scale": (F,)}.
  """
  x = np.asarray(features, np.float64)
  y = np.asarray(labels).astype(int)
  k = int(num_classes or y.max() + 1)
  mean, scale = x.mean(0), x.std(0) + 1e-8
  xs = (x - mean) / scale
  onehot = np.eye(k)[y]
  ymean = onehot.mean(0)
  n, f = xs.shape
  w = np.linalg.solve(xs.T @ xs + l2 * n * np.eye(f), xs.T @ (onehot - ymean))
  return {"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray(ymean, jnp.float32),
          "mean": jnp.asarray(mean, jnp.float32), "scale": jnp.asarray(scale, jnp.float32)}


def linear_probe_predict(probe: dict, features) -> jax.Array:
  """Class scores `(N, K)` of a probe from `linear_probe_fit`."""
  x = (jnp.asarray(features, jnp.float32) - probe["mean"]) / probe["scale"]
  return x @ probe["w"] + probe["b"]
