"""Deterministic synthetic chest CT with lung nodules, for lesion detection.

The generator stands in for a lung-nodule CT dataset (LIDC-IDRI, Armato et
al., Med. Phys. 2011; its LUNA16 subset, Setio et al., Med. Image Anal. 2017)
when no real data is at hand, and keeps what makes nodule detection hard:

* anatomy drawn in physical millimetres: a body of skin, fat (~-100 HU) and
  muscle (~45 HU); ribs with the rib pitch and slope of a chest, a sternum and
  a vertebra (bone, 200-700 HU); a mediastinum of soft tissue and fat; two
  lungs near -850 HU with a posterior (dependent) density gradient and
  texture; a diaphragm dome with the abdomen below it. The anatomy is drawn
  to fit the field of view (at the defaults a chest about 130 mm wide, half
  an adult's); vessels and nodules are drawn at true scale;
* pulmonary vessels as branching tubes: per lung 6 trunks of 2.5-3.5 mm radius
  leave the hilum and split by Murray's law (r0^3 = r1^3 + r2^3) down to
  0.6 mm, bending away from the hilum and staying inside the lung. Cut across,
  a vessel of 1.5-3.5 mm radius is a round blob of blood (30-50 HU) in lung:
  in a single slice it looks like a small solid nodule -- the false positives
  CAD systems fight (Setio et al. 2016, IEEE TMI);
* nodules as lobulated ellipsoids, sizes drawn from the LUNA16 reference
  standard (`DIAMETER_BIN_EDGES_MM`, `DIAMETER_BIN_COUNTS`): solid
  (material -100..+100 HU) or ground glass (-650..-300 HU, fuzzy border,
  the vessels running through it stay visible); a share touch the pleura
  (juxtapleural, cut by the lung border) or a vessel (juxtavascular), the
  rest lie free in the lung;
* nodules per case drawn from LUNA16's count per scan (`NODULES_PER_SCAN`,
  capped at `MAX_NODULES`): 287 of 888 scans (32 %) have no nodule, and
  such a case is a normal case;
* nodules below 3 mm (1.5-3 mm, 0-4 per case) are drawn too, as LUNA16's
  irrelevant findings: in the image but not in the reference standard, listed
  as `excluded` (hits on them count neither way in the LUNA16 evaluation);
* imaging: partial volume (objects are rendered with a one-voxel ramp at
  their border, thin vessels with their true cross-section, so a vessel
  thinner than a voxel is fainter, not thicker), Gaussian blur (point spread
  sigma 0.6 mm in-plane, slice profile sigma 0.35 slice spacings), and
  slightly correlated noise of 20-40 HU standard deviation.

Size distribution: the 1,186 nodules >= 3 mm accepted by at least 3 of 4
radiologists in the 888 LUNA16 scans, counted by `diameter_mm` from the
challenge's `annotations.csv` (evaluation script release; CC BY 4.0):
3-4 mm 49, 4-5 mm 221, 5-6 mm 232, 6-8 mm 276, 8-10 mm 127, 10-15 mm 154,
15-20 mm 77, 20-25 mm 42, 25-30 mm 6, 30-32.3 mm 2 (median 6.4 mm, mean
8.3 mm); diameters are drawn uniformly inside a bin chosen with these counts.
Nodules per scan from the same file: 0: 287, 1: 310, 2: 159, 3: 63, 4: 24,
5: 23, 6: 11, 7: 4, 8: 2, 9: 4, 12: 1 scans. The share of ground-glass
nodules (20 %) and of juxtapleural (30 %) and juxtavascular (20 %)
placements are chosen, not measured.

Defaults: volumes `(64, 96, 96)` at `(2.0, 1.5, 1.5)` mm (axis 0 superior,
1 posterior, 2 the patient's left), a CPU-sized resampling of CT acquired
at 1.25-2.5 mm slices and 0.6-0.8 mm pixels; nodules are a few hundredths
of a percent of the voxels (the largest, 30 mm, half a percent). Nodules
lie wholly inside the field of view; one too large for the lungs of a small
field of view is redrawn smaller and flagged (`Nodule.redrawn`); at the
defaults this is rare.

Everything is a pure function of the integer seed (numpy + scipy.ndimage
only): datasets built from it are reproducible bit for bit.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from medjax.data.phantoms.organ_ct import _grid, _smooth_field  # shared field helpers

CLASS_NAMES = ("nodule",)
NODULE_KINDS = ("solid", "ground_glass")
PLACEMENTS = ("isolated", "juxtapleural", "juxtavascular")
# Tissue map values (`ChestCase.tissues`), for checking what each tissue looks like.
TISSUES = ("air", "fat", "soft_tissue", "bone", "lung", "vessel", "solid_nodule",
           "ground_glass_nodule", "small_nodule")

# LUNA16 reference standard (`annotations.csv`), see the module docstring.
DIAMETER_BIN_EDGES_MM = (3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 25.0, 30.0, 32.3)
DIAMETER_BIN_COUNTS = (49, 221, 232, 276, 127, 154, 77, 42, 6, 2)
NODULES_PER_SCAN = {0: 287, 1: 310, 2: 159, 3: 63, 4: 24, 5: 23, 6: 11, 7: 4, 8: 2, 9: 4,
                    12: 1}
MAX_NODULES = 6  # more are drawn as 6: the field of view is smaller than a chest
GROUND_GLASS_SHARE = 0.2
PLACEMENT_SHARES = (0.5, 0.3, 0.2)  # isolated, juxtapleural, juxtavascular
SMALL_NODULE_DIAMETER_MM = (1.5, 3.0)  # below the reference standard's 3 mm
MAX_SMALL_NODULES = 4

AIR_HU = -1000.0
FAT_HU = (-120.0, -80.0)
MUSCLE_HU = 45.0
BLOOD_HU = (30.0, 50.0)
ABDOMEN_HU = 55.0
RIB_HU = (350.0, 550.0)
LUNG_HU = (-870.0, -830.0)
LUNG_GRADIENT_HU = 30.0  # denser posteriorly (dependent lung), less anteriorly
SOLID_HU = (-100.0, 100.0)
GROUND_GLASS_HU = (-650.0, -300.0)
NOISE_STD_HU = (20.0, 40.0)
PSF_SIGMA_MM = 0.6
SLICE_PROFILE_SIGMA = 0.35  # times the slice spacing
MIN_VESSEL_RADIUS_MM = 0.6
MAX_VESSEL_SEGMENTS = 700  # per lung


@dataclasses.dataclass(frozen=True)
class NodulePlan:
  """What is drawn for one nodule before it is placed."""
  diameter_mm: float
  kind: str  # NODULE_KINDS
  placement: str  # PLACEMENTS
  material_hu: float


@dataclasses.dataclass(frozen=True)
class Nodule:
  """A placed nodule: `centre` in voxel indices `(3,)` (float), as drawn."""
  centre: tuple[float, float, float]
  diameter_mm: float
  kind: str
  placement: str  # as placed: a planned juxtavascular one without a vessel to touch is isolated
  material_hu: float
  redrawn: bool  # its planned diameter did not fit the lung


@dataclasses.dataclass(frozen=True)
class ChestCase:
  """One synthetic chest CT.

  `image` float32 `(D, H, W)` HU; `instances` int16 `(D, H, W)`: 0
  background, i = 1..len(nodules) the voxels of `nodules[i - 1]` (those at
  least half inside it, within the lung; at least its centre voxel);
  `tissues` uint8 `(D, H, W)`: index into `TISSUES`; `small_nodules`:
  `(centre voxel indices, diameter mm)` of the nodules below 3 mm (not
  instances); `vessels` float32 `(S, 7)`: rows `(p0 (3), p1 (3), radius mm)`
  with p0, p1 in voxel indices; `spacing` mm per axis; `affine` 4x4 with
  `world (RAS mm) = affine @ [i, j, k, 1]` for array indices `(i, j, k)`;
  `noise_std` the noise level drawn (HU).
  """
  image: np.ndarray
  instances: np.ndarray
  tissues: np.ndarray
  nodules: tuple[Nodule, ...]
  small_nodules: tuple[tuple[tuple[float, float, float], float], ...]
  vessels: np.ndarray
  spacing: tuple[float, float, float]
  affine: np.ndarray
  noise_std: float


# ------------------------------------------------------------------ the plan ---

def draw_diameters(rng: np.random.Generator, count: int) -> np.ndarray:
  """`count` nodule diameters (mm) from the LUNA16 histogram (uniform inside each bin)."""
  counts = np.asarray(DIAMETER_BIN_COUNTS, np.float64)
  edges = np.asarray(DIAMETER_BIN_EDGES_MM)
  bins = rng.choice(len(counts), size=count, p=counts / counts.sum())
  return rng.uniform(edges[bins], edges[bins + 1])


def draw_nodule_count(rng: np.random.Generator) -> int:
  """Nodules in one case: LUNA16's count per scan, at most `MAX_NODULES`."""
  values = np.asarray(sorted(NODULES_PER_SCAN))
  weights = np.asarray([NODULES_PER_SCAN[v] for v in values], np.float64)
  return int(min(rng.choice(values, p=weights / weights.sum()), MAX_NODULES))


