"""Augmentation on the device (medjax.data.pipeline.augment) and inside the SPMD step."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.ndimage
from jax.sharding import PartitionSpec as P

from experiments.configs import unet3d_synthetic
from medjax import parallel
from medjax.data.pipeline import augment
from medjax.errors import InputError
from medjax.models import UNet
from medjax.train.state import TrainState
from medjax.train.step import augment_batch, make_train_step

OFF = augment.Augmentation(**{f.name: 0.0 for f in dataclasses.fields(augment.Augmentation)
                              if f.name.endswith("_p")})
# Every transform drawn for every sample.
ALL = dataclasses.replace(OFF, **{f.name: 1.0 for f in dataclasses.fields(OFF)
                                  if f.name.endswith("_p")}, mirror_axes=(0, 1))


def _batch(n=4, shape=(10, 10), channels=2, labels=(0, 1, 2), seed=0):
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(n, *shape, channels)).astype(np.float32)
  label = rng.choice(np.asarray(labels, np.int32), size=(n, *shape))
  return image, label


def test_identity_parameters_leave_image_and_label_unchanged():
  """Every transform applied (p=1) with ranges that make it the identity: 3D,
  in-plane mode included."""
  identity = dataclasses.replace(
      ALL, mirror_axes=(), rotation_degrees=0.0, scale_range=(1.0, 1.0), elastic_sigma=0.0,
      noise_variance=(0.0, 0.0), blur_sigma=(0.0, 0.0), brightness_range=(1.0, 1.0),
      contrast_range=(1.0, 1.0), lowres_zoom=(1.0, 1.0), gamma_range=(1.0, 1.0),
      through_plane_axis=0)
  image, label = _batch(n=2, shape=(3, 6, 6))
  out, out_label = jax.jit(lambda k, x, y: augment.augment(k, x, y, identity))(
      jax.random.key(0), image, label)
  np.testing.assert_array_equal(out_label, label)
  np.testing.assert_allclose(out, image, atol=2e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_rotation_by_90_degrees_equals_rot90(spatial_dims):
  shape = (7,) * spatial_dims
  image, label = _batch(n=1, shape=shape, channels=1, labels=(0, 3, 4))
  planes = [(0, 1)] if spatial_dims == 2 else [(1, 2), (0, 2), (0, 1)]
  rotate = jax.jit(lambda a, x, y: augment.warp(
      x, y, augment.sampling_grid(shape, augment.rotation_matrix(a, spatial_dims))))
  for k, plane in enumerate(planes):
    angles = jnp.zeros(len(planes)).at[k].set(np.pi / 2)
    out, out_label = rotate(angles, image[0], label[0])
    np.testing.assert_array_equal(out_label, np.rot90(label[0], 1, plane))
    np.testing.assert_allclose(out, np.rot90(image[0], 1, plane), atol=1e-5)


def test_labels_stay_in_the_label_set_after_rotation_scaling_and_elastic_deformation():
  geometric = dataclasses.replace(OFF, rotation_p=1.0, scale_p=1.0, elastic_p=1.0,
                                  elastic_sigma=3.0)
  image, label = _batch(n=4, shape=(12, 12), labels=(1, 2, 5))
  out, out_label = jax.jit(lambda k, x, y: augment.augment(k, x, y, geometric))(
      jax.random.key(1), image, label)
  assert out_label.dtype == label.dtype
  assert set(np.unique(out_label)) <= {1, 2, 5}
  for i in range(4):  # each sample was resampled, not copied
    assert np.mean(np.asarray(out_label[i]) != label[i]) > 0.2
    assert np.abs(np.asarray(out[i]) - image[i]).mean() > 0.1


def test_blur_and_low_resolution_values():
  x = np.random.default_rng(2).normal(size=(9, 8, 1)).astype(np.float32)
  blurred = jax.jit(augment.gaussian_blur, static_argnames="radius")(
      x, jnp.asarray([[1.0, 0.9]]), radius=3)
  np.testing.assert_allclose(blurred[..., 0], scipy.ndimage.gaussian_filter(
      x[..., 0], (1.0, 0.9), mode="reflect", truncate=3.0), atol=1e-5)
  # zoom 1/2 along axis 0 of a ramp: coarse samples 1, 3, 5, 7, linearly upsampled.
  ramp = jnp.broadcast_to(jnp.arange(8.0)[:, None, None], (8, 3, 1))
  low = jax.jit(augment.low_resolution)(ramp, jnp.asarray([[0.5, 1.0]]))
  np.testing.assert_allclose(low[:, 0, 0], [1, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7])
  np.testing.assert_array_equal(low[:, 1:], low[:, :1].repeat(2, 1))


def test_gamma_keeps_each_channel_mean_and_std():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(6, 6, 2)) * [1.0, 3.0] + [0.0, 5.0],
                  jnp.float32)
  for invert in (False, True):
    y = jax.jit(augment.gamma, static_argnames="invert")(x, jnp.asarray([1.5, 0.7]), invert=invert)
    np.testing.assert_allclose(y.mean((0, 1)), x.mean((0, 1)), atol=1e-4)
    np.testing.assert_allclose(y.std((0, 1)), x.std((0, 1)), rtol=1e-4)
    assert np.abs(np.asarray(y - x)).max() > 0.05


def _augmented(mesh_devices, image, label, step, aug):
  mesh = parallel.make_mesh(mesh_devices)

  @jax.jit
  def run(step, image, label):
    return jax.shard_map(lambda s, x, y: augment_batch({"image": x, "label": y}, aug, seed=0,
                                                       step=s),
                         mesh=mesh, in_specs=(P(), P("data"), P("data")),
                         out_specs=P("data"), check_vma=False)(step, image, label)
  out = run(jnp.int32(step), image, label)
  return np.asarray(out["image"]), np.asarray(out["label"])


def test_same_seed_and_step_give_the_same_batch_on_any_number_of_devices():
  assert jax.device_count() == 4
  image, label = _batch(n=4, shape=(8, 8))
  aug = dataclasses.replace(OFF, rotation_p=1.0, noise_p=1.0, mirror_axes=(0, 1))
  x4, y4 = _augmented(jax.devices(), image, label, 3, aug)
  x1, y1 = _augmented(jax.devices()[:1], image, label, 3, aug)
  np.testing.assert_allclose(x4, x1, atol=1e-6)
  np.testing.assert_array_equal(y4, y1)
  assert np.abs(x4 - image).mean() > 0.1
  x5, y5 = _augmented(jax.devices(), image, label, 4, aug)
  assert np.abs(x5 - x4).mean() > 0.1 and np.mean(y5 != y4) > 0.1
  # the samples of one batch are augmented differently
  assert np.abs(x4[0] - x4[1] - (image[0] - image[1])).mean() > 0.1


def test_training_with_augmentation_under_shard_map_lowers_the_loss():
  """4 CPU devices, the nnU-Net set plus elastic deformation and mirroring."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:16, :16]
  centres = rng.uniform(5, 11, size=(8, 2))
  label = ((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2 < 16).astype(np.int32)
  image = (2.0 * label + rng.normal(0, 0.5, label.shape))[..., None].astype(np.float32)
  aug = dataclasses.replace(augment.Augmentation(), elastic_p=0.3, mirror_axes=(0, 1))
  model = UNet(spatial_dims=2, features=(4, 8), num_classes=2)
  dp = parallel.DataParallel("shard_map")
  # one compiled program (eager init compiles every initialiser alone), the same key
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(
      jnp.zeros((1, 16, 16, 1)))
  state = dp.replicate(jax.device_get(TrainState.create(params=variables["params"],
                                                        batch_stats={}, tx=optax.adam(1e-2))))
  ce = lambda logits, y: optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  step = dp.spmd(make_train_step(model, ce, seed=0, augmentation=aug), donate_argnums=(0,))
  batch = dp.shard_batch({"image": image, "label": label})
  losses = []
  for _ in range(12):
    state, metrics = step(state, batch)
    losses.append(float(np.asarray(metrics["loss"]).reshape(-1)[0]))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.6 * losses[0]


def test_from_config():
  c = unet3d_synthetic.get_config()
  assert augment.from_config(c.augment, spacing=c.spacing, spatial_dims=3) is None  # default off
  c.augment.enabled = True
  aug = augment.from_config(c.augment, spacing=c.spacing, spatial_dims=3)
  assert aug == dataclasses.replace(augment.Augmentation(), through_plane_axis=0)  # 2.5 > 3 x 0.8
  assert augment.from_config(c.augment, spacing=(1.0, 1.0, 2.0), spatial_dims=3
                             ).through_plane_axis is None
  c.augment.anisotropic = "in_plane"
  assert augment.from_config(c.augment, spacing=(1.0, 1.0, 2.0), spatial_dims=3
                             ).through_plane_axis == 2
  c.augment.mirror_axes = (3,)
  with pytest.raises(InputError, match=r"config.augment.mirror_axes=\(3,\): axis 3 out of range"):
    augment.from_config(c.augment, spacing=c.spacing, spatial_dims=3)
  with pytest.raises(InputError, match=r"config.augment.gamma_p=1.5: expected a probability"):
    augment.from_config({"enabled": True, "gamma_p": 1.5}, spacing=(1, 1), spatial_dims=2)
  with pytest.raises(InputError, match=r"config.augment.rotaton_p: unknown field"):
    augment.from_config({"enabled": True, "rotaton_p": 0.2}, spacing=(1, 1), spatial_dims=2)


def test_standard_normal_draws_are_finite_at_the_ends_of_the_uniform_range():
  """u = 0 is a possible `jax.random.uniform` draw: its noise must not be -inf (a NaN loss)."""
  ends = augment.standard_normal(jnp.asarray([0.0, 1.0 - 2.0 ** -23]))
  np.testing.assert_allclose(ends, [-5.2947, 5.2947], rtol=1e-4)
  z = augment.standard_normal(jax.random.uniform(jax.random.key(0), (200_000,)))
  assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1.0) < 0.01


def test_the_config_section_is_the_dataclass_defaults():
  """`base_config().augment` is written from `Augmentation`'s defaults (one source): enabled,
  it gives exactly `Augmentation()` (isotropic spacing: no through-plane axis), and the
  anisotropic default spacing picks the thick axis."""
  from experiments.configs import common
  section = common.base_config().augment
  assert not section.enabled and section.anisotropic == "auto"
  on = dict(section.to_dict(), enabled=True)
  assert augment.from_config(on, spacing=(1.0, 1.0, 1.0), spatial_dims=3) == augment.Augmentation()
  thick = augment.from_config(on, spacing=(2.5, 0.8, 0.8), spatial_dims=3)
  assert thick == dataclasses.replace(augment.Augmentation(), through_plane_axis=0)
