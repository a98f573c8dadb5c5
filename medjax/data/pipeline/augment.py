"""Data augmentation on the device: pure JAX functions, jit-compiled inside the training step.

nnU-Net's default training augmentation (Isensee et al., Nature Methods 2021;
its batchgenerators transforms and probabilities), for 2D and 3D patches:

* geometry, one sampling grid for image and label (labels by nearest
  neighbour, so they stay in their label set): rotation (±30° about each
  axis; about the through-plane axis only for anisotropic volumes) and
  scaling (0.7–1.4) as one affine map, plus an optional elastic deformation
  (Ronneberger et al., MICCAI 2015: random displacements on a coarse grid,
  cubically interpolated to every voxel), resampled with
  `jax.scipy.ndimage.map_coordinates`;
* intensity, per channel: Gaussian noise (variance 0–0.1), Gaussian blur
  (σ 0.5–1, separable), multiplicative brightness and contrast (0.75–1.25),
  simulated low resolution (zoom 0.5–1: nearest downsampling, linear
  upsampling), gamma (0.7–1.5, also on the inverted image, keeping the
  channel's mean and standard deviation);
* mirroring along chosen axes.

Every transform is drawn per sample with its own probability (0 switches it
off and removes it from the compiled program). Each sample's randomness
comes from `fold_in(key, sample_index)`, so a sample's augmentation depends
on the key and its index in the global batch, not on how the batch is split
over devices. Arrays are channels-last: images `(N, *S, C)`, labels
`(N, *S)` for segmentation (or None for image-level labels).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from medjax.errors import InputError

#: nnU-Net's anisotropy threshold: a volume whose largest spacing exceeds 3x
#: its smallest is augmented slice-wise (rotation, scaling, elastic
#: deformation and low resolution in-plane only).
ANISOTROPY_THRESHOLD = 3.0
BORDER_MODES = ("mirror", "nearest", "constant")
ANISOTROPIC_MODES = ("auto", "in_plane", "full")


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Which transforms to draw, with what probability per sample, and their ranges.

  The defaults are nnU-Net v2's training transforms (`nnUNetTrainer.
  get_training_transforms`); elastic deformation is off there and here.
  `(low, high)` multiplier ranges that straddle 1 are sampled as nnU-Net
  does: half of the draws below 1, half above.

  Attributes:
    rotation_p, rotation_degrees: rotation by angles uniform in ±degrees
      about each axis (3D; one angle in 2D or in-plane).
    scale_p, scale_range: one sampling-coordinate factor for every axis
      (>1 shows more of the image, smaller).
    elastic_p, elastic_grid, elastic_sigma: displacements N(0, sigma²) voxels
      on a `grid`^d coarse grid, cubically upsampled (Ronneberger 2015: 3x3 grid).
    noise_p, noise_variance: additive Gaussian noise, variance uniform in range.
    blur_p, blur_sigma, blur_p_channel: Gaussian blur, σ uniform per channel and
      axis; each channel blurred with probability `blur_p_channel`.
    brightness_p, brightness_range: multiply each channel by a factor.
    contrast_p, contrast_range: scale each channel about its mean, clipped
      to its former range.
    lowres_p, lowres_zoom, lowres_p_channel: downsample by a zoom (same for
      every axis) with nearest neighbour, upsample back linearly.
    gamma_p, inverted_gamma_p, gamma_range: `x -> x^gamma` on the channel
      rescaled to [0, 1] (inverted: of `-x`), then its mean and standard
      deviation restored.
    mirror_axes: spatial axes flipped, each with probability 1/2.
    through_plane_axis: for anisotropic volumes, the axis of the thick
      slices: rotation about it only, no scaling, elastic displacement or
      low resolution along it. None: every axis.
    border_mode: how the sampling grid reads outside the patch
      (`map_coordinates` mode; "mirror" keeps image and label a valid pair).
  """
  rotation_p: float = 0.2
  rotation_degrees: float = 30.0
  scale_p: float = 0.2
  scale_range: tuple[float, float] = (0.7, 1.4)
  elastic_p: float = 0.0
  elastic_grid: int = 3
  elastic_sigma: float = 2.0
  noise_p: float = 0.1
  noise_variance: tuple[float, float] = (0.0, 0.1)
  blur_p: float = 0.2
  blur_sigma: tuple[float, float] = (0.5, 1.0)
  blur_p_channel: float = 0.5
  brightness_p: float = 0.15
  brightness_range: tuple[float, float] = (0.75, 1.25)
  contrast_p: float = 0.15
  contrast_range: tuple[float, float] = (0.75, 1.25)
  lowres_p: float = 0.25
  lowres_zoom: tuple[float, float] = (0.5, 1.0)
  lowres_p_channel: float = 0.5
  gamma_p: float = 0.3
  inverted_gamma_p: float = 0.1
  gamma_range: tuple[float, float] = (0.7, 1.5)
  mirror_axes: tuple[int, ...] = ()
  through_plane_axis: Optional[int] = None
  border_mode: str = "mirror"

  @property
  def geometric(self) -> bool:
    """Whether any transform resamples the patch (rotation, scaling, elastic)."""
    return self.rotation_p > 0 or self.scale_p > 0 or self.elastic_p > 0

  @property
  def active(self) -> bool:
    """Whether anything at all can change a sample."""
    return self.geometric or bool(self.mirror_axes) or any(
        getattr(self, name) > 0 for name in ("noise_p", "blur_p", "brightness_p", "contrast_p",
                                             "lowres_p", "gamma_p", "inverted_gamma_p"))

  def check(self, spatial_dims: int, where: str = "config.augment") -> "Augmentation":
    """Returns self; InputError naming the first impossible field."""
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if f.name.endswith("_p") or f.name.endswith("_p_channel"):
        if not 0.0 <= float(value) <= 1.0:
          raise InputError(f"{where}.{f.name}={value}: expected a probability in [0, 1]")
      elif f.name.endswith(("_range", "_variance", "_sigma", "_zoom")) and isinstance(value, tuple):
        if len(value) != 2 or not 0 <= value[0] <= value[1]:
          raise InputError(f"{where}.{f.name}={value}: expected (low, high) with 0 <= low <= high")
    if self.lowres_zoom[1] > 1 or self.lowres_zoom[0] <= 0:
      raise InputError(f"{where}.lowres_zoom={self.lowres_zoom}: expected a range within (0, 1]")
    if self.scale_range[0] <= 0:
      raise InputError(f"{where}.scale_range={self.scale_range}: expected positive factors")
    if self.elastic_grid < 2 or self.elastic_sigma < 0:
      raise InputError(f"{where}.elastic_grid={self.elastic_grid}, elastic_sigma="
                       f"{self.elastic_sigma}: expected a grid of at least 2 points, sigma >= 0")
    for axis in self.mirror_axes:
      if not 0 <= axis < spatial_dims:
        raise InputError(f"{where}.mirror_axes={self.mirror_axes}: axis {axis} out of range "
                         f"for {spatial_dims}D data (spatial axes 0..{spatial_dims - 1})")
    if self.border_mode not in BORDER_MODES:
      raise InputError(f"{where}.border_mode={self.border_mode!r}: expected one of "
                       f"{', '.join(BORDER_MODES)}")
    return self


