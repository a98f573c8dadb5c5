r"""Segment volumes with a trained workdir.

  python -m experiments.predict --workdir=runs/unet3d --input=scans/ --output=segs/ \
      [--mirror] [--probabilities]

`--input` is one NIfTI (.nii/.nii.gz), NRRD (.nrrd/.nhdr) or MetaImage
(.mha/.mhd) file, one DICOM series folder, or a folder of such files and
DICOM series sub-folders. For each case `<case>` (the file name without its
extension, or the DICOM folder's name) it writes `DIR/<case>_seg.nii.gz`
(uint8 labels, the input's shape and affine, so it overlays the input) and,
with `--probabilities`, `DIR/<case>_probs.nii.gz` (float32 softmax, 4D: the
input's voxel axes then the class axis).

Each volume is preprocessed exactly as evaluation does
(`medjax.data.pipeline.eval_cases`: `medjax.data.transforms.normalize_ct`
with its defaults) and segmented with `medjax.inference.sliding_window`
(window `config.patch_size`, overlap/mode/batch size from `config.eval`).
`--mirror` averages over flips of every spatial axis (test-time mirroring);
without it, the flips of `config.eval.mirror_axes` are used, as in evaluation.

No resampling is done: a volume whose voxel spacing differs from the training
spacing (`config.spacing`) by more than 50 % on some axis gets a printed
warning and is segmented at its own spacing (resample it beforehand if the
result is poor).

A file that cannot be read (or holds NaN/inf intensities) gets a one-line
`error: <file>: ...`; the other cases still run and the exit status is 2.
Outputs are written to a temporary name and renamed, so an interrupted run
never leaves a truncated file, and nothing already in `DIR` is deleted.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from absl import app, flags, logging

FLAGS = flags.FLAGS

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom")
SPACING_TOLERANCE = 1.5  # warn when a spacing is more than 1.5x off the training spacing


def case_name(path: str) -> str:
  """`scan.nii.gz` -> `scan`; a DICOM folder -> its name."""
  base = os.path.basename(os.path.normpath(path))
  for suffix in IMAGE_SUFFIXES + DICOM_SUFFIXES:
    if base.lower().endswith(suffix):
      return base[:-len(suffix)]
  return base


def find_inputs(path: str) -> list[str]:
  """The cases under `--input`: one file, one DICOM folder, or a folder's images and sub-folders.

  A folder with image files (by extension) or sub-folders is a folder of
  cases (other files in it are ignored); a folder with neither is one DICOM
  series.
  """
  from medjax.errors import InputError  # pylint: disable=import-outside-toplevel
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise InputError(f"--input={path}: no such file or folder")
  entries = sorted(e for e in os.listdir(path) if not e.startswith("."))
  images = [os.path.join(path, e) for e in entries
            if os.path.isfile(os.path.join(path, e)) and e.lower().endswith(IMAGE_SUFFIXES)]
  folders = [os.path.join(path, e) for e in entries if os.path.isdir(os.path.join(path, e))]
  if images or folders:
    return images + folders
  if any(os.path.isfile(os.path.join(path, e)) for e in entries):
    return [path]  # a DICOM series
  raise InputError(f"--input={path}: empty folder; expected images or DICOM series")


def spacing_warning(name: str, spacing: Sequence[float],
                    expected: Optional[Sequence[float]]) -> Optional[str]:
  """A warning line when `spacing` is > SPACING_TOLERANCE x off `expected` on some axis."""
  if expected is None or len(expected) != len(spacing):
    return None
  off = [max(s, e) / max(min(s, e), 1e-12) for s, e in zip(spacing, expected)]
  if max(off) <= SPACING_TOLERANCE:
    return None
  fmt = lambda v: "(" + ", ".join(f"{x:g}" for x in v) + ")"
  return (f"warning: {name}: voxel spacing {fmt(spacing)} mm differs from the training spacing "
          f"{fmt(expected)} mm; segmenting without resampling")


def write_probabilities(path: str, probs, affine) -> str:
  """Writes `probs` `(*S, K)` as a 4D NIfTI: voxel axes as `write_nifti` (reversed), then K."""
  import nibabel as nib  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  probs = np.asarray(probs, np.float32)
  spatial = probs.ndim - 1
  data = np.transpose(probs, tuple(range(spatial))[::-1] + (spatial,))
  if spatial == 2:
    data = data[:, :, None, :]
  affine = np.asarray(affine, np.float64)
  image = nib.Nifti1Image(np.ascontiguousarray(data), affine)
  image.header.set_data_dtype(np.float32)
  image.set_qform(affine, code=1)
  image.set_sform(affine, code=1)
  nib.save(image, path)
  return path


def _atomic(write, path: str, *args) -> str:
  """Writes through `<dir>/.<name>.tmp.nii.gz` and renames: no truncated output, ever."""
  tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)[:-len('.nii.gz')]}.tmp.nii.gz")
  try:
    write(tmp, *args)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


class Predictor:
  """The trained run of `workdir`, ready to segment whole volumes."""

  def __init__(self, workdir: str, *, mirror: bool = False):
    import jax  # pylint: disable=import-outside-toplevel
    from medjax.train import restore, step  # pylint: disable=import-outside-toplevel
    self.config, self.model, variables = restore.load_run(workdir)
    self.roi = tuple(int(r) for r in self.config.patch_size)
    ecfg = self.config.eval
    self.mirror_axes = (tuple(range(len(self.roi))) if mirror
                        else tuple(ecfg.get("mirror_axes", ()) or ()))
    predict = step.make_predict_fn(self.model)
    variables = jax.device_put(variables, jax.local_devices()[0])
    self._predict_fn = lambda x: predict(variables, x)

  def probabilities(self, image, name: str):
    """Softmax `(*S, K)` of one raw image `(*S)` (e.g. HU), normalised as in evaluation."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from medjax import inference  # pylint: disable=import-outside-toplevel
    from medjax.data import transforms  # pylint: disable=import-outside-toplevel
    from medjax.errors import InputError  # pylint: disable=import-outside-toplevel
    image = transforms.check_image(image, name)
    if image.ndim != len(self.roi):
      raise InputError(f"{name}: image has shape {image.shape}; the model segments "
                       f"{len(self.roi)}D volumes (config.patch_size={self.roi})")
    if int(self.config.get("in_channels", 1)) != 1:
      raise InputError(f"{name}: the model expects {self.config.in_channels} channels; "
                       "predict reads single-channel images")
    x = transforms.normalize_ct(image)[None, ..., None].astype(np.float32)
    ecfg = self.config.eval
    return inference.sliding_window(
        self._predict_fn, x, self.roi, overlap=float(ecfg.overlap), mode=ecfg.mode,
        batch_size=int(ecfg.batch_size), mirror_axes=self.mirror_axes)[0]


