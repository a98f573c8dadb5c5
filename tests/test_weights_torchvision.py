"""Importing torchvision-layout weights (`medjax.weights`): an imported ResNet-18
and VGG-16 reproduce PyTorch modules written with torchvision's parameter names;
the file formats; the one-line errors; 1-channel and 3D adaptation.

PyTorch (CPU) is part of the `test` extra: `import torch` below fails the
module loudly where it is missing, nothing is skipped. torchvision itself is
not needed: the modules below spell its parameter names with plain `torch.nn`.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from torch import nn

from helpers import abstract_init, apply
from medjax.errors import InputError
from medjax.models import ConvNet, ResNet, ResNet18, ResNet34, ResNet50
from medjax.weights import (adapt_input_channels, apply_slicewise, inflate_to_3d, load_state_dict,
                            resnet_variables, torchvision_variables, vgg_variables)

torch.set_num_threads(2)


# ----------------------------------------------------------------------------- torchvision-named modules

class _BasicBlock(nn.Module):
  """torchvision.models.resnet.BasicBlock, same attribute names."""

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class _TorchResNet18(nn.Module):
  """torchvision.models.resnet18's structure and state-dict keys."""

  def __init__(self, num_classes=1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = 64
    for i, cout in enumerate((64, 128, 256, 512)):
      stride = 1 if i == 0 else 2
      setattr(self, f"layer{i + 1}", nn.Sequential(_BasicBlock(cin, cout, stride),
                                                   _BasicBlock(cout, cout, 1)))
      cin = cout
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(512, num_classes)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M")


def _torch_vgg(cfg=_VGG16_CFG, batch_norm=False, dense=4096, num_classes=1000):
  """torchvision.models.vgg's `features` / `avgpool` / `classifier` keys (`cfg`
  as torchvision's, default configuration D = vgg16; `batch_norm` as vgg16_bn),
  with `dense`-wide classifier layers (4096 in torchvision)."""
  layers, cin = [], 3
  for v in cfg:
    if v == "M":
      layers.append(nn.MaxPool2d(2, 2))
    else:
      layers += [nn.Conv2d(cin, v, 3, padding=1)] + ([nn.BatchNorm2d(v)] if batch_norm else [])
      layers.append(nn.ReLU(inplace=True))
      cin = v
  model = nn.Module()
  model.features = nn.Sequential(*layers)
  model.avgpool = nn.AdaptiveAvgPool2d((7, 7))
  model.classifier = nn.Sequential(
      nn.Linear(cin * 7 * 7, dense), nn.ReLU(True), nn.Dropout(),
      nn.Linear(dense, dense), nn.ReLU(True), nn.Dropout(), nn.Linear(dense, num_classes))
  model.forward = lambda x: model.classifier(torch.flatten(model.avgpool(model.features(x)), 1))
  return model


def _randomise_bn(module, seed):
  """Non-trivial running statistics and affine parameters (fresh BN is the identity)."""
  g = torch.Generator().manual_seed(seed)
  for m in module.modules():
    if isinstance(m, nn.BatchNorm2d):
      with torch.no_grad():
        m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
        m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
        m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
  return module


def _state_numpy(module):
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def torch_resnet18():
  torch.manual_seed(0)
  return _randomise_bn(_TorchResNet18(num_classes=10), 1).eval()


@pytest.fixture(scope="module")
def nchw_input():
  return np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)


def _torch_logits(module, x_nchw):
  with torch.no_grad():
    return module(torch.from_numpy(x_nchw)).numpy()


def _nhwc(x_nchw):
  return jnp.asarray(x_nchw.transpose(0, 2, 3, 1))


# ----------------------------------------------------------------------------- ResNet-18 == torch

def _save(module, path):
  state = _state_numpy(module)
  if path.suffix == ".safetensors":
    save_file(state, str(path))
  elif path.suffix == ".npz":
    np.savez(path, **state)
  else:
    torch.save(module.state_dict(), path)
  return state


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pth"])
def test_load_state_dict_formats(tmp_path, torch_resnet18, suffix):
  path = tmp_path / f"resnet18{suffix}"
  state = _save(torch_resnet18, path)
  loaded = load_state_dict(path)
  assert sorted(loaded) == sorted(state)
  for key, value in state.items():
    np.testing.assert_array_equal(loaded[key], value, err_msg=key)


