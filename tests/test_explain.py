"""medjax.explain (saliency, SmoothGrad, integrated gradients, Grad-CAM, occlusion) on tiny
models, and experiments.explain end to end on a one-step 2D U-Net run."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import init, normal
from experiments.configs import unet2d_synthetic
from medjax import explain, explain_report
from medjax.errors import InputError
from medjax.models import ConvNet, UNet
from medjax.train import loop


class Linear(nn.Module):
  """`z = W vec(x) + b`: a linear classifier."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, *, train=False):
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class LooksAtOneRegion(nn.Module):
  """Class 1's logit is the energy of `x[:, 4:8, 8:12]`; nothing else is read."""

  @nn.compact
  def __call__(self, x, *, train=False):
    energy = jnp.sum(x[:, 4:8, 8:12] ** 2, axis=(1, 2, 3))
    return jnp.stack([jnp.zeros_like(energy), energy], axis=-1)


def _convnet(size=16, **kw):
  kw.setdefault("dense", (8,))
  model = ConvNet(variant="lenet", lenet_features=(3, 4), num_classes=3, **kw)
  x = normal((2, size, size, 1), seed=3)
  return model, init(model, x), x


def test_saliency_of_a_linear_model_is_its_weights():
  model = Linear()
  x = normal((2, 4, 5, 2))
  variables = init(model, x)
  grad = explain.saliency(model, variables, x, target_class=1)
  weights = variables["params"]["Dense_0"]["kernel"][:, 1].reshape(4, 5, 2)
  assert grad.shape == x.shape
  np.testing.assert_allclose(grad[0], weights, atol=1e-6)
  np.testing.assert_allclose(grad[1], weights, atol=1e-6)


def test_smoothgrad_with_sigma_zero_is_the_gradient_and_noise_changes_it():
  model, variables, x = _convnet()
  grad = explain.saliency(model, variables, x, target_class=2)
  assert float(jnp.abs(grad).max()) > 0
  smooth0 = explain.smoothgrad(model, variables, x, target_class=2, sigma=0.0, samples=4,
                               batch_size=2)
  np.testing.assert_allclose(smooth0, grad, atol=1e-6)
  smooth = explain.smoothgrad(model, variables, x, target_class=2, sigma=0.2, samples=4,
                              batch_size=2)
  assert float(jnp.abs(smooth - grad).max()) > 1e-4


def test_integrated_gradients_satisfy_completeness_for_a_classifier():
  """sum_i IG_i = f(x) - f(0): within 2 % of |f(x) - f(0)| at 128 trapezoid steps on a ReLU
  ConvNet (measured ~0.1-1 %), and the left Riemann sum at 4 steps is visibly worse."""
  model, variables, x = _convnet()
  diff = (explain.target_score(model, variables, x, target_class=0)
          - explain.target_score(model, variables, jnp.zeros_like(x), target_class=0))
  ig = explain.integrated_gradients(model, variables, x, target_class=0, steps=128,
                                    batch_size=32)
  assert ig.shape == x.shape
  np.testing.assert_allclose(ig.sum(axis=(1, 2, 3)), diff, rtol=0.02, atol=1e-4)
  coarse = explain.integrated_gradients(model, variables, x, target_class=0, steps=4,
                                        rule="riemann_left")
  assert (np.abs(coarse.sum(axis=(1, 2, 3)) - diff).max()
          > np.abs(ig.sum(axis=(1, 2, 3)) - diff).max())


