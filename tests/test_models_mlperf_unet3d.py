"""`medjax.models.MLPerfUNet3D` against the MLPerf reference `Unet3D` in PyTorch.

The reference is transcribed in `benchmarks/torch_mlperf_unet3d.py` from mlcommons/training
`retired_benchmarks/unet3d/pytorch/model/{unet3d,layers}.py`; its weights are copied into
the flax model, which must have exactly as many parameters and give the same logits.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import abstract_init, count
from medjax.models import MLPerfUNet3D

torch = pytest.importorskip("torch")
from benchmarks import torch_mlperf_unet3d as ref  # noqa: E402


def test_parameter_count_equals_reference():
  reference = ref.build_unet3d(1, 3)
  variables, out = abstract_init(MLPerfUNet3D(), (1, 32, 32, 32, 1))
  assert count(variables) == ref.count_parameters(reference) == 31_190_243
  assert out.shape == (1, 32, 32, 32, 3)


@pytest.mark.parametrize("kernels", ["xla", "pallas"])
def test_forward_equals_reference(kernels):
  # The smallest input PyTorch's instance norm takes at the bottleneck (2 voxels there),
  # and narrow filters (the architecture does not depend on the widths; the full
  # widths are checked by the parameter count): seconds instead of a minute on CPU.
  filters = (8, 16, 16, 16, 16) if kernels == "xla" else (2, 4, 4, 4, 4)
  torch.manual_seed(0)
  reference = ref.build_unet3d(1, 3, filters=filters).eval()
  with torch.no_grad():  # non-trivial norm affines: the copy must map them too
    for m in reference.modules():
      if isinstance(m, torch.nn.InstanceNorm3d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
  x = np.random.default_rng(0).normal(size=(1, 1, 32, 32, 64)).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 4, 1)
  model = MLPerfUNet3D(filters=filters, kernels=kernels)
  variables = jax.tree.map(jnp.asarray, ref.to_flax_variables(reference))
  got = jax.jit(lambda v, x: model.apply(v, x, train=True))(variables, x.transpose(0, 2, 3, 4, 1))
  assert got.dtype == jnp.float32 and got.shape == expected.shape
  scale = np.abs(expected).max()
  np.testing.assert_allclose(np.asarray(got), expected, atol=2e-4 * scale, rtol=0)


def test_spatial_size_must_divide():
  with pytest.raises(ValueError, match="multiple of 32"):
    abstract_init(MLPerfUNet3D(), (1, 32, 32, 48, 1))