def config_section() -> dict[str, Any]:
  """The default `augment` section of a config: off (`enabled=False`), `anisotropic="auto"`,
  and every `Augmentation` field at its default (nnU-Net's transforms; a probability of 0
  switches one off) except `through_plane_axis`, which `from_config` derives."""
  defaults = {f.name: f.default for f in dataclasses.fields(Augmentation)
              if f.name != "through_plane_axis"}
  return {"enabled": False, "anisotropic": "auto", **defaults}


def from_config(section: Optional[Mapping[str, Any]], *, spacing: Sequence[float],
                spatial_dims: int, where: str = "config.augment") -> Optional[Augmentation]:
  """The `Augmentation` of a config's `augment` section, or None when it is
  missing, not `enabled`, or changes nothing.

  `section` holds `enabled`, `anisotropic` ("auto": in-plane augmentation when
  the largest spacing exceeds `ANISOTROPY_THRESHOLD` x the smallest, as
  nnU-Net; "in_plane"; "full") and the fields of `Augmentation` (tuples may
  come back from JSON as lists).
  """
  if section is None:
    return None
  fields = dict(section.to_dict() if hasattr(section, "to_dict") else section)
  if not fields.pop("enabled", False):
    return None
  anisotropic = fields.pop("anisotropic", "auto")
  if anisotropic not in ANISOTROPIC_MODES:
    raise InputError(f"{where}.anisotropic={anisotropic!r}: expected one of "
                     f"{', '.join(ANISOTROPIC_MODES)}")
  known = {f.name for f in dataclasses.fields(Augmentation)} - {"through_plane_axis"}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise InputError(f"{where}.{unknown[0]}: unknown field; expected some of {', '.join(sorted(known))}")
  fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in fields.items()}
  spacing = tuple(float(s) for s in spacing)
  thick = spatial_dims == 3 and (anisotropic == "in_plane" or (
      anisotropic == "auto" and max(spacing) > ANISOTROPY_THRESHOLD * min(spacing)))
  axis = int(np.argmax(spacing)) if thick else None
  aug = Augmentation(**fields, through_plane_axis=axis).check(spatial_dims, where)
  return aug if aug.active else None


