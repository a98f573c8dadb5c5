"""medjax.uncertainty: sample summaries, MC dropout (BatchNorm stays in inference
mode), TTA, the sliding window with samples, ensembles, and the evaluation of a
smoke run with `eval.uncertainty=mc_dropout` and `eval.calibration=True`."""
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import unet3d_synthetic
from medjax import inference, uncertainty
from medjax.data import io
from medjax.errors import InputError
from medjax.inference import predict_files
from medjax.inference.run_predictor import load_ensemble, load_predictor
from medjax.models import UNet
from medjax.train import loop
from medjax.train.tasks.segmentation import SegmentationTask


def test_entropy_and_mutual_information_of_hand_made_samples():
  disagree = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # two samples (T=2) of one voxel
  out = uncertainty.summarize_samples(disagree)
  np.testing.assert_allclose(out["mean"], [0.5, 0.5])
  assert float(out["entropy"]) == pytest.approx(math.log(2), abs=1e-6)
  assert float(out["mutual_information"]) == pytest.approx(math.log(2), abs=1e-6)
  assert float(out["variance"]) == pytest.approx(0.25, abs=1e-6)  # var of {1, 0} per class
  same = jnp.array([[0.5, 0.5], [0.5, 0.5]])
  out = uncertainty.summarize_samples(same)
  assert float(out["entropy"]) == pytest.approx(math.log(2), abs=1e-6)
  assert float(out["mutual_information"]) == pytest.approx(0.0, abs=1e-6)
  assert float(out["variance"]) == pytest.approx(0.0, abs=1e-6)
  assert float(uncertainty.predictive_entropy(jnp.array([1.0, 0.0, 0.0]))) == 0.0
  # numpy (blended) moments give the same maps as jax ones
  m = uncertainty.moments(jnp.array([[[0.7, 0.2, 0.1]], [[0.1, 0.3, 0.6]]]))
  mean_np, maps_np = uncertainty.maps_from_moments(np.asarray(m))
  mean_j, maps_j = uncertainty.maps_from_moments(m)
  for k in uncertainty.MAP_NAMES:
    np.testing.assert_allclose(maps_np[k], maps_j[k], atol=1e-6)


class _BnDropout(nn.Module):
  rate: float

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dropout(self.rate, deterministic=not train)(x)


def test_stochastic_dropout_samples_masks_with_batchnorm_on_running_averages():
  module = _BnDropout(0.5)
  x = jnp.asarray(np.random.default_rng(0).normal(3.0, 2.0, size=(4, 64)), jnp.float32)
  variables = module.init(jax.random.key(0), x, train=False)
  stats = {"mean": jnp.full((64,), 1.0), "var": jnp.full((64,), 4.0)}
  variables = {**variables, "batch_stats": {"BatchNorm_0": stats}}
  inference_out = module.apply(variables, x, train=False)
  np.testing.assert_allclose(inference_out, (x - 1.0) / jnp.sqrt(4.0 + 1e-5), rtol=1e-5)
  with uncertainty.stochastic_dropout():
    out = module.apply(variables, x, train=False, rngs={"dropout": jax.random.key(1)})
  dropped = np.asarray(out) == 0
  assert 0.35 < dropped.mean() < 0.65
  np.testing.assert_allclose(np.asarray(out)[~dropped], 2 * np.asarray(inference_out)[~dropped],
                             rtol=1e-5)  # kept units scaled by 1 / keep, BN on running averages


def _unet(dropout):
  return UNet(spatial_dims=2, features=(4, 8), num_classes=3, norm="batch", dropout=dropout)


