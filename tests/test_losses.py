"""Losses: hand-computed values, finite-difference gradients, edge cases."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import losses
from medjax.errors import InputError

# Two voxels, two classes: probabilities [0.8, 0.2] (label 0), [0.3, 0.7] (label 1).
P2 = np.array([[[0.8, 0.2], [0.3, 0.7]]])
L2 = np.array([[0, 1]])
LOGITS2 = np.log(P2).astype(np.float32)

ALL_NAMES = ("ce", "wce", "dice", "gdl", "gwdl", "dice_ce", "tversky", "focal")


@pytest.fixture
def x64():
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)


def close(a, b, tol=1e-5):
  np.testing.assert_allclose(np.asarray(a), b, rtol=tol, atol=tol)


# --------------------------------------------------------------------------
# hand-computed values


def test_cross_entropy_value():
  close(losses.cross_entropy(LOGITS2, L2), -(math.log(0.8) + math.log(0.7)) / 2)


def test_cross_entropy_ignore_index():
  labels = np.array([[0, 255]])
  close(losses.cross_entropy(LOGITS2, labels, ignore_index=255), -math.log(0.8))
  all_ignored = np.array([[255, 255]])
  close(losses.cross_entropy(LOGITS2, all_ignored, ignore_index=255), 0.0)


def test_weighted_cross_entropy_per_class_and_per_voxel():
  ce0, ce1 = -math.log(0.8), -math.log(0.7)
  close(losses.weighted_cross_entropy(LOGITS2, L2, jnp.array([1.0, 3.0])),
        (1 * ce0 + 3 * ce1) / 4)
  close(losses.weighted_cross_entropy(LOGITS2, L2, jnp.array([[2.0, 1.0]])),
        (2 * ce0 + 1 * ce1) / 3)
  with pytest.raises(InputError, match="weights shape"):
    losses.weighted_cross_entropy(LOGITS2, L2, jnp.ones(3))


def test_soft_dice_value():
  # class 0: I=0.8, P=1.1, T=1; class 1: I=0.7, P=0.9, T=1.
  expected = ((1 - 1.6 / 2.1) + (1 - 1.4 / 1.9)) / 2
  close(losses.soft_dice(LOGITS2, L2, smooth_nr=0, smooth_dr=0), expected)
  close(losses.soft_dice(LOGITS2, L2, smooth_nr=0, smooth_dr=0,
                         include_background=False), 1 - 1.4 / 1.9)
  # V-Net: P = sum p^2 -> 0.73 and 0.53.
  expected_sq = ((1 - 1.6 / 1.73) + (1 - 1.4 / 1.53)) / 2
  close(losses.soft_dice(LOGITS2, L2, squared=True, smooth_nr=0, smooth_dr=0),
        expected_sq)


def test_soft_dice_batch_sums_statistics_first():
  probs = np.array([[[0.8, 0.2], [0.3, 0.7]], [[0.9, 0.1], [0.6, 0.4]]])
  labels = np.array([[0, 1], [0, 0]])
  logits = np.log(probs).astype(np.float32)
  # per sample: A as above; B: class 0 I=1.5 P=1.5 T=2, class 1 I=0 P=0.5 T=0.
  per_sample = ((1 - 1.6 / 2.1) + (1 - 1.4 / 1.9) + (1 - 3.0 / 3.5) + 1.0) / 4
  # batch: class 0 I=2.3 P=2.6 T=3, class 1 I=0.7 P=1.4 T=1.
  batched = ((1 - 4.6 / 5.6) + (1 - 1.4 / 2.4)) / 2
  kw = dict(smooth_nr=0, smooth_dr=0, kernels="xla")
  close(losses.soft_dice(logits, labels, **kw), per_sample)
  close(losses.soft_dice(logits, labels, batch=True, **kw), batched)
  assert per_sample - batched > 0.1


def test_generalized_dice_values():
  # labels [0, 0, 1]; T = [2, 1], I = [1.4, 0.7], P = [1.7, 1.3].
  probs = np.array([[[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]]])
  labels = np.array([[0, 0, 1]])
  logits = np.log(probs).astype(np.float32)
  kw = dict(smooth_nr=0, smooth_dr=0)
  # square: w = [1/4, 1]
  close(losses.generalized_dice(logits, labels, **kw),
        1 - 2 * (1.4 / 4 + 0.7) / (3.7 / 4 + 2.3))
  close(losses.generalized_dice(logits, labels, weight_type="simple", **kw),
        1 - 2 * (1.4 / 2 + 0.7) / (3.7 / 2 + 2.3))
  close(losses.generalized_dice(logits, labels, weight_type="uniform", **kw),
        1 - 2 * 2.1 / 6.0)


def test_generalized_dice_absent_class_uses_max_weight():
  # K=3, class 2 absent: its weight becomes max(1/4, 1) = 1 (MONAI).
  probs = np.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.2, 0.6, 0.2]]])
  labels = np.array([[0, 0, 1]])
  logits = jnp.asarray(np.log(probs), jnp.float32)
  value = losses.generalized_dice(logits, labels, smooth_nr=0, smooth_dr=0)
  # I = [1.2, 0.6, 0], P = [1.4, 1.1, 0.5], T = [2, 1, 0], w = [1/4, 1, 1].
  close(value, 1 - 2 * (1.2 / 4 + 0.6) / (3.4 / 4 + 2.1 + 0.5))
  grad = jax.jit(jax.grad(losses.generalized_dice))(logits, labels)
  assert np.all(np.isfinite(grad))


def test_generalized_wasserstein_dice_two_classes():
  m = np.array([[0.0, 1.0], [1.0, 0.0]])
  # W = [M[0].p1, M[1].p2] = [0.2, 0.3]; default alpha = [0, 1]:
  # TP = 1 * (1 - 0.3) = 0.7, loss = 1 - 1.4 / (1.4 + 0.5).
  close(losses.generalized_wasserstein_dice(LOGITS2, L2, m, smooth=0), 0.5 / 1.9)
  # GDL weighting: alpha = 1 / (volume + 1) = [1/2, 1/2];
  # TP = (0.8 + 0.7) / 2, denominator = (1.8 + 1.7) / 2 -> loss 1 - 1.5 / 1.75.
  close(losses.generalized_wasserstein_dice(LOGITS2, L2, m, weighting="gdl",
                                            smooth=0), 1 / 7)


def test_generalized_wasserstein_dice_three_classes_and_rescaling():
  m = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]])
  probs = np.array([[[0.1, 0.6, 0.3], [0.2, 0.2, 0.6]]])
  labels = np.array([[1, 2]])
  logits = np.log(probs).astype(np.float32)
  # W = [0.1 + 0.5 * 0.3, 0.2 + 0.5 * 0.2] = [0.25, 0.3]; TP = 0.75 + 0.7.
  expected = 1 - 2.9 / (2.9 + 0.55)
  close(losses.generalized_wasserstein_dice(logits, labels, m, smooth=0), expected)
  # M is rescaled by its maximum (MONAI): 2 M gives the same loss.
  close(losses.generalized_wasserstein_dice(logits, labels, 2 * m, smooth=0),
        expected)


def test_tversky_value_and_dice_special_case():
  # class 0: I=0.8 FP=0.3 FN=0.2; class 1: I=0.7 FP=0.2 FN=0.3.
  expected = ((1 - 0.8 / (0.8 + 0.3 * 0.3 + 0.7 * 0.2))
              + (1 - 0.7 / (0.7 + 0.3 * 0.2 + 0.7 * 0.3))) / 2
  close(losses.tversky(LOGITS2, L2, alpha=0.3, beta=0.7, smooth_nr=0,
                       smooth_dr=0), expected)
  close(losses.tversky(LOGITS2, L2), losses.soft_dice(LOGITS2, L2))


def test_focal_value():
  ce0, ce1 = -math.log(0.8), -math.log(0.7)
  close(losses.focal(LOGITS2, L2), (0.2 ** 2 * ce0 + 0.3 ** 2 * ce1) / 2)
  # scalar alpha: 1 - a for background, a for the others.
  close(losses.focal(LOGITS2, L2, alpha=0.25),
        (0.75 * 0.2 ** 2 * ce0 + 0.25 * 0.3 ** 2 * ce1) / 2)
  close(losses.focal(LOGITS2, L2, gamma=0.0), losses.cross_entropy(LOGITS2, L2))


def test_dice_ce_is_the_weighted_sum():
  expected = (0.5 * losses.soft_dice(LOGITS2, L2, squared=True)
              + 2.0 * losses.cross_entropy(LOGITS2, L2))
  close(losses.dice_ce(LOGITS2, L2, dice_weight=0.5, ce_weight=2.0,
                       squared=True), expected)


# --------------------------------------------------------------------------
# U-Net weight map


def test_unet_weight_map_hand_values():
  labels = np.zeros((6, 7), int)
  labels[1:4, 1:3] = 1  # object A: columns 1-2
  labels[1:4, 4:6] = 1  # object B: columns 4-5, one-pixel gap at column 3
  w = losses.unet_weight_map(labels, w0=10.0, sigma=5.0)
  n_fg, n = 12, 42
  wc_bg, wc_fg = 1 / (2 * (n - n_fg) / n), 1 / (2 * n_fg / n)
  # gap pixel: d1 = d2 = 1.
  close(w[2, 3], wc_bg + 10 * math.exp(-4 / 50), 1e-5)
  # corner (0, 0): d1 = sqrt(2) (to (1, 1)), d2 = sqrt(1 + 16) (to (1, 4)).
  d = math.sqrt(2) + math.sqrt(17)
  close(w[0, 0], wc_bg + 10 * math.exp(-d * d / 50), 1e-5)
  close(w[2, 1], wc_fg)  # no border term inside objects
  assert abs(np.mean(w * 0 + np.where(labels > 0, wc_fg, wc_bg)) - 1) < 1e-6


def test_unet_weight_map_single_object_batch_and_class_weights():
  labels = np.zeros((2, 5, 5), int)
  labels[0, 1:3, 1:3] = 1
  w = losses.unet_weight_map(labels, class_weights=[0.5, 2.0])
  assert w.shape == (2, 5, 5) and w.dtype == np.float32
  np.testing.assert_allclose(w[0], np.where(labels[0] > 0, 2.0, 0.5))
  np.testing.assert_allclose(w[1], 0.5)  # one object or none: no border term
  # one 3-D volume
  vol = np.zeros((3, 4, 4), int)
  vol[1, 0, 0] = vol[1, 3, 3] = 1
  w3 = losses.unet_weight_map(vol, spatial_dims=3)
  wc_bg = 1 / (2 * 46 / 48)
  assert w3.shape == vol.shape
  # (0, 1, 1) lies on no slice holding an object: only a 3-D map weights it.
  d = math.sqrt(1 + 1 + 1) + math.sqrt(1 + 4 + 4)
  close(w3[0, 1, 1], wc_bg + 10 * math.exp(-d * d / 50))


# --------------------------------------------------------------------------
# gradients and edge cases


def _random_case(k=3, shape=(2, 3, 4), seed=0, dtype=np.float64):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=shape + (k,)).astype(dtype)
  labels = rng.integers(0, k, size=shape)
  labels[0, 0, 0], labels[0, 0, 1], labels[0, 0, 2] = 0, 1, 2
  return jnp.asarray(logits), jnp.asarray(labels)


GRAD_CASES = [
    ("ce", {}), ("ce", {"ignore_index": 2}), ("wce", {}),
    ("dice", {"kernels": "xla"}),
    ("dice", {"kernels": "xla", "squared": True, "batch": True}),
    ("gdl", {"kernels": "xla"}),
    ("gdl", {"kernels": "xla", "weight_type": "simple"}),
    ("gwdl", {}), ("gwdl", {"weighting": "gdl"}),
    ("dice_ce", {"kernels": "xla"}),
    ("tversky", {"alpha": 0.3, "beta": 0.7, "kernels": "xla"}),
    ("focal", {"alpha": 0.25}),
]


@pytest.mark.parametrize("name,kwargs", GRAD_CASES)
def test_gradient_matches_finite_differences(x64, name, kwargs):
  logits, labels = _random_case()
  fn = jax.jit(losses.get_loss(name, **kwargs))
  grad = jax.jit(jax.grad(fn))(logits, labels)
  assert grad.dtype == jnp.float64
  rng = np.random.default_rng(1)
  h = 1e-5
  for _ in range(2):
    v = jnp.asarray(rng.normal(size=logits.shape))
    numeric = (fn(logits + h * v, labels) - fn(logits - h * v, labels)) / (2 * h)
    np.testing.assert_allclose(float(jnp.vdot(grad, v)), float(numeric),
                               rtol=1e-6, atol=1e-9)


def test_weighted_cross_entropy_voxel_map_gradient(x64):
  logits, labels = _random_case()
  weights = jnp.asarray(np.random.default_rng(2).uniform(0.1, 3, labels.shape))
  fn = jax.jit(lambda x: losses.weighted_cross_entropy(x, labels, weights))
  v = jnp.asarray(np.random.default_rng(3).normal(size=logits.shape))
  h = 1e-5
  numeric = (fn(logits + h * v) - fn(logits - h * v)) / (2 * h)
  np.testing.assert_allclose(float(jnp.vdot(jax.grad(fn)(logits), v)),
                             float(numeric), rtol=1e-6)


def _perfect(k=3):
  labels = jnp.array([[[0, 1, 1], [0, 0, 1]]])  # class 2 absent
  return 30.0 * jax.nn.one_hot(labels, k), labels


@pytest.mark.parametrize("name", ALL_NAMES)
def test_perfect_prediction_finite_gradient(name):
  logits, labels = _perfect()
  value, grad = jax.jit(jax.value_and_grad(losses.get_loss(name)))(logits, labels)
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  if name in ("dice", "gdl", "gwdl", "tversky"):
    assert abs(float(value)) < 1e-5
  else:
    assert 0 <= float(value) < 1e-10 or name == "dice_ce" and float(value) < 1e-5


def test_cross_entropy_minimal_at_the_labels():
  logits, labels = _perfect()
  perfect = losses.cross_entropy(logits, labels)
  assert perfect < losses.cross_entropy(logits * 0.5, labels)
  assert perfect < losses.cross_entropy(jnp.zeros_like(logits), labels)
  close(losses.cross_entropy(jnp.zeros_like(logits), labels), math.log(3))


def test_dice_family_all_background_and_empty_foreground_finite():
  labels = jnp.zeros((2, 4, 4), jnp.int32)
  logits = jnp.zeros((2, 4, 4, 3))
  cases = [("dice", {}), ("dice", {"include_background": False}),
           ("gdl", {}), ("gdl", {"include_background": False}),
           ("gwdl", {}), ("tversky", {"include_background": False})]
  for name, kwargs in cases:
    fn = jax.jit(jax.value_and_grad(losses.get_loss(name, **kwargs)))
    value, grad = fn(logits, labels)
    assert np.isfinite(value) and np.all(np.isfinite(grad)), (name, kwargs)


def test_spatial_rank_agnostic_and_jit():
  logits, labels = _random_case(dtype=np.float32)
  logits3 = logits[..., None, :]  # (N, 3, 4, 1, K)
  labels3 = labels[..., None]
  for name in ("ce", "dice", "gwdl"):
    fn = jax.jit(losses.get_loss(name))
    close(fn(logits3, labels3), fn(logits, labels), 1e-5)


def test_auto_kernels_match_xla():
  logits, labels = _random_case(dtype=np.float32)
  for squared in (False, True):
    a = losses.soft_dice(logits, labels, squared=squared, kernels="auto")
    b = losses.soft_dice(logits, labels, squared=squared, kernels="xla")
    close(a, b, 1e-5)
  stats = losses.dice_statistics(logits, labels, kernels="xla")
  assert [s.shape for s in stats] == [(2, 3)] * 3
  close(stats[2].sum(), 24)


def test_dice_statistics_of_probabilities_and_sigmoid():
  # activation=None: the inputs are the probabilities (P2); sigmoid: per channel.
  inter, psum, tsum = losses.dice_statistics(P2.astype(np.float32), L2, activation=None)
  close(inter, [[0.8, 0.7]])
  close(psum, [[1.1, 0.9]])
  close(tsum, [[1.0, 1.0]])
  q = 1.0 / (1.0 + np.exp(-LOGITS2[0]))
  inter, psum, _ = losses.dice_statistics(LOGITS2, L2, activation="sigmoid", squared=True)
  close(inter, [[q[0, 0], q[1, 1]]])
  close(psum, [np.sum(q * q, axis=0)])


def test_implementation_is_a_deprecated_alias_of_kernels():
  expected = losses.soft_dice(LOGITS2, L2, kernels="xla")
  for fn in (losses.soft_dice, losses.generalized_dice, losses.tversky, losses.dice_ce):
    with pytest.warns(DeprecationWarning, match="kernels="):
      close(fn(LOGITS2, L2, implementation="xla"), fn(LOGITS2, L2, kernels="xla"))
  with pytest.warns(DeprecationWarning):
    close(losses.get_loss("dice", implementation="xla")(LOGITS2, L2), expected)
  assert {"kernels", "implementation"} <= set(losses.loss_options("dice_ce"))
  with pytest.raises(ValueError, match="give one"):
    losses.soft_dice(LOGITS2, L2, kernels="pallas", implementation="xla")


def test_bfloat16_logits_computed_in_float32():
  logits, labels = _random_case(dtype=np.float32)
  a = losses.soft_dice(logits.astype(jnp.bfloat16), labels, kernels="xla")
  assert a.dtype == jnp.float32
  close(a, losses.soft_dice(logits, labels, kernels="xla"), 2e-2)


def test_invalid_options():
  with pytest.raises(ValueError, match="kernels='cuda': expected one of"):
    losses.soft_dice(LOGITS2, L2, kernels="cuda")
  with pytest.raises(ValueError, match="kernels='cuda'"), pytest.warns(DeprecationWarning):
    losses.soft_dice(LOGITS2, L2, implementation="cuda")
  with pytest.raises(ValueError, match="weight_type"):
    losses.generalized_dice(LOGITS2, L2, weight_type="cubic")
  with pytest.raises(InputError, match="dist_matrix"):
    losses.generalized_wasserstein_dice(LOGITS2, L2, np.zeros((3, 3)))
  with pytest.raises(InputError, match="labels shape"):
    losses.cross_entropy(LOGITS2, np.zeros((1, 3), int))


def test_get_loss_names_and_errors():
  for name in ALL_NAMES:
    assert np.isfinite(losses.get_loss(name)(LOGITS2, L2))
  with pytest.raises(InputError, match=r"loss\.name.*ce, wce, dice"):
    losses.get_loss("hinge")
  with pytest.raises(InputError, match=r"loss\.gama"):
    losses.get_loss("focal", gama=2.0)
  m = np.array([[0.0, 1.0], [1.0, 0.0]])
  close(losses.get_loss("gwdl", dist_matrix=m, smooth=0)(LOGITS2, L2), 0.5 / 1.9)
  close(losses.get_loss("gwdl", smooth=0)(LOGITS2, L2), 0.5 / 1.9)
  close(losses.get_loss("dice_ce", squared=True, ce_weight=0.0)(LOGITS2, L2),
        losses.soft_dice(LOGITS2, L2, squared=True))


def test_wce_default_weights_inverse_frequency():
  labels = jnp.array([[0, 0, 0, 1]])
  w = losses.inverse_frequency_weights(labels, 3)
  # V=4, K=3: w_k = 7 / (3 (n_k + 1)), n = [3, 1, 0].
  close(w, [7 / 12, 7 / 6, 7 / 3])
  logits = jnp.zeros((1, 4, 3))
  # uniform logits: every voxel's CE is log 3, whatever the weights.
  close(losses.get_loss("wce")(logits, labels), math.log(3))
