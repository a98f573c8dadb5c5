"""medjax.inference.restore, medjax.inference.predict_files and experiments.predict on a real (2-step) smoke run."""
import json
import math
import os
import subprocess
import sys

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from test_dicom_seg import write_ct_series

from experiments.configs import unet3d_synthetic
from medjax import inference, postprocess
from medjax.data import io
from medjax.data.phantoms import organ_ct
from medjax.data.pipeline import transforms
from medjax.errors import InputError
from medjax.inference import predict_files, restore
from medjax.inference.run_predictor import load_predictor
from medjax.train import loop
from medjax.train.step import make_predict_fn
from medjax.train.workdir import Workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (16, 32, 32)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
  """A smoke run trained for 2 steps, with BatchNorm (so batch_stats are restored too)."""
  c = unet3d_synthetic.get_config("smoke")
  c.data_dir = data_dir
  c.num_steps = 2
  c.model.norm = "batch"
  c.eval.report_cases = 0
  c.eval.surface_metrics = False
  workdir = str(tmp_path_factory.mktemp("run"))
  loop.train_and_evaluate(c, workdir)
  return workdir


def _affine(shift):
  affine = np.diag([0.8, 0.8, 2.5, 1.0])  # voxel axes (i, j, k) = array axes (W, H, D)
  affine[:3, 3] = [shift, -20.0, 7.5]
  return affine


DICOM_SPACING = (3.0, 0.7, 0.8)  # slice distance, row spacing, column spacing (mm)