def test_segmentation_target_and_integrated_gradients_completeness_over_a_region():
  """The target is the mean class-c logit over the voxels predicted as c (all voxels where
  none is); the region is fixed along the path, so the attributions sum to its change, here
  from a non-zero baseline. Example 0's region is one voxel: its net change (0.0022) is
  small against the swings of f along the path (-0.011..0.021), and the quadrature needs
  400 trapezoid steps to get within 2 % (measured 0.7 %; 57 % off at 96 steps)."""
  model = UNet(spatial_dims=2, features=(4, 8), num_classes=3)
  x = normal((2, 16, 16, 1), seed=7)
  variables = init(model, x)
  logits = model.apply(variables, x, train=False)
  region = np.asarray(jnp.argmax(logits, -1) == 1)
  assert region.any(axis=(1, 2)).tolist() == [True, False]
  expected = [logits[0, ..., 1][region[0]].mean(), logits[1, ..., 1].mean()]
  np.testing.assert_allclose(explain.target_score(model, variables, x, target_class=1),
                             expected, rtol=1e-5)
  mask = explain.predicted_region(model, variables, x, 1)
  np.testing.assert_array_equal(mask, region)
  baseline = jnp.full_like(x, -0.5)
  diff = (explain.target_score(model, variables, x, target_class=1, mask=mask)
          - explain.target_score(model, variables, baseline, target_class=1, mask=mask))
  ig = explain.integrated_gradients(model, variables, x, target_class=1, baseline=baseline,
                                    steps=400, batch_size=101)
  np.testing.assert_allclose(ig.sum(axis=(1, 2, 3)), diff, rtol=0.02, atol=1e-5)


