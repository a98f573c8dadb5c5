"""Training cases decoded on demand from a random-access source, a few at a time.

A real dataset does not fit in host memory (60 CT volumes of 512x512x200 are
12 GB as float32), so the training pipeline never loads it whole: a patch of
case `i` reads `source[i]` (one `array_record` record), and the most recently
used decoded cases are kept in a least-recently-used cache, up to
`DEFAULT_MAX_BYTES` of decoded arrays (four such CT volumes; every case of a
small dataset such as the built-in synthetic one, whose 24 training cases are
68 MB), or exactly `capacity` cases when a count is given. A case is
checked (finite intensities, image/label shapes, label range), normalised,
padded to the patch size and indexed for foreground sampling when it is
decoded; what comes out depends only on the case, never on the order of
reads, so batches stay a pure function of `(seed, step, sample index)`.

Foreground locations (`patches.class_locations`) come from the example's
stored `locations` feature when it has one (`(M, 1 + ndim)` int32 rows
`[class, i, j, ...]`, written by the folder builders at prepare time), else
they are computed the first time a case is decoded and kept (they are small:
at most `max(10000, 1 %)` voxels per class), so a re-decoded case costs only
its read. nnU-Net (Isensee et al., Nature Methods 2021) likewise reads each
training case from disk per sample and keeps its class locations.
"""
from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Optional, Sequence

import numpy as np

from medjax.data.pipeline import patches, transforms
from medjax.errors import InputError

Normalize = Callable[[np.ndarray], np.ndarray]

# Decoded cases kept by default: 1 GiB holds 4 volumes of 512x512x200 float32
# with uint8 labels (262 MB each), or a whole small dataset. A byte budget rather
# than a case count: re-decoding a case for a patch costs ~20 ms per 64x96x96
# case, so the default config's input pipeline keeping 4 cases gives 48 batches/s
# (3.8x its training steps/s), and thousands with the dataset held whole
# (`python -m benchmarks.bench_train`, `benchmarks/RESULTS.md`).
DEFAULT_MAX_BYTES = 1 << 30


def case_id(example: dict[str, Any], index: int) -> str:
  """The example's `case` feature as text, else `case_<index>`."""
  case = example.get("case", f"case_{index}")
  return case.decode() if isinstance(case, bytes) else str(case)


def channels_last(image: np.ndarray, label: np.ndarray, normalize: Normalize,
                  name: str) -> np.ndarray:
  """`image` `(*S)` or `(*S, C)` as float32 `(*S, C)`, `normalize` applied to each channel.

  Raises:
    InputError: naming `name`, when the image's spatial shape is not the label's.
  """
  if image.shape[:label.ndim] != label.shape or image.ndim not in (label.ndim, label.ndim + 1):
    raise InputError(f"{name}: image shape {image.shape} does not match label shape "
                     f"{label.shape}; expected {label.shape} or {(*label.shape, 'C')}")
  if image.ndim == label.ndim:
    return np.asarray(normalize(image), np.float32)[..., None]
  return np.stack([np.asarray(normalize(image[..., c]), np.float32)
                   for c in range(image.shape[-1])], axis=-1)


def stored_locations(rows: np.ndarray, ndim: int, name: str) -> patches.Locations:
  """`{class: (M_c, ndim) int32}` from stored rows `[class, i, j, ...]` `(M, 1 + ndim)`."""
  rows = np.asarray(rows, np.int32)
  if rows.size == 0:
    return {}
  if rows.ndim != 2 or rows.shape[1] != 1 + ndim:
    raise InputError(f"{name}: locations of shape {rows.shape}; expected (M, {1 + ndim}) rows "
                     "[class, index per axis]")
  return {int(c): rows[rows[:, 0] == c, 1:] for c in np.unique(rows[:, 0])}