def predict_case(predictor: Predictor, path: str, output: str, *,
                 probabilities: bool = False) -> list[str]:
  """Reads, checks, segments and writes one case; returns the paths written."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from medjax.data import io  # pylint: disable=import-outside-toplevel
  volume = io.read_image(path)
  warning = spacing_warning(path, volume.spacing, predictor.config.get("spacing"))
  if warning:
    print(warning, file=sys.stderr, flush=True)
  probs = predictor.probabilities(volume.array, path)
  name = case_name(path)
  seg = probs.argmax(-1).astype(np.uint8)
  written = [_atomic(io.write_nifti, os.path.join(output, f"{name}_seg.nii.gz"), seg, volume.affine)]
  if probabilities:
    written.append(_atomic(write_probabilities, os.path.join(output, f"{name}_probs.nii.gz"),
                           probs, volume.affine))
  return written


def define_flags() -> None:
  """The command-line flags (defined by `run()`, so that importing this module defines none)."""
  flags.DEFINE_string("workdir", None, "Workdir of a trained run (config.json + checkpoints/).")
  flags.DEFINE_string("input", None, "Image file, DICOM folder, or folder of images / DICOM folders.")
  flags.DEFINE_string("output", None, "Folder for <case>_seg.nii.gz (and <case>_probs.nii.gz).")
  flags.DEFINE_bool("mirror", False, "Test-time mirroring over every spatial axis.")
  flags.DEFINE_bool("probabilities", False, "Also write <case>_probs.nii.gz (float32, last axis = class).")
  flags.mark_flags_as_required(["workdir", "input", "output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from medjax.errors import InputError  # pylint: disable=import-outside-toplevel
  if not FLAGS["verbosity"].present:  # orbax logs at INFO
    logging.set_verbosity(logging.WARNING)
  try:
    inputs = find_inputs(FLAGS.input)
    predictor = Predictor(FLAGS.workdir, mirror=FLAGS.mirror)
    os.makedirs(FLAGS.output, exist_ok=True)
  except (InputError, OSError) as e:
    print(f"error: {e}".splitlines()[0], file=sys.stderr)
    sys.exit(2)
  names: dict[str, str] = {}
  failed = 0
  for path in inputs:
    name = case_name(path)
    if name in names:
      print(f"error: {path}: same case name {name!r} as {names[name]}; rename one of them",
            file=sys.stderr, flush=True)
      failed += 1
      continue
    names[name] = path
    try:
      written = predict_case(predictor, path, FLAGS.output, probabilities=FLAGS.probabilities)
    except InputError as e:
      print(f"error: {e}".splitlines()[0], file=sys.stderr, flush=True)
      failed += 1
      continue
    except Exception as e:  # pylint: disable=broad-except  # one bad case must not stop the rest
      print(f"error: {path}: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr, flush=True)
      failed += 1
      continue
    print(f"{path} -> {', '.join(written)}", flush=True)
  print(f"segmented {len(inputs) - failed} of {len(inputs)} case(s) into {FLAGS.output}", flush=True)
  if failed:
    sys.exit(2)


def run():
  from experiments import cli  # pylint: disable=import-outside-toplevel
  define_flags()
  cli.run_main(main)


if __name__ == "__main__":
  run()