# ----------------------------------------------------------------------------- geometry

def rotation_matrix(angles: jax.Array, spatial_dims: int) -> jax.Array:
  """`(d, d)` sampling matrix that rotates image content by `angles` (radians).

  2D: one angle, counter-clockwise in `(axis 0, axis 1)` as `np.rot90`.
  3D: `angles[k]` rotates the plane of the two axes other than k (in
  increasing order), composed for k = 0, 1, 2. Sampling output voxel x at
  `c + M (x - c)` shows the content rotated by the angles, so M rotates by
  their negatives.
  """
  def plane(a, i, j):
    c, s = jnp.cos(a), jnp.sin(a)
    m = jnp.eye(spatial_dims, dtype=jnp.float32)
    # inverse (= transpose) of the rotation by +a in the (i, j) plane
    return m.at[i, i].set(c).at[j, j].set(c).at[i, j].set(s).at[j, i].set(-s)

  if spatial_dims == 2:
    return plane(angles[0], 0, 1)
  m = jnp.eye(3, dtype=jnp.float32)
  for k, (i, j) in enumerate(((1, 2), (0, 2), (0, 1))):
    m = m @ plane(angles[k], i, j)
  return m


def sampling_grid(shape: Sequence[int], matrix: jax.Array,
                  displacement: Optional[jax.Array] = None) -> jax.Array:
  """Source coordinates `(d, *S)` of each output voxel: `c + M (x - c) + u(x)`,
  with c the patch centre and u a displacement field `(d, *S)` in voxels."""
  d = len(shape)
  centre = jnp.asarray([(s - 1) / 2.0 for s in shape], jnp.float32)
  grid = jnp.stack(jnp.meshgrid(*[jnp.arange(s, dtype=jnp.float32) for s in shape],
                                indexing="ij"))
  offset = grid - centre.reshape((d,) + (1,) * d)
  coords = jnp.einsum("ij,j...->i...", matrix, offset) + centre.reshape((d,) + (1,) * d)
  if displacement is not None:
    coords = coords + displacement
  return coords


def elastic_lattice_shape(spatial_dims: int, grid: int,
                          through_plane_axis: Optional[int] = None) -> tuple[int, ...]:
  """Shape `(d, *G)` of the coarse displacement lattice of `elastic_displacement`:
  `grid` points per axis, one along `through_plane_axis` (every slice deforms alike)."""
  return (spatial_dims,) + tuple(1 if a == through_plane_axis else grid
                                 for a in range(spatial_dims))


def elastic_displacement(coarse: jax.Array, shape: Sequence[int], *,
                         through_plane_axis: Optional[int] = None) -> jax.Array:
  """Smooth displacement field `(d, *S)` in voxels from displacements on a coarse
  lattice `(d, *G)`, cubically interpolated to every voxel (Ronneberger et al.
  2015: a 3x3 grid of N(0, 10²) pixel displacements, bicubic interpolation).
  Nothing moves along `through_plane_axis`."""
  if through_plane_axis is not None:
    coarse = coarse.at[through_plane_axis].set(0.0)
  return jax.image.resize(coarse, (coarse.shape[0],) + tuple(shape), method="cubic")


def warp(image: jax.Array, label: Optional[jax.Array], coords: jax.Array, *,
         mode: str = "mirror") -> tuple[jax.Array, Optional[jax.Array]]:
  """Resamples image `(*S, C)` (linear) and label `(*S)` (nearest) at `coords (d, *S)`."""
  coords = list(coords)
  sample = lambda ch: jax.scipy.ndimage.map_coordinates(ch, coords, order=1, mode=mode)
  image = jax.vmap(sample, in_axes=-1, out_axes=-1)(image)
  if label is not None:
    warped = jax.scipy.ndimage.map_coordinates(label.astype(jnp.float32), coords, order=0,
                                               mode=mode)
    label = jnp.round(warped).astype(label.dtype)
  return image, label


