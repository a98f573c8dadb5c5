"""Deterministic synthetic CT: a deformed organ with small hypodense tumours.

The generator stands in for a liver-tumour CT dataset (e.g. LiTS, Bilic et al.
2023) when no real data is at hand, and keeps what makes such data hard:

* the organ is a smoothly deformed ellipsoid of 40-60 mm radius through-plane
  and 25-35 mm in-plane (shrunk to fit when the field of view is smaller),
  drawn in physical millimetres so that anisotropic spacing gives anisotropic
  voxels;
* the organ (~60 HU) borders muscle-like tissue (~40 HU) and fat (~-100 HU);
* 1-3 tumours per volume, slightly irregular ellipsoids strictly inside the
  organ (never touching its border), hypodense by 25-45 HU, covering together
  0.3-1.5 % of all voxels (enforced by rescaling their radii);
  (the drawn contrast; partial volume after the blur lowers the measured
  median contrast of the smallest lesions by a few HU);
* imaging effects: Gaussian blur (sigma ~0.7 voxel in-plane), a smooth bias
  field of a few tens of HU, and slightly correlated noise of standard
  deviation ~20 HU -- the lesion/organ contrast is of the order of the noise.

Everything is a pure function of the integer seed (numpy + scipy.ndimage only),
so datasets built from it are reproducible bit for bit.

Labels: 0 background, 1 organ (excluding tumour), 2 tumour (`CLASS_NAMES`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

CLASS_NAMES = ("background", "organ", "tumour")

AIR_HU = -1000.0
FAT_HU = -100.0
MUSCLE_HU = 40.0
ORGAN_HU = 60.0
TUMOUR_CONTRAST_HU = (25.0, 45.0)  # organ minus tumour, drawn per tumour
NOISE_STD_HU = (18.0, 22.0)  # drawn per image
TUMOUR_FRACTION = (0.003, 0.015)  # all tumours together, fraction of voxels
_TUMOUR_TARGET = (0.004, 0.013)  # what is aimed at, inside TUMOUR_FRACTION
BLUR_SIGMA_MM = 0.56  # 0.7 voxel at 0.8 mm in-plane spacing
NOISE_CORRELATION_MM = 0.4  # sigma of the filter that correlates the noise


def _grid(shape: Sequence[int], spacing: Sequence[float]) -> list[np.ndarray]:
  """Open grid of physical coordinates (mm) centred on the volume."""
  ndim = len(shape)
  axes = []
  for axis, (n, s) in enumerate(zip(shape, spacing)):
    view = [1] * ndim
    view[axis] = n
    axes.append(((np.arange(n, dtype=np.float32) - (n - 1) / 2) * s).reshape(view))
  return axes


def _smooth_field(rng: np.random.Generator, coords: Sequence[np.ndarray],
                  wavelength_mm: tuple[float, float],
                  components: int = 6) -> np.ndarray:
  """Random smooth field of unit-ish amplitude: a sum of random plane waves.

  Cheaper than filtering white noise and resolution independent: the
  wavelengths are physical, so the same seed gives the same anatomy at any
  spacing.
  """
  ndim = len(coords)
  field = np.zeros(np.broadcast_shapes(*(c.shape for c in coords)), np.float32)
  for _ in range(components):
    direction = rng.normal(size=ndim)
    direction /= np.linalg.norm(direction) + 1e-12
    k = 2 * np.pi / rng.uniform(*wavelength_mm)
    phase = rng.uniform(0, 2 * np.pi)
    arg = sum(np.float32(k * d) * c for d, c in zip(direction, coords))
    field += np.cos(arg + np.float32(phase))
  return field * np.float32(np.sqrt(2.0 / components))


def _ellipsoid_level(coords: Sequence[np.ndarray], centre: Sequence[float],
                     radii: Sequence[float]) -> np.ndarray:
  """sum(((x - c) / r)^2): < 1 inside the ellipsoid."""
  return sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, radii))


def _draw_body(rng, coords, extent):
  """Elliptical body cross-section (in-plane = last two axes), fills z."""
  half = [e / 2 for e in extent]
  semi = (half[-2] * rng.uniform(0.86, 0.95), half[-1] * rng.uniform(1.0, 1.1))
  wobble = 1 + 0.04 * _smooth_field(rng, coords[-2:], (60.0, 120.0), 3)
  level = ((coords[-2] / semi[0]) ** 2 + (coords[-1] / semi[1]) ** 2) * wobble
  body = np.broadcast_to(level < 1, np.broadcast_shapes(*(c.shape for c in coords)))
  return np.ascontiguousarray(body), semi


def _draw_organ(rng, coords, extent, body_semi):
  """Ellipsoid deformed by a smooth random displacement field."""
  ndim = len(coords)
  radii = []
  if ndim == 3:
    radii.append(min(rng.uniform(40.0, 60.0), 0.36 * extent[0]))
  radii += [min(rng.uniform(25.0, 35.0), 0.62 * body_semi[0]),
            min(rng.uniform(25.0, 35.0), 0.62 * body_semi[1])]
  centre = []
  if ndim == 3:
    centre.append(rng.uniform(-0.08, 0.08) * extent[0])
  centre += [rng.uniform(-0.12, 0.12) * body_semi[0],
             rng.uniform(-0.12, 0.12) * body_semi[1]]
  scale = min(radii[-2:])
  displaced = [c + np.float32(0.15 * r) * _smooth_field(rng, coords, (2.0 * scale, 4.0 * scale), 4)
               for c, r in zip(coords, radii)]
  organ = _ellipsoid_level(displaced, centre, radii) < 1
  return organ


def _place_tumours(rng, coords, organ, spacing, count):
  """Rasterise `count` irregular ellipsoids inside `organ`, 0.3-1.5 % of voxels.

  Centres are drawn among organ voxels deep enough for the tumour; each tumour
  is then intersected with the organ eroded by one voxel (so it never touches
  the organ border) and all radii are rescaled until the total fraction is on
  target.
  """
  shape = organ.shape
  ndim = organ.ndim
  spacing = np.asarray(spacing, np.float64)
  inner = ndimage.binary_erosion(organ, iterations=1)
  depth = _depth(organ, spacing)
  total = organ.size
  for _ in range(20):  # retries with new centres; one almost always suffices
    target = rng.uniform(*_TUMOUR_TARGET) * total
    shares = rng.dirichlet(np.full(count, 2.0))
    voxel_volume = float(np.prod(spacing))
    specs = []
    for share in shares:
      r_eq = (3 * share * target * voxel_volume / (4 * np.pi)) ** (1 / 3) if ndim == 3 \
          else np.sqrt(share * target * voxel_volume / np.pi)
      aspect = np.exp(rng.normal(0.0, 0.15, size=ndim))
      aspect /= np.prod(aspect) ** (1 / ndim)
      specs.append([r_eq * aspect, rng.integers(2**31)])
    scale = 1.0
    for _ in range(8):
      placed = _rasterise(rng, coords, depth, inner, spacing, specs, scale)
      if placed is None:
        scale *= 0.85
        continue
      fraction = placed.sum() / total
      if TUMOUR_FRACTION[0] * 1.1 <= fraction <= TUMOUR_FRACTION[1] * 0.9:
        return placed
      scale *= (target / max(placed.sum(), 1)) ** (1 / ndim)
  raise RuntimeError(f"could not place tumours for organ of {organ.sum()} voxels in {shape}")


def _depth(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
  """Distance (mm) from each voxel of `mask` to the nearest voxel outside it.

  Computed in the mask's bounding box (plus a 1-voxel border, so the
  volume edge counts as outside), which is much cheaper than the full volume.
  """
  depth = np.zeros(mask.shape, np.float64)
  if not mask.any():
    return depth
  box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in np.nonzero(mask))
  padded = np.pad(mask[box], 1)
  depth[box] = ndimage.distance_transform_edt(padded, sampling=spacing)[(slice(1, -1),) * mask.ndim]
  return depth


def _rasterise(rng, coords, depth, inner, spacing, specs, scale):
  tumours = np.zeros(inner.shape, bool)
  centre_rng = np.random.default_rng(int(specs[0][1]))  # same centres at every scale
  for radii, seed in specs:
    radii = radii * scale
    # Deep enough for most of the tumour; the intersection with `inner` below
    # keeps it strictly inside the organ either way.
    candidates = np.flatnonzero(depth > 0.9 * radii.max() + 0.5 * spacing.min())
    if candidates.size == 0:
      return None
    centre_index = np.unravel_index(candidates[centre_rng.integers(candidates.size)], depth.shape)
    # Work in the bounding box only: a full-volume pass per tumour is wasted.
    box = []
    for axis, (c, r, s) in enumerate(zip(centre_index, radii, spacing)):
      half = int(np.ceil(1.3 * r / s)) + 1
      box.append(slice(max(c - half, 0), min(c + half + 1, depth.shape[axis])))
    box = tuple(box)
    local = [g[tuple(b if g.shape[a] > 1 else slice(None) for a, b in enumerate(box))]
             for g in coords]
    centre = [float(g.reshape(-1)[i]) for g, i in zip(coords, centre_index)]
    shape_rng = np.random.default_rng(int(seed))
    wobble = 1 + 0.18 * _smooth_field(shape_rng, local, (1.5 * radii.min(), 3.0 * radii.max()), 4)
    blob = _ellipsoid_level(local, centre, radii) * wobble < 1
    tumours[box] |= blob & inner[box]
  return tumours


def _render(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float],
            tumour_count: int) -> tuple[np.ndarray, np.ndarray]:
  """Label map and CT intensities (HU) for one image of any dimension (2D/3D)."""
  shape = tuple(int(n) for n in shape)
  spacing = tuple(float(s) for s in spacing)
  coords = _grid(shape, spacing)
  extent = [n * s for n, s in zip(shape, spacing)]

  body, body_semi = _draw_body(rng, coords, extent)
  organ = _draw_organ(rng, coords, extent, body_semi)
  organ &= ndimage.binary_erosion(body, iterations=2)
  label = organ.astype(np.uint8)
  if tumour_count:
    tumours = _place_tumours(rng, coords, organ, spacing, tumour_count)
    label[tumours] = 2
  else:
    tumours = np.zeros(shape, bool)

  # Body: muscle/fat mixture with texture, a muscle wall, a few blobs.
  mix = 1 / (1 + np.exp(-2.5 * _smooth_field(rng, coords, (15.0, 45.0), 6)))
  image = (FAT_HU + (MUSCLE_HU - FAT_HU) * mix).astype(np.float32)
  # The body is a prism along the through-plane axis: a 2D distance suffices.
  in_plane = body[(0,) * (body.ndim - 2)]
  wall_depth = np.broadcast_to(ndimage.distance_transform_edt(in_plane, sampling=spacing[-2:]), shape)
  image[(wall_depth < rng.uniform(4.0, 7.0)) & body] = MUSCLE_HU
  image[(wall_depth < rng.uniform(1.5, 2.5)) & body] = 20.0  # skin
  for _ in range(rng.integers(2, 6)):
    centre = [rng.uniform(-0.35, 0.35) * e for e in extent]
    radii = [rng.uniform(4.0, 14.0) for _ in extent]
    blob = _ellipsoid_level(coords, centre, radii) < 1
    image[blob & body] = rng.choice([FAT_HU, MUSCLE_HU, 150.0, 300.0])  # fat, muscle, vessel, bone
  image[~body] = AIR_HU

  organ_hu = ORGAN_HU + rng.uniform(-5.0, 5.0)
  organ_texture = 3.0 * _smooth_field(rng, coords, (8.0, 25.0), 5)
  image[organ] = (organ_hu + organ_texture[organ]).astype(np.float32)
  if tumour_count:
    parts, n = ndimage.label(tumours)
    for i in range(1, n + 1):
      image[parts == i] = organ_hu - rng.uniform(*TUMOUR_CONTRAST_HU)
    image[tumours] += 0.5 * organ_texture[tumours]

  # Imaging: blur (PSF), bias field, correlated noise.
  image = ndimage.gaussian_filter(image, [BLUR_SIGMA_MM / s for s in spacing], truncate=3.0)
  gain = 1 + np.float32(0.008) * _smooth_field(rng, coords, (150.0, 400.0), 3)
  offset = np.float32(6.0) * _smooth_field(rng, coords, (150.0, 400.0), 3)
  image = (image - AIR_HU) * gain + AIR_HU + offset
  noise = rng.standard_normal(shape, dtype=np.float32)
  noise = ndimage.gaussian_filter(noise, [NOISE_CORRELATION_MM / s for s in spacing], truncate=3.0)
  noise *= np.float32(rng.uniform(*NOISE_STD_HU) / noise.std())
  image += noise
  return image.astype(np.float32), label


def make_volume(seed: int, shape: Sequence[int] = (64, 96, 96),
                spacing: Sequence[float] = (2.5, 0.8, 0.8)) -> tuple[np.ndarray, np.ndarray]:
  """One synthetic CT volume, a pure function of `seed`.

  Args:
    seed: integer seed; the same seed always gives the same arrays.
    shape: `(D, H, W)` voxels; D is the through-plane axis.
    spacing: voxel size in mm, same axis order as `shape`.

  Returns:
    `(image, label)`: image float32 `(D, H, W)` in HU (air -1000, fat ~-100,
    muscle ~40, organ ~60, tumours 25-45 HU below the organ, noise std
    ~20 HU); label uint8 `(D, H, W)` with 0 background, 1 organ, 2 tumour
    (1-3 tumours covering 0.3-1.5 % of the voxels).
  """
  if len(shape) != 3 or len(spacing) != 3:
    raise ValueError(f"make_volume: expected 3D shape and spacing, got {shape}, {spacing}")
  rng = np.random.default_rng([int(seed), 3])
  return _render(rng, shape, spacing, int(rng.integers(1, 4)))


def make_slice(seed: int, shape: Sequence[int] = (128, 128),
               spacing: Sequence[float] = (0.8, 0.8)) -> tuple[np.ndarray, np.ndarray, int]:
  """One synthetic axial CT slice, a pure function of `seed`.

  Built like `make_volume` in 2D. About half of the slices contain 1-3
  tumours (0.3-1.5 % of the pixels together), the rest only the organ.

  Returns:
    `(image, label, lesion_present)`: image float32 `(H, W)` in HU, label
    uint8 `(H, W)`, and `lesion_present` = 1 iff any pixel is tumour.
  """
  if len(shape) != 2 or len(spacing) != 2:
    raise ValueError(f"make_slice: expected 2D shape and spacing, got {shape}, {spacing}")
  rng = np.random.default_rng([int(seed), 2])
  count = int(rng.integers(1, 4)) if rng.random() < 0.5 else 0
  image, label = _render(rng, shape, spacing, count)
  return image, label, int((label == 2).any())
