"""Import torchvision-layout weights (ResNet-18/34/50, VGG-11..19 incl. VGG-16)
from a LOCAL file into medjax's Flax variables. Nothing is ever downloaded.

API (stable; `medjax.train` warm start calls it for a file path):

    load_state_dict(path) -> dict[str, np.ndarray]
        `.safetensors` (package `safetensors`, numpy API, no PyTorch) or `.npz`
        (numpy, `allow_pickle=False`); `.pth`/`.pt` only through
        `torch.load(path, weights_only=True)` when PyTorch is installed. Never
        plain pickle. A `module.` prefix (DataParallel) is stripped.
    resnet_variables(state_dict_or_path, model: ResNet, *, in_channels=3,
                     include_head=True) -> {"params": ..., "batch_stats": ...}
    vgg_variables(state_dict_or_path, model: ConvNet, *, in_channels=3,
                  include_head=True) -> {"params": ...} (+ "batch_stats" for vgg*_bn,
                  whose conv biases are folded into the BatchNorm means)
    torchvision_variables(state_dict_or_path, model, **kw) -> variables
        (dispatches on the model: ResNet -> resnet_variables, ConvNet(variant="vgg")
        -> vgg_variables)

Every error is one `InputError` line naming the key (torchvision name), the
expected shape (torch layout) and the one found, e.g.
`weights.safetensors: layer1.0.conv1.weight has shape (64, 32, 3, 3), expected (64, 64, 3, 3)`;
missing keys and keys the model has no place for are errors too
(`num_batches_tracked` counters are ignored).

Layout conversion (torchvision -> medjax):

| torchvision                                   | medjax                                           |
|-----------------------------------------------|--------------------------------------------------|
| conv `weight (O, I, kh, kw)`                  | `conv/kernel (kh, kw, I, O)`                     |
| BN `weight, bias`                             | params `norm/scale, norm/bias`                   |
| BN `running_mean, running_var`                | batch_stats `norm/mean, norm/var`                |
| `conv1, bn1`                                  | `stem/unit/{conv,norm}`                          |
| `layer{s}.{b}.conv{k}, bn{k}`                 | `stage{s}/block{b}/unit{k-1}/{conv,norm}`        |
| `layer{s}.{b}.downsample.0, .1`               | `stage{s}/block{b}/shortcut/{conv,norm}`         |
| `fc` / `classifier.6` `weight (K, F)`         | `head/kernel (F, K)`                             |
| VGG `features.{i}` (conv, BN)                 | `block{b}_conv{j}`, `block{b}_norm{j}`           |
| VGG `classifier.0, .3` `weight (O, C*7*7)`    | `dense0, dense1` `kernel (7*7*C, O)`: rows reordered from torch's (C, H, W) flatten to medjax's (H, W, C) |

To reproduce torchvision's outputs build the model as torchvision does:
`ResNet18(padding="torch")` (symmetric padding of strided convs, see
`medjax.models.resnet`) and `ConvNet.vgg16(adaptive_pool=(7, 7))`; inputs are
NHWC where torch's are NCHW, normalised as for torchvision (ImageNet mean/std).
With `padding="same"` the weights still load, but every strided conv samples
a grid shifted by one pixel.

Medical inputs: `in_channels=1` sums the first conv's kernel over its three
input channels (exactly equal to feeding the grey image repeated 3 times, at a
third of the first layer's cost; see `medjax.weights.adapt`). A 3D ResNet
(`spatial_dims=3`) gets the 2D kernels inflated I3D-style
(`adapt.inflate_to_3d`); a 2D backbone can instead run slice by slice
(`adapt.apply_slicewise`).
"""
from __future__ import annotations

import os
import zipfile
from typing import Any, Callable, Mapping, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from medjax.errors import InputError
from medjax.models.convnet import ConvNet
from medjax.models.resnet import ResNet
from medjax.weights import adapt

StateDict = Mapping[str, np.ndarray]
Source = Union[StateDict, str, os.PathLike]
Variables = dict[str, Any]


# ----------------------------------------------------------------------------- reading files