def test_resnet18_matches_torch(tmp_path, torch_resnet18, nchw_input):
  path = tmp_path / "resnet18.safetensors"
  _save(torch_resnet18, path)
  model = ResNet18(num_classes=10, padding="torch")
  variables = resnet_variables(path, model)
  assert set(variables) == {"params", "batch_stats"}
  expected = _torch_logits(torch_resnet18, nchw_input)
  got = np.asarray(apply(model, variables, _nhwc(nchw_input)))
  assert np.abs(expected).max() > 0.1  # not a degenerate all-zero comparison
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
  # medjax's default "SAME" padding shifts every strided conv by a pixel: visibly different
  same = np.asarray(apply(ResNet18(num_classes=10), variables, _nhwc(nchw_input)))
  assert np.abs(same - expected).max() > 1e-2


def test_resnet18_one_channel_sums_first_conv(torch_resnet18, nchw_input):
  """A grey image through the summed kernel == the image repeated into RGB through torch."""
  state = _state_numpy(torch_resnet18)
  model = ResNet18(num_classes=10, padding="torch")
  variables = resnet_variables(state, model, in_channels=1)
  assert variables["params"]["stem"]["unit"]["conv"]["kernel"].shape == (7, 7, 1, 64)
  grey = nchw_input[:, :1]
  expected = _torch_logits(torch_resnet18, np.repeat(grey, 3, axis=1))
  np.testing.assert_allclose(np.asarray(apply(model, variables, _nhwc(grey))), expected,
                             atol=1e-4, rtol=0)


def test_resnet18_inflated_3d_on_depth_constant_volume(torch_resnet18, nchw_input):
  """I3D inflation: on a volume constant along depth, the inflated 3D stem equals
  torch's 2D stem (conv, BN, ReLU, max pool) on the slice, away from the depth
  borders (zero padding there breaks the constancy); the 3D ResNet-18's own
  parameter shapes are met."""
  state = _state_numpy(torch_resnet18)
  model3d = ResNet18(num_classes=10, padding="torch", spatial_dims=3)
  variables = resnet_variables(state, model3d, in_channels=1)
  abstract, _ = abstract_init(model3d, (1, 16, 32, 32, 1))
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, abstract)
  # the stem through a one-stage 3D ResNet (compiles much faster than all of ResNet-18)
  stem_only = {k: v for k, v in state.items() if k.startswith(("conv1.", "bn1.", "layer1.0."))}
  small3d = ResNet(stage_sizes=(1,), num_classes=None, padding="torch", spatial_dims=3)
  variables = resnet_variables(stem_only, small3d, in_channels=1, include_head=False)
  grey = nchw_input[:1, :1, :32, :32]
  volume = jnp.broadcast_to(_nhwc(grey)[:, None], (1, 16, 32, 32, 1))
  _, feats = apply(small3d, variables, volume, return_features=True)
  m = torch_resnet18
  with torch.no_grad():
    x = torch.from_numpy(np.repeat(grey, 3, axis=1))
    expected = m.maxpool(m.relu(m.bn1(m.conv1(x)))).numpy().transpose(0, 2, 3, 1)
  # stem output depth 2 reads conv outputs 3..5, which read input depths 3..13 of 0..15
  np.testing.assert_allclose(np.asarray(feats["stem"][:, 2]), expected, atol=1e-4, rtol=0)
  assert np.abs(np.asarray(feats["stem"][:, 0]) - expected).max() > 1e-2  # the border differs


# ----------------------------------------------------------------------------- VGG-16 == torch

