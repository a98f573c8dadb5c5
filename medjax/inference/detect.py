"""Whole-volume lesion detection with a RetinaNet / Retina U-Net: windows -> boxes per case.

The steps of nnDetection's inference (Baumgartner et al. 2021) and of the
Retina U-Net's (Jaeger et al. 2018):

1. the raw image is normalised as in training and cut into the sliding
   windows of `medjax.inference.windows` (`window_starts`: the training patch
   with `overlap`);
2. per batch of windows, one jitted call runs the network, decodes the boxes
   from the anchors (`medjax.detection.coder`), scores each anchor by its
   highest class sigmoid, clips the boxes to the window and keeps the
   `top_k` best (the *network* time);
3. a second jitted call runs the greedy 3D NMS (`medjax.detection.nms`) on each
   window's top-k at `window_nms_iou`, keeping `window_detections` boxes (the
   *NMS* time);
4. each window is repeated for every combination of flips of `mirror_axes`
   (test-time mirroring; boxes flipped back) and for every ensemble member;
5. the boxes of all windows, mirrors and members, in case coordinates, are
   merged by weighted box clustering (`medjax.detection.clustering`: IoU with
   the cluster's top box > `iou_threshold`; window-centre weights; a cluster
   seen by fewer windows than cover it is down-weighted) (the *clustering*
   time), then boxes smaller than `min_size_mm` (their largest side) are
   dropped and the `max_detections` best kept.

`detect_windows` returns the step-4 boxes (`WindowBoxes`), so the thresholds of
step 5 can be chosen on the validation split without running the network again
(`medjax.train.tasks.detection`).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from medjax.detection import boxes as box_ops
from medjax.detection import clustering, coder
from medjax.detection.nms import nms as greedy_nms
from medjax.inference import windows


@dataclasses.dataclass(frozen=True)
class DetectorSettings:
  """How windows are cut and how many boxes each keeps.

  Attributes:
    roi_size: the window (the training patch).
    overlap: fraction of a window shared with its neighbour.
    batch_size: windows per network call.
    mirror_axes: spatial axes flipped for test-time mirroring (every combination).
    top_k: anchors kept per window before NMS.
    window_nms_iou: IoU above which NMS suppresses a box within a window.
    window_detections: boxes kept per window after NMS.
    min_score: boxes of a window at or below this score are dropped before clustering.
    coder_weights: the box coder's weights (as in training).
  """
  roi_size: tuple
  overlap: float = 0.5
  batch_size: int = 2
  mirror_axes: tuple = ()
  top_k: int = 256
  window_nms_iou: float = 0.5
  window_detections: int = 32
  min_score: float = 0.01
  coder_weights: Optional[tuple] = None


@dataclasses.dataclass(frozen=True)
class Postprocessing:
  """The thresholds of step 5 (module docstring), chosen on the validation split.

  Attributes:
    iou_threshold: weighted box clustering IoU.
    min_size_mm: boxes whose largest side is below this are dropped.
    score_threshold: the operating point: detections below it are not reported as
      findings (they stay candidates for the FROC).
    max_detections: candidates kept per case (LUNA16 scores at most 100).
  """
  iou_threshold: float = 0.2
  min_size_mm: float = 0.0
  score_threshold: float = 0.5
  max_detections: int = 100

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, raw: dict) -> "Postprocessing":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
      raise ValueError(f"unknown detection post-processing fields {unknown}; expected "
                       f"{sorted(fields)}")
    return cls(**{k: (int(v) if k == "max_detections" else float(v)) for k, v in raw.items()})


@dataclasses.dataclass
class WindowBoxes:
  """The boxes of every window, mirror and member of one case, in case voxel coordinates.

  Attributes:
    boxes: `(B, 2n)`; scores: `(B,)`; classes: `(B,)` 0-based.
    patch_ids: `(B,)` id of the (window, mirror, member) that predicted each box.
    center_factors: `(B,)` `clustering.patch_center_factor` of each box in its window.
    n_overlaps: `(B,)` windows covering each box (mean over its voxels).
    n_expected: predictions per window position (mirrors x members).
    timings: seconds of "network" and "nms" for this case.
  """
  boxes: np.ndarray
  scores: np.ndarray
  classes: np.ndarray
  patch_ids: np.ndarray
  center_factors: np.ndarray
  n_overlaps: np.ndarray
  n_expected: float
  timings: dict


@dataclasses.dataclass
class Detections:
  """The detections of one case, by decreasing score (voxel boxes `(K, 2n)`, scores, classes)."""
  boxes: np.ndarray
  scores: np.ndarray
  classes: np.ndarray
  timings: dict


def _flip_boxes(boxes, axes: Sequence[int], shape: Sequence[int]):
  """Boxes `(..., 2n)` of a window flipped along spatial `axes` of a window of `shape`."""
  n = len(shape)
  for a in axes:
    lo, hi = boxes[..., a], boxes[..., n + a]
    boxes = boxes.at[..., a].set(shape[a] - hi).at[..., n + a].set(shape[a] - lo)
  return boxes


def window_network_fn(model, anchors: np.ndarray, settings: DetectorSettings
                      ) -> Callable:
  """`f(variables, windows (B, *roi, C), flip_axes) -> (boxes (B, k, 2n), scores (B, k),
  classes (B, k))`: network, decoding, clipping and top-k, jitted (boxes in the
  unflipped window's coordinates)."""
  roi = tuple(int(r) for r in settings.roi_size)
  anchor_boxes = jnp.asarray(anchors, jnp.float32)
  k = min(int(settings.top_k), int(anchor_boxes.shape[0]))

  @functools.partial(jax.jit, static_argnames=("flip",))
  def run(variables, x, flip=()):
    if flip:
      x = jnp.flip(x, tuple(a + 1 for a in flip))
    out = model.apply(variables, x, train=False)
    probs = jax.nn.sigmoid(out["class_logits"].astype(jnp.float32))  # (B, A, K)
    scores, classes = probs.max(-1), probs.argmax(-1)
    boxes = coder.decode_boxes(anchor_boxes[None], out["box_deltas"].astype(jnp.float32),
                               settings.coder_weights)
    boxes = box_ops.clip_boxes(boxes, roi)
    top, index = jax.lax.top_k(scores, k)
    boxes = jnp.take_along_axis(boxes, index[..., None], axis=1)
    classes = jnp.take_along_axis(classes, index, axis=1)
    if flip:
      boxes = _flip_boxes(boxes, flip, roi)
    return boxes, top, classes

  return run


def window_nms_fn(settings: DetectorSettings) -> Callable:
  """`f(boxes (B, k, 2n), scores (B, k), classes (B, k)) -> (indices (B, m), counts (B,))`:
  class-wise greedy NMS of every window, jitted."""
  m = int(settings.window_detections)

  @jax.jit
  def run(boxes, scores, classes):
    one = lambda b, s, c: greedy_nms(b, s, iou_threshold=settings.window_nms_iou,
                                      max_output=min(m, b.shape[0]), classes=c)
    return jax.vmap(one)(boxes, scores, classes)

  return run


def _combos(axes: Sequence[int]) -> list[tuple]:
  return [c for r in range(len(axes) + 1) for c in itertools.combinations(tuple(axes), r)]


class WindowDetector:
  """A trained (Retina U-)Net, or an ensemble of them, as a function of a raw case image.

  Args:
    model: the eval-mode `medjax.models.RetinaUNet`.
    variables: one variable dict, or a list (ensemble members of the same model).
    anchors: `(A, 2n)` anchors of one window (`medjax.models.anchors_for(model, roi)`).
    settings: `DetectorSettings`.
    normalize: raw image `(*S, C)` -> network input `(*S, C)`.
  """

  def __init__(self, model, variables, anchors: np.ndarray, settings: DetectorSettings,
               normalize: Callable[[np.ndarray], np.ndarray]):
    self.members = list(variables) if isinstance(variables, (list, tuple)) else [variables]
    self.members = [jax.device_put(v, jax.local_devices()[0]) for v in self.members]
    self.settings = settings
    self.normalize = normalize
    self._network = window_network_fn(model, anchors, settings)
    self._nms = window_nms_fn(settings)

  def detect_windows(self, image: np.ndarray) -> WindowBoxes:
    """Step 1-4 of the module docstring for one raw image `(*S, C)`."""
    s = self.settings
    roi = tuple(int(r) for r in s.roi_size)
    x = np.asarray(self.normalize(image), np.float32)
    spatial = x.shape[:-1]
    axis_starts = [windows.window_starts(n, r, s.overlap) for n, r in zip(spatial, roi)]
    starts = list(itertools.product(*axis_starts))
    coverage = functools.reduce(
        np.multiply.outer, [windows._coverage(max(n, r), st, np.ones(r))[:n]
                            for n, r, st in zip(spatial, roi, axis_starts)])
    fill = float(x.min())
    mirrors = _combos(s.mirror_axes)
    per_window = len(mirrors) * len(self.members)
    out = {k: [] for k in ("boxes", "scores", "classes", "ids", "factors")}
    t_net = t_nms = 0.0
    for b0 in range(0, len(starts), s.batch_size):
      chunk = starts[b0:b0 + s.batch_size]
      batch = np.stack([windows._window(x, st, roi, fill) for st in chunk])
      if len(chunk) < s.batch_size:  # one compiled shape
        batch = np.concatenate([batch, np.repeat(batch[-1:], s.batch_size - len(chunk), 0)])
      for member, variables in enumerate(self.members):
        for m, flip in enumerate(mirrors):
          t0 = time.perf_counter()
          boxes, scores, classes = jax.block_until_ready(self._network(variables, batch, flip))
          t1 = time.perf_counter()
          keep, counts = jax.block_until_ready(self._nms(boxes, scores, classes))
          t2 = time.perf_counter()
          t_net, t_nms = t_net + t1 - t0, t_nms + t2 - t1
          boxes, scores, classes = map(np.asarray, (boxes, scores, classes))
          keep, counts = np.asarray(keep), np.asarray(counts)
          for j, start in enumerate(chunk):
            index = keep[j, :int(counts[j])]
            index = index[scores[j, index] > s.min_score]
            window_boxes = boxes[j, index].astype(np.float64)
            out["factors"].append(clustering.patch_center_factor(window_boxes, roi))
            offset = np.tile(np.asarray(start, np.float64), 2)
            out["boxes"].append(window_boxes + offset)
            out["scores"].append(scores[j, index].astype(np.float64))
            out["classes"].append(classes[j, index].astype(np.int64))
            window_id = (b0 + j) * per_window + member * len(mirrors) + m
            out["ids"].append(np.full(len(index), window_id, np.int64))
    n2 = 2 * len(roi)
    cat = lambda key, shape: (np.concatenate(out[key]) if out[key] else np.zeros(shape))
    boxes = box_ops.clip_boxes(cat("boxes", (0, n2)).reshape(-1, n2), spatial)
    return WindowBoxes(boxes, cat("scores", (0,)), cat("classes", (0,)).astype(np.int64),
                       cat("ids", (0,)).astype(np.int64), cat("factors", (0,)),
                       clustering.mean_over_boxes(coverage, boxes) if len(boxes) else
                       np.zeros(0), float(per_window), {"network": t_net, "nms": t_nms})

  def __call__(self, image: np.ndarray, spacing: Sequence[float],
               post: Postprocessing) -> Detections:
    """Detections of one raw image `(*S, C)` with voxel `spacing` (mm)."""
    return finish(self.detect_windows(image), spacing, post)


def finish(raw: WindowBoxes, spacing: Sequence[float], post: Postprocessing) -> Detections:
  """Step 5 of the module docstring: clustering, minimum size, `max_detections`."""
  t0 = time.perf_counter()
  boxes, scores, classes = clustering.weighted_box_clustering(
      raw.boxes, raw.scores, iou_threshold=post.iou_threshold,
      patch_center_factors=raw.center_factors, n_overlaps=raw.n_overlaps,
      patch_ids=raw.patch_ids, n_expected=raw.n_expected, classes=raw.classes)
  if post.min_size_mm > 0 and len(boxes):
    largest = (box_ops.box_sizes(boxes) * np.asarray(spacing, np.float64)).max(axis=1)
    keep = largest >= post.min_size_mm
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
  n = int(post.max_detections)
  timings = dict(raw.timings, clustering=time.perf_counter() - t0)
  return Detections(boxes[:n].astype(np.float32), scores[:n], classes[:n], timings)


def sample_groups(raw: WindowBoxes) -> list[WindowBoxes]:
  """`raw` split into its `n_expected` samples (one per mirror variant and ensemble member),
  each as the boxes one deterministic pass over the windows gives (`n_expected` 1)."""
  groups = int(round(raw.n_expected))
  out = []
  for g in range(groups):
    keep = raw.patch_ids % groups == g
    out.append(WindowBoxes(raw.boxes[keep], raw.scores[keep], raw.classes[keep],
                           raw.patch_ids[keep], raw.center_factors[keep], raw.n_overlaps[keep],
                           1.0, {}))
  return out


def detection_uncertainty(raw: WindowBoxes, found: Detections, spacing: Sequence[float],
                          post: Postprocessing) -> Optional[dict]:
  """`medjax.uncertainty.detection_spread` of `found` over the samples of `raw` (mirror
  variants x ensemble members, each clustered alone with `post`); None with one sample."""
  from medjax import uncertainty  # pylint: disable=import-outside-toplevel
  groups = sample_groups(raw)
  if len(groups) < 2:
    return None
  samples = [finish(g, spacing, post) for g in groups]
  return uncertainty.detection_spread(found.boxes, [s.boxes for s in samples],
                                      [s.scores for s in samples],
                                      iou_threshold=min(post.iou_threshold, 0.5))


def anchor_of_box(model, variables, window: np.ndarray, anchors: np.ndarray, box: np.ndarray,
                  *, min_iou: float = 0.3, coder_weights: Optional[tuple] = None) -> int:
  """The anchor whose decoded box overlaps `box` (window coordinates) with IoU >= `min_iou`
  and has the highest score for the normalised `window` `(1, *roi, C)`: the anchor to
  explain for a detection (`medjax.explain.explain_detection`); -1 when none overlaps."""
  out = model.apply(variables, jnp.asarray(window, jnp.float32), train=False)
  scores = np.asarray(jax.nn.sigmoid(out["class_logits"][0]).max(-1))
  decoded = np.asarray(coder.decode_boxes(jnp.asarray(anchors, jnp.float32),
                                          out["box_deltas"][0], coder_weights))
  iou = box_ops.box_iou(decoded.astype(np.float64), np.asarray(box, np.float64)[None])[:, 0]
  candidates = np.nonzero(iou >= min_iou)[0]
  return int(candidates[np.argmax(scores[candidates])]) if len(candidates) else -1