def test_mc_dropout_rate_zero_is_the_deterministic_prediction():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 1)), jnp.float32)
  model = _unet(0.0)
  variables = jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))(x)
  out = uncertainty.mc_dropout(model.apply, variables, x, samples=4, rng=jax.random.key(2, impl="rbg"))
  det = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False), -1))(variables, x)
  np.testing.assert_allclose(out["mean"], det, atol=1e-6)
  np.testing.assert_allclose(out["mutual_information"], 0.0, atol=1e-5)
  np.testing.assert_allclose(out["variance"], 0.0, atol=1e-6)
  np.testing.assert_allclose(out["entropy"], uncertainty.predictive_entropy(det), atol=1e-5)
  stochastic = uncertainty.mc_dropout(_unet(0.3).apply, variables, x, samples=4,
                                      rng=jax.random.key(2, impl="rbg"))
  assert float(stochastic["mutual_information"].mean()) > 1e-3
  assert float(jnp.abs(stochastic["mean"] - det).max()) > 1e-3
  with pytest.raises(InputError, match="samples"):
    uncertainty.mc_dropout(model.apply, variables, x, samples=0, rng=jax.random.key(2, impl="rbg"))


def test_tta_first_sample_is_the_plain_prediction_and_a_pointwise_model_agrees_with_its_flips():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 6, 6, 1)), jnp.float32)
  pointwise = nn.Conv(3, (1, 1))
  variables = pointwise.init(jax.random.key(0), x)
  apply = lambda v, x, train=False, **kw: pointwise.apply(v, x)
  samples = uncertainty.tta_samples(apply, variables, x, axes=(0, 1))
  assert samples.shape == (4, 2, 6, 6, 3)
  np.testing.assert_allclose(samples, np.broadcast_to(samples[0], samples.shape), atol=1e-6)
  np.testing.assert_allclose(samples[0], jax.nn.softmax(pointwise.apply(variables, x)), atol=1e-6)


def test_sliding_window_of_moments_gives_the_maps_of_the_pooled_samples():
  rng = np.random.default_rng(3)
  volume = rng.normal(size=(1, 6, 10, 1)).astype(np.float32)
  noise = rng.normal(size=(3, 6, 10, 2)).astype(np.float32)  # 3 "samples", fixed per voxel

  def samples_of(windows, origin):
    logits = windows * jnp.asarray([1.0, -1.0]) + noise[:, None, origin[0]:origin[0] + 6,
                                                          origin[1]:origin[1] + 6]
    return jax.nn.softmax(logits, -1)

  # one window covering the volume: the maps are those of the samples
  whole = inference.sliding_window(lambda w: np.asarray(uncertainty.moments(
      jax.nn.softmax(w * jnp.asarray([1.0, -1.0]) + noise[:, None], -1))), volume, (6, 10))
  mean, maps = uncertainty.maps_from_moments(whole)
  direct = uncertainty.summarize_samples(
      jax.nn.softmax(volume * jnp.asarray([1.0, -1.0]) + noise[:, None], -1))
  np.testing.assert_allclose(mean, direct["mean"], atol=1e-5)
  for k in uncertainty.MAP_NAMES:
    np.testing.assert_allclose(maps[k], direct[k], atol=1e-5)
  # overlapping windows: entropy is the entropy of the blended mean, MI >= 0
  fn = uncertainty.window_moments_fn(lambda v, x, train=False: x * jnp.asarray([2.0, -2.0]), {},
                                     "none")
  blended = inference.sliding_window(fn, volume, (6, 6), overlap=0.5, batch_size=2)
  mean, maps = uncertainty.maps_from_moments(blended)
  np.testing.assert_allclose(maps["entropy"], uncertainty.predictive_entropy(mean), atol=1e-5)
  np.testing.assert_allclose(maps["mutual_information"], 0.0, atol=1e-5)  # one sample per window


def test_unknown_method_is_one_line_error():
  with pytest.raises(InputError, match="config.eval.uncertainty='bayes'"):
    uncertainty.check_method("bayes")


# ------------------------------------------------------------------ a smoke run with MC dropout