def mirror(image: jax.Array, label: Optional[jax.Array], flips: jax.Array,
           axes: Sequence[int]) -> tuple[jax.Array, Optional[jax.Array]]:
  """Flips image `(*S, C)` and label `(*S)` along `axes[i]` where `flips[i]` is True."""
  for i, axis in enumerate(axes):
    image = jnp.where(flips[i], jnp.flip(image, axis), image)
    if label is not None:
      label = jnp.where(flips[i], jnp.flip(label, axis), label)
  return image, label


# ----------------------------------------------------------------------------- intensity
# Channel statistics are over the spatial axes of one sample `(*S, C)`.

def _spatial(image: jax.Array) -> tuple[int, ...]:
  return tuple(range(image.ndim - 1))


def brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Multiplicative brightness: each channel times `factor (C,)`."""
  return image * factor


def contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Contrast: each channel scaled by `factor (C,)` about its mean, clipped to its
  former [min, max] (batchgenerators' `preserve_range`)."""
  axes = _spatial(image)
  mean = image.mean(axes, keepdims=True)
  low, high = image.min(axes, keepdims=True), image.max(axes, keepdims=True)
  return jnp.clip((image - mean) * factor + mean, low, high)


def gamma(image: jax.Array, g: jax.Array, *, invert: bool = False) -> jax.Array:
  """`x -> x^g` per channel (`g (C,)`) on the channel rescaled to [0, 1], then the
  channel's mean and standard deviation restored (nnU-Net, retain_stats).
  `invert`: the same on `-x` (bright structures darkened)."""
  sign = -1.0 if invert else 1.0
  x = sign * image
  axes = _spatial(x)
  mean, std = x.mean(axes, keepdims=True), x.std(axes, keepdims=True)
  low = x.min(axes, keepdims=True)
  scale = x.max(axes, keepdims=True) - low + 1e-7
  x = jnp.power((x - low) / scale, g) * scale + low
  x = (x - x.mean(axes, keepdims=True)) / (x.std(axes, keepdims=True) + 1e-8) * std + mean
  return sign * x


def gaussian_noise(image: jax.Array, variance: jax.Array, standard_normal: jax.Array) -> jax.Array:
  """Adds N(0, variance) noise, `sqrt(variance) * standard_normal` (same shape as image)."""
  return image + jnp.sqrt(variance) * standard_normal


def gaussian_blur(image: jax.Array, sigma: jax.Array, *, radius: int) -> jax.Array:
  """Separable Gaussian blur of `(*S, C)` with `sigma (C, d)` voxels per channel and axis.

  Kernels of `2 radius + 1` taps, normalised; borders reflected (scipy's
  `gaussian_filter` default). σ -> 0 leaves the image unchanged.
  """
  d = image.ndim - 1
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  for axis in range(d):
    n = image.shape[axis]
    w = jnp.exp(-0.5 * (taps[:, None] / jnp.maximum(sigma[:, axis], 1e-3)) ** 2)  # (T, C)
    w = w / w.sum(0)
    pad = [(0, 0)] * image.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(image, pad, mode="symmetric")
    out = jnp.zeros_like(image)
    for t in range(2 * radius + 1):
      out = out + w[t] * jax.lax.slice_in_dim(padded, t, t + n, axis=axis)
    image = out
  return image


def low_resolution(image: jax.Array, zoom: jax.Array) -> jax.Array:
  """Simulated low resolution of `(*S, C)`: per axis, nearest-neighbour
  downsampling to `round(n * zoom)` samples, then linear upsampling back to n
  (`zoom (C, d)` in (0, 1]; 1 leaves the axis unchanged). Shapes stay static:
  the coarse grid is addressed by index arithmetic, not materialised."""
  d = image.ndim - 1
  for axis in range(d):
    n = image.shape[axis]
    z = zoom[:, axis]                                                   # (C,)
    m = jnp.maximum(jnp.round(n * z), 1.0)                              # coarse samples
    z = m / n
    i = jnp.arange(n, dtype=jnp.float32)[:, None]                       # (n, 1)
    q = jnp.clip((i + 0.5) * z - 0.5, 0.0, m - 1)                       # coarse coordinate
    j0 = jnp.floor(q)
    t = q - j0
    j1 = jnp.minimum(j0 + 1, m - 1)
    # the fine voxel under the centre of coarse sample j (nearest-neighbour downsampling)
    source = lambda j: jnp.clip(jnp.floor((j + 0.5) / z), 0, n - 1).astype(jnp.int32)
    take = lambda idx: jnp.take_along_axis(image, _along(idx, axis, image.ndim), axis=axis)
    shape = [1] * image.ndim
    shape[axis], shape[-1] = n, -1
    image = (1 - t).reshape(shape) * take(source(j0)) + t.reshape(shape) * take(source(j1))
  return image


