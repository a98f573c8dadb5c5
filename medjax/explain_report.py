"""Explanation PNGs for one test case of a trained run (`experiments.explain`).

* `explain_case(workdir, case, ...)`: loads the run (`restore.load_run`),
  finds the case by its id in the test split, normalises it as training does
  (`config_data.input_normalizer`, through the predictor's `channel_normalizer`),
  runs the `medjax.explain` methods and
  writes one PNG per method plus one with all of them side by side.
  A segmentation model works on one window of `config.patch_size` centred on
  the target structure (the ground truth's target-class voxels; the
  foreground, else the image centre, when the case has none), as it was
  trained; a classifier sees the whole image.
* `plot_attribution` / `plot_methods`: the drawing (image slice, ground truth
  (solid) and prediction (dashed) outlines of the target class, the heat map
  overlaid); a volume is shown on the axial slice through the most target
  voxels.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from medjax import explain  # pylint: disable=wrong-import-position
from medjax.data.pipeline import transforms  # pylint: disable=wrong-import-position
from medjax.errors import InputError  # pylint: disable=wrong-import-position
from medjax.inference import restore, run_predictor
from medjax.train import config_data  # pylint: disable=wrong-import-position
from medjax.train.report import focus_slice  # pylint: disable=wrong-import-position
from medjax.train.workdir import Workdir, atomic_write  # pylint: disable=wrong-import-position

TITLES = {"saliency": "gradient |df/dx| (Simonyan 2014)",
          "smoothgrad": "SmoothGrad (Smilkov 2017)",
          "integrated_gradients": "integrated gradients (Sundararajan 2017)",
          "grad_cam": "Grad-CAM (Selvaraju 2017)",
          "occlusion": "occlusion: drop of the target (Zeiler 2014)"}
SIGNED = ("integrated_gradients", "occlusion")  # red supports the target, blue opposes it


def display_map(method: str, attribution: np.ndarray, spatial_shape: Sequence[int]) -> np.ndarray:
  """One example's attribution as a map of the input's grid `spatial_shape`.

  Gradients (`(*S, C)`): `max_C |g|` (Simonyan 2014); integrated gradients:
  the signed sum over channels (completeness holds for the sum); Grad-CAM
  (`(*S')`): linearly resized to `spatial_shape`; occlusion (`(*S)`): as is.
  """
  a = np.asarray(attribution, np.float32)
  if method in ("saliency", "smoothgrad"):
    return np.abs(a).max(axis=-1)
  if method == "integrated_gradients":
    return a.sum(axis=-1)
  if method == "grad_cam":
    return np.asarray(explain.resize_map(a[None], spatial_shape)[0])
  return a


def _draw(ax, img: np.ndarray, heat: Optional[np.ndarray], *, signed: bool,
          truth: Optional[np.ndarray], pred: Optional[np.ndarray], title: str):
  lo, hi = np.percentile(img, [1, 99])
  ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
  image = None
  if heat is not None:
    scale = float(np.abs(heat).max()) or 1.0
    if signed:
      image = ax.imshow(heat, cmap="bwr", vmin=-scale, vmax=scale, alpha=0.55)
    else:
      image = ax.imshow(np.ma.masked_less(heat, 0.05 * scale), cmap="inferno", vmin=0,
                        vmax=scale, alpha=0.6)
  for m, style, colour in ((truth, "solid", "lime"), (pred, "dashed", "cyan")):
    if m is not None and m.any():
      ax.contour(m, levels=[0.5], colors=colour, linestyles=style, linewidths=1.0)
  ax.set_title(title, fontsize=8)
  ax.axis("off")
  return image


def _slices(image, heats, truth, pred):
  """The 2D planes to draw: a volume's axial slice through the most target voxels."""
  if image.ndim == 2:
    return image, heats, truth, pred, None
  ref = truth if truth is not None and truth.any() else pred
  z = focus_slice(ref.astype(np.int32), 1) if ref is not None else image.shape[0] // 2
  pick = lambda a: None if a is None else a[z]
  return image[z], {k: h[z] for k, h in heats.items()}, pick(truth), pick(pred), z