def test_vgg16_matches_torch(tmp_path):
  """torchvision's vgg16 convs (all 13, 14.7 M params) with 64-wide classifier
  layers (4096 in torchvision: 120 M params, too slow for a test; the mapping
  is the same) at 64x64, where AdaptiveAvgPool2d spreads the 2x2 map over 7x7
  bins, so a wrong (C, H, W) -> (H, W, C) reordering of classifier.0 shows."""
  torch.manual_seed(0)
  module = _torch_vgg(dense=64, num_classes=5).eval()
  path = tmp_path / "vgg16.safetensors"
  save_file(_state_numpy(module), str(path))
  model = ConvNet.vgg16(num_classes=5, dense=(64, 64), adaptive_pool=(7, 7))
  variables = vgg_variables(path, model)
  x = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
  expected = _torch_logits(module, x)
  assert np.abs(expected).max() > 1e-3
  got = np.asarray(apply(model, variables, _nhwc(x)))
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_vgg_bn_matches_torch():
  """A small vgg*_bn-style network (BatchNorm after each conv: features indices
  shift by 3 per conv) through `torchvision_variables`."""
  torch.manual_seed(0)
  module = _randomise_bn(_torch_vgg((8, "M", 16, 16, "M"), batch_norm=True, dense=16,
                                    num_classes=3), 2).eval()
  model = ConvNet(variant="vgg", num_classes=3, vgg_blocks=((8, 1), (16, 2)), dense=(16, 16),
                  norm="batch", adaptive_pool=(7, 7))
  variables = torchvision_variables(_state_numpy(module), model)
  assert set(variables) == {"params", "batch_stats"}
  x = np.random.default_rng(2).normal(size=(2, 3, 20, 20)).astype(np.float32)
  expected = _torch_logits(module, x)
  assert np.abs(expected).max() > 1e-2
  np.testing.assert_allclose(np.asarray(apply(model, variables, _nhwc(x))), expected,
                             atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- full-size key maps

def _zeros_like_torchvision(shapes):
  return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}


def _torchvision_resnet_shapes(blocks, bottleneck, num_classes=1000):
  """Every state-dict key and shape of torchvision's resnet18/34/50."""
  shapes = {"conv1.weight": (64, 3, 7, 7), "fc.weight": (num_classes, 512 * (4 if bottleneck else 1)),
            "fc.bias": (num_classes,)}

  def bn(name, c):
    shapes.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                   f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})

  bn("bn1", 64)
  cin = 64
  for s, n in enumerate(blocks):
    width = 64 * 2 ** s
    cout = width * (4 if bottleneck else 1)
    for b in range(n):
      p = f"layer{s + 1}.{b}"
      convs = ([(width, cin, 1), (width, width, 3), (cout, width, 1)] if bottleneck
               else [(width, cin, 3), (width, width, 3)])
      for k, (o, i, w) in enumerate(convs):
        shapes[f"{p}.conv{k + 1}.weight"] = (o, i, w, w)
        bn(f"{p}.bn{k + 1}", o)
      if b == 0 and (s > 0 or cin != cout):
        shapes[f"{p}.downsample.0.weight"] = (cout, cin, 1, 1)
        bn(f"{p}.downsample.1", cout)
      cin = cout
  return shapes


@pytest.mark.parametrize("ctor,blocks,bottleneck,count", [
    (ResNet18, (2, 2, 2, 2), False, 11_689_512),
    (ResNet34, (3, 4, 6, 3), False, 21_797_672),
    (ResNet50, (3, 4, 6, 3), True, 25_557_032)])
def test_full_resnet_key_maps(ctor, blocks, bottleneck, count):
  shapes = _torchvision_resnet_shapes(blocks, bottleneck)
  variables = resnet_variables(_zeros_like_torchvision(shapes), ctor(padding="torch"))
  assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"])) == count
  n_stats = sum(1 for k in shapes if k.endswith("running_mean"))
  assert len(jax.tree.leaves(variables["batch_stats"])) == 2 * n_stats


def test_full_vgg16_key_map():
  """torchvision's vgg16 keys and shapes (138,357,544 params) fit ConvNet.vgg16()."""
  shapes = {}
  index, cin = 0, 3
  for block in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
    for _ in range(block[1]):
      shapes[f"features.{index}.weight"] = (block[0], cin, 3, 3)
      shapes[f"features.{index}.bias"] = (block[0],)
      cin, index = block[0], index + 2
    index += 1
  for i, (o, f) in enumerate(((4096, 25088), (4096, 4096), (1000, 4096))):
    shapes[f"classifier.{3 * i}.weight"] = (o, f)
    shapes[f"classifier.{3 * i}.bias"] = (o,)
  variables = torchvision_variables(_zeros_like_torchvision(shapes), ConvNet.vgg16())
  assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"])) == 138_357_544
  assert variables["params"]["dense0"]["kernel"].shape == (25088, 4096)


# ----------------------------------------------------------------------------- errors

