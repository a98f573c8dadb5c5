"""Segment image files and DICOM series with a trained run (an ordinary run or a cascade).

For each case `<case>` (the file name without its extension, or the DICOM
folder's name) `predict_folder` writes `<case>_seg.nii.gz` (uint8 labels, the
input's shape and affine, so it overlays the input) and, when asked,
`<case>_probs.nii.gz` (float32 class probabilities, 4D: the input's voxel
axes then the class axis) and `<case>_entropy.nii.gz` (float32 predictive
entropy per voxel, nats: MC dropout when the run's model has dropout,
otherwise the entropy of the deterministic prediction; `uncertainty_source`).
The model side (normalisation as in evaluation, sliding windows, mirroring,
the cascade rule, MC dropout) is `medjax.train.predictor`'s;
this module finds the cases, reads them, checks them and writes the results.

No resampling is done: a volume whose voxel spacing differs from the training
spacing by more than `SPACING_TOLERANCE` on some axis gets a warning and is
segmented at its own spacing. A case that cannot be read or segmented gets a
one-line `error: <file>: ...` and the other cases still run. Outputs are
written through `medjax.train.workdir.atomic_write`, so an interrupted run
never leaves a truncated file, and nothing already in the output folder is
deleted.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence

import numpy as np

from medjax.data import io
from medjax.errors import InputError
from medjax.train.predictor import RunPredictor, has_dropout, load_predictor
from medjax.train.workdir import Workdir, atomic_write

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom")
SPACING_TOLERANCE = 1.5  # warn when a spacing is more than 1.5x off the training spacing
SEG_SUFFIX = "_seg.nii.gz"
PROBS_SUFFIX = "_probs.nii.gz"
ENTROPY_SUFFIX = "_entropy.nii.gz"

Log = Callable[[str], None]


def _stdout(text: str) -> None:
  print(text, flush=True)


def _stderr(text: str) -> None:
  print(text, file=sys.stderr, flush=True)


def case_name(path: str) -> str:
  """`scan.nii.gz` -> `scan`; a DICOM folder -> its name."""
  base = os.path.basename(os.path.normpath(path))
  for suffix in IMAGE_SUFFIXES + DICOM_SUFFIXES:
    if base.lower().endswith(suffix):
      return base[:-len(suffix)]
  return base


def find_inputs(path: str) -> list[str]:
  """The cases under `path`: one file, one DICOM folder, or a folder's images and sub-folders.

  A folder with image files (by extension) or sub-folders is a folder of
  cases (other files in it are ignored); a folder with neither is one DICOM
  series.
  """
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


def predict_case(predictor: RunPredictor, path: str, output: str, *, probabilities: bool = False,
                 entropy: bool = False, warn: Log = _stderr) -> list[str]:
  """Reads, checks, segments and writes one case; returns the paths written.

  Args:
    predictor: from `medjax.train.predictor.load_predictor`.
    path: an image file or a DICOM series folder.
    output: the folder for `<case>_seg.nii.gz` (and `<case>_probs.nii.gz`).
    probabilities: also write the class probabilities.
    entropy: also write the predictive entropy map (`predictor.predict_uncertainty`).
    warn: receives the spacing warning, if any.
  Raises:
    InputError naming `path`: unreadable, NaN/inf, wrong dimensions or channels.
  """
  volume = io.read_image(path)
  warning = spacing_warning(path, volume.spacing, predictor.spacing)
  if warning:
    warn(warning)
  if entropy:
    labels, probs, maps = predictor.predict_uncertainty(volume.array, name=path)
  else:
    # one pass: for a cascade the labels follow the cascade rule, not the argmax
    labels, probs = predictor.predict(volume.array, name=path)
  outputs = [(case_name(path) + SEG_SUFFIX, labels, False)]
  if probabilities:
    outputs.append((case_name(path) + PROBS_SUFFIX, probs, True))
  if entropy:
    outputs.append((case_name(path) + ENTROPY_SUFFIX, maps["entropy"].astype(np.float32), False))
  written = []
  for name, array, channels in outputs:
    written.append(os.path.join(output, name))
    with atomic_write(written[-1]) as tmp:
      io.write_nifti(tmp, array, volume.affine, channels=channels)
  return written


def uncertainty_source(config, samples: int) -> tuple[str, str]:
  """`(method, description)` of `--uncertainty` for a run's config: MC dropout
  (`samples` passes) when its model has dropout, else the entropy of the
  deterministic prediction."""
  if has_dropout(config):
    return "mc_dropout", f"MC dropout, {samples} samples"
  return "none", "entropy of the deterministic prediction (the model has no dropout)"


def predict_folder(workdir: str, input_path: str, output: str, *, mirror: bool = False,
                   probabilities: bool = False, uncertainty: bool = False, samples: int = 20,
                   log: Log = _stdout, error: Log = _stderr) -> int:
  """Segments every case under `input_path` with the run in `workdir` into `output`.

  With `uncertainty`, also `<case>_entropy.nii.gz` (see `uncertainty_source`;
  the log line of each case says which entropy it is).

  One line per case on `log` (`<input> -> <outputs>`) and a summary; one
  `error: <file>: ...` line per failed case on `error` (a bad case does not
  stop the others; two inputs with the same case name are not both written).

  Returns:
    The number of failed cases.
  Raises:
    InputError: no inputs, a bad workdir, or an output folder that cannot be
      created; raised before any case is read.
  """
  inputs = find_inputs(input_path)
  options, source = {}, ""
  if uncertainty:
    if int(samples) < 1:
      raise InputError(f"--samples={samples}: expected at least 1")
    method, source = uncertainty_source(Workdir(workdir).read_config(), int(samples))
    options = {"uncertainty_method": method, "samples": int(samples)}
  predictor = load_predictor(workdir, mirror=mirror, **options)
  try:
    os.makedirs(output, exist_ok=True)
  except OSError as e:
    raise InputError(f"--output={output}: cannot create the folder ({e})") from None
  names: dict[str, str] = {}
  failed = 0
  for path in inputs:
    name = case_name(path)
    if name in names:
      error(f"error: {path}: same case name {name!r} as {names[name]}; rename one of them")
      failed += 1
      continue
    names[name] = path
    try:
      written = predict_case(predictor, path, output, probabilities=probabilities,
                             entropy=uncertainty, warn=error)
    except Exception as e:  # pylint: disable=broad-except  # one bad case must not stop the rest
      message = str(e) if isinstance(e, InputError) else f"{path}: {type(e).__name__}: {e}"
      error(f"error: {message}".splitlines()[0])
      failed += 1
      continue
    log(f"{path} -> {', '.join(written)}" + (f" (entropy: {source})" if uncertainty else ""))
  log(f"segmented {len(inputs) - failed} of {len(inputs)} case(s) into {output}")
  return failed