@pytest.fixture(scope="module")
def mc_run(tmp_path_factory, data_dir):
  """2-step smoke run with dropout 0.1, evaluated with 3 MC-dropout samples and calibration."""
  c = unet3d_synthetic.get_config("smoke")
  c.data_dir = data_dir
  c.num_steps = 2
  c.model.dropout = 0.1
  c.eval.uncertainty = "mc_dropout"
  c.eval.uncertainty_samples = 3
  c.eval.calibration = True
  c.eval.report_cases = 0
  c.eval.surface_metrics = False
  workdir = str(tmp_path_factory.mktemp("run"))
  results = loop.train_and_evaluate(c, workdir)
  return c, workdir, results


@pytest.mark.e2e
def test_evaluation_with_mc_dropout_and_calibration_writes_the_keys(mc_run):
  _, workdir, results = mc_run
  with open(os.path.join(workdir, "eval.json")) as f:
    saved = json.load(f)
  for key in ("dice/organ", "dice/tumour", "ece", "ece_classwise", "ece/organ", "ece/tumour",
              "temperature", "ece_after_temperature", "nll", "nll_after_temperature",
              "uncertainty_auroc", "uncertainty_auroc_mi", "uncertainty_auroc_variance",
              "retained_dice@10%/organ", "retained_dice@20%/tumour"):
    assert key in saved, key
  assert 0.0 <= saved["ece"] <= 1.0 and saved["temperature"] > 0
  assert saved["nll_after_temperature"] <= saved["nll"] + 0.05  # fitted on validation, scored on test
  assert "retained_dice@5%/organ" in saved["per_case"][0]
  assert os.path.getsize(os.path.join(workdir, "report", "reliability.png")) > 1000
  assert results["ece"] == saved["ece"]


@pytest.mark.e2e
def test_predictor_entropy_map_and_ensemble_of_identical_members(mc_run):
  config, workdir, _ = mc_run
  image = np.random.default_rng(4).normal(0.0, 100.0, size=(12, 20, 20)).astype(np.float32)
  plain = load_predictor(workdir)
  labels, probs, maps = plain.predict_uncertainty(image)
  assert set(maps) == {"entropy"}
  np.testing.assert_allclose(maps["entropy"], uncertainty.predictive_entropy(probs), atol=1e-5)
  ensemble = load_ensemble([workdir, workdir])
  e_labels, e_probs, e_maps = ensemble.predict_uncertainty(image)
  np.testing.assert_allclose(e_probs, probs, atol=1e-6)
  np.testing.assert_allclose(e_maps["mutual_information"], 0.0, atol=1e-5)
  with pytest.raises(InputError, match="at least 2"):
    load_ensemble([workdir])


@pytest.mark.e2e
def test_predict_uncertainty_uses_mc_dropout_when_the_model_has_dropout(mc_run, tmp_path):
  _, workdir, _ = mc_run
  image = np.random.default_rng(5).normal(0.0, 100.0, size=(12, 20, 20)).astype(np.float32)
  io.write_nifti(tmp_path / "scan.nii.gz", image, np.eye(4))
  lines = []
  assert predict_files.predict_folder(workdir, str(tmp_path / "scan.nii.gz"), str(tmp_path / "out"),
                                uncertainty=True, samples=2, log=lines.append) == 0
  assert lines[0].endswith("(entropy: MC dropout, 2 samples)")
  entropy = io.read_image(tmp_path / "out" / "scan_entropy.nii.gz").array
  assert entropy.shape == image.shape and entropy.dtype == np.float32
  assert 0.0 <= entropy.min() and entropy.max() <= np.log(3) + 1e-5
  _, probs, _ = load_predictor(workdir).predict_uncertainty(image)
  deterministic = uncertainty.predictive_entropy(probs)
  assert float(np.abs(entropy - deterministic).max()) > 1e-4  # the dropout masks were sampled