def plot_methods(image: np.ndarray, heats: dict[str, np.ndarray], path: str, *, title: str,
                 truth: Optional[np.ndarray] = None, pred: Optional[np.ndarray] = None,
                 notes: Optional[dict[str, str]] = None) -> str:
  """The image, then one panel per method with its map overlaid, in one PNG.

  Args:
    image: `(*S)` the (normalised) input channel to show, 2D or 3D.
    heats: method -> `(*S)` map (`display_map`).
    truth, pred: optional `(*S)` bool masks of the target structure, outlined
      solid green (ground truth) and dashed cyan (prediction).
    notes: method -> a second title line (e.g. the completeness check).
  """
  img, planes, t, p, z = _slices(np.asarray(image), heats, truth, pred)
  n = len(planes) + 1
  fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6), squeeze=False)
  outlines = "input" if t is None and p is None else "input: truth solid, prediction dashed"
  _draw(axes[0, 0], img, None, signed=False, truth=t, pred=p, title=outlines)
  for ax, (method, heat) in zip(axes[0, 1:], planes.items()):
    zero = "" if np.any(heats[method]) else " (all zero)"
    note = (notes or {}).get(method)
    shown = _draw(ax, img, heat, signed=method in SIGNED, truth=t, pred=p,
                  title=TITLES.get(method, method) + zero + (f"\n{note}" if note else ""))
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
  fig.suptitle(title if z is None else f"{title} (slice {z})", fontsize=9)
  fig.tight_layout()
  with atomic_write(path) as tmp:
    fig.savefig(tmp, dpi=90, format="png")
  plt.close(fig)
  return path


def plot_attribution(image: np.ndarray, heat: np.ndarray, path: str, *, method: str, title: str,
                     truth: Optional[np.ndarray] = None, pred: Optional[np.ndarray] = None,
                     note: Optional[str] = None) -> str:
  """`plot_methods` with one method: the image and its map overlaid."""
  return plot_methods(image, {method: heat}, path, title=title, truth=truth, pred=pred,
                      notes={method: note} if note else None)


# --- one case of a trained run -------------------------------------------------------------------

def find_case(source: Sequence[dict], case: str) -> dict:
  """The example of `source` whose `case` id is `case`; InputError listing the ids if none."""
  ids = []
  for index in range(len(source)):
    example = source[index]
    name = example.get("case", f"case_{index}")
    name = name.decode() if isinstance(name, bytes) else str(name)
    if name == case:
      return example
    ids.append(name)
  ids.sort()
  shown = ", ".join(ids[:20]) + (f", ... ({len(ids)} cases)" if len(ids) > 20 else "")
  raise InputError(f"--case={case}: not in the test split; available: {shown}")


def window_around(shape: Sequence[int], window: Sequence[int], mask: np.ndarray
                  ) -> tuple[slice, ...]:
  """Slices of a `window` (clipped to `shape`) centred on the centroid of `mask`
  (the image centre when `mask` is empty)."""
  centre = (np.argwhere(mask).mean(axis=0) if mask.any()
            else np.asarray(shape, np.float64) / 2)
  out = []
  for c, w, s in zip(centre, window, shape):
    w = min(int(w), int(s))
    start = int(np.clip(round(c - w / 2), 0, s - w))
    out.append(slice(start, start + w))
  return tuple(out)


