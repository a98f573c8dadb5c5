"""Reading and writing medical images: NIfTI, NRRD, MetaImage, DICOM series.

Axis convention (as SimpleITK's `GetArrayFromImage`): the returned array is
indexed `(k, j, i)` = `(D, H, W)`, the reverse of the file's voxel index
order `(i, j, k)`, and `spacing[a]` is the voxel size (mm) along array axis
`a`; a NIfTI file with zooms `(0.8, 0.8, 2.5)` reads as spacing
`(2.5, 0.8, 0.8)`.

`affine` is the file's 4x4 map from voxel index `(i, j, k, 1)` to world
coordinates in mm. World coordinates are always RAS+ (the NIfTI/nibabel
convention): formats that store LPS (DICOM, MetaImage, NRRD in
left-posterior-superior space) are converted by negating x and y, so a volume
read from any format can be written with `write_nifti` and overlays
correctly.

Every reader turns a missing, corrupt, truncated or unknown file into a
one-line `InputError` that names the file.
"""
from __future__ import annotations

import os
import zlib
from typing import NamedTuple, Union

import numpy as np

from medjax.errors import InputError

PathLike = Union[str, os.PathLike]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class Volume(NamedTuple):
  """An image: `array` `(D, H, W)` (or `(H, W)`), `spacing` per array axis (mm), 4x4 `affine`."""
  array: np.ndarray
  spacing: tuple[float, ...]
  affine: np.ndarray


def _affine_from(directions: np.ndarray, spacing_ijk: np.ndarray, origin: np.ndarray) -> np.ndarray:
  """4x4 affine from a 3x3 direction matrix (columns = axes i, j, k), spacing and origin."""
  affine = np.eye(4)
  affine[:3, :3] = directions * spacing_ijk[None, :]
  affine[:3, 3] = origin
  return affine


def _pad3(vector, fill: float) -> np.ndarray:
  vector = np.asarray(vector, np.float64).reshape(-1)
  return np.concatenate([vector, np.full(3 - vector.size, fill)])[:3]


# ----------------------------------------------------------------- NIfTI ---

def _load_nifti(path: str) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
  """(voxel array in the file's (i, j, k[, t]) order, zooms, affine) of a NIfTI file."""
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  try:
    image = nib.load(path)
    array = np.asanyarray(image.dataobj)
    if array.dtype == np.float64 and image.get_data_dtype() != np.float64:
      array = array.astype(np.float32)  # scl_slope/inter applied: float32 is exact enough
    zooms = image.header.get_zooms()
    affine = np.asarray(image.affine, np.float64)
  except Exception as error:  # nibabel raises many types for bad files
    raise InputError(f"{path}: not a readable NIfTI file ({_short(error)})") from None
  return array, zooms, affine


def _read_nifti(path: str) -> Volume:
  array, zooms, affine = _load_nifti(path)
  if array.ndim == 4 and array.shape[3] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3):
    raise InputError(f"{path}: expected a 2D or 3D NIfTI image, got shape {array.shape}")
  spacing = tuple(float(z) for z in zooms[:array.ndim][::-1])
  return Volume(np.ascontiguousarray(array.T), spacing, affine)


def write_nifti(path: PathLike, array: np.ndarray, affine: np.ndarray, *,
                channels: bool = False, dtype=None) -> str:
  """Writes `array` `(D, H, W)` (or `(H, W)`) with the voxel->world `affine` as NIfTI.

  The inverse of `read_image`: the file's voxel axes are the array axes
  reversed, and its zooms follow from `affine`. bool is stored as uint8 and
  int64 as int32 (NIfTI readers rarely accept 64-bit integers). Returns
  `path` as a string.

  With `channels=True`, the last axis of `array` is a channel axis (e.g.
  class probabilities `(D, H, W, K)` or `(H, W, K)`): the file is 4D, the
  voxel axes reversed as above (a 2D image gets a voxel axis of size 1) and
  the channels last, `(W, H, D, K)`, so it overlays the image it came from.

  `dtype` (default: the array's) is the dtype on disk; an integer `dtype`
  for float data stores it scaled (nibabel picks `scl_slope`/`scl_inter`).
  """
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  array = np.asarray(array)
  spatial = array.ndim - 1 if channels else array.ndim
  if spatial not in (2, 3):
    shape = "a 2D or 3D array" + (" plus a channel axis" if channels else "")
    raise InputError(f"{path}: write_nifti expects {shape}, got shape {array.shape}")
  if array.dtype == bool:
    array = array.astype(np.uint8)
  elif array.dtype == np.int64:
    array = array.astype(np.int32)
  affine = np.asarray(affine, np.float64)
  if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
    raise InputError(f"{path}: write_nifti expects a finite 4x4 affine, got shape {affine.shape}")
  if channels:
    data = np.transpose(array, tuple(range(spatial))[::-1] + (spatial,))
    data = data[:, :, None, :] if spatial == 2 else data
  else:
    data = array.T
  image = nib.Nifti1Image(np.ascontiguousarray(data), affine)
  image.header.set_data_dtype(array.dtype if dtype is None else dtype)
  image.set_qform(affine, code=1)
  image.set_sform(affine, code=1)
  nib.save(image, path)
  return path