def nodule_plan(seed: int) -> tuple[NodulePlan, ...]:
  """The nodules case `seed` is drawn with (cheap: no image is rendered).

  `make_case(seed)` places exactly these (a diameter is redrawn only when the
  lung cannot hold it, see `Nodule.redrawn`).
  """
  rng = np.random.default_rng([int(seed), 19, 1])
  count = draw_nodule_count(rng)
  diameters = draw_diameters(rng, count)
  plans = []
  for diameter in diameters:
    kind = "ground_glass" if rng.random() < GROUND_GLASS_SHARE else "solid"
    placement = PLACEMENTS[int(rng.choice(3, p=PLACEMENT_SHARES))]
    material = rng.uniform(*(GROUND_GLASS_HU if kind == "ground_glass" else SOLID_HU))
    plans.append(NodulePlan(float(diameter), kind, placement, float(material)))
  return tuple(plans)


# ------------------------------------------------------------------ geometry ---

def array_affine(shape: Sequence[int], spacing: Sequence[float],
                 centre_world: Sequence[float]) -> np.ndarray:
  """4x4 `world = affine @ [i, j, k, 1]` for array indices: axis 0 superior (+z), axis 1
  posterior (-y), axis 2 the patient's left (-x), as a CT series read into RAS; the volume's
  centre at `centre_world` (RAS mm)."""
  sz, sy, sx = (float(s) for s in spacing)
  affine = np.eye(4)
  affine[:3, :3] = [[0.0, 0.0, -sx], [0.0, -sy, 0.0], [sz, 0.0, 0.0]]
  middle = (np.asarray(shape, np.float64) - 1) / 2
  affine[:3, 3] = np.asarray(centre_world, np.float64) - affine[:3, :3] @ middle
  return affine


