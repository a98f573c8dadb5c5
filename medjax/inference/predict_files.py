"""Segment image files and DICOM series with a trained run (an ordinary run or a cascade).

`find_inputs` collects the cases under a path: NIfTI, NRRD and MetaImage files
and DICOM series folders (a folder whose files are DICOM slices is one case),
searched recursively. For each case `<case>` (the file name without its
extension, or the DICOM folder's name) `predict_folder` writes, in the
output folder's copy of the case's sub-folder:

* `<case>_seg.nii.gz`: uint8 labels with the input's shape and affine, so it
  overlays the input;
* with `probabilities`, `<case>_probs.nii.gz`: the class probabilities, 4D
  (the input's voxel axes, then the class axis), stored in 2 bytes per value
  as uint16 with a NIfTI scale factor (`scl_slope`): NIfTI has no float16
  type, and this halves the size of float32 with an error below 1e-5 (readers
  such as nibabel apply the scale and return floats);
* with `entropy`, `<case>_entropy.nii.gz`: float32 predictive entropy per
  voxel, nats (MC dropout when the run's model has dropout, otherwise the
  entropy of the deterministic prediction; `uncertainty_source`);
* with `dicom_seg` and a DICOM series input, `<case>_seg.dcm`: a DICOM
  Segmentation of the labels referencing the source series
  (`medjax.data.io.dicom_seg`);
* `<case>.json`: the input path, shape, spacing, the volume (mL) and voxel
  count of each class (after post-processing), the post-processing rules
  applied, and the read / predict / postprocess / write seconds.

The model side (the run's preprocessing plan and the way back to the
input's grid, normalisation as in evaluation, sliding windows, mirroring, the
cascade rule, MC dropout) is `medjax.inference.run_predictor`'s
(`RunPredictor.predict_volume`); the labels are then post-processed with the
rules the run kept on its validation split (`medjax.postprocess`), when it
has any. This module finds the cases, reads them, checks them and writes the
results.

A run without a plan (the synthetic runs) segments a volume at its own
spacing: one whose voxel spacing differs from the training spacing by more
than `SPACING_TOLERANCE` on some axis gets a warning. A case that cannot be
read or segmented gets a one-line `error: <file>: ...` and the other cases
still run. Outputs are
written through `medjax.train.workdir.atomic_write`, so an interrupted run
never leaves a truncated file, and nothing already in the output folder is
deleted.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np

import medjax
from medjax import inference
from medjax.data import io
from medjax.data.io import dicom_seg
from medjax.errors import InputError
from medjax.inference.run_predictor import RunPredictor, has_dropout, load_ensemble, load_predictor
from medjax.postprocess import apply as apply_rules
from medjax.train.workdir import Workdir, atomic_write, atomic_write_json

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
SPACING_TOLERANCE = 1.5  # warn when a spacing is more than 1.5x off the training spacing
SEG_SUFFIX = "_seg.nii.gz"
PROBS_SUFFIX = "_probs.nii.gz"
ENTROPY_SUFFIX = "_entropy.nii.gz"
DICOM_SEG_SUFFIX = "_seg.dcm"
SUMMARY_SUFFIX = ".json"
FORMATS = ("nifti", "dicom-seg")

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


def is_dicom_file(path: str) -> bool:
  """A file that may be a DICOM slice: a `.dcm`/`.dicom`/`.ima` name, or the
  DICOM Part 10 marker `DICM` at byte 128 (scanners' `IM0001` files without
  extension have it; a `README` next to NIfTI files does not)."""
  base = os.path.basename(path).lower()
  if base.endswith(DICOM_SUFFIXES):
    return True
  if base == "dicomdir":
    return False
  try:
    with open(path, "rb") as handle:
      return handle.read(132)[128:] == b"DICM"
  except OSError:
    return False


def find_inputs(path: str, *, skip: Sequence[str] = ()) -> list[str]:
  """The cases under `path`, searched recursively: image files (by extension)
  and DICOM series folders (folders holding DICOM slices, `is_dicom_file`).

  `path` itself may be one image file, one DICOM series folder, or one
  file of a series (the case is then its folder). Hidden
  files and folders, other files (`notes.txt`) and the folders in `skip`
  (e.g. an output folder inside the input tree) are ignored. Order: a
  folder's image files, then the folder itself if it is a series, then its
  sub-folders, each sorted by name.

  Raises:
    InputError: `path` does not exist or holds no case.
  """
  if os.path.isfile(path):
    if not path.lower().endswith(IMAGE_SUFFIXES) and is_dicom_file(path):
      return [os.path.dirname(path) or "."]  # one slice names its series
    return [path]
  if not os.path.isdir(path):
    raise InputError(f"--input={path}: no such file or folder")
  skipped = {os.path.realpath(s) for s in skip}
  cases = []
  for folder, subfolders, files in os.walk(path):
    subfolders[:] = sorted(d for d in subfolders if not d.startswith(".")
                           and os.path.realpath(os.path.join(folder, d)) not in skipped)
    files = sorted(f for f in files if not f.startswith("."))
    cases += [os.path.join(folder, f) for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
    if any(is_dicom_file(os.path.join(folder, f)) for f in files
           if not f.lower().endswith(IMAGE_SUFFIXES)):
      cases.append(folder)
  if not cases:
    raise InputError(f"--input={path}: no image files or DICOM series in the folder")
  return cases


def output_folder(case: str, input_path: str, output: str) -> str:
  """Where a case's outputs go: `output`, plus the case's sub-folder relative
  to `input_path` (so cases with the same name in different folders do not
  collide)."""
  if os.path.normpath(case) == os.path.normpath(input_path) or not os.path.isdir(input_path):
    return output
  relative = os.path.relpath(os.path.dirname(os.path.normpath(case)), input_path)
  return os.path.normpath(os.path.join(output, relative))


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


def class_volumes(labels: np.ndarray, spacing: Sequence[float],
                  class_names: Sequence[str]) -> dict:
  """`{"voxel_volume_ml", "voxels": {class: count}, "volume_ml": {class: mL}}`
  of integer `labels` `(*S)` with voxel `spacing` (mm per axis): a class's
  volume is its voxel count times the voxel volume (product of the spacing,
  mm^3 / 1000 = mL)."""
  voxel_ml = float(np.prod(np.asarray(spacing, np.float64))) / 1000.0
  counts = np.bincount(np.asarray(labels).ravel(), minlength=len(class_names))
  names = list(class_names) + [f"class_{k}" for k in range(len(class_names), counts.size)]
  return {"voxel_volume_ml": voxel_ml,
          "voxels": {n: int(c) for n, c in zip(names, counts)},
          "volume_ml": {n: float(c) * voxel_ml for n, c in zip(names, counts)}}


def predict_case(predictor: RunPredictor, path: str, output: str, *, probabilities: bool = False,
                 entropy: bool = False, rules: Optional[tuple] = None, dicom_seg_out: bool = False,
                 algorithm: str = "medjax", warn: Log = _stderr) -> dict:
  """Reads, checks, segments and writes one case; returns its summary.

  Args:
    predictor: from `medjax.inference.run_predictor.load_predictor`.
    path: an image file or a DICOM series folder.
    output: the folder for `<case>_seg.nii.gz`, `<case>.json` (and the
      optional outputs, see the module docstring).
    probabilities: also write the class probabilities.
    entropy: also write the predictive entropy map (`predictor.predict_uncertainty`;
      a run without a preprocessing plan only).
    rules: post-processing rules (`Workdir.read_postprocessing_rules`) applied
      to the labels; None or () for none. The probabilities are the model's.
    dicom_seg_out: also write `<case>_seg.dcm` when `path` is a DICOM series
      (a warning on `warn` otherwise).
    algorithm: the algorithm name recorded in the DICOM SEG (e.g. the run).
    warn: receives the warnings (spacing, no DICOM SEG), if any.
  Returns:
    The dict written to `<case>.json`: `input`, `shape`, `spacing`,
    `voxel_volume_ml`, `voxels` and `volume_ml` per class, `postprocess`
    (the rules applied), `seconds` (`read`, `predict`, `postprocess`, `write`)
    and `outputs` (the paths written, the JSON last).
  Raises:
    InputError naming `path`: unreadable, NaN/inf, wrong dimensions or channels.
  """
  name = case_name(path)
  start = time.perf_counter()
  # a multi-channel run reads the 4th NIfTI axis as channels (multi-modal MR)
  volume = io.read_image(path) if predictor.in_channels == 1 else io.read_image_channels(path)
  seconds = {"read": time.perf_counter() - start}
  if not predictor.has_plan:
    warning = spacing_warning(path, volume.spacing, predictor.spacing)
    if warning:
      warn(warning)
  start = time.perf_counter()
  if entropy:
    labels, probs, maps = predictor.predict_volume_uncertainty(volume, name=path)
  else:
    # one pass: for a cascade the labels follow the cascade rule, not the argmax
    labels, probs = predictor.predict_volume(volume, name=path)
  seconds["predict"] = time.perf_counter() - start
  start = time.perf_counter()
  labels = apply_rules(labels, rules, volume.spacing)
  seconds["postprocess"] = time.perf_counter() - start
  start = time.perf_counter()
  images = [(SEG_SUFFIX, labels, {})]
  if probabilities:
    images.append((PROBS_SUFFIX, probs, {"channels": True, "dtype": np.uint16}))
  if entropy:
    images.append((ENTROPY_SUFFIX, maps["entropy"].astype(np.float32), {}))
  written = []
  os.makedirs(output, exist_ok=True)  # a case's sub-folder, once there is something to write
  for suffix, array, options in images:
    written.append(os.path.join(output, name + suffix))
    with atomic_write(written[-1]) as tmp:
      io.write_nifti(tmp, array, volume.affine, **options)
  if dicom_seg_out and os.path.isdir(path):
    written.append(os.path.join(output, name + DICOM_SEG_SUFFIX))
    with atomic_write(written[-1]) as tmp:
      dicom_seg.write_segmentation(tmp, labels, path, predictor.class_names, algorithm=algorithm,
                                   version=medjax.__version__,
                                   series_description=f"{algorithm} segmentation")
  elif dicom_seg_out:
    warn(f"warning: {path}: not a DICOM series; no DICOM SEG written (NIfTI only)")
  seconds["write"] = time.perf_counter() - start
  summary = {"case": name, "input": os.path.abspath(path), "shape": list(labels.shape),
             "spacing": [float(s) for s in volume.spacing],
             **class_volumes(labels, volume.spacing, predictor.class_names),
             "postprocess": [rule.to_json() for rule in rules or ()],
             "seconds": seconds, "outputs": written + [os.path.join(output, name + SUMMARY_SUFFIX)]}
  atomic_write_json(summary["outputs"][-1], summary)
  return summary


def uncertainty_source(config, samples: int) -> tuple[str, str]:
  """`(method, description)` of `--uncertainty` for a run's config: MC dropout
  (`samples` passes) when its model has dropout, else the entropy of the
  deterministic prediction."""
  if has_dropout(config):
    return "mc_dropout", f"MC dropout, {samples} samples"
  return "none", "entropy of the deterministic prediction (the model has no dropout)"


class _Progress:
  """A tqdm bar over the cases on a terminal; without one, nothing (the
  per-case lines are the progress). Lines printed while the bar is shown go
  above it (`tqdm.external_write_mode`)."""

  def __init__(self, total: int, show: bool):
    self.bar = self.window_bar = None
    if show:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm(total=total, unit="case", file=sys.stderr, dynamic_ncols=True)
      # Second line: the windows of the sliding window running now (a cascade runs two).
      self.window_bar = tqdm(total=0, unit="window", file=sys.stderr, dynamic_ncols=True,
                             position=1, leave=False)

  def windows(self, done: int, total: int) -> None:
    """`medjax.inference.window_progress` callback: `done` of `total` windows."""
    if self.window_bar is None:
      return
    if total != self.window_bar.total or done < self.window_bar.n:  # a new sliding window
      self.window_bar.reset(total=total)
    self.window_bar.update(done - self.window_bar.n)

  def emit(self, log: Log, text: str) -> None:
    if self.bar is None:
      log(text)
      return
    with self.bar.external_write_mode(file=sys.stderr):
      log(text)

  def start(self, case: str) -> None:
    if self.bar is not None:
      self.bar.set_postfix_str(case)

  def step(self) -> None:
    if self.bar is not None:
      self.bar.update(1)

  def close(self) -> None:
    if self.bar is not None:
      self.window_bar.close()
      self.bar.close()


def ensemble_members(workdir) -> list[str]:
  """The workdirs of `workdir`: one path, a comma-separated list (`--workdir=a,b,c`), or
  a sequence of paths."""
  if isinstance(workdir, (list, tuple)):
    return [os.fspath(w) for w in workdir]
  return [w for w in os.fspath(workdir).split(",") if w]


def predict_folder(workdir, input_path: str, output: str, *, mirror: bool = False,
                   probabilities: bool = False, uncertainty: bool = False, samples: int = 20,
                   postprocess: Optional[bool] = None, output_format: str = "nifti",
                   progress: Optional[bool] = None, log: Log = _stdout,
                   error: Log = _stderr) -> int:
  """Segments every case under `input_path` with the run in `workdir` into `output`.

  `workdir` may name several runs (a comma-separated string or a sequence): their deep
  ensemble (`load_ensemble`, Lakshminarayanan et al. 2017: the mean of the members'
  probabilities; with `uncertainty`, the entropy of that mean). An ensemble has no
  post-processing rules of its own (each member's were decided on its own predictions):
  `postprocess=True` is refused, None applies none.

  With `uncertainty`, also `<case>_entropy.nii.gz` (see `uncertainty_source`;
  the log line of each case says which entropy it is). `postprocess`: None
  applies the workdir's post-processing rules if it has some (a run evaluated
  with `config.eval.postprocess`), True requires them, False applies none.
  With `output_format` "dicom-seg", a DICOM series case also gets
  `<case>_seg.dcm`.

  One line per case on `log` (`<input> -> <outputs>`) and a summary (cases
  done and skipped, post-processing rules applied); one
  `error: <file>: ...` line per skipped case on `error` (a bad case does not
  stop the others; two inputs with the same case name in one folder are not
  both written). `progress` (default: stderr is a terminal) shows a tqdm bar
  over the cases.

  Returns:
    The number of skipped cases.
  Raises:
    InputError: no inputs, a bad workdir, format or output folder, or
      `postprocess=True` for a workdir without rules (or an ensemble); raised before
      any case is read.
  """
  if output_format not in FORMATS:
    raise InputError(f"--format={output_format}: expected one of {', '.join(FORMATS)}")
  members = ensemble_members(workdir)
  if not members:
    raise InputError(f"--workdir={workdir!r}: expected a trained run's workdir")
  inputs = find_inputs(input_path, skip=[output])
  if uncertainty and int(samples) < 1:
    raise InputError(f"--samples={samples}: expected at least 1")
  if len(members) > 1:
    if postprocess:
      raise InputError(f"--postprocess: an ensemble of {len(members)} runs has no "
                       "post-processing rules (each member's were decided on its own "
                       "validation predictions)")
    predictor = load_ensemble(members, mirror=mirror)
    rules = None
    source = f"deep ensemble of {len(members)} runs, entropy of their mean"
  else:
    workdir, options, source = members[0], {}, ""
    if uncertainty:
      method, source = uncertainty_source(Workdir(workdir).read_config(), int(samples))
      options = {"uncertainty_method": method, "samples": int(samples)}
    predictor = load_predictor(workdir, mirror=mirror, **options)
    rules = None if postprocess is False else Workdir.of(workdir).read_postprocessing_rules()
    if postprocess and rules is None:
      raise InputError(f"--postprocess: {workdir} has no post-processing rules "
                       "(postprocessing.json is written when the run is evaluated with "
                       "config.eval.postprocess on)")
  try:
    os.makedirs(output, exist_ok=True)
  except OSError as e:
    raise InputError(f"--output={output}: cannot create the folder ({e})") from None
  algorithm = "medjax " + ", ".join(os.path.basename(os.path.normpath(m)) for m in members)
  names: dict[str, str] = {}
  failed = 0
  bar = _Progress(len(inputs), sys.stderr.isatty() if progress is None else progress)
  for path in inputs:
    folder = output_folder(path, input_path, output)
    key = os.path.join(folder, case_name(path))
    bar.start(case_name(path))
    try:
      if key in names:
        raise InputError(f"{path}: same case name {case_name(path)!r} as {names[key]}; "
                         "rename one of them")
      names[key] = path
      with inference.window_progress(bar.windows):
        summary = predict_case(predictor, path, folder, probabilities=probabilities,
                               entropy=uncertainty, rules=rules,
                               dicom_seg_out=output_format == "dicom-seg",
                               algorithm=algorithm, warn=lambda text: bar.emit(error, text))
    except Exception as e:  # pylint: disable=broad-except  # one bad case must not stop the rest
      message = str(e) if isinstance(e, InputError) else f"{path}: {type(e).__name__}: {e}"
      bar.emit(error, f"error: {message}".splitlines()[0])
      failed += 1
    else:
      bar.emit(log, f"{path} -> {', '.join(summary['outputs'])}"
               + (f" (entropy: {source})" if uncertainty else ""))
    bar.step()
  bar.close()
  log(f"segmented {len(inputs) - failed} of {len(inputs)} case(s) into {output}"
      + (f"; skipped {failed} (see the error lines)" if failed else "")
      + (f"; post-processing: {len(rules)} rule(s) of {Workdir.of(workdir).postprocessing_path}"
         if rules else ""))
  return failed
