"""medjax.train.restore, medjax.predict and experiments.predict on a real (2-step) smoke run."""
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from experiments.configs import unet3d_synthetic
from medjax import inference, predict
from medjax.data import io, synthetic, transforms
from medjax.errors import InputError
from medjax.train import loop, restore
from medjax.train.predictor import load_predictor
from medjax.train.step import make_predict_fn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (16, 32, 32)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A smoke run trained for 2 steps, with BatchNorm (so batch_stats are restored too)."""
  c = unet3d_synthetic.get_config("smoke")
  c.data_dir = str(tmp_path_factory.mktemp("data"))
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


@pytest.fixture(scope="module")
def predicted(run_dir, tmp_path_factory):
  """`experiments.predict` over a folder with two good volumes and a corrupt file."""
  folder = tmp_path_factory.mktemp("inputs")
  images = {}
  for seed in (0, 1):
    image, _ = synthetic.make_volume(seed, shape=SHAPE)
    io.write_nifti(folder / f"case{seed}.nii.gz", image, _affine(10.0 * seed))
    images[f"case{seed}"] = image
  (folder / "broken.nii.gz").write_bytes(b"not a nifti file")
  (folder / "notes.txt").write_text("ignored")
  output = tmp_path_factory.mktemp("outputs")
  (output / "keep.nii.gz").write_bytes(b"written before")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run(
      [sys.executable, "-m", "experiments.predict", f"--workdir={run_dir}", f"--input={folder}",
       f"--output={output}", "--probabilities"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  return {"result": result, "images": images, "output": output, "folder": folder}


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


def test_predict_writes_segmentations_equal_to_in_process_inference(run_dir, predicted):
  result, output = predicted["result"], predicted["output"]
  assert result.returncode == 2, result.stderr  # the corrupt file
  assert "segmented 2 of 3 case(s)" in result.stdout
  config, model, variables = restore.load_run(run_dir)
  predict_fn = make_predict_fn(model)
  for seed, (name, image) in enumerate(predicted["images"].items()):
    seg_image = nib.load(output / f"{name}_seg.nii.gz")
    np.testing.assert_allclose(seg_image.affine, _affine(10.0 * seed))
    seg = io.read_image(output / f"{name}_seg.nii.gz")
    assert seg.array.shape == SHAPE and seg.array.dtype == np.uint8
    assert seg.spacing == pytest.approx((2.5, 0.8, 0.8))
    assert 0 <= seg.array.min() and seg.array.max() < config.num_classes
    x = transforms.normalize_ct(image)[None, ..., None]
    probs = inference.sliding_window(
        lambda w: predict_fn(variables, w), x, tuple(config.patch_size),
        overlap=config.eval.overlap, mode=config.eval.mode, batch_size=config.eval.batch_size)[0]
    np.testing.assert_array_equal(seg.array, probs.argmax(-1))
    prob_image = nib.load(output / f"{name}_probs.nii.gz")
    saved = np.asarray(prob_image.dataobj)
    assert saved.dtype == np.float32 and saved.shape == (32, 32, 16, 3)  # (W, H, D, K)
    np.testing.assert_allclose(prob_image.affine, _affine(10.0 * seed))
    np.testing.assert_allclose(saved.transpose(2, 1, 0, 3), probs, atol=1e-6)
    np.testing.assert_allclose(saved.sum(-1), 1.0, atol=1e-5)


def test_predict_reports_a_corrupt_file_in_one_line_and_keeps_the_rest(predicted):
  result, output = predicted["result"], predicted["output"]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and str(predicted["folder"] / "broken.nii.gz") in errors[0]
  assert "Traceback" not in result.stderr
  assert sorted(os.listdir(output)) == ["case0_probs.nii.gz", "case0_seg.nii.gz",
                                        "case1_probs.nii.gz", "case1_seg.nii.gz", "keep.nii.gz"]
  assert (output / "keep.nii.gz").read_bytes() == b"written before"


def test_predictor_checks_nan_and_warns_on_spacing(run_dir, tmp_path):
  predictor = load_predictor(run_dir, mirror=True)
  assert predictor.segmenter.predictor.mirror_axes == (0, 1, 2)
  image = np.zeros(SHAPE, np.float32)
  image[3, 4, 5] = np.nan
  with pytest.raises(InputError, match="scan.nii: image has 1 NaN/inf voxels"):
    predictor.predict(image, name="scan.nii")
  with pytest.raises(InputError, match="slice.nii: .*the model segments 3D"):
    predictor.predict(np.zeros((32, 32), np.float32), name="slice.nii")
  assert predict.spacing_warning("a.nii", (2.5, 0.8, 0.8), (2.5, 0.8, 0.8)) is None
  assert predict.spacing_warning("a.nii", (3.0, 0.9, 0.7), (2.5, 0.8, 0.8)) is None
  warning = predict.spacing_warning("a.nii", (0.8, 0.8, 2.5), (2.5, 0.8, 0.8))
  assert warning.startswith("warning: a.nii: voxel spacing (0.8, 0.8, 2.5) mm") and "without resampling" in warning


def test_find_inputs_and_case_names(tmp_path):
  (tmp_path / "b.nrrd").write_bytes(b"")
  (tmp_path / "a.nii.gz").write_bytes(b"")
  (tmp_path / "readme.txt").write_bytes(b"")
  (tmp_path / "dicom_series").mkdir()
  (tmp_path / "dicom_series" / "IM0001").write_bytes(b"")
  assert predict.find_inputs(str(tmp_path)) == [
      str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nrrd"), str(tmp_path / "dicom_series")]
  assert predict.find_inputs(str(tmp_path / "dicom_series")) == [str(tmp_path / "dicom_series")]
  assert predict.find_inputs(str(tmp_path / "a.nii.gz")) == [str(tmp_path / "a.nii.gz")]
  assert [predict.case_name(p) for p in predict.find_inputs(str(tmp_path))] == ["a", "b", "dicom_series"]
  with pytest.raises(InputError, match="no such file"):
    predict.find_inputs(str(tmp_path / "nope"))


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

  def predict(self, image, *, name="image"):
    image = transforms.check_image(image, name)
    if image.ndim != 3:
      raise InputError(f"{name}: image has shape {image.shape}; the model segments 3D images")
    fg = (image > 0).astype(np.float32)
    return fg.astype(np.uint8), np.stack([1 - fg, fg], -1)


def test_predict_case_writes_atomically_and_names_the_file(tmp_path):
  image = np.zeros(SHAPE, np.float32)
  image[2:5, 3:9, 4:10] = 100.0
  io.write_nifti(tmp_path / "a.nii.gz", image, _affine(0.0))
  warnings = []
  written = predict.predict_case(_FakePredictor(), str(tmp_path / "a.nii.gz"), str(tmp_path),
                                 probabilities=True, warn=warnings.append)
  assert written == [str(tmp_path / "a_seg.nii.gz"), str(tmp_path / "a_probs.nii.gz")]
  assert sorted(os.listdir(tmp_path)) == ["a.nii.gz", "a_probs.nii.gz", "a_seg.nii.gz"]  # no temp files
  np.testing.assert_array_equal(io.read_image(written[0]).array, image > 0)
  probs = np.asarray(nib.load(written[1]).dataobj)
  assert probs.shape == (32, 32, 16, 2) and probs.dtype == np.float32
  np.testing.assert_array_equal(probs[..., 1].transpose(2, 1, 0), image > 0)
  assert warnings == []
  io.write_nifti(tmp_path / "flat.nii.gz", np.zeros((32, 32), np.float32), _affine(0.0))
  with pytest.raises(InputError, match=f"{tmp_path / 'flat.nii.gz'}: image has shape"):
    predict.predict_case(_FakePredictor(), str(tmp_path / "flat.nii.gz"), str(tmp_path))


def test_predict_folder_counts_failures_and_skips_a_repeated_case_name(tmp_path, monkeypatch):
  inputs, output = tmp_path / "in", tmp_path / "out"
  inputs.mkdir()
  image = np.zeros(SHAPE, np.float32)
  io.write_nifti(inputs / "a.nii.gz", image, _affine(0.0))
  io.write_nifti(inputs / "a.nii", image, _affine(0.0))  # same case name "a"
  image[0, 0, 0] = np.inf
  io.write_nifti(inputs / "b.nii.gz", image, _affine(0.0))
  monkeypatch.setattr(predict, "load_predictor", lambda workdir, mirror: _FakePredictor())
  log, errors = [], []
  failed = predict.predict_folder("run", str(inputs), str(output), log=log.append,
                                  error=errors.append)
  assert failed == 2 and sorted(os.listdir(output)) == ["a_seg.nii.gz"]
  assert errors[0] == f"error: {inputs / 'a.nii.gz'}: same case name 'a' as {inputs / 'a.nii'}; rename one of them"
  assert errors[1].startswith(f"error: {inputs / 'b.nii.gz'}: ") and "NaN/inf" in errors[1]
  assert log[-1] == f"segmented 1 of 3 case(s) into {output}"


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


def test_predict_uncertainty_writes_the_entropy_of_the_deterministic_prediction(run_dir, tmp_path):
  image, _ = synthetic.make_volume(2, shape=SHAPE)
  io.write_nifti(tmp_path / "scan.nii.gz", image, _affine(0.0))
  lines = []
  failed = predict.predict_folder(run_dir, str(tmp_path / "scan.nii.gz"), str(tmp_path / "out"),
                                  uncertainty=True, log=lines.append)
  assert failed == 0
  assert "entropy of the deterministic prediction (the model has no dropout)" in lines[0]
  entropy = io.read_image(tmp_path / "out" / "scan_entropy.nii.gz").array
  assert entropy.dtype == np.float32 and entropy.shape == SHAPE
  probs = load_predictor(run_dir).probabilities(image)
  expected = -(probs * np.log(np.maximum(probs, 1e-30))).sum(-1)
  np.testing.assert_allclose(entropy, expected, atol=1e-5)
  assert 0.0 <= entropy.min() and entropy.max() <= np.log(3) + 1e-6