def _segment_distance(local: Sequence[np.ndarray], p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
  """Distance (mm) from each point of the open grid `local` to the segment p0-p1 (mm)."""
  axis = p1 - p0
  length2 = float(axis @ axis) or 1e-12
  rel = [c - a for c, a in zip(local, p0)]
  t = np.clip(sum(r * np.float32(a) for r, a in zip(rel, axis)) / np.float32(length2), 0, 1)
  return np.sqrt(sum((r - t * np.float32(a)) ** 2 for r, a in zip(rel, axis)))


def _box(centre_mm: np.ndarray, reach_mm: float, coords: Sequence[np.ndarray],
         spacing: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
  """Index box of the voxels within `reach_mm` of `centre_mm` along every axis (clipped)."""
  box = []
  for axis in range(3):
    centre = centre_mm[axis] / spacing[axis] + (shape[axis] - 1) / 2
    half = reach_mm / spacing[axis]
    box.append(slice(max(int(np.floor(centre - half)), 0),
                     min(int(np.ceil(centre + half)) + 1, shape[axis])))
  return tuple(box)


def _local(coords: Sequence[np.ndarray], box: tuple[slice, ...]) -> list[np.ndarray]:
  return [g[tuple(b if g.shape[a] > 1 else slice(None) for a, b in enumerate(box))]
          for g in coords]


def _thin_tube_gain(radius: float, ramp: float) -> float:
  """Scales the ramp profile of a tube so its cross-section holds pi r^2 (partial volume)."""
  if radius >= ramp / 2:
    return 1.0
  outer = radius + ramp / 2
  return float(np.pi * radius ** 2 / (np.pi * outer ** 3 / (3 * ramp)))


def _rotate_towards(direction: np.ndarray, angle: float, rng: np.random.Generator) -> np.ndarray:
  """`direction` turned by `angle` (rad) in a random plane containing it."""
  other = rng.normal(size=3)
  other -= (other @ direction) * direction
  other /= np.linalg.norm(other) + 1e-12
  return np.cos(angle) * direction + np.sin(angle) * other


class _Anatomy:
  """The chest's tissues on the grid (booleans and HU maps), in centred mm coordinates."""

  def __init__(self, rng: np.random.Generator, shape: tuple[int, ...], spacing: np.ndarray):
    self.shape, self.spacing = shape, spacing
    self.coords = _grid(shape, spacing)
    z, y, x = self.coords
    extent = np.asarray(shape) * spacing
    plane = (y, x)
    # Body: an ellipse in-plane with a wobbly outline, through the whole field of view.
    a = 0.5 * extent[1] * rng.uniform(0.80, 0.88)
    b = 0.5 * extent[2] * rng.uniform(0.90, 0.96)
    wobble = 1 + 0.03 * _smooth_field(rng, plane, (60.0, 120.0), 3)
    body2d = ((y / a) ** 2 + (x / b) ** 2) * wobble < 1
    depth2d = ndimage.distance_transform_edt(body2d[0], sampling=spacing[1:])[None]
    wall = min(rng.uniform(8.0, 12.0), 0.2 * min(a, b))
    fat = rng.uniform(3.0, 6.0) * wall / 10
    cavity2d = depth2d > wall
    self.body = np.broadcast_to(body2d, shape)
    a_c, b_c = a - wall, b - wall
    self.cavity_semi = (a_c, b_c)
    # Spine: a vertebral body against the back of the cavity, its canal and lamina behind it.
    rv = rng.uniform(0.13, 0.16) * b_c
    yv = a_c - 0.9 * rv
    r_vert = np.sqrt((y - yv) ** 2 + x ** 2)
    r_canal = np.sqrt((y - yv - 1.6 * rv) ** 2 + x ** 2)
    spine_zone = (r_vert < 1.35 * rv) | ((np.abs(x) < 1.0 * rv) & (y > yv))
    # Mediastinum: a central ellipse, wider inferiorly (the heart), shifted to the left.
    shift = rng.uniform(0.04, 0.10) * b_c
    half_width = b_c * rng.uniform(0.24, 0.30) * (1 + 0.6 * np.clip(-z / (extent[0] / 2), 0, 1))
    mediastinum = ((((y + 0.1 * a_c) / (0.72 * a_c)) ** 2 + ((x - shift) / half_width) ** 2) < 1)
    mediastinum = mediastinum | spine_zone
    # Lungs: the cavity minus mediastinum and spine, above the diaphragm dome(s).
    lungs = cavity2d & ~mediastinum & (depth2d > wall + 1.0)
    diaphragm = np.zeros(shape, bool)
    for side in (-1.0, 1.0):  # axis 2 grows to the patient's left; the right dome is higher
      top = -extent[0] / 2 + extent[0] * rng.uniform(-0.15, 0.3) + (4.0 if side < 0 else 0.0)
      radial = ((x - side * 0.5 * b_c) / (0.75 * b_c)) ** 2 + ((y - 0.1 * a_c) / a_c) ** 2
      dome = top - 0.45 * extent[0] * np.clip(radial, 0, 1.5) * 0.5
      diaphragm |= (z < dome) & ((x * side) > -0.1 * b_c)
    lungs &= ~diaphragm
    # Keep the two largest pieces (one lung per side) and drop slivers.
    parts, count = ndimage.label(lungs)
    if count > 2:
      sizes = ndimage.sum(lungs, parts, index=np.arange(1, count + 1))
      keep = 1 + np.argsort(sizes)[::-1][:2]
      lungs = np.isin(parts, keep)
    self.lungs = lungs
    self.mediastinum = np.broadcast_to(mediastinum, shape) & ~lungs & np.broadcast_to(
        cavity2d, shape)
    self.abdomen = diaphragm & np.broadcast_to(cavity2d, shape) & ~self.mediastinum
    self._lung_depth = None
    self.hilum_y = 0.05 * a_c  # just behind the mediastinum's centre (-0.1 a_c)
    self.shift = shift

    # Intensities of the static anatomy.
    image = np.full(shape, AIR_HU, np.float32)
    tissues = np.zeros(shape, np.uint8)
    fat_hu = rng.uniform(*FAT_HU)
    wall3d = np.broadcast_to(depth2d, shape)
    tissues[self.body] = TISSUES.index("soft_tissue")
    image[self.body] = MUSCLE_HU
    subcutaneous = self.body & (wall3d > 1.5) & (wall3d < 1.5 + fat)
    image[subcutaneous], tissues[subcutaneous] = fat_hu, TISSUES.index("fat")
    image[self.body & (wall3d <= 1.5)] = 20.0  # skin
    self.blood_hu = rng.uniform(*BLOOD_HU)
    inside = np.broadcast_to(cavity2d, shape)
    image[inside] = self.blood_hu
    fat_pads = self.mediastinum & (_smooth_field(rng, plane, (12.0, 30.0), 4) > 0.6)
    image[fat_pads], tissues[fat_pads] = fat_hu, TISSUES.index("fat")
    image[self.abdomen] = ABDOMEN_HU
    # Ribs in the inner chest wall, sloping down anteriorly, none at the sternum.
    theta = np.arctan2(y, x)
    anterior = np.abs(theta + np.pi / 2) < 0.45
    pitch, height = rng.uniform(22.0, 28.0), rng.uniform(8.0, 11.0)
    rib_band = (wall3d > wall - 0.45 * wall) & (wall3d <= wall)
    ribs = rib_band & ~anterior & (np.mod(z - 0.35 * y - rng.uniform(0, pitch), pitch) < height)
    sternum = rib_band & (np.abs(x) < 0.12 * b_c) & (y < 0)
    bone_hu = rng.uniform(*RIB_HU)
    image[ribs], tissues[ribs] = bone_hu, TISSUES.index("bone")
    image[sternum], tissues[sternum] = 0.7 * bone_hu, TISSUES.index("bone")
    vertebra = np.broadcast_to(r_vert < rv, shape) & self.body
    lamina = np.broadcast_to((r_canal > 0.45 * rv) & (r_canal < 0.8 * rv), shape) & self.body
    image[vertebra] = np.where(np.broadcast_to(r_vert > rv - 1.5, shape)[vertebra], 650.0, 220.0)
    image[lamina] = 500.0
    tissues[vertebra | lamina] = TISSUES.index("bone")
    image[np.broadcast_to(r_canal <= 0.45 * rv, shape) & self.body] = 15.0  # spinal canal
    # Lung parenchyma: denser posteriorly, with a fine texture.
    lung_hu = (rng.uniform(*LUNG_HU) + LUNG_GRADIENT_HU * np.clip(y / a_c, -1, 1)
               + 12.0 * _smooth_field(rng, self.coords, (6.0, 20.0), 4))
    image[lungs] = lung_hu[lungs]
    tissues[lungs] = TISSUES.index("lung")
    self.image, self.tissues = image, tissues

  def index_of(self, point_mm: np.ndarray) -> tuple[int, ...]:
    return tuple(min(max(int(round(float(p) / s + (n - 1) / 2)), 0), n - 1)
                 for p, s, n in zip(point_mm, self.spacing.tolist(), self.shape))

  @property
  def lung_depth(self) -> np.ndarray:
    """Distance (mm) from each lung voxel to the nearest voxel outside the lungs."""
    if self._lung_depth is None:
      self._lung_depth = ndimage.distance_transform_edt(self.lungs, sampling=self.spacing)
    return self._lung_depth

  def in_lung(self, point_mm: np.ndarray) -> bool:
    """Whether `point_mm` lies in the field of view, in a lung voxel."""
    index = self.to_index(point_mm)
    if np.any(index < -0.5) or np.any(index > np.asarray(self.shape) - 0.5):
      return False
    return bool(self.lungs[self.index_of(point_mm)])

  def to_index(self, point_mm: np.ndarray) -> np.ndarray:
    return np.asarray(point_mm) / self.spacing + (np.asarray(self.shape) - 1) / 2


def _grow_vessels(rng: np.random.Generator, anatomy: _Anatomy) -> list[tuple]:
  """Vessel segments `(p0 mm, p1 mm, radius mm)` of one tree per hilum trunk, breadth first."""
  extent = np.asarray(anatomy.shape) * anatomy.spacing
  segments = []
  for side in (-1.0, 1.0):
    lung_side = anatomy.lungs & (anatomy.coords[2] * side > 0)
    if not lung_side.any():
      continue
    # Hilum: the lung's point nearest the mediastinum centre, about mid-height.
    z_h = rng.uniform(-0.1, 0.15) * extent[0]
    target = np.array([z_h, anatomy.hilum_y, anatomy.shift])
    where = np.argwhere(lung_side)
    mm = (where - (np.asarray(anatomy.shape) - 1) / 2) * anatomy.spacing
    hilum = mm[np.argmin(((mm - target) ** 2).sum(1))]
    start = hilum - np.array([0.0, 0.0, side * 2.0])  # the trunk leaves the mediastinum
    queue = []
    for up in (1.0, 0.0, -1.0):  # six trunks: up, level, down, each anterior and posterior
      for front in (-0.6, 0.6):
        d = np.array([up, front, side * 0.8]) + rng.normal(0, 0.25, 3)
        queue.append((start, d / np.linalg.norm(d), rng.uniform(2.5, 3.5), 0))
    count = 0
    while queue and count < MAX_VESSEL_SEGMENTS:
      p0, direction, radius, generation = queue.pop(0)
      length = float(np.clip(radius * rng.uniform(4.0, 7.0), 2.5, 18.0))
      p1 = None
      for attempt in range(5):
        trial = (direction if attempt == 0
                 else _rotate_towards(direction, rng.uniform(0.5, 1.1), rng))
        end = p0 + length * (0.6 if attempt == 4 else 1.0) * trial
        if anatomy.in_lung(end) and anatomy.in_lung(0.5 * (p0 + end)):
          p1, direction = end, trial
          break
      if p1 is None:
        continue
      segments.append((p0, p1, radius))
      count += 1
      if radius * 0.7 < MIN_VESSEL_RADIUS_MM or generation >= 12:
        continue
      away = p1 - hilum
      away /= np.linalg.norm(away) + 1e-12
      major = rng.uniform(0.72, 0.88) * radius
      minor = max((radius ** 3 - major ** 3) ** (1 / 3), 0.0)
      for child_radius, angle in ((major, rng.uniform(0.17, 0.5)), (minor, rng.uniform(0.6, 1.2))):
        if child_radius < MIN_VESSEL_RADIUS_MM:
          continue
        d = _rotate_towards(direction, angle, rng) + 0.3 * away
        queue.append((p1, d / np.linalg.norm(d), child_radius, generation + 1))
  return segments


def _render_vessels(anatomy: _Anatomy, segments: list[tuple], ramp: float) -> np.ndarray:
  """Occupancy (0..1) of the vessel segments: ramp profile, thin tubes scaled to pi r^2."""
  occupancy = np.zeros(anatomy.shape, np.float32)
  for p0, p1, radius in segments:
    centre = 0.5 * (p0 + p1)
    reach = 0.5 * float(np.linalg.norm(p1 - p0)) + radius + ramp
    box = _box(centre, reach, anatomy.coords, anatomy.spacing, anatomy.shape)
    local = _local(anatomy.coords, box)
    distance = _segment_distance(local, p0, p1)
    value = np.clip(0.5 + (radius - distance) / ramp, 0, 1) * np.float32(
        _thin_tube_gain(radius, ramp))
    np.maximum(occupancy[box], value, out=occupancy[box])
  return occupancy


def _nodule_occupancy(anatomy: _Anatomy, centre: np.ndarray, diameter: float, kind: str,
                      rng: np.random.Generator, ramp: float
                      ) -> tuple[tuple[slice, ...], np.ndarray]:
  """(box, occupancy in the box) of a lobulated ellipsoid nodule of equivalent `diameter`."""
  radius = diameter / 2
  aspect = np.exp(rng.normal(0.0, 0.12, 3))
  radii = radius * aspect / np.prod(aspect) ** (1 / 3)
  width = ramp * (2.0 if kind == "ground_glass" else 1.0)
  box = _box(centre, 1.3 * radii.max() + width, anatomy.coords, anatomy.spacing, anatomy.shape)
  local = _local(anatomy.coords, box)
  level = sum(((c - m) / r) ** 2 for c, m, r in zip(local, centre, radii))
  lobes = 1 + (0.12 if kind == "ground_glass" else 0.08) * _smooth_field(
      rng, local, (1.2 * radius, 2.5 * radius + 1.0), 4)
  signed = radius * (np.sqrt(level * lobes) - 1)
  return box, np.clip(0.5 - signed / width, 0, 1).astype(np.float32)


def _place(rng: np.random.Generator, anatomy: _Anatomy, radius: float, placement: str,
           segments: list[tuple], taken: list[tuple[np.ndarray, float]]
           ) -> tuple[Optional[np.ndarray], str]:
  """(centre mm, placement) for a nodule of `radius`, or (None, placement) if none fits.

  A juxtavascular nodule that finds no vessel to touch is placed free (isolated).
  """
  half_extent = (np.asarray(anatomy.shape) - 1) / 2 * anatomy.spacing

  def clear(point):  # inside the field of view, apart from the nodules placed before
    return (np.all(np.abs(point) + radius <= half_extent)
            and all(np.linalg.norm(point - c) > radius + r + 1.0 for c, r in taken))

  depth = anatomy.lung_depth
  if placement == "juxtavascular":
    vessels = [s for s in segments if 0.8 <= s[2] <= 3.0]
    for _ in range(40 if vessels else 0):
      p0, p1, r_v = vessels[rng.integers(len(vessels))]
      axis = (p1 - p0) / (np.linalg.norm(p1 - p0) + 1e-12)
      side = _rotate_towards(axis, np.pi / 2, rng)
      offset = (r_v + rng.uniform(0.7, 0.95) * radius) * side
      centre = p0 + rng.uniform(0.2, 0.8) * (p1 - p0) + offset
      if depth[anatomy.index_of(centre)] >= 0.9 * radius + 0.5 and clear(centre):
        return centre, placement
    placement = "isolated"
  low, high = ((0.7 * radius, 0.95 * radius) if placement == "juxtapleural"
               else (radius + 1.0, np.inf))
  margin = [int(np.ceil(radius / s)) for s in anatomy.spacing]
  fits = np.zeros(anatomy.shape, bool)
  fits[tuple(slice(m, n - m) for m, n in zip(margin, anatomy.shape))] = True
  candidates = np.flatnonzero(fits & (depth >= low) & (depth <= high))
  for _ in range(40):
    if candidates.size == 0:
      break
    index = np.unravel_index(candidates[rng.integers(candidates.size)], anatomy.shape)
    centre = (np.asarray(index) - (np.asarray(anatomy.shape) - 1) / 2) * anatomy.spacing
    centre = centre + rng.uniform(-0.5, 0.5, 3) * anatomy.spacing * 0.5
    if clear(centre):
      return centre, placement
  return None, placement


def make_case(seed: int, shape: Sequence[int] = (64, 96, 96),
              spacing: Sequence[float] = (2.0, 1.5, 1.5)) -> ChestCase:
  """One synthetic chest CT with nodules, a pure function of `seed`.

  Args:
    seed: integer seed; the same seed gives the same arrays.
    shape: `(D, H, W)` voxels; D is the through-plane (superior) axis.
    spacing: voxel size in mm per axis, `(slice, row, column)`.

  Returns:
    A `ChestCase` (see its docstring and the module docstring).
  """
  shape = tuple(int(n) for n in shape)
  if len(shape) != 3 or len(spacing) != 3 or min(shape) < 8:
    raise ValueError(f"make_case: expected a 3D shape of at least 8 voxels per axis and a 3D "
                     f"spacing, got {shape}, {tuple(spacing)}")
  spacing_a = np.asarray(spacing, np.float64)
  rng = np.random.default_rng([int(seed), 19, 2])
  anatomy = _Anatomy(rng, shape, spacing_a)
  ramp = float(np.prod(spacing_a) ** (1 / 3))

  segments = _grow_vessels(rng, anatomy)
  vessel_occ = _render_vessels(anatomy, segments, ramp)

  # Nodules: placed, rendered, their instance voxels taken where at least half inside.
  instances = np.zeros(shape, np.int16)
  lung_f = anatomy.lungs.astype(np.float32)
  layers = []  # (box, occupancy, material image in the box, kind)
  nodules, taken = [], []
  for plan in nodule_plan(seed):
    diameter, redrawn = plan.diameter_mm, False
    centre, placement = _place(rng, anatomy, diameter / 2, plan.placement, segments, taken)
    for _ in range(10):
      if centre is not None:
        break
      diameter, redrawn = float(draw_diameters(rng, 1)[0]), True
      diameter = min(diameter, plan.diameter_mm)
      centre, placement = _place(rng, anatomy, diameter / 2, plan.placement, segments, taken)
    if centre is None:
      continue
    box, occupancy = _nodule_occupancy(anatomy, centre, diameter, plan.kind, rng, ramp)
    occupancy *= lung_f[box]
    number = len(nodules) + 1
    inside = (occupancy >= 0.5) & (instances[box] == 0)
    if not inside.any():  # tiny nodule off the voxel grid: its centre voxel
      index = anatomy.index_of(centre)
      local_index = tuple(i - b.start for i, b in zip(index, box))
      inside[local_index] = True
    instances[box][inside] = number
    material = np.float32(plan.material_hu)
    if plan.kind == "ground_glass":
      material = material + 25.0 * _smooth_field(rng, _local(anatomy.coords, box), (3.0, 8.0), 4)
    layers.append((box, occupancy, material, plan.kind))
    taken.append((centre, diameter / 2))
    nodules.append(Nodule(tuple(float(v) for v in anatomy.to_index(centre)), float(diameter),
                          plan.kind, placement, plan.material_hu, redrawn))
  small = []
  for _ in range(int(min(rng.poisson(1.0), MAX_SMALL_NODULES))):
    diameter = rng.uniform(*SMALL_NODULE_DIAMETER_MM)
    centre, _ = _place(rng, anatomy, diameter / 2, "isolated", segments, taken)
    if centre is None:
      continue
    box, occupancy = _nodule_occupancy(anatomy, centre, diameter, "solid", rng, ramp)
    layers.append((box, occupancy * lung_f[box], np.float32(rng.uniform(*SOLID_HU)), "small"))
    taken.append((centre, diameter / 2))
    small.append((tuple(float(v) for v in anatomy.to_index(centre)), float(diameter)))

  # Compose: anatomy, ground-glass nodules, vessels (visible through ground glass), solid.
  image, tissues = anatomy.image, anatomy.tissues
  for box, occupancy, material, kind in layers:
    if kind == "ground_glass":
      image[box] += occupancy * (material - image[box])
  vessel_zone = anatomy.lungs | anatomy.mediastinum
  vessel_occ *= vessel_zone
  image += vessel_occ * (np.float32(anatomy.blood_hu) - image)
  tissues[(vessel_occ >= 0.5) & anatomy.lungs] = TISSUES.index("vessel")
  for box, occupancy, material, kind in layers:
    if kind != "ground_glass":
      image[box] += occupancy * (material - image[box])
    name = {"ground_glass": "ground_glass_nodule", "solid": "solid_nodule"}.get(
        kind, "small_nodule")
    tissues[box][occupancy >= 0.5] = TISSUES.index(name)

  # Imaging: point spread and slice profile, then correlated noise.
  sigma = [SLICE_PROFILE_SIGMA, PSF_SIGMA_MM / spacing_a[1], PSF_SIGMA_MM / spacing_a[2]]
  image = ndimage.gaussian_filter(image, sigma, truncate=3.0)
  noise_std = float(rng.uniform(*NOISE_STD_HU))
  noise = rng.standard_normal(shape, dtype=np.float32)
  noise = ndimage.gaussian_filter(noise, [0.3, 0.5, 0.5], truncate=3.0)
  image += noise * np.float32(noise_std / noise.std())
  np.maximum(image, -1024.0, out=image)

  centre_world = (rng.uniform(-30, 30), rng.uniform(-60, 60), rng.uniform(-250, -50))
  vessels = np.asarray([np.concatenate([anatomy.to_index(p0), anatomy.to_index(p1), [r]])
                        for p0, p1, r in segments], np.float32).reshape(-1, 7)
  return ChestCase(image=image.astype(np.float32), instances=instances, tissues=tissues,
                   nodules=tuple(nodules), small_nodules=tuple(small), vessels=vessels,
                   spacing=tuple(float(s) for s in spacing_a),
                   affine=array_affine(shape, spacing_a, centre_world), noise_std=noise_std)
