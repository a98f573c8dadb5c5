r"""Segment volumes with a trained workdir (an ordinary run or a cascade).

  python -m experiments.predict --workdir=runs/unet3d --input=scans/ --output=segs/ \
      [--mirror] [--probabilities] [--uncertainty [--samples=20]] [--format=nifti|dicom-seg]
      [--postprocess | --nopostprocess]

`--input` is one NIfTI (.nii/.nii.gz), NRRD (.nrrd/.nhdr) or MetaImage
(.mha/.mhd) file, one DICOM series folder (a folder whose files are DICOM
slices), or a folder searched recursively for such files and series; the
outputs keep the input tree's sub-folders. For each case `<case>` (the file
name without its extension, or the DICOM folder's name) it writes
`DIR/<case>_seg.nii.gz` (uint8 labels, the input's shape and affine, so it
overlays the input), `DIR/<case>.json` (input, shape, spacing, volume in mL
and voxel count of each class, read/predict/write seconds) and, with
`--probabilities`, `DIR/<case>_probs.nii.gz` (softmax, 4D: the input's voxel
axes then the class axis; 2 bytes per value, uint16 with a NIfTI scale factor,
as NIfTI has no float16). With `--format=dicom-seg`, a DICOM series case also
gets `DIR/<case>_seg.dcm`, a DICOM Segmentation (one segment per foreground
class, referencing the source series) that a PACS viewer overlays. With
`--uncertainty` it also
writes `DIR/<case>_entropy.nii.gz` (float32 predictive entropy per voxel, in
nats): MC dropout over `--samples` passes when the run's model has dropout
(`config.model.dropout > 0`), otherwise the entropy of the deterministic
prediction; each case's output line says which. For a run with a preprocessing
plan the map is computed on the plan's grid and resampled back onto the input's
like the probabilities (0 outside the cropped region, a certain background).

Each volume is preprocessed exactly as evaluation does (a run on a folder
dataset: its plan's crop, normalisation and resampling, and back to the
input's grid) and segmented with sliding windows (window `config.patch_size`,
overlap/mode/batch size from `config.eval`); a cascade workdir (`stage1/`,
`stage2/`) is segmented with the cascade rule. `--mirror` averages over flips
of every spatial axis (test-time mirroring); without it, the flips of
`config.eval.mirror_axes` are used, as in evaluation. The labels are then
post-processed with the rules the run kept on its validation split
(`postprocessing.json`, nnU-Net's largest-component and small-component
rules), when it has some; `--nopostprocess` skips them, `--postprocess`
requires them.

A run without a plan (the synthetic runs) does no resampling: a volume whose
voxel spacing differs from the training spacing (`config.spacing`) by more
than 50 % on some axis gets a printed warning and is segmented at its own
spacing (resample it beforehand if the result is poor).

On a terminal a progress bar runs over the cases; redirected, the output
is one line per case. A file that cannot be read (or holds NaN/inf
intensities) gets a one-line `error: <file>: ...`; the other cases still run,
a summary line says how many were skipped and the exit status is 2.
Outputs are written to a temporary name and renamed, so an interrupted run
never leaves a truncated file, and nothing already in `DIR` is deleted.
`--workdir=runs/a,runs/b,runs/c` segments with the deep ensemble of those runs
(Lakshminarayanan et al. 2017; `medjax.inference.run_predictor.load_ensemble`): the mean of
their probabilities, `--uncertainty` its entropy. The members must share classes,
dimensions, input channels and preprocessing plan; an ensemble has no post-processing
rules (`--postprocess` is refused).
The work is done by `medjax.inference.predict_files.predict_folder`.

A detection run (`config.task="detection"`, e.g. `retina_unet_nodules.py`) detects
lesions instead (`medjax.inference.predict_detections`): per case
`DIR/<case>_detections.json` (boxes in voxels and world mm, centres, diameters,
scores, whether each is above the operating threshold the run chose on its
validation split) and one `DIR/candidates.csv` in the LUNA16 format
(`seriesuid,coordX,coordY,coordZ,probability`, LPS mm); `--boxes_nifti` also
writes `DIR/<case>_boxes.nii.gz` (the boxes above the threshold, numbered).
"""
from __future__ import annotations

import sys

from absl import app, flags, logging

from experiments import cli
from medjax.errors import InputError
from medjax.inference import predict_detections, predict_files
from medjax.train.workdir import Workdir

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Workdir of a trained run (or of a cascade); several, "
                    "comma-separated, segment with their deep ensemble.")
flags.DEFINE_string("input", None, "Image file, DICOM series folder, or a folder searched "
                    "recursively for images and DICOM series.")
flags.DEFINE_string("output", None, "Folder for <case>_seg.nii.gz, <case>.json (and the optional "
                    "outputs), in the input's sub-folders.")
flags.DEFINE_bool("mirror", False, "Test-time mirroring over every spatial axis.")
flags.DEFINE_bool("probabilities", False, "Also write <case>_probs.nii.gz (last axis = class; "
                  "uint16 scaled to [0, 1] by the NIfTI scl_slope: 2 bytes per value).")
flags.DEFINE_bool("uncertainty", False, "Also write <case>_entropy.nii.gz (MC dropout when the "
                  "model has dropout, else the entropy of the deterministic prediction).")
flags.DEFINE_integer("samples", 20, "MC-dropout passes for --uncertainty.")
flags.DEFINE_bool("postprocess", None, "Apply the run's post-processing rules "
                  "(postprocessing.json). Default: when the workdir has them.")
flags.DEFINE_enum("format", "nifti", predict_files.FORMATS, "nifti: NIfTI outputs; dicom-seg: also a "
                  "DICOM Segmentation <case>_seg.dcm for each DICOM series input.")
flags.DEFINE_bool("boxes_nifti", False, "Detection runs: also write <case>_boxes.nii.gz (the "
                  "boxes above the operating threshold, box i filled with i).")
flags.mark_flags_as_required(["workdir", "input", "output"])


def is_detection_run(workdir: str) -> bool:
  """One workdir whose run is a detection task (a comma-separated list is an ensemble of
  segmentation runs)."""
  if "," in workdir:
    return False
  return Workdir(workdir).read_config_json().get("task") == "detection"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:  # orbax logs at INFO
    logging.set_verbosity(logging.WARNING)
  try:
    if is_detection_run(FLAGS.workdir):
      failed = predict_detections.predict_folder(FLAGS.workdir, FLAGS.input, FLAGS.output,
                                                 mirror=FLAGS.mirror,
                                                 boxes_nifti=FLAGS.boxes_nifti)
    else:
      failed = predict_files.predict_folder(
          FLAGS.workdir, FLAGS.input, FLAGS.output, mirror=FLAGS.mirror,
          probabilities=FLAGS.probabilities, uncertainty=FLAGS.uncertainty,
          samples=FLAGS.samples, postprocess=FLAGS.postprocess, output_format=FLAGS.format)
  except InputError as e:
    cli.exit_with_error(e)
  if failed:
    sys.exit(cli.EXIT_BAD_INPUT)


if __name__ == "__main__":
  cli.run(main)