def _pad_to(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  """Edge-pads the leading axes of `a` up to `shape` (an image smaller than the window)."""
  pad = [(0, max(0, int(s) - d)) for s, d in zip(shape, a.shape)]
  pad += [(0, 0)] * (a.ndim - len(pad))
  return np.pad(a, pad, mode="edge") if any(p[1] for p in pad) else a


def _run_method(method: str, model, variables, x, *, layer, target_class, mask) -> np.ndarray:
  kw = dict(target_class=target_class, mask=mask)
  spatial = x.shape[1:-1]
  if method == "saliency":
    return np.asarray(explain.saliency(model, variables, x, **kw))
  if method == "smoothgrad":
    return np.asarray(explain.smoothgrad(model, variables, x, samples=16, **kw))
  if method == "integrated_gradients":
    return np.asarray(explain.integrated_gradients(model, variables, x, steps=32, **kw))
  if method == "grad_cam":
    return np.asarray(explain.grad_cam(model, variables, x, layer=layer, **kw))
  patch = tuple(max(1, -(-s // 8)) for s in spatial)  # an 8x8(x8) grid of patches
  return np.asarray(explain.occlusion(model, variables, x, patch=patch, **kw))


@dataclasses.dataclass(frozen=True)
class CaseInput:
  """What the network is explained on: `x` `(1, *S, C)`; the target (`target_class`,
  region `mask` `(1, *S)` or None, described by `target_text`); the ground truth and
  predicted target structure `(*S)` to outline (None for a classifier)."""
  x: np.ndarray
  target_class: int
  mask: Optional[np.ndarray]
  target_text: str
  truth: Optional[np.ndarray] = None
  pred: Optional[np.ndarray] = None


def _segmentation_input(config, model, variables, image: np.ndarray,
                        label: Optional[np.ndarray], target_class: Optional[int]) -> CaseInput:
  """A window of `config.patch_size` centred on the target structure; the region is
  the window's voxels predicted as the target class."""
  cls = int(config.num_classes) - 1 if target_class is None else int(target_class)
  name = config.class_names[cls]
  if label is None:
    focus = np.zeros(image.shape[:-1], bool)
  else:
    focus = (label == cls) if (label == cls).any() else (label > 0)
  box = window_around(image.shape[:-1], config.patch_size, focus)
  x = _pad_to(image[box], config.patch_size)[None]
  truth = None if label is None else _pad_to(label[box], config.patch_size) == cls
  mask = np.asarray(explain.predicted_region(model, variables, x, cls))
  region = (f"{int(mask.sum())} predicted {name} voxels" if mask.any()
            else f"no {name} predicted: whole window")
  return CaseInput(x, cls, mask, f"mean {name} logit over {region}", truth,
                   mask[0] if mask.shape[1:] == x.shape[1:-1] else None)


def _classification_input(config, model, variables, image: np.ndarray,
                          label: Optional[np.ndarray], target_class: Optional[int]) -> CaseInput:
  """The whole image; the target is the logit of `target_class` (default: the predicted one)."""
  del label
  x = image[None]
  logits = jax.jit(lambda v, a: model.apply(v, a, train=False))(variables, x)
  predicted = int(np.argmax(np.asarray(logits)[0]))
  cls = predicted if target_class is None else int(target_class)
  return CaseInput(x, cls, None, f"logit of {config.class_names[cls]} (predicted: "
                                 f"{config.class_names[predicted]})")


def load_case(config, case: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """Test case `case` of `config`'s dataset as the network sees it: the image
  `(*S, C)` normalised as in training, and its dense labels `(*S)` after
  `config.label_map` (None for an image-level label)."""
  example = find_case(config_data.load_split(config, "test"), case)
  raw = transforms.check_image(example["image"], case)
  image = run_predictor.channel_normalizer(config)(
      raw[..., None] if raw.ndim == len(config.patch_size) else raw)
  label = np.asarray(example["label"]) if np.ndim(example.get("label")) else None
  if label is not None and config.get("label_map"):
    label = np.asarray(config.label_map, np.int32)[label]
  return image, label


def _completeness_note(model, variables, x, attribution, target_class, mask) -> str:
  """`sum IG` against `f(x) - f(0)` (Sundararajan 2017's check), for the panel title."""
  score = lambda a: float(np.asarray(explain.target_score(model, variables, a,
                                                          target_class=target_class,
                                                          mask=mask))[0])
  return (f"sum {float(np.sum(attribution)):.3g}, f(x) - f(0) = "
          f"{score(x) - score(np.zeros_like(x)):.3g}")


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
  """`methods` as a tuple; a one-line InputError naming the unknown ones and the known ones."""
  methods = tuple(m.strip() for m in methods if m.strip())
  unknown = [m for m in methods if m not in explain.METHODS]
  if unknown or not methods:
    raise InputError(f"--method={','.join(methods)}: unknown method {', '.join(unknown) or '(none)'}; "
                     f"expected some of {', '.join(explain.METHODS)}")
  return methods


def explain_case(workdir: str, case: str, *, methods: Sequence[str] = explain.METHODS,
                 layer: Optional[str] = None, target_class: Optional[int] = None,
                 output: Optional[str] = None) -> list[str]:
  """Explanation PNGs of test case `case` of the run in `workdir`.

  Args:
    workdir: a trained run (a cascade: give one stage, e.g. `RUN/stage2`).
    case: the case id (`case` feature) in the test split.
    methods: some of `medjax.explain.METHODS`.
    layer: the Grad-CAM layer (None: `explain.default_layer`).
    target_class: the class explained (None: the last class of a segmentation
      run, e.g. the tumour; the predicted class of a classifier).
    output: folder for the PNGs (default `<workdir>/report/explain/`).
  Returns:
    The paths written: `<case>_<method>.png` per method, and
    `<case>_methods.png` with all of them when there are several.
  Raises:
    InputError: unknown method, case, layer or class; an unreadable workdir.
  """
  methods = check_methods(methods)
  run_dir = Workdir(os.fspath(workdir))
  if run_predictor.is_cascade(run_dir.read_config()):
    raise InputError(f"--workdir={workdir}: a cascade; explain one of its stages "
                     f"(--workdir={os.path.join(os.fspath(workdir), 'stage2')})")
  config, model, variables = restore.load_run(run_dir)
  image, label = load_case(config, case)
  num_classes = int(config.num_classes)
  if target_class is not None and not 0 <= int(target_class) < num_classes:
    raise InputError(f"--target_class={target_class}: expected a class in [0, {num_classes}) "
                     f"({', '.join(config.class_names)})")
  apply = lambda v, a: model.apply(v, a, train=False)
  segmentation = len(jax.eval_shape(apply, variables,
                                    jax.ShapeDtypeStruct((1,) + image.shape, np.float32)).shape) > 2
  prepare = _segmentation_input if segmentation else _classification_input
  inputs = prepare(config, model, variables, image, label, target_class)
  x, mask, truth, pred = inputs.x, inputs.mask, inputs.truth, inputs.pred
  image, target_class = inputs.x[0], inputs.target_class
  layers = explain.spatial_layers(model, variables, x)
  layer = (explain.default_layer(layers, segmentation=segmentation) if layer is None
           else explain.check_layer(layers, layer))
  heats, notes = {}, {}
  for method in methods:
    attribution = _run_method(method, model, variables, x, layer=layer,
                              target_class=target_class, mask=mask)
    heats[method] = display_map(method, attribution[0], image.shape[:-1])
    if method == "integrated_gradients":
      notes[method] = _completeness_note(model, variables, x, attribution, target_class, mask)
  folder = output or run_dir.report_path("explain")
  os.makedirs(folder, exist_ok=True)
  layer_text = f", Grad-CAM layer {layer}" if "grad_cam" in methods else ""
  title = f"{case}: {inputs.target_text}{layer_text}"
  paths = [plot_attribution(image[..., 0], heats[m], os.path.join(folder, f"{case}_{m}.png"),
                            method=m, title=title, truth=truth, pred=pred, note=notes.get(m))
           for m in methods]
  if len(methods) > 1:
    paths.append(plot_methods(image[..., 0], heats, os.path.join(folder, f"{case}_methods.png"),
                              title=title, truth=truth, pred=pred, notes=notes))
  return paths


__all__ = ["explain_case", "plot_methods", "plot_attribution", "display_map", "find_case",
           "window_around", "check_methods", "load_case", "CaseInput"]