# ------------------------------------------------------------------ NRRD ---

def _read_nrrd(path: str) -> Volume:
  import nrrd  # pylint: disable=g-import-not-at-top
  try:
    array, header = nrrd.read(path, index_order="C")
  except Exception as error:
    raise InputError(f"{path}: not a readable NRRD file ({_short(error)})") from None
  ndim = array.ndim
  if ndim not in (2, 3):
    raise InputError(f"{path}: expected a 2D or 3D NRRD image, got shape {array.shape}")
  directions = header.get("space directions")
  if directions is not None:
    directions = np.asarray(directions, np.float64)  # row a = axis a (i, j, k order)
    if directions.shape != (ndim, ndim) and directions.shape[0] != ndim:
      raise InputError(f"{path}: 'space directions' has shape {directions.shape}; expected {ndim} rows")
    spacing_ijk = np.linalg.norm(directions, axis=1)
    if not np.all(np.isfinite(spacing_ijk)) or np.any(spacing_ijk == 0):
      raise InputError(f"{path}: 'space directions' must be finite and non-zero")
    unit = np.zeros((3, 3))
    unit[:directions.shape[1], :ndim] = (directions / spacing_ijk[:, None]).T
    if ndim == 2:
      unit[2, 2] = 1.0
  else:
    spacing_ijk = np.asarray(header.get("spacings", np.ones(ndim)), np.float64)
    unit = np.eye(3)
  origin = _pad3(header.get("space origin", np.zeros(3)), 0.0)
  affine = _affine_from(unit, _pad3(spacing_ijk, 1.0), origin)
  space = str(header.get("space", "left-posterior-superior")).lower()
  if space in ("left-posterior-superior", "lps", "left_posterior_superior"):
    affine = _LPS_TO_RAS @ affine
  elif space not in ("right-anterior-superior", "ras"):
    raise InputError(f"{path}: NRRD space {space!r} not supported; expected RAS or LPS")
  return Volume(np.ascontiguousarray(array), tuple(float(s) for s in spacing_ijk[::-1]), affine)


# ------------------------------------------------------------- MetaImage ---

_MET_TYPES = {
    "MET_CHAR": np.int8, "MET_UCHAR": np.uint8, "MET_SHORT": np.int16, "MET_USHORT": np.uint16,
    "MET_INT": np.int32, "MET_UINT": np.uint32, "MET_LONG": np.int32, "MET_ULONG": np.uint32,
    "MET_LONG_LONG": np.int64, "MET_ULONG_LONG": np.uint64,
    "MET_FLOAT": np.float32, "MET_DOUBLE": np.float64,
}