def test_errors_are_one_line_and_name_the_key(tmp_path, torch_resnet18):
  state = _state_numpy(torch_resnet18)
  model = ResNet18(num_classes=10, padding="torch")

  def error(state_or_path, **kw):
    with pytest.raises(InputError) as info:
      resnet_variables(state_or_path, model, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message

  bad = dict(state, **{"layer1.0.conv1.weight": np.zeros((64, 32, 3, 3), np.float32)})
  assert error(bad) == ("state dict: layer1.0.conv1.weight has shape (64, 32, 3, 3), "
                        "expected (64, 64, 3, 3)")
  missing = {k: v for k, v in state.items() if k != "layer4.1.bn2.running_var"}
  assert "missing key layer4.1.bn2.running_var (expected shape (512,))" in error(missing)
  assert "unexpected key extra.weight with shape (3,)" in error(
      dict(state, **{"extra.weight": np.zeros(3, np.float32)}))
  head = dict(state, **{"fc.weight": np.zeros((1000, 512), np.float32)})
  assert error(head) == ("state dict: fc.weight has shape (1000, 512), expected (10, 512) "
                         "(a new classifier: include_head=False)")
  # a new head: drop the file's fc, the result has no "head"
  no_head = resnet_variables(head, ResNet18(num_classes=2, padding="torch"), include_head=False)
  assert "head" not in no_head["params"]
  path = tmp_path / "w.safetensors"
  save_file(bad, str(path))
  assert error(path).startswith(f"{path}: layer1.0.conv1.weight has shape")
  (tmp_path / "w.bin").write_bytes(b"x")
  assert "unknown weights format '.bin'" in error(tmp_path / "w.bin")
  (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
  assert "not a readable .safetensors file" in error(tmp_path / "broken.safetensors")
  assert "no such weights file" in error(tmp_path / "absent.npz")
  with pytest.raises(InputError, match="norm='instance'"):
    resnet_variables(state, ResNet18(num_classes=10, norm="instance"))


def test_npz_with_pickles_is_refused(tmp_path):
  path = tmp_path / "obj.npz"
  np.savez(path, a=np.array([{"x": 1}], dtype=object))
  with pytest.raises(InputError, match="not a readable .npz"):
    load_state_dict(path)


def test_pth_without_pytorch_is_one_line_error(tmp_path, monkeypatch):
  path = tmp_path / "w.pth"
  torch.save({"a": torch.zeros(2)}, path)
  monkeypatch.setitem(__import__("sys").modules, "torch", None)  # `import torch` -> ImportError
  with pytest.raises(InputError, match=r"w.pth: reading .pth needs PyTorch"):
    load_state_dict(path)


def test_pth_refuses_arbitrary_pickles(tmp_path):
  path = tmp_path / "evil.pth"
  torch.save({"a": torch.zeros(2), "obj": _BasicBlock(1, 1, 1)}, path)  # a whole module
  with pytest.raises(InputError, match="not a weights-only torch checkpoint"):
    load_state_dict(path)


# ----------------------------------------------------------------------------- adaptation helpers

def test_adapt_input_channels():
  kernel = np.random.default_rng(0).normal(size=(3, 3, 3, 4)).astype(np.float32)
  np.testing.assert_allclose(adapt_input_channels(kernel, 1), kernel.sum(2, keepdims=True))
  five = adapt_input_channels(kernel, 5)
  assert five.shape == (3, 3, 5, 4)
  np.testing.assert_allclose(five[:, :, 3], kernel[:, :, 0] * 3 / 5, rtol=1e-6)
  np.testing.assert_allclose(five[:, :, 2], kernel[:, :, 2] * 3 / 5, rtol=1e-6)
  assert adapt_input_channels(kernel, 3) is kernel
  with pytest.raises(ValueError, match="in_channels=0"):
    adapt_input_channels(kernel, 0)


def test_inflate_center_and_slicewise():
  params = {"params": {"c": {"kernel": jnp.ones((3, 3, 2, 4))}, "d": {"kernel": jnp.ones((4, 2))}}}
  inflated = inflate_to_3d(params, depth=5, method="center")
  k = inflated["params"]["c"]["kernel"]
  assert k.shape == (5, 3, 3, 2, 4) and float(k[2].sum()) == 72.0 and float(k.sum()) == 72.0
  assert inflated["params"]["d"]["kernel"].shape == (4, 2)  # dense untouched
  mean = inflate_to_3d(params)["params"]["c"]["kernel"]
  assert mean.shape == (3, 3, 3, 2, 4) and np.allclose(mean, 1 / 3)
  volume = jnp.arange(2 * 3 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 3, 4, 4, 1)
  out = apply_slicewise(lambda x: x.sum(axis=(1, 2, 3)), volume)
  np.testing.assert_allclose(out, volume.sum(axis=(2, 3, 4)))