@pytest.fixture(scope="module")
def predicted(run_dir, tmp_path_factory):
  """`experiments.predict --probabilities --format=dicom-seg` over a tree with two good
  volumes, a corrupt file, a DICOM CT series two folders down (6 slices of 24x28, oblique,
  RescaleSlope 2, RescaleIntercept -1200) and a folder whose one DICOM file is corrupt."""
  folder = tmp_path_factory.mktemp("inputs")
  images = {}
  for seed in (0, 1):
    image, _ = organ_ct.make_volume(seed, shape=SHAPE)
    io.write_nifti(folder / f"case{seed}.nii.gz", image, _affine(10.0 * seed))
    images[f"case{seed}"] = image
  (folder / "broken.nii.gz").write_bytes(b"not a nifti file")
  (folder / "notes.txt").write_text("ignored")
  hu = np.round(organ_ct.make_volume(3, shape=(8, 24, 28))[0][1:7] / 2) * 2
  series = folder / "patient1" / "ct"
  uids = write_ct_series(str(series), hu, spacing=DICOM_SPACING, slope=2.0, intercept=-1200.0)
  (folder / "patient2" / "ct").mkdir(parents=True)
  (folder / "patient2" / "ct" / "IM0000").write_bytes(b"\0" * 128 + b"DICM truncated")
  output = tmp_path_factory.mktemp("outputs")
  (output / "keep.nii.gz").write_bytes(b"written before")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run(
      [sys.executable, "-m", "experiments.predict", f"--workdir={run_dir}", f"--input={folder}",
       f"--output={output}", "--probabilities", "--format=dicom-seg"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  return {"result": result, "images": images, "output": output, "folder": folder,
          "series": str(series), "uids": uids, "hu": hu}


@pytest.mark.e2e
def test_load_run_restores_the_trained_parameters(run_dir):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  config, model, variables = restore.load_run(run_dir)
  assert config.num_classes == 3 and tuple(config.patch_size) == (8, 16, 16)
  assert config.model.kernel_sizes == ((1, 3, 3), (3, 3, 3))  # JSON lists back to tuples
  assert set(variables) == {"params", "batch_stats"}
  mngr = ocp.CheckpointManager(os.path.join(run_dir, "checkpoints"))
  assert mngr.latest_step() == 2
  saved = mngr.restore(2, args=ocp.args.StandardRestore())
  mngr.close()
  kernel = saved["params"]["down0"]["conv0"]["kernel"]
  np.testing.assert_array_equal(variables["params"]["down0"]["conv0"]["kernel"], kernel)
  out = model.apply(variables, np.zeros((1, 8, 16, 16, 1), np.float32), train=False)
  assert out.shape == (1, 8, 16, 16, 3)


@pytest.mark.e2e
def test_load_run_names_a_bad_workdir(tmp_path, run_dir):
  with pytest.raises(InputError, match=str(tmp_path / "missing")):
    restore.load_run(str(tmp_path / "missing"))
  with pytest.raises(InputError, match="config.json: missing"):
    restore.load_run(str(tmp_path))
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(InputError, match="config.json: not a readable config"):
    restore.load_run(str(tmp_path))
  (tmp_path / "config.json").write_text(open(os.path.join(run_dir, "config.json")).read())
  with pytest.raises(InputError, match="checkpoints: no checkpoints"):
    restore.load_run(str(tmp_path))


@pytest.mark.e2e
def test_predict_writes_segmentations_equal_to_in_process_inference(run_dir, predicted):
  result, output = predicted["result"], predicted["output"]
  assert result.returncode == 2, result.stderr  # the corrupt files
  assert f"segmented 3 of 5 case(s) into {output}; skipped 2" in result.stdout
  config, model, variables = restore.load_run(run_dir)
  predict_fn = make_predict_fn(model)
  # the run kept post-processing rules on its validation case; predict applies them by default
  rules = Workdir.of(run_dir).read_postprocessing_rules()
  assert rules and "post-processing: " in result.stdout

  def expected_labels(image, spacing):
    x = transforms.normalize_ct(image)[None, ..., None]
    probs = inference.sliding_window(
        lambda w: predict_fn(variables, w), x, tuple(config.patch_size),
        overlap=config.eval.overlap, mode=config.eval.mode, batch_size=config.eval.batch_size)[0]
    return postprocess.apply(probs.argmax(-1), rules, spacing), probs

  source = io.read_image(predicted["series"])  # the DICOM case: same model, same rules
  labels, _ = expected_labels(source.array, source.spacing)
  seg = io.read_image(output / "patient1" / "ct_seg.nii.gz").array
  np.testing.assert_array_equal(seg, labels)
  assert 0 < (seg == 1).sum() < seg.size  # a non-trivial label map for the DICOM SEG checks
  for seed, (name, image) in enumerate(predicted["images"].items()):
    seg_image = nib.load(output / f"{name}_seg.nii.gz")
    np.testing.assert_allclose(seg_image.affine, _affine(10.0 * seed))
    seg = io.read_image(output / f"{name}_seg.nii.gz")
    assert seg.array.shape == SHAPE and seg.array.dtype == np.uint8
    assert seg.spacing == pytest.approx((2.5, 0.8, 0.8))
    assert 0 <= seg.array.min() and seg.array.max() < config.num_classes
    labels, probs = expected_labels(image, seg.spacing)
    np.testing.assert_array_equal(seg.array, labels)
    prob_image = nib.load(output / f"{name}_probs.nii.gz")
    saved = prob_image.get_fdata()  # uint16 on disk, scaled by scl_slope: 2 bytes per value
    assert prob_image.get_data_dtype() == np.uint16 and saved.shape == (32, 32, 16, 3)  # (W, H, D, K)
    np.testing.assert_allclose(prob_image.affine, _affine(10.0 * seed))
    np.testing.assert_allclose(saved.transpose(2, 1, 0, 3), probs, atol=1e-5)
    np.testing.assert_allclose(saved.sum(-1), 1.0, atol=3e-5)


@pytest.mark.e2e
def test_predict_reports_a_corrupt_file_in_one_line_and_keeps_the_rest(predicted):
  result, output = predicted["result"], predicted["output"]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 2 and str(predicted["folder"] / "broken.nii.gz") in errors[0]
  assert str(predicted["folder"] / "patient2" / "ct" / "IM0000") in errors[1]
  assert "Traceback" not in result.stderr
  # NIfTI inputs get no DICOM SEG: one warning each
  assert sum("not a DICOM series; no DICOM SEG" in line for line in result.stderr.splitlines()) == 2
  assert sorted(os.listdir(output)) == ["case0.json", "case0_probs.nii.gz", "case0_seg.nii.gz",
                                        "case1.json", "case1_probs.nii.gz", "case1_seg.nii.gz",
                                        "keep.nii.gz", "patient1"]
  assert sorted(os.listdir(output / "patient1")) == ["ct.json", "ct_probs.nii.gz", "ct_seg.dcm",
                                                     "ct_seg.nii.gz"]
  assert (output / "keep.nii.gz").read_bytes() == b"written before"


@pytest.mark.e2e
def test_predict_dicom_series_writes_nifti_on_its_geometry_and_a_dicom_seg(predicted):
  output, series = predicted["output"] / "patient1", predicted["series"]
  source = io.read_image(series)
  np.testing.assert_array_equal(source.array, predicted["hu"])  # slope/intercept applied, sorted
  seg_image = nib.load(output / "ct_seg.nii.gz")
  assert seg_image.shape == (28, 24, 6)  # (W, H, D): the series' columns, rows, slices
  np.testing.assert_allclose(seg_image.affine, source.affine, atol=1e-5)
  np.testing.assert_allclose(seg_image.header.get_zooms(), DICOM_SPACING[::-1], atol=1e-5)
  labels = io.read_image(output / "ct_seg.nii.gz").array
  probs = nib.load(output / "ct_probs.nii.gz")
  assert probs.shape == (28, 24, 6, 3)
  np.testing.assert_allclose(probs.affine, source.affine, atol=1e-5)
  seg = hd.seg.segread(output / "ct_seg.dcm")
  assert [s.SegmentLabel for s in seg.SegmentSequence] == ["organ", "tumour"]
  referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
  assert sorted(r.ReferencedSOPInstanceUID for r in referenced) == sorted(predicted["uids"])
  assert seg.FrameOfReferenceUID == pydicom.dcmread(os.path.join(series, "IM0000")).FrameOfReferenceUID
  masks = seg.get_pixels_by_source_instance(predicted["uids"], segment_numbers=[1, 2],
                                            combine_segments=False)  # slice order of the series
  assert masks.shape == (6, 24, 28, 2)
  np.testing.assert_array_equal(masks[..., 0], labels == 1)
  np.testing.assert_array_equal(masks[..., 1], labels == 2)


@pytest.mark.e2e
def test_predict_writes_per_case_json_with_class_volumes(run_dir, predicted):
  output = predicted["output"]
  for name, spacing in [("case0", (2.5, 0.8, 0.8)), ("patient1/ct", DICOM_SPACING)]:
    summary = json.loads((output / f"{name}.json").read_text())
    labels = io.read_image(output / f"{name}_seg.nii.gz").array
    counts = np.bincount(labels.ravel(), minlength=3)
    assert summary["shape"] == list(labels.shape)
    assert summary["spacing"] == pytest.approx(spacing)
    assert summary["voxels"] == dict(zip(("background", "organ", "tumour"), counts.tolist()))
    voxel_ml = np.prod(spacing) / 1000
    assert summary["volume_ml"] == pytest.approx(
        {"background": counts[0] * voxel_ml, "organ": counts[1] * voxel_ml,
         "tumour": counts[2] * voxel_ml})
    assert summary["postprocess"] == [r.to_json() for r in Workdir.of(run_dir).read_postprocessing_rules()]
    assert set(summary["seconds"]) == {"read", "predict", "postprocess", "write"}
    assert all(v >= 0 for v in summary["seconds"].values())
  assert summary["input"] == predicted["series"]


@pytest.mark.e2e
def test_predictor_checks_nan_and_warns_on_spacing(run_dir, tmp_path):
  predictor = load_predictor(run_dir, mirror=True)
  assert predictor.segmenter.predictor.mirror_axes == (0, 1, 2)
  image = np.zeros(SHAPE, np.float32)
  image[3, 4, 5] = np.nan
  with pytest.raises(InputError, match="scan.nii: image has 1 NaN/inf voxels"):
    predictor.predict(image, name="scan.nii")
  with pytest.raises(InputError, match="slice.nii: .*the model segments 3D"):
    predictor.predict(np.zeros((32, 32), np.float32), name="slice.nii")
  assert predict_files.spacing_warning("a.nii", (2.5, 0.8, 0.8), (2.5, 0.8, 0.8)) is None
  assert predict_files.spacing_warning("a.nii", (3.0, 0.9, 0.7), (2.5, 0.8, 0.8)) is None
  warning = predict_files.spacing_warning("a.nii", (0.8, 0.8, 2.5), (2.5, 0.8, 0.8))
  assert warning.startswith("warning: a.nii: voxel spacing (0.8, 0.8, 2.5) mm") and "without resampling" in warning


def test_find_inputs_and_case_names(tmp_path):
  (tmp_path / "b.nrrd").write_bytes(b"")
  (tmp_path / "a.nii.gz").write_bytes(b"")
  (tmp_path / "readme.txt").write_bytes(b"")
  (tmp_path / "dicom_series").mkdir()
  (tmp_path / "dicom_series" / "IM0001").write_bytes(b"\0" * 128 + b"DICM")  # the Part 10 marker
  (tmp_path / "LICENSE").write_bytes(b"no marker: not a DICOM file")
  assert predict_files.find_inputs(str(tmp_path)) == [
      str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nrrd"), str(tmp_path / "dicom_series")]
  assert predict_files.find_inputs(str(tmp_path / "dicom_series")) == [str(tmp_path / "dicom_series")]
  assert predict_files.find_inputs(str(tmp_path / "a.nii.gz")) == [str(tmp_path / "a.nii.gz")]
  # one slice of a series stands for its folder
  assert predict_files.find_inputs(str(tmp_path / "dicom_series" / "IM0001")) == [str(tmp_path / "dicom_series")]
  assert [predict_files.case_name(p) for p in predict_files.find_inputs(str(tmp_path))] == ["a", "b", "dicom_series"]
  with pytest.raises(InputError, match="no such file"):
    predict_files.find_inputs(str(tmp_path / "nope"))


@pytest.mark.e2e
@pytest.mark.parametrize("flags,expected", [
    ([], "--workdir"),  # the flag is missing
    (["--workdir={missing}"], "{missing}"),  # the folder is missing
])
def test_predict_cli_bad_workdir_is_one_line_exit_2(tmp_path, flags, expected):
  missing = str(tmp_path / "no_such_run")
  (tmp_path / "scan.nii.gz").write_bytes(b"")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run(
      [sys.executable, "-m", "experiments.predict", f"--input={tmp_path / 'scan.nii.gz'}",
       f"--output={tmp_path / 'out'}", *[f.format(missing=missing) for f in flags]],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert expected.format(missing=missing) in lines[0] and "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "out")


class _FakePredictor:
  """Labels = voxels above 0, probabilities = (1 - x, x): no network, for the file handling."""
  spacing = (2.5, 0.8, 0.8)
  class_names = ("background", "fg")
  in_channels = 1
  has_plan = False

  def predict(self, image, *, name="image"):
    image = transforms.check_image(image, name)
    if image.ndim != 3:
      raise InputError(f"{name}: image has shape {image.shape}; the model segments 3D images")
    # Through a real sliding window (constant weights keep the 0/1 values exact), so the
    # CLI's window progress bar is exercised.
    probs = inference.sliding_window(
        lambda w: np.concatenate([w <= 0, w > 0], -1).astype(np.float32),
        np.asarray(image, np.float32)[None, ..., None], (4, 8, 8), mode="constant", batch_size=2)[0]
    return probs.argmax(-1).astype(np.uint8), probs

  def predict_volume(self, volume, *, name="image"):
    return self.predict(volume.array, name=name)


def test_predict_case_writes_atomically_and_names_the_file(tmp_path):
  image = np.zeros(SHAPE, np.float32)
  image[2:5, 3:9, 4:10] = 100.0
  io.write_nifti(tmp_path / "a.nii.gz", image, _affine(0.0))
  warnings = []
  summary = predict_files.predict_case(_FakePredictor(), str(tmp_path / "a.nii.gz"), str(tmp_path),
                                 probabilities=True, warn=warnings.append)
  written = summary["outputs"]
  assert written == [str(tmp_path / "a_seg.nii.gz"), str(tmp_path / "a_probs.nii.gz"),
                     str(tmp_path / "a.json")]
  assert sorted(os.listdir(tmp_path)) == ["a.json", "a.nii.gz", "a_probs.nii.gz",
                                          "a_seg.nii.gz"]  # no temp files
  np.testing.assert_array_equal(io.read_image(written[0]).array, image > 0)
  probs = nib.load(written[1]).get_fdata()
  assert probs.shape == (32, 32, 16, 2) and nib.load(written[1]).get_data_dtype() == np.uint16
  np.testing.assert_allclose(probs[..., 1].transpose(2, 1, 0), image > 0, atol=1e-6)
  assert summary["voxels"] == {"background": 16 * 32 * 32 - 3 * 6 * 6, "fg": 3 * 6 * 6}
  assert summary["volume_ml"]["fg"] == pytest.approx(3 * 6 * 6 * 2.5 * 0.8 * 0.8 / 1000)
  assert warnings == []
  io.write_nifti(tmp_path / "flat.nii.gz", np.zeros((32, 32), np.float32), _affine(0.0))
  with pytest.raises(InputError, match=f"{tmp_path / 'flat.nii.gz'}: image has shape"):
    predict_files.predict_case(_FakePredictor(), str(tmp_path / "flat.nii.gz"), str(tmp_path))


def test_predict_folder_counts_failures_and_skips_a_repeated_case_name(tmp_path, monkeypatch):
  inputs, output = tmp_path / "in", tmp_path / "out"
  inputs.mkdir()
  image = np.zeros(SHAPE, np.float32)
  io.write_nifti(inputs / "a.nii.gz", image, _affine(0.0))
  io.write_nifti(inputs / "a.nii", image, _affine(0.0))  # same case name "a"
  image[0, 0, 0] = np.inf
  io.write_nifti(inputs / "b.nii.gz", image, _affine(0.0))
  monkeypatch.setattr(predict_files, "load_predictor", lambda workdir, mirror: _FakePredictor())
  log, errors = [], []
  failed = predict_files.predict_folder("run", str(inputs), str(output), log=log.append,
                                  error=errors.append)
  assert failed == 2 and sorted(os.listdir(output)) == ["a.json", "a_seg.nii.gz"]
  assert errors[0] == f"error: {inputs / 'a.nii.gz'}: same case name 'a' as {inputs / 'a.nii'}; rename one of them"
  assert errors[1].startswith(f"error: {inputs / 'b.nii.gz'}: ") and "NaN/inf" in errors[1]
  assert log[-1] == f"segmented 1 of 3 case(s) into {output}; skipped 2 (see the error lines)"


def test_find_inputs_searches_recursively_and_skips_the_output(tmp_path):
  for name in ["a.nii.gz", "p1/ct/IM0001", "p1/ct/notes.txt", "p2/readme.txt", "p2/LICENSE",
               "out/x.nii.gz", ".hidden/b.nii.gz", "p3/img.dcm", "p3/sub/c.nrrd"]:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b"\0" * 128 + b"DICM" if name.endswith("IM0001") else b"")
  found = predict_files.find_inputs(str(tmp_path), skip=[str(tmp_path / "out")])
  assert found == [str(tmp_path / "a.nii.gz"), str(tmp_path / "p1" / "ct"), str(tmp_path / "p3"),
                   str(tmp_path / "p3" / "sub" / "c.nrrd")]
  assert [predict_files.output_folder(p, str(tmp_path), "OUT") for p in found] == [
      "OUT", os.path.join("OUT", "p1"), "OUT", os.path.join("OUT", "p3", "sub")]
  assert predict_files.output_folder(str(tmp_path / "p1" / "ct"), str(tmp_path / "p1" / "ct"), "OUT") == "OUT"
  with pytest.raises(InputError, match="no image files or DICOM series"):
    predict_files.find_inputs(str(tmp_path / "p2"))


def test_predict_folder_postprocesses_by_default_and_shows_a_bar_when_asked(
    tmp_path, monkeypatch, capsys):
  image = np.zeros(SHAPE, np.float32)
  image[2:6, 3:9, 4:10] = 100.0  # 144 voxels
  image[10:12, 20:22, 20:22] = 100.0  # 8 voxels, not connected: removed by largest_component
  (tmp_path / "in").mkdir()
  io.write_nifti(tmp_path / "in" / "a.nii.gz", image, _affine(0.0))
  io.write_nifti(tmp_path / "in" / "b.nii.gz", image, _affine(0.0))
  monkeypatch.setattr(predict_files, "load_predictor", lambda workdir, mirror: _FakePredictor())
  run = tmp_path / "run"
  run.mkdir()
  with pytest.raises(InputError, match=f"--postprocess: {run} has no post-processing rules"):
    predict_files.predict_folder(str(run), str(tmp_path / "in"), str(tmp_path / "out"), postprocess=True)
  (run / "postprocessing.json").write_text('{"rules": [{"kind": "largest_component", "classes": [1]}]}')
  log = []
  for option, folder, voxels in [(None, "out", 144), (False, "raw", 152)]:
    assert predict_files.predict_folder(str(run), str(tmp_path / "in"), str(tmp_path / folder),
                                  postprocess=option, progress=True, log=log.append) == 0
    for case in ("a", "b"):
      assert (io.read_image(tmp_path / folder / f"{case}_seg.nii.gz").array == 1).sum() == voxels
  summary = json.loads((tmp_path / "out" / "a.json").read_text())
  assert summary["voxels"]["fg"] == 144
  assert summary["postprocess"] == [{"kind": "largest_component", "classes": [1]}]
  assert json.loads((tmp_path / "raw" / "a.json").read_text())["postprocess"] == []
  assert log[2].endswith(f"; post-processing: 1 rule(s) of {run / 'postprocessing.json'}")
  assert log[5] == f"segmented 2 of 2 case(s) into {tmp_path / 'raw'}"
  assert sum(" -> " in line for line in log) == 4  # the per-case lines are still written
  err = capsys.readouterr().err
  assert err.count("2/2") >= 2  # one finished case bar per call
  windows = math.prod(len(inference.window_starts(s, r, 0.5)) for s, r in zip(SHAPE, (4, 8, 8)))
  assert f"{windows}/{windows} [" in err  # and a finished bar over the windows of a case


def test_write_nifti_channels_puts_the_class_axis_last_in_2d_and_3d(tmp_path):
  probs2d = np.random.default_rng(0).random((6, 5, 3)).astype(np.float32)  # (H, W, K)
  saved = nib.load(io.write_nifti(tmp_path / "p2.nii.gz", probs2d, np.eye(4), channels=True))
  assert saved.shape == (5, 6, 1, 3)
  np.testing.assert_array_equal(np.asarray(saved.dataobj)[:, :, 0, :].transpose(1, 0, 2), probs2d)
  probs3d = probs2d[None].repeat(4, 0)  # (D, H, W, K)
  saved = nib.load(io.write_nifti(tmp_path / "p3.nii.gz", probs3d, np.eye(4), channels=True))
  assert saved.shape == (5, 6, 4, 3) and saved.get_data_dtype() == np.float32
  np.testing.assert_array_equal(np.asarray(saved.dataobj).transpose(2, 1, 0, 3), probs3d)
  with pytest.raises(InputError, match="plus a channel axis"):
    io.write_nifti(tmp_path / "bad.nii.gz", probs2d[..., 0], np.eye(4), channels=True)


@pytest.mark.e2e
def test_predict_uncertainty_writes_the_entropy_of_the_deterministic_prediction(run_dir, tmp_path):
  image, _ = organ_ct.make_volume(2, shape=SHAPE)
  io.write_nifti(tmp_path / "scan.nii.gz", image, _affine(0.0))
  lines = []
  failed = predict_files.predict_folder(run_dir, str(tmp_path / "scan.nii.gz"), str(tmp_path / "out"),
                                  uncertainty=True, log=lines.append)
  assert failed == 0
  case_line = next(line for line in lines if " -> " in line)
  assert "entropy of the deterministic prediction (the model has no dropout)" in case_line
  entropy = io.read_image(tmp_path / "out" / "scan_entropy.nii.gz").array
  assert entropy.dtype == np.float32 and entropy.shape == SHAPE
  probs = load_predictor(run_dir).probabilities(image)
  expected = -(probs * np.log(np.maximum(probs, 1e-30))).sum(-1)
  np.testing.assert_allclose(entropy, expected, atol=1e-5)
  assert 0.0 <= entropy.min() and entropy.max() <= np.log(3) + 1e-6
