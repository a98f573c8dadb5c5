"""Medical image I/O: round trips, axis/spacing convention, corrupt files."""
import zlib

import nrrd
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medjax.data import io
from medjax.errors import InputError

SHAPE = (4, 5, 6)  # (D, H, W) = (k, j, i)


def _volume(dtype=np.float32):
  return (np.arange(np.prod(SHAPE)).reshape(SHAPE) * 3 - 20).astype(dtype)


def _affine(spacing_ijk=(0.8, 0.7, 2.5), origin=(10.0, -20.0, 30.0)):
  theta = 0.3  # oblique in-plane rotation
  rotation = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
  affine = np.eye(4)
  affine[:3, :3] = rotation * np.asarray(spacing_ijk)[None, :]
  affine[:3, 3] = origin
  return affine


def test_nifti_round_trip_reverses_axes(tmp_path):
  array, affine = _volume(np.int16), _affine()
  path = io.write_nifti(tmp_path / "ct.nii.gz", array, affine)
  volume = io.read_image(path)
  np.testing.assert_array_equal(volume.array, array)
  assert volume.array.dtype == np.int16
  np.testing.assert_allclose(volume.spacing, (2.5, 0.7, 0.8), rtol=1e-6)
  np.testing.assert_allclose(volume.affine, affine, atol=1e-5)
  import nibabel as nib
  raw = nib.load(path)
  assert raw.shape == SHAPE[::-1]  # file voxel order is (i, j, k)
  assert raw.get_fdata()[1, 2, 3] == array[3, 2, 1]
  # and a second write/read cycle is stable
  again = io.read_image(io.write_nifti(tmp_path / "again.nii", volume.array, volume.affine))
  np.testing.assert_array_equal(again.array, array)


def test_nrrd_lps_is_converted_to_ras(tmp_path):
  array = _volume()
  directions = np.array([[0.8, 0, 0], [0, 0.7, 0], [0, 0, 2.5]])  # rows: axes i, j, k
  header = {"space": "left-posterior-superior", "space directions": directions,
            "space origin": np.array([1.0, 2.0, 3.0])}
  path = str(tmp_path / "ct.nrrd")
  nrrd.write(path, array, header, index_order="C")
  volume = io.read_image(path)
  np.testing.assert_array_equal(volume.array, array)
  np.testing.assert_allclose(volume.spacing, (2.5, 0.7, 0.8))
  np.testing.assert_allclose(volume.affine, [[-0.8, 0, 0, -1.0], [0, -0.7, 0, -2.0],
                                             [0, 0, 2.5, 3.0], [0, 0, 0, 1]])


def _write_mha(path, array, compressed):
  data = array.astype("<i2").tobytes()
  if compressed:
    data = zlib.compress(data)
  header = (
      "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
      f"CompressedData = {'True' if compressed else 'False'}\n"
      + (f"CompressedDataSize = {len(data)}\n" if compressed else "")
      + "TransformMatrix = 0 1 0 -1 0 0 0 0 1\nOffset = 5 6 7\nElementSpacing = 0.8 0.7 2.5\n"
      f"DimSize = {SHAPE[2]} {SHAPE[1]} {SHAPE[0]}\nElementType = MET_SHORT\nElementDataFile = LOCAL\n")
  with open(path, "wb") as handle:
    handle.write(header.encode() + data)
  return str(path)


@pytest.mark.parametrize("compressed", [False, True])
def test_metaimage_round_trip(tmp_path, compressed):
  array = _volume(np.int16)
  volume = io.read_image(_write_mha(tmp_path / "ct.mha", array, compressed))
  np.testing.assert_array_equal(volume.array, array)
  np.testing.assert_allclose(volume.spacing, (2.5, 0.7, 0.8))
  # TransformMatrix lists the direction of axis i first: i -> +y, j -> -x (LPS).
  expected = np.array([[0, 0.7, 0, -5], [-0.8, 0, 0, -6], [0, 0, 2.5, 7], [0, 0, 0, 1]])
  np.testing.assert_allclose(volume.affine, expected)
  # NIfTI written from it carries the same geometry.
  back = io.read_image(io.write_nifti(tmp_path / "from_mha.nii", volume.array, volume.affine))
  np.testing.assert_allclose(back.affine, expected, atol=1e-5)
  np.testing.assert_allclose(back.spacing, volume.spacing, rtol=1e-6)


def _write_dicom_series(folder, array, spacing_z=2.5, slope=2.0, intercept=-1024.0):
  folder.mkdir()
  series = generate_uid()
  order = [2, 0, 3, 1]  # files written out of order: sorting is by position
  for file_index, k in enumerate(order):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series
    ds.Modality = "CT"
    ds.Rows, ds.Columns = array.shape[1], array.shape[2]
    ds.PixelSpacing = [0.7, 0.8]  # row spacing (j), column spacing (i)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-10.0, -20.0, 100.0 + spacing_z * k]
    ds.SliceThickness = spacing_z
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = ((array[k] - intercept) / slope).astype("<u2").tobytes()
    ds.save_as(str(folder / f"IM{file_index:04d}.dcm"), enforce_file_format=True)
  return str(folder)


def test_dicom_series_sorted_rescaled_with_spacing(tmp_path):
  array = (np.arange(np.prod(SHAPE)).reshape(SHAPE) * 2 - 1000).astype(np.int16)
  volume = io.read_image(_write_dicom_series(tmp_path / "series", array))
  np.testing.assert_array_equal(volume.array, array)
  np.testing.assert_allclose(volume.spacing, (2.5, 0.7, 0.8))
  expected = np.array([[-0.8, 0, 0, 10], [0, -0.7, 0, 20], [0, 0, 2.5, 100], [0, 0, 0, 1]])
  np.testing.assert_allclose(volume.affine, expected)


def test_dicom_with_a_corrupt_slice_names_it(tmp_path):
  folder = _write_dicom_series(tmp_path / "series", _volume(np.int16) + 1000)
  bad = tmp_path / "series" / "IM0002.dcm"
  bad.write_bytes(bad.read_bytes()[:200])
  with pytest.raises(InputError, match="IM0002.dcm"):
    io.read_image(folder)


@pytest.mark.parametrize("name,content", [
    ("ct.nii.gz", b"\x1f\x8b definitely not gzip"),
    ("ct.nii", b"x" * 400),
    ("ct.nrrd", b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4 5 6\nencoding: raw\n\n\x00\x01"),
    ("ct.mha", b"ObjectType = Image\nNDims = 3\nDimSize = 4 5 6\nElementType = MET_SHORT\n"
               b"ElementDataFile = LOCAL\n\x00\x01"),
    ("ct.mha", b"garbage without a header"),
    ("ct.png", b"\x89PNG"),
])
def test_corrupt_or_unknown_files_raise_input_error_naming_the_file(tmp_path, name, content):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(InputError) as error:
    io.read_image(path)
  message = str(error.value)
  assert str(path) in message and "\n" not in message


def test_truncated_nifti_and_missing_file(tmp_path):
  path = io.write_nifti(tmp_path / "ct.nii", _volume(), _affine())
  with open(path, "rb") as handle:
    blob = handle.read()
  with open(path, "wb") as handle:
    handle.write(blob[:-50])
  with pytest.raises(InputError, match="ct.nii: not a readable NIfTI"):
    io.read_image(path)
  with pytest.raises(InputError, match="missing.nii.gz: no such file"):
    io.read_image(tmp_path / "missing.nii.gz")
