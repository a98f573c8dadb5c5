"""medjax.data.io.dicom_seg: a label volume on a DICOM series written as a DICOM SEG and read back.

`write_ct_series` (also used by tests/test_predict_cli.py) writes a small CT
series with pydicom: oblique in-plane orientation, anisotropic spacing,
RescaleSlope/RescaleIntercept != 1/0 and files named out of slice order.
"""
import os

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medjax.data import io
from medjax.data.io import dicom_seg
from medjax.errors import InputError

CLASSES = ("background", "organ", "tumour")


def write_ct_series(folder, hu: np.ndarray, *, spacing=(2.5, 0.7, 0.8), slope=2.0,
                    intercept=-1024.0, angle_deg=30.0) -> list:
  """Writes `hu` `(D, H, W)` as CT slices in `folder`; returns their SOPInstanceUIDs in
  slice order (array axis 0). Slice `k` sits at `origin + k * spacing[0] * normal`;
  rows run along `(cos a, sin a, 0)`, columns along `(-sin a, cos a, 0)`; file `IM{n}` holds
  slice `order[n]` of a fixed permutation, so readers must sort by position."""
  os.makedirs(folder)
  depth, rows, cols = hu.shape
  study, series, frame = generate_uid(), generate_uid(), generate_uid()
  a = np.deg2rad(angle_deg)
  row, col = np.array([np.cos(a), np.sin(a), 0.0]), np.array([-np.sin(a), np.cos(a), 0.0])
  origin, normal = np.array([-10.0, -20.0, 100.0]), np.cross(row, col)
  uids = [generate_uid() for _ in range(depth)]
  for n, k in enumerate(np.random.default_rng(0).permutation(depth)):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, uids[k]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uids[k]
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "P1", "", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20261126", "120000", "1"
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, int(k) + 1
    ds.Rows, ds.Columns = rows, cols
    ds.PixelSpacing = [spacing[1], spacing[2]]  # (row spacing, column spacing)
    ds.ImageOrientationPatient = [*row, *col]
    ds.ImagePositionPatient = [float(v) for v in origin + spacing[0] * k * normal]
    ds.SliceThickness = spacing[0]
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.round((hu[k] - intercept) / slope).astype("<u2").tobytes()
    ds.save_as(os.path.join(folder, f"IM{n:04d}"), enforce_file_format=True)
  return uids


@pytest.fixture(scope="module")
def series(tmp_path_factory):
  hu = np.round(np.random.default_rng(1).normal(0, 30, (5, 12, 10))) * 2
  folder = str(tmp_path_factory.mktemp("ct") / "series")
  return folder, write_ct_series(folder, hu), hu


def _labels(shape):
  labels = np.zeros(shape, np.uint8)
  labels[0:3, 2:7, 3:8] = 1  # asymmetric along every axis: a flipped mapping cannot pass
  labels[3, 4:6, 5:7] = 2
  return labels


def test_source_datasets_follow_the_array_order_of_read_image(series):
  folder, uids, hu = series
  volume = io.read_image(folder)
  np.testing.assert_array_equal(volume.array, hu)  # rescaled, sorted: the series is what we think
  assert [d.SOPInstanceUID for d in dicom_seg.source_datasets(folder)] == uids


def test_segmentation_reads_back_with_the_masks_and_the_source_references(series, tmp_path):
  folder, uids, hu = series
  labels = _labels(hu.shape)
  path = dicom_seg.write_segmentation(str(tmp_path / "seg.dcm"), labels, folder, CLASSES)
  seg = hd.seg.segread(path)
  assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
  assert seg.SegmentationType == "BINARY"
  assert [s.SegmentLabel for s in seg.SegmentSequence] == ["organ", "tumour"]
  assert [s.SegmentNumber for s in seg.SegmentSequence] == [1, 2]
  assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Neoplasm"
  source = pydicom.dcmread(os.path.join(folder, "IM0000"))
  assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
  assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == "P1"
  referenced = seg.ReferencedSeriesSequence[0]
  assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
  assert sorted(i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence) == sorted(uids)
  masks = seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2], combine_segments=False)
  assert masks.shape == (5, 12, 10, 2)
  np.testing.assert_array_equal(masks[..., 0], labels == 1)
  np.testing.assert_array_equal(masks[..., 1], labels == 2)
  # every frame sits where the slice it was derived from sits (empty frames omitted: 3 + 1)
  positions = {d.SOPInstanceUID: np.asarray(d.ImagePositionPatient, float)
               for d in dicom_seg.source_datasets(folder)}
  assert seg.NumberOfFrames == 4
  for frame in seg.PerFrameFunctionalGroupsSequence:
    uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
    np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient, positions[uid])


def test_an_empty_prediction_is_still_a_valid_segmentation(series, tmp_path):
  folder, uids, hu = series
  path = dicom_seg.write_segmentation(str(tmp_path / "seg.dcm"), np.zeros(hu.shape, np.uint8),
                                      folder, CLASSES)
  seg = hd.seg.segread(path)
  masks = seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2], combine_segments=False)
  assert masks.shape == (5, 12, 10, 2) and not masks.any()


def test_labels_that_do_not_fit_the_series_are_one_line_errors(series, tmp_path):
  folder, _, hu = series
  with pytest.raises(InputError, match=r"shape \(5, 10, 12\) do not match the DICOM series"):
    dicom_seg.write_segmentation(str(tmp_path / "a.dcm"), np.zeros((5, 10, 12), np.uint8),
                                 folder, CLASSES)
  with pytest.raises(InputError, match="label 3 has no class name"):
    dicom_seg.write_segmentation(str(tmp_path / "b.dcm"), np.full(hu.shape, 3, np.uint8),
                                 folder, CLASSES)
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "IM0000").write_bytes(b"not dicom")
  with pytest.raises(InputError, match="IM0000: not a readable DICOM image slice"):
    dicom_seg.source_datasets(str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "a.dcm") and not os.path.exists(tmp_path / "b.dcm")


def test_segment_codes():
  assert dicom_seg.segment_codes("tumour")[1].meaning == "Neoplasm"
  assert dicom_seg.segment_codes("liver")[1].meaning == "Liver"
  assert dicom_seg.segment_codes("organ")[0].meaning == "Anatomical Structure"
  assert dicom_seg.segment_codes("fat")[1].meaning == "Tissue"