def load_state_dict(path: Union[str, os.PathLike]) -> dict[str, np.ndarray]:
  """Reads a torchvision-layout state dict `{name: array}` from a local file.

  `.safetensors` (no PyTorch needed), `.npz` (no pickles allowed) or
  `.pth`/`.pt` (needs PyTorch; read with `torch.load(weights_only=True)`,
  which refuses arbitrary pickled objects). A checkpoint that wraps the
  tensors in `{"state_dict": ...}` or `{"model": ...}` is unwrapped, and a
  `module.` prefix on every key is stripped.

  Raises:
    InputError: missing file, unknown suffix, unreadable content, no PyTorch for `.pth`.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InputError(f"{path}: no such weights file")
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".safetensors":
    state = _read_safetensors(path)
  elif suffix == ".npz":
    state = _read_npz(path)
  elif suffix in (".pth", ".pt"):
    state = _read_torch(path)
  else:
    raise InputError(f"{path}: unknown weights format {suffix!r}; expected .safetensors, "
                     ".npz or .pth/.pt")
  if not state:
    raise InputError(f"{path}: contains no arrays")
  if all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return state


def _one_line(error: Exception) -> str:
  return " ".join(str(error).split()) or type(error).__name__


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  try:
    return dict(load_file(path))
  except Exception as e:  # the Rust reader raises its own error types
    raise InputError(f"{path}: not a readable .safetensors file ({_one_line(e)})") from e


def _read_npz(path: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except (ValueError, OSError, zipfile.BadZipFile) as e:
    raise InputError(f"{path}: not a readable .npz of arrays ({_one_line(e)})") from e


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise InputError(f"{path}: reading .pth needs PyTorch (pip install torch), or save the "
                     "weights as .safetensors or .npz") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle/zip errors, or a refused non-tensor object
    raise InputError(f"{path}: not a weights-only torch checkpoint ({_one_line(e)})") from e
  for wrapper in ("state_dict", "model"):
    if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
      obj = obj[wrapper]
  if not isinstance(obj, Mapping):
    raise InputError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
  state = {}
  for key, value in obj.items():
    if not isinstance(value, torch.Tensor):
      raise InputError(f"{path}: {key} is a {type(value).__name__}, expected a tensor")
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:  # numpy has no bfloat16
      value = value.float()
    state[str(key)] = value.numpy()
  return state


# ----------------------------------------------------------------------------- torch <-> flax layout

def _conv_to_flax(w: np.ndarray) -> np.ndarray:
  """(O, I, *k) -> (*k, I, O)."""
  nd = w.ndim - 2
  return np.transpose(w, tuple(range(2, 2 + nd)) + (1, 0))


def _conv_torch_shape(shape: tuple) -> tuple:
  return (shape[-1], shape[-2]) + tuple(shape[:-2])


def _flatten_dense_to_flax(grid: tuple) -> Callable[[np.ndarray], np.ndarray]:
  """Dense after a (C, H, W) flatten (torch) -> after an (H, W, C) flatten (medjax)."""
  def convert(w: np.ndarray) -> np.ndarray:
    out, features = w.shape
    channels = features // int(np.prod(grid))
    w = w.reshape((out, channels) + grid)
    return np.transpose(w, tuple(range(2, 2 + len(grid))) + (1, 0)).reshape(-1, out)
  return convert


class _Entry:
  """One medjax leaf: where it comes from in the state dict and how it converts."""

  def __init__(self, collection: str, path: tuple, key: str, expected: tuple,
               to_flax: Callable[[np.ndarray], np.ndarray], torch_shape: tuple):
    self.collection, self.path, self.key = collection, path, key
    self.expected, self.to_flax, self.torch_shape = expected, to_flax, torch_shape


_BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _leaf_entry(collection: str, path: tuple, shape: tuple, module_key: str,
                kind: str) -> _Entry:
  """`kind`: "conv" | "dense" | "norm"."""
  leaf = path[-1]
  if kind == "conv":
    return _Entry(collection, path, f"{module_key}.{'weight' if leaf == 'kernel' else 'bias'}",
                  shape, _conv_to_flax if leaf == "kernel" else np.asarray,
                  _conv_torch_shape(shape) if leaf == "kernel" else shape)
  if kind == "dense":
    if leaf == "kernel":
      return _Entry(collection, path, f"{module_key}.weight", shape, np.transpose, shape[::-1])
    return _Entry(collection, path, f"{module_key}.bias", shape, np.asarray, shape)
  return _Entry(collection, path, f"{module_key}.{_BN_LEAVES[leaf]}", shape, np.asarray, shape)


def _expected_leaves(model, input_shape: tuple) -> dict[tuple, tuple]:
  """{(collection, *path): shape} of `model.init` on an input of `input_shape` (abstract)."""
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(variables).items()}


def _convert(state: StateDict, entries: list[_Entry], source: str, *,
             ignore: Callable[[str], bool], first_conv: str, in_channels: int) -> Variables:
  """Checks keys and shapes, converts every entry, returns nested variables."""
  used = set()
  flat = {}
  for e in entries:
    if e.key not in state:
      raise InputError(f"{source}: missing key {e.key} (expected shape {e.torch_shape})")
    value = np.asarray(state[e.key])
    used.add(e.key)
    expected_torch = e.torch_shape
    if e.key == first_conv and value.ndim == len(e.torch_shape):
      # a 3-channel (RGB) first conv may feed a model with another channel count
      expected_torch = (e.torch_shape[0], value.shape[1]) + tuple(e.torch_shape[2:])
    if tuple(value.shape) != tuple(expected_torch):
      hint = " (a new classifier: include_head=False)" if e.path[0] == "head" else ""
      raise InputError(f"{source}: {e.key} has shape {tuple(value.shape)}, expected "
                       f"{tuple(expected_torch)}{hint}")
    if not np.issubdtype(value.dtype, np.floating):
      raise InputError(f"{source}: {e.key} has dtype {value.dtype}, expected floating point")
    converted = e.to_flax(value.astype(np.float32, copy=False))
    if e.key == first_conv:
      try:
        converted = adapt.adapt_input_channels(converted, in_channels)
      except ValueError as err:
        raise InputError(f"{source}: {e.key}: {err}") from None
    assert converted.shape == e.expected, (e.key, converted.shape, e.expected)
    flat[(e.collection,) + e.path] = jnp.asarray(converted)
  unknown = sorted(k for k in state if k not in used and not ignore(k))
  if unknown:
    more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
    raise InputError(f"{source}: unexpected key {unknown[0]} with shape "
                     f"{tuple(np.shape(state[unknown[0]]))}: the model has no such "
                     f"parameter{more}")
  return traverse_util.unflatten_dict(flat)


def _resolve(state_or_path: Source) -> tuple[StateDict, str]:
  if isinstance(state_or_path, (str, os.PathLike)):
    return load_state_dict(state_or_path), os.fspath(state_or_path)
  return state_or_path, "state dict"


def _is_counter(key: str) -> bool:
  return key.endswith("num_batches_tracked")


# ----------------------------------------------------------------------------- ResNet

def _resnet_key(path: tuple) -> tuple[str, str]:
  """medjax ResNet module path -> (torchvision module name, kind)."""
  if path[0] == "head":
    return "fc", "dense"
  kind = "conv" if path[-2] == "conv" else "norm"
  if path[0] == "stem":
    return ("conv1" if kind == "conv" else "bn1"), kind
  stage, block, unit = int(path[0][len("stage"):]), int(path[1][len("block"):]), path[2]
  prefix = f"layer{stage}.{block}"
  if unit == "shortcut":
    return f"{prefix}.downsample.{0 if kind == 'conv' else 1}", kind
  k = int(unit[len("unit"):]) + 1
  return f"{prefix}.{'conv' if kind == 'conv' else 'bn'}{k}", kind


def resnet_variables(state_dict: Source, model: ResNet, *, in_channels: int = 3,
                     include_head: bool = True) -> Variables:
  """torchvision `resnet18/34/50` weights -> `{"params", "batch_stats"}` of `model`.

  Args:
    state_dict: a state dict (`load_state_dict`) or the path of a weights file.
    model: a `medjax.models.ResNet` with torchvision's layout (`norm="batch"`,
      `width=64`, `stem_kernel=7`, `stem_pool=True`; `padding="torch"` to
      reproduce torchvision's outputs). `spatial_dims=3` inflates the kernels
      to 3D (`adapt.inflate_to_3d`, I3D).
    in_channels: channels of the model's input; the file's RGB first conv is
      adapted by `adapt.adapt_input_channels` (1: summed over RGB).
    include_head: False drops `fc.*` and returns no `head` (for a new
      classifier; merge with a fresh init). The model's `num_classes` must match
      the file's when True; with `num_classes=None` pass False.
  Raises:
    InputError: one line naming the first missing / unexpected key or shape mismatch.
  """
  if not isinstance(model, ResNet):
    raise InputError(f"resnet_variables needs a medjax.models.ResNet, got {type(model).__name__}")
  state, source = _resolve(state_dict)
  if model.norm != "batch" or not model.stem_pool:
    raise InputError(f"{source}: torchvision's ResNet has BatchNorm and a stem max-pool; "
                     f"the model has norm={model.norm!r}, stem_pool={model.stem_pool}")
  model2d = model.clone(spatial_dims=2) if model.spatial_dims == 3 else model
  if model2d.spatial_dims != 2:
    raise InputError(f"{source}: spatial_dims={model.spatial_dims}: expected 2 or 3")
  if not include_head:
    model2d = model2d.clone(num_classes=None)
  entries = []
  for (collection, *path), shape in _expected_leaves(model2d, (1, 64, 64, in_channels)).items():
    module_key, kind = _resnet_key(tuple(path))
    entries.append(_leaf_entry(collection, tuple(path), shape, module_key, kind))
  ignore = _is_counter if include_head else (lambda k: _is_counter(k) or k.startswith("fc."))
  variables = _convert(state, entries, source, ignore=ignore, first_conv="conv1.weight",
                       in_channels=in_channels)
  if model.spatial_dims == 3:
    variables = adapt.inflate_to_3d(variables)
  return variables


# ----------------------------------------------------------------------------- VGG

def vgg_variables(state_dict: Source, model: ConvNet, *, in_channels: int = 3,
                  include_head: bool = True) -> Variables:
  """torchvision `vgg11/13/16/19` (and `*_bn`) weights -> variables of a 2D `ConvNet`.

  The model must be `ConvNet(variant="vgg")` with the file's blocks (e.g.
  `ConvNet.vgg16()`), `norm=None` (`"batch"` for `vgg16_bn`, whose conv biases
  are folded into the BatchNorm running means, exactly), no
  `global_pool`, and two dense layers (`classifier.0`, `.3`; the head is
  `classifier.6`). torchvision flattens a 7x7 map: use `adaptive_pool=(7, 7)`
  (any input size, as torchvision) or 224x224 inputs.

  Returns:
    `{"params"}` (and `"batch_stats"` with `norm="batch"`).
  Raises:
    InputError: one line naming the first missing / unexpected key or shape mismatch.
  """
  if not isinstance(model, ConvNet) or model.variant != "vgg":
    raise InputError(f"vgg_variables needs a medjax.models.ConvNet(variant='vgg'), got {model!r}"
                     .splitlines()[0])
  state, source = _resolve(state_dict)
  if model.spatial_dims != 2 or model.global_pool is not None or model.norm not in (None, "batch"):
    raise InputError(f"{source}: torchvision's VGG is 2D with a flatten and norm None/'batch'; "
                     f"the model has spatial_dims={model.spatial_dims}, "
                     f"global_pool={model.global_pool!r}, norm={model.norm!r}")
  grid = tuple(model.adaptive_pool) if model.adaptive_pool is not None else (7, 7)
  batch = model.norm == "batch"
  names = {}  # medjax module -> (torchvision module, kind)
  index = 0
  for b, (_, n) in enumerate(model.vgg_blocks):
    for j in range(n):
      names[f"block{b}_conv{j}"] = (f"features.{index}", "conv")
      if batch:
        names[f"block{b}_norm{j}"] = (f"features.{index + 1}", "norm")
      index += 3 if batch else 2  # conv (BN) ReLU
    index += 1  # max pool
  dense = (256,) if model.dense is None else tuple(model.dense)
  for i in range(len(dense)):
    names[f"dense{i}"] = (f"classifier.{3 * i}", "dense")  # Linear ReLU Dropout
  head_key = f"classifier.{3 * len(dense)}"
  names["head"] = (head_key, "dense")
  if batch:
    state = _fold_conv_bias_into_bn(state, names, source)
  entries = []
  for (collection, *path), shape in _expected_leaves(model, (1, 224, 224, in_channels)).items():
    if path[0] == "head" and not include_head:
      continue
    module_key, kind = names[path[0]]
    entry = _leaf_entry(collection, tuple(path), shape, module_key, kind)
    if path == ["dense0", "kernel"]:
      entry.to_flax = lambda w, g=grid: _flatten_dense_to_flax(g)(w)
    entries.append(entry)
  ignore = (_is_counter if include_head
            else (lambda k: _is_counter(k) or k.startswith(head_key + ".")))
  return _convert(state, entries, source, ignore=ignore, first_conv="features.0.weight",
                  in_channels=in_channels)


def _fold_conv_bias_into_bn(state: StateDict, names: dict, source: str) -> dict:
  """torchvision's vgg*_bn convs keep a bias before their BatchNorm; medjax's
  conv has none (the norm's offset replaces it). In evaluation
  `BN(conv + b) = BN'(conv)` with `running_mean' = running_mean - b` (exact), and
  in training the batch mean absorbs `b` anyway, so the bias is folded there."""
  state = dict(state)
  for module, (key, kind) in names.items():
    if kind != "conv" or f"{key}.bias" not in state:
      continue
    bn_key = names[module.replace("_conv", "_norm")][0]
    mean_key = f"{bn_key}.running_mean"
    if mean_key not in state:
      continue  # reported as missing by _convert
    bias, mean = np.asarray(state.pop(f"{key}.bias")), np.asarray(state[mean_key])
    if bias.shape != mean.shape:
      raise InputError(f"{source}: {key}.bias has shape {bias.shape}, expected {mean.shape}")
    state[mean_key] = mean.astype(np.float32) - bias.astype(np.float32)
  return state


def torchvision_variables(state_dict: Source, model, **kw) -> Variables:
  """`resnet_variables` for a `ResNet`, `vgg_variables` for a `ConvNet(variant="vgg")`."""
  if isinstance(model, ResNet):
    return resnet_variables(state_dict, model, **kw)
  if isinstance(model, ConvNet) and model.variant == "vgg":
    return vgg_variables(state_dict, model, **kw)
  raise InputError(f"no torchvision importer for medjax.models.{type(model).__name__}; "
                   "expected ResNet or ConvNet(variant='vgg')")