class CaseCache:
  """`cache[i]`: case `i` of `source` as a `patches.PreparedCase`, decoded on
  demand, the most recently used kept decoded (thread-safe).

  Args:
    source: random-access cases: `image` `(*S)` or `(*S, C)`, `label` `(*S)`,
      optional `case` (id), optional `locations` `(M, 1 + ndim)`.
    patch_size: cases smaller than this are padded (image with its minimum,
      label with 0).
    normalize: applied to each channel of a decoded image.
    foreground_classes: the classes indexed for foreground sampling
      (default every class > 0 present).
    num_classes: when given, labels are checked to lie in `[0, num_classes)`.
    capacity: decoded cases kept; None (default): as many as fit in
      `max_bytes` (at least one; the case being added may exceed it until the
      older ones are evicted).
    max_bytes: the byte budget of decoded arrays when `capacity` is None.

  Attributes:
    reads: how many times a case was read and decoded from `source`.
  """

  def __init__(self, source: Sequence[dict[str, Any]], patch_size: Sequence[int], *,
               normalize: Normalize = transforms.normalize_ct,
               foreground_classes: Optional[Sequence[int]] = None,
               num_classes: Optional[int] = None, capacity: Optional[int] = None,
               max_bytes: int = DEFAULT_MAX_BYTES):
    if len(source) == 0:
      raise InputError("training source is empty: expected at least one case")
    if capacity is not None and int(capacity) < 1:
      raise InputError(f"case cache capacity={capacity}: expected at least 1 decoded case")
    if int(max_bytes) < 1:
      raise InputError(f"case cache max_bytes={max_bytes}: expected a positive byte budget")
    self.source = source
    self.patch_size = tuple(int(p) for p in patch_size)
    self.normalize = normalize
    self.foreground_classes = None if foreground_classes is None else tuple(foreground_classes)
    self.num_classes = num_classes
    self.capacity = None if capacity is None else int(capacity)
    self.max_bytes = int(max_bytes)
    self.reads = 0
    self._cases: collections.OrderedDict[int, patches.PreparedCase] = collections.OrderedDict()
    self._bytes = 0
    self._locations: dict[int, patches.Locations] = {}
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.source)

  @property
  def cached(self) -> tuple[int, ...]:
    """Indices of the decoded cases held now, least recently used first."""
    with self._lock:
      return tuple(self._cases)

  @property
  def cached_bytes(self) -> int:
    """Bytes of the decoded arrays held now."""
    with self._lock:
      return self._bytes

  def __getitem__(self, index: int) -> patches.PreparedCase:
    index = int(index)
    with self._lock:
      case = self._cases.get(index)
      if case is not None:
        self._cases.move_to_end(index)
        return case
      if self.capacity is not None:
        # Evict before decoding, so at most `capacity` decoded cases exist at once.
        while len(self._cases) >= self.capacity:
          self._evict_oldest()
      case = self._decode(index)
      self._cases[index] = case
      self._bytes += _nbytes(case)
      if self.capacity is None:
        while self._bytes > self.max_bytes and len(self._cases) > 1:
          self._evict_oldest()
      return case

  def _evict_oldest(self) -> None:
    _, old = self._cases.popitem(last=False)
    self._bytes -= _nbytes(old)

  def _decode(self, index: int) -> patches.PreparedCase:
    example = self.source[index]
    self.reads += 1
    name = case_id(example, index)
    label = np.asarray(example["label"])
    image = channels_last(transforms.check_image(example["image"], name), label,
                          self.normalize, name)
    if self.num_classes is not None:
      transforms.check_labels(label, self.num_classes, name)
    image, label, offset = patches.pad_to_patch(image, label, self.patch_size)
    if "locations" in example:
      locations = {c: locs + offset for c, locs in
                   stored_locations(example["locations"], label.ndim, name).items()
                   if self.foreground_classes is None or c in self.foreground_classes}
    else:
      if index not in self._locations:
        self._locations[index] = patches.class_locations(label, self.foreground_classes)
      locations = self._locations[index]
    return patches.PreparedCase(image, label, locations)


def _nbytes(case: patches.PreparedCase) -> int:
  return int(case.image.nbytes) + int(case.label.nbytes)