@pytest.mark.e2e
def test_predict_folder_with_several_workdirs_segments_with_their_ensemble(mc_run, tmp_path):
  """`--workdir=a,b`: the deep ensemble's labels and the entropy of its mean probabilities
  (two identical members: the single run's deterministic prediction); no post-processing
  rules of its own."""
  _, workdir, _ = mc_run
  image = np.random.default_rng(6).normal(0.0, 100.0, size=(12, 20, 20)).astype(np.float32)
  io.write_nifti(tmp_path / "scan.nii.gz", image, np.eye(4))
  lines = []
  assert predict_files.predict_folder(f"{workdir},{workdir}", str(tmp_path / "scan.nii.gz"),
                                str(tmp_path / "out"), uncertainty=True,
                                log=lines.append) == 0
  assert lines[0].endswith("(entropy: deep ensemble of 2 runs, entropy of their mean)")
  labels, probs, _ = load_predictor(workdir).predict_uncertainty(image)
  got = io.read_image(tmp_path / "out" / "scan_seg.nii.gz").array
  np.testing.assert_array_equal(got, labels)
  entropy = io.read_image(tmp_path / "out" / "scan_entropy.nii.gz").array
  np.testing.assert_allclose(entropy, uncertainty.predictive_entropy(probs), atol=1e-5)
  with pytest.raises(InputError, match="an ensemble of 2 runs has no post-processing rules"):
    predict_files.predict_folder([workdir, workdir], str(tmp_path / "scan.nii.gz"),
                           str(tmp_path / "out2"), postprocess=True)


def test_mc_dropout_without_dropout_is_refused():
  c = unet3d_synthetic.get_config("smoke")
  c.eval.uncertainty = "mc_dropout"
  with pytest.raises(InputError, match="config.model.dropout is 0"):
    SegmentationTask().validate(c)
  c.model.dropout = 0.1
  c.eval.uncertainty_samples = 0
  with pytest.raises(InputError, match="uncertainty_samples=0"):
    SegmentationTask().validate(c)


def test_classification_evaluation_with_tta_and_temperature(monkeypatch):
  from experiments.configs import convnet_synthetic2d  # pylint: disable=import-outside-toplevel
  from medjax.train.model_factory import build_model  # pylint: disable=import-outside-toplevel
  from medjax.train.tasks import classification  # pylint: disable=import-outside-toplevel
  ClassificationTask = classification.ClassificationTask
  fit_image_temperature = classification.fit_image_temperature
  image_predictor = classification.image_predictor
  c = convnet_synthetic2d.get_config("smoke")
  c.eval.uncertainty = "tta"
  c.eval.batch_size = 4
  ClassificationTask().validate(c)
  model = build_model(c, training=False)
  x = np.zeros((1,) + tuple(c.patch_size) + (1,), np.float32)
  variables = jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))(x)
  rng = np.random.default_rng(6)
  source = [{"image": rng.normal(0, 50, size=tuple(c.patch_size)).astype(np.float32),
             "lesion": int(i % 2), "case": f"img{i}"} for i in range(6)]
  predict_batch = image_predictor(c, model, variables)
  probs, maps = predict_batch(np.stack([rng.normal(size=tuple(c.patch_size) + (1,))
                                        for _ in range(3)]).astype(np.float32))
  assert probs.shape == (3, 2) and set(maps) == set(uncertainty.MAP_NAMES)
  assert maps["mutual_information"].shape == (3,)
  t = fit_image_temperature(predict_batch, c, source)
  assert 0.05 <= t <= 20.0
  with c.unlocked():
    c.eval.calibration = True
  monkeypatch.setattr(classification, "load_split", lambda config, split: source)
  ev = ClassificationTask().evaluate(c, model, variables, source)
  for key in ("accuracy", "ece", "ece_classwise", "temperature", "ece_after_temperature",
              "uncertainty_auroc_mi", "retained_accuracy@20%"):
    assert key in ev.results, key
  assert ev.results["temperature"] == pytest.approx(t)  # validation = the same 6 images here