def _read_metaimage(path: str) -> Volume:
  """MetaImage (.mha with LOCAL data, or .mhd + raw file), raw or zlib-compressed."""
  try:
    with open(path, "rb") as handle:
      blob = handle.read()
  except OSError as error:
    raise InputError(f"{path}: cannot read MetaImage file ({_short(error)})") from None
  header: dict[str, str] = {}
  position = 0
  while True:
    end = blob.find(b"\n", position)
    if end < 0:
      raise InputError(f"{path}: not a MetaImage file (no ElementDataFile line in the header)")
    line = blob[position:end].decode("latin-1").strip()
    position = end + 1
    if not line:
      continue
    if "=" not in line:
      raise InputError(f"{path}: not a MetaImage file (bad header line {line[:40]!r})")
    key, value = (part.strip() for part in line.split("=", 1))
    header[key] = value
    if key == "ElementDataFile":
      break
    if len(header) > 200:
      raise InputError(f"{path}: not a MetaImage file (header too long)")
  try:
    ndim = int(header["NDims"])
    dims = [int(v) for v in header["DimSize"].split()]
    dtype = np.dtype(_MET_TYPES[header["ElementType"].upper()])
  except (KeyError, ValueError) as error:
    raise InputError(f"{path}: MetaImage header lacks a valid NDims/DimSize/ElementType ({_short(error)})") from None
  if ndim not in (2, 3) or len(dims) != ndim or min(dims) < 1:
    raise InputError(f"{path}: expected a 2D or 3D MetaImage, got NDims={ndim} DimSize={dims}")
  channels = int(header.get("ElementNumberOfChannels", "1"))
  if channels != 1:
    raise InputError(f"{path}: ElementNumberOfChannels={channels}; expected 1")
  msb = (header.get("ElementByteOrderMSB") or header.get("BinaryDataByteOrderMSB") or "False")
  dtype = dtype.newbyteorder(">" if msb.lower() == "true" else "<")
  data_file = header["ElementDataFile"]
  if data_file.upper() == "LOCAL":
    raw = blob[position:]
  else:
    if data_file.upper().startswith("LIST") or "%" in data_file:
      raise InputError(f"{path}: ElementDataFile {data_file!r} not supported; expected LOCAL or one file")
    raw_path = os.path.join(os.path.dirname(path), data_file)
    try:
      with open(raw_path, "rb") as handle:
        raw = handle.read()
    except OSError as error:
      raise InputError(f"{path}: cannot read its data file {raw_path} ({_short(error)})") from None
  if header.get("CompressedData", "False").lower() == "true":
    try:
      raw = zlib.decompress(raw)
    except zlib.error as error:
      raise InputError(f"{path}: corrupt zlib-compressed MetaImage data ({error})") from None
  count = int(np.prod(dims))
  if len(raw) < count * dtype.itemsize:
    raise InputError(f"{path}: truncated MetaImage data ({len(raw)} bytes, expected "
                     f"{count * dtype.itemsize} for DimSize {dims} {header['ElementType']})")
  array = np.frombuffer(raw, dtype, count).reshape(dims[::-1]).astype(dtype.newbyteorder("="))
  try:
    spacing_ijk = np.asarray(
        (header.get("ElementSpacing") or header.get("ElementSize") or " ".join(["1"] * ndim)).split(),
        np.float64)[:ndim]
    origin = np.asarray(
        (header.get("Offset") or header.get("Origin") or header.get("Position") or
         " ".join(["0"] * ndim)).split(), np.float64)[:ndim]
    matrix = header.get("TransformMatrix") or header.get("Rotation") or header.get("Orientation")
    # MetaIO lists the direction of axis 0, then axis 1, ...: rows = axes.
    rows = (np.asarray(matrix.split(), np.float64).reshape(ndim, ndim) if matrix
            else np.eye(ndim))
  except ValueError as error:
    raise InputError(f"{path}: bad MetaImage geometry field ({_short(error)})") from None
  unit = np.eye(3)
  unit[:ndim, :ndim] = rows.T
  affine = _LPS_TO_RAS @ _affine_from(unit, _pad3(spacing_ijk, 1.0), _pad3(origin, 0.0))
  return Volume(np.ascontiguousarray(array), tuple(float(s) for s in spacing_ijk[::-1]), affine)


# ----------------------------------------------------------------- DICOM ---

