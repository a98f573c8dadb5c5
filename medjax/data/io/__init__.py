"""Medical image files: reading and writing volumes, DICOM Segmentation output.

* `images`: `read_image` (NIfTI, NRRD, MetaImage, DICOM folder) -> `Volume(array,
  spacing, affine)`, `read_image_channels` (4D NIfTI channels-last), `write_nifti`;
  re-exported here, so `medjax.data.io.read_image` is the public name.
* `dicom_seg`: `write_segmentation`, labels predicted on a DICOM series written as
  a DICOM Segmentation referencing it (highdicom), for PACS viewers.
"""
from medjax.data.io.images import Volume, read_image, read_image_channels, write_nifti

__all__ = ["Volume", "read_image", "read_image_channels", "write_nifti"]