def _along(index: jax.Array, axis: int, ndim: int) -> jax.Array:
  """`(n, C)` indices shaped to broadcast along `axis` of an `ndim` array."""
  shape = [1] * ndim
  shape[axis], shape[-1] = index.shape[0], index.shape[1]
  return index.reshape(shape)


# ----------------------------------------------------------------------------- sampling

def standard_normal(u: jax.Array) -> jax.Array:
  """Standard normal numbers from `jax.random.uniform` draws `u` in [0, 1).

  Inverse CDF at the centre of each of the 2^23 float32 uniform cells, so the
  ends map to ±5.3, never to ±inf (the inverse CDF of u = 0 itself is -inf).
  """
  centred = 2.0 * u - 1.0 + 2.0 ** -23  # in (-1, 1)
  return jnp.sqrt(2.0) * jax.lax.erf_inv(centred)


class _Draws:
  """All random numbers of one sample from one uniform draw, consumed in order.

  One threefry call per sample instead of one per transform: each call is a
  separately compiled hash, and they dominate compile time on CPU.
  """

  def __init__(self, key: jax.Array, num_uniform: int, num_normal: int):
    u = jax.random.uniform(key, (num_uniform + num_normal,), jnp.float32)
    self._u, self._n, self._normal = u[:num_uniform], 0, u[num_uniform:]
    self._m = 0

  def uniform(self, n: Optional[int] = None) -> jax.Array:
    """`n` (or one scalar) uniform numbers in [0, 1)."""
    k = 1 if n is None else n
    out = self._u[self._n:self._n + k]
    assert out.shape[0] == k, "augment_sample: uniform budget too small"
    self._n += k
    return out[0] if n is None else out

  def normal(self, shape: Sequence[int]) -> jax.Array:
    """Standard normal numbers of `shape` (`standard_normal` of the uniforms)."""
    k = int(np.prod(shape))
    u = self._normal[self._m:self._m + k]
    self._m += k
    return standard_normal(u).reshape(shape)


def _multiplier(u: jax.Array, below: jax.Array, value_range: tuple[float, float]) -> jax.Array:
  """nnU-Net's `BGContrast`: half the draws in [low, 1), half in [1, high] when the
  range straddles 1; else uniform. `u`, `below` uniform in [0, 1)."""
  low, high = value_range
  if low < 1.0 < high:
    return jnp.where(below < 0.5, low + u * (1.0 - low), 1.0 + u * (high - 1.0))
  return low + u * (high - low)


def _uniform(u: jax.Array, value_range: tuple[float, float]) -> jax.Array:
  return value_range[0] + u * (value_range[1] - value_range[0])