def test_grad_cam_with_global_average_pooling_is_the_class_activation_map():
  """With GAP then one dense layer, alpha_k = w_kc / |S'| (Selvaraju 2017, sec. 3.1): Grad-CAM
  is ReLU(sum_k w_kc A_k) / |S'| (CAM, Zhou 2016), non-negative, at the layer's shape.
  (LeNet max-pools conv1 before the GAP; each pooled cell passes its gradient to one of
  its 4 inputs, which leaves alpha_k = w_kc / |S'| unchanged.)"""
  model, variables, x = _convnet(size=20, global_pool="avg", dense=())
  cam = explain.grad_cam(model, variables, x, layer="conv1", target_class=1)
  _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  act = state["intermediates"]["conv1"]["__call__"][0]  # (2, 4, 4, 4)
  w = variables["params"]["head"]["kernel"][:, 1]
  expected = jax.nn.relu(jnp.einsum("nhwk,k->nhw", act, w)) / (4 * 4)
  assert cam.shape == (2, 4, 4)
  assert float(cam.min()) >= 0 and float(cam.max()) > 0
  np.testing.assert_allclose(cam, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("dims,layer,shape", [(2, "down0/conv0", (1, 16, 16)),
                                              (3, "bottleneck", (1, 4, 4, 4))])
def test_grad_cam_of_unet_layers_is_non_negative_at_the_layer_shape(dims, layer, shape):
  model = UNet(spatial_dims=dims, features=(4, 8), num_classes=2)
  x = normal((1, 16, 16, 1) if dims == 2 else (1, 8, 8, 8, 1), seed=1)
  variables = init(model, x)
  cam = explain.grad_cam(model, variables, x, layer=layer, target_class=1,
                         mask=np.ones(x.shape[:-1], bool))
  assert cam.shape == shape
  assert bool(jnp.all(jnp.isfinite(cam))) and float(cam.min()) >= 0.0 and float(cam.max()) > 0
  assert explain.resize_map(cam, x.shape[1:-1]).shape == x.shape[:-1]


def test_grad_cam_default_layer_and_unknown_layer_error():
  model, variables, x = _convnet()
  assert explain.default_layer(explain.spatial_layers(model, variables, x)) == "conv1"
  unet = UNet(spatial_dims=2, features=(4, 8), num_classes=2)
  unet_variables = init(unet, x)
  layers = explain.spatial_layers(unet, unet_variables, x)
  assert layers["bottleneck"] == (2, 8, 8, 8)
  assert explain.default_layer(layers) == "bottleneck"
  assert explain.default_layer(layers, segmentation=True) == "up0"
  with pytest.raises(InputError) as error:
    explain.grad_cam(unet, unet_variables, x, layer="down9/conv0", target_class=1)
  message = str(error.value)
  assert "\n" not in message and "down9/conv0" in message
  assert "down0/conv0" in message and "bottleneck" in message and "up0" in message


def test_occlusion_is_non_zero_only_where_the_model_looks():
  model = LooksAtOneRegion()
  x = normal((2, 16, 16, 1), seed=2)
  variables = init(model, x)
  heat = np.asarray(explain.occlusion(model, variables, x, patch=4, target_class=1,
                                      batch_size=5))
  assert heat.shape == (2, 16, 16)
  inside = np.zeros((16, 16), bool)
  inside[4:8, 8:12] = True
  energy = np.sum(np.asarray(x)[:, 4:8, 8:12] ** 2, axis=(1, 2, 3))
  assert np.abs(heat[:, ~inside]).max() < 1e-5 * energy.min()  # float32 rounding only
  np.testing.assert_allclose(heat[:, inside], np.repeat(energy[:, None], 16, 1), rtol=1e-5)
  # overlapping patches (stride 2): each voxel averages the drops of the patches covering it
  heat2 = np.asarray(explain.occlusion(model, variables, x, patch=4, stride=2, target_class=1))
  assert np.all(heat2[:, inside] > 1e-3 * energy.min())
  far = np.ones((16, 16), bool)
  far[2:10, 6:14] = False  # no patch covering these voxels touches the region
  assert np.abs(heat2[:, far]).max() < 1e-5 * energy.min()


def test_bad_target_and_arguments_are_input_errors():
  model, variables, x = _convnet()
  with pytest.raises(InputError, match=r"target_class=5: expected a class in \[0, 3\)"):
    explain.saliency(model, variables, x, target_class=5)
  with pytest.raises(InputError, match="only a segmentation model"):
    explain.saliency(model, variables, x, target_class=1, mask=np.ones((2, 16, 16), bool))
  with pytest.raises(InputError, match="rule='simpson'"):
    explain.integrated_gradients(model, variables, x, rule="simpson")


# --- the launcher on a real (one-step) run ----------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
  root = tmp_path_factory.mktemp("explain")
  config = unet2d_synthetic.get_config("smoke")
  config.data_dir = data_dir
  config.num_steps = 1
  config.eval.surface_metrics = False
  config.eval.report_cases = 0
  workdir = str(root / "run")
  loop.train_and_evaluate(config, workdir)
  return workdir


def _explain(*flags):
  return subprocess.run([sys.executable, "-m", "experiments.explain", *flags],
                        capture_output=True, text=True, timeout=300)


@pytest.mark.e2e
def test_launcher_writes_one_png_per_method(run_dir, tmp_path):
  out = tmp_path / "pngs"
  result = _explain(f"--workdir={run_dir}", "--case=test_00001", f"--output={out}")
  assert result.returncode == 0, result.stderr[-2000:]
  printed = result.stdout.split()
  expected = [str(out / f"test_00001_{m}.png") for m in explain.METHODS]
  assert printed == expected + [str(out / "test_00001_methods.png")]
  for path in printed:
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in printed)


@pytest.mark.e2e
def test_launcher_unknown_case_is_one_line_exit_2(run_dir, tmp_path):
  result = _explain(f"--workdir={run_dir}", "--case=test_99999", f"--output={tmp_path}")
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: --case=test_99999")
  assert "test_00000" in lines[0] and "test_00003" in lines[0]
  assert os.listdir(tmp_path) == []


@pytest.mark.e2e
def test_unknown_method_or_layer_of_a_run_is_one_line_listing_what_exists(run_dir, tmp_path):
  with pytest.raises(InputError, match="unknown method lime; expected some of saliency"):
    explain_report.explain_case(run_dir, "test_00000", methods=["grad_cam", "lime"])
  with pytest.raises(InputError, match=r"layer='up7': .* down0/conv0, .*, up0"):
    explain_report.explain_case(run_dir, "test_00000", methods=["grad_cam"], layer="up7",
                                output=str(tmp_path))
  assert os.listdir(tmp_path) == []