def _read_dicom_series(folder: str) -> Volume:
  """One DICOM series from a folder: slices sorted along the slice normal."""
  import pydicom  # pylint: disable=g-import-not-at-top
  files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                 if not f.startswith(".") and os.path.isfile(os.path.join(folder, f)))
  slices = []
  for name in files:
    if os.path.basename(name).upper() == "DICOMDIR":
      continue
    try:
      dataset = pydicom.dcmread(name)
      pixels = dataset.pixel_array
      orientation = np.asarray(dataset.ImageOrientationPatient, np.float64)
      position = np.asarray(dataset.ImagePositionPatient, np.float64)
      pixel_spacing = np.asarray(dataset.PixelSpacing, np.float64)
    except Exception as error:
      raise InputError(f"{name}: not a readable DICOM image slice ({_short(error)})") from None
    if pixels.ndim != 2:
      raise InputError(f"{name}: expected a single-frame 2D DICOM slice, got shape {pixels.shape}")
    slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
    slices.append((name, dataset, pixels, orientation, position, pixel_spacing, slope, intercept))
  if not slices:
    raise InputError(f"{folder}: no DICOM files in the folder")
  series = {str(getattr(s[1], "SeriesInstanceUID", "")) for s in slices}
  if len(series) > 1:
    raise InputError(f"{folder}: contains {len(series)} DICOM series; expected exactly one")
  orientation = slices[0][3]
  row, col = orientation[:3], orientation[3:]
  normal = np.cross(row, col)
  for s in slices:
    if not np.allclose(s[3], orientation, atol=1e-4):
      raise InputError(f"{s[0]}: ImageOrientationPatient differs from the rest of the series")
    if s[2].shape != slices[0][2].shape:
      raise InputError(f"{s[0]}: slice shape {s[2].shape} differs from {slices[0][2].shape}")
  slices.sort(key=lambda s: float(np.dot(s[4], normal)))
  depth = np.array([np.dot(s[4], normal) for s in slices])
  if len(slices) > 1:
    gaps = np.diff(depth)
    if np.any(gaps <= 1e-6):
      raise InputError(f"{folder}: two slices share a position; expected one slice per position")
    if np.ptp(gaps) > 0.05 * np.median(gaps) + 1e-3:
      raise InputError(f"{folder}: slice spacing varies from {gaps.min():.3f} to "
                       f"{gaps.max():.3f} mm; expected uniform spacing")
    step = (slices[-1][4] - slices[0][4]) / (len(slices) - 1)
    dz = float(np.median(gaps))
  else:
    dz = float(getattr(slices[0][1], "SliceThickness", 1.0) or 1.0)
    step = normal * dz
  rescaled = [s[2].astype(np.float64) * s[6] + s[7] for s in slices]
  integral = all(s[6] == int(s[6]) and s[7] == int(s[7]) for s in slices)
  array = np.stack(rescaled)
  array = array.astype(np.int16 if integral and array.min() >= -32768 and array.max() <= 32767
                       else np.float32)
  dy, dx = (float(v) for v in slices[0][5][:2])  # DICOM: (row spacing, column spacing)
  affine = np.eye(4)
  affine[:3, 0] = row * dx  # i: along a row (column index)
  affine[:3, 1] = col * dy  # j: down a column (row index)
  affine[:3, 2] = step
  affine[:3, 3] = slices[0][4]
  return Volume(array, (dz, dy, dx), _LPS_TO_RAS @ affine)


# ------------------------------------------------------------- dispatch ---

def _short(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return (text[0][:160] if text else type(error).__name__)


def read_image_channels(path: PathLike) -> Volume:
  """Reads an image whose 4th NIfTI axis holds channels (modalities), channels-last.

  A 4D NIfTI file of voxel shape `(W, H, D, C)` (the Medical Segmentation
  Decathlon's multi-modal images, e.g. FLAIR/T1w/T1gd/T2w of BraTS) reads
  as `array (D, H, W, C)`, with the spacing and affine of its three spatial
  axes. Any other file `read_image` reads (a 2D or 3D image of any format)
  comes back with one channel, `(*S, 1)`.
  """
  path = os.fspath(path)
  if path.lower().endswith((".nii", ".nii.gz")) and os.path.isfile(path):
    array, zooms, affine = _load_nifti(path)
    if array.ndim not in (2, 3, 4):
      raise InputError(f"{path}: expected a 2D, 3D or 4D (channels) NIfTI image, got shape "
                       f"{array.shape}")
    if array.ndim < 4:
      array = array[..., None]
    spatial = array.ndim - 1
    spacing = tuple(float(z) for z in zooms[:spatial][::-1])
    axes = tuple(range(spatial))[::-1] + (spatial,)
    return Volume(np.ascontiguousarray(np.transpose(array, axes)), spacing, affine)
  volume = read_image(path)
  return Volume(volume.array[..., None], volume.spacing, volume.affine)


def read_image(path: PathLike) -> Volume:
  """Reads a NIfTI (.nii/.nii.gz), NRRD (.nrrd), MetaImage (.mha/.mhd) file or DICOM folder.

  A DICOM folder must hold one series of single-frame slices; they are
  sorted by ImagePositionPatient projected on the slice normal and rescaled
  with RescaleSlope/RescaleIntercept (HU for CT). A path to one `.dcm` file
  reads the series of its folder.

  Returns:
    `Volume(array (D, H, W), spacing per array axis in mm, affine 4x4
    voxel (i, j, k) -> RAS world)`; see the module docstring.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    return _read_dicom_series(path)
  if not os.path.exists(path):
    raise InputError(f"{path}: no such file or folder")
  lower = path.lower()
  if lower.endswith((".nii", ".nii.gz")):
    return _read_nifti(path)
  if lower.endswith((".nrrd", ".nhdr")):
    return _read_nrrd(path)
  if lower.endswith((".mha", ".mhd")):
    return _read_metaimage(path)
  if lower.endswith((".dcm", ".dicom")):
    return _read_dicom_series(os.path.dirname(path) or ".")
  raise InputError(f"{path}: unknown image format; expected .nii, .nii.gz, .nrrd, .mha, .mhd "
                   "or a DICOM folder")