def augment_sample(key: jax.Array, image: jax.Array, label: Optional[jax.Array],
                   aug: Augmentation) -> tuple[jax.Array, Optional[jax.Array]]:
  """One sample, image `(*S, C)` and label `(*S)` or None, augmented by `aug`.

  Order as nnU-Net: geometry, noise, blur, brightness, contrast, low
  resolution, inverted gamma, gamma, mirroring.
  """
  shape = image.shape[:-1]
  d, c = len(shape), image.shape[-1]
  lattice = elastic_lattice_shape(d, aug.elastic_grid, aug.through_plane_axis)
  num_normal = ((int(np.prod(image.shape)) if aug.noise_p > 0 else 0)
                + (int(np.prod(lattice)) if aug.elastic_p > 0 else 0))
  draw = _Draws(key, 16 + d + 10 * c + c * d, num_normal)
  apply = lambda p: draw.uniform() < p
  free = [a for a in range(d) if a != aug.through_plane_axis]

  if aug.geometric:
    matrix = jnp.eye(d, dtype=jnp.float32)
    if aug.rotation_p > 0:
      limit = math.radians(aug.rotation_degrees)
      angles = (2 * draw.uniform(3 if d == 3 else 1) - 1) * limit
      if d == 3 and aug.through_plane_axis is not None:
        angles = angles * (jnp.arange(3) == aug.through_plane_axis)
      matrix = jnp.where(apply(aug.rotation_p), rotation_matrix(angles, d), matrix)
    if aug.scale_p > 0:
      s = _uniform(draw.uniform(), aug.scale_range)
      factors = jnp.where(jnp.asarray([a in free for a in range(d)]), s, 1.0)
      matrix = matrix @ jnp.where(apply(aug.scale_p), jnp.diag(factors), jnp.eye(d))
    displacement = None
    if aug.elastic_p > 0:
      coarse = aug.elastic_sigma * draw.normal(lattice)
      displacement = elastic_displacement(coarse, shape, through_plane_axis=aug.through_plane_axis)
      displacement = jnp.where(apply(aug.elastic_p), displacement, 0.0)
    image, label = warp(image, label, sampling_grid(shape, matrix, displacement),
                        mode=aug.border_mode)

  if aug.noise_p > 0:
    variance = _uniform(draw.uniform(), aug.noise_variance)
    noisy = gaussian_noise(image, variance, draw.normal(image.shape))
    image = jnp.where(apply(aug.noise_p), noisy, image)
  if aug.blur_p > 0:
    sigma = _uniform(draw.uniform(c * d).reshape(c, d), aug.blur_sigma)
    sigma = jnp.where((draw.uniform(c) < aug.blur_p_channel)[:, None], sigma, 0.0)
    radius = max(1, math.ceil(3 * aug.blur_sigma[1]))
    image = jnp.where(apply(aug.blur_p), gaussian_blur(image, sigma, radius=radius), image)
  if aug.brightness_p > 0:
    factor = _multiplier(draw.uniform(c), draw.uniform(c), aug.brightness_range)
    image = jnp.where(apply(aug.brightness_p), brightness(image, factor), image)
  if aug.contrast_p > 0:
    factor = _multiplier(draw.uniform(c), draw.uniform(c), aug.contrast_range)
    image = jnp.where(apply(aug.contrast_p), contrast(image, factor), image)
  if aug.lowres_p > 0:
    z = _uniform(draw.uniform(), aug.lowres_zoom)  # the same for every axis of a channel
    zoom = jnp.where((draw.uniform(c) < aug.lowres_p_channel)[:, None]
                     & jnp.asarray([a in free for a in range(d)])[None], z, 1.0)  # (C, d)
    image = jnp.where(apply(aug.lowres_p), low_resolution(image, zoom), image)
  for p, invert in ((aug.inverted_gamma_p, True), (aug.gamma_p, False)):
    if p > 0:
      g = _multiplier(draw.uniform(c), draw.uniform(c), aug.gamma_range)
      image = jnp.where(apply(p), gamma(image, g, invert=invert), image)
  if aug.mirror_axes:
    flips = draw.uniform(len(aug.mirror_axes)) < 0.5
    image, label = mirror(image, label, flips, aug.mirror_axes)
  return image, label


def augment(key: jax.Array, image: jax.Array, label: Optional[jax.Array], aug: Augmentation,
            *, sample_index: Optional[jax.Array] = None
            ) -> tuple[jax.Array, Optional[jax.Array]]:
  """Augments a batch: image `(N, *S, C)`, label `(N, *S)` or None (image-level labels).

  Sample i uses `fold_in(key, sample_index[i])` (default `i`): pass each
  sample's index in the global batch to make the result independent of how
  the batch is split over devices.
  """
  n = image.shape[0]
  if sample_index is None:
    sample_index = jnp.arange(n)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(sample_index)
  if label is None:
    image, _ = jax.vmap(lambda k, x: augment_sample(k, x, None, aug))(keys, image)
    return image, None
  return jax.vmap(lambda k, x, y: augment_sample(k, x, y, aug))(keys, image, label)


__all__ = ["Augmentation", "from_config", "augment", "augment_sample", "rotation_matrix",
           "sampling_grid", "elastic_lattice_shape", "elastic_displacement", "warp", "mirror", "brightness", "contrast",
           "gamma", "gaussian_noise", "standard_normal", "gaussian_blur", "low_resolution", "ANISOTROPY_THRESHOLD"]
