"""Warm start: a new run's initial parameters taken from a trained run or a weights file.

`config.init_from` names the source (empty: train from scratch):

* a medjax workdir: the `params` and `batch_stats` of its latest checkpoint
  (`Workdir.latest_checkpoint`);
* a `.npz` file whose keys are '/'-separated variable paths with their
  collection, e.g. `params/stage1/block0/unit0/conv/kernel`,
  `batch_stats/stem/unit/norm/mean` (a key without `params/` or
  `batch_stats/` in front is a parameter), as written by `save_npz`;
* a torchvision-layout file (`.safetensors`, `.pth`, or an `.npz` with
  torchvision's dotted names such as `layer1.0.conv1.weight`):
  `medjax.weights.torchvision_variables(load_state_dict(path), model,
  in_channels=config.in_channels, include_head=...)` (ResNet-18/34/50 and
  VGG; the RGB first conv is adapted to `config.in_channels`; the file's
  classifier is dropped when `"head"` is in `config.init_exclude`).

The source's paths are renamed with `config.init_mapping`, a sequence of
`"OLD->NEW"` path-prefix rules (the first matching rule applies, e.g.
`"backbone/->"` drops a `backbone/` level); the same rules apply to `params`
and `batch_stats`. Then every variable of the fresh model is replaced by the
source's variable of the same path, except

* variables under a `config.init_exclude` prefix (e.g. `"head"`: a new
  classifier for another number of classes), and variables the source does not
  have: both keep their fresh initialisation;
* a variable whose shape differs: one-line `InputError` naming its path and
  both shapes (exclude it, or map it, to go on).

Resume order (as in big_vision): a workdir that holds its own checkpoint
resumes from it (the loop then does not read `init_from` at all), otherwise
`init_from`, otherwise scratch. Fine-tuning starts a fresh optimizer at step 0.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import flax
import flax.linen as nn
import jax
import ml_collections
import numpy as np

from medjax.errors import InputError
from medjax.train import optim
from medjax.train.workdir import Workdir

COLLECTIONS = ("params", "batch_stats")


def parse_mapping(rules: Sequence[str]) -> list[tuple[str, str]]:
  """`("backbone/->", "enc/->encoder/")` -> `[("backbone/", ""), ("enc/", "encoder/")]`."""
  if isinstance(rules, str):
    rules = (rules,) if rules else ()
  out = []
  for i, rule in enumerate(rules or ()):
    if not isinstance(rule, str) or rule.count("->") != 1 or not rule.split("->")[0]:
      raise InputError(f"config.init_mapping[{i}]={rule!r}: expected 'OLD->NEW' (a path prefix "
                       "of the source and its new name, e.g. 'backbone/->')")
    old, new = rule.split("->")
    out.append((old, new))
  return out


def rename(path: str, mapping: Sequence[tuple[str, str]]) -> str:
  """`path` with the first matching `(old, new)` prefix rule applied."""
  for old, new in mapping:
    if path.startswith(old):
      return new + path[len(old):]
  return path


def flatten_variables(variables: Any) -> dict[str, np.ndarray]:
  """`{"params": {...}, "batch_stats": {...}}` -> `{"params/a/b": array, ...}` (host arrays)."""
  flat = flax.traverse_util.flatten_dict(jax.device_get(variables), sep="/")
  return {k: np.asarray(v) for k, v in flat.items()}


def save_npz(path: str, variables: Any) -> str:
  """Writes `variables` as an `.npz` of flattened paths, readable by `init_from`."""
  np.savez(path, **flatten_variables(variables))
  return path


def _is_medjax_npz(path: str) -> bool:
  """An `.npz` of '/'-separated medjax paths (not torchvision's dotted names)."""
  try:
    with np.load(path, allow_pickle=False) as data:
      return any("/" in k for k in data.files)
  except (OSError, ValueError) as e:
    raise InputError(f"config.init_from={path}: not a readable .npz of arrays ({e})") from None


def _from_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as data:
    flat = {k: np.asarray(data[k]) for k in data.files}
  return {k if k.split("/")[0] in COLLECTIONS else f"params/{k}": v for k, v in flat.items()}


def _from_weights_file(path: str, model: Optional[nn.Module], *, in_channels: int,
                       include_head: bool) -> dict[str, np.ndarray]:
  """torchvision-layout weights through `medjax.weights.torchvision_variables`."""
  try:
    from medjax.weights import torchvision as tv  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise InputError(f"config.init_from={path}: expected a medjax workdir or an .npz of "
                     "flattened parameter paths (importing other weight files needs "
                     "medjax.weights.torchvision)") from None
  if model is None:
    raise InputError(f"config.init_from={path}: a weights file needs the model to map its names")
  return flatten_variables(tv.torchvision_variables(tv.load_state_dict(path), model,
                                                    in_channels=in_channels,
                                                    include_head=include_head))


def load_source(path: str, model: Optional[nn.Module] = None, *, in_channels: int = 3,
                include_head: bool = True) -> dict[str, np.ndarray]:
  """The flattened variables (`"params/..."`, `"batch_stats/..."`) of `config.init_from`.

  `model`, `in_channels` and `include_head` are used for torchvision-layout files only
  (`medjax.weights.torchvision_variables`: RGB first conv adapted to `in_channels`;
  `include_head=False` drops the file's classifier).
  """
  path = os.path.expanduser(str(path))
  if os.path.isdir(path):
    _, tree = Workdir(path).latest_checkpoint()
    return flatten_variables({c: tree[c] for c in COLLECTIONS if tree.get(c)})
  if not os.path.isfile(path):
    raise InputError(f"config.init_from={path}: no such workdir or file")
  if path.endswith(".npz") and _is_medjax_npz(path):
    return _from_npz(path)
  return _from_weights_file(path, model, in_channels=in_channels, include_head=include_head)


def merge(variables: dict, source: dict[str, np.ndarray], *, mapping: Sequence[str] = (),
          exclude: Sequence[str] = (), name: str = "source") -> tuple[dict, dict]:
  """`variables` with every entry replaced by the (renamed) `source` entry of its path.

  Args:
    variables: the fresh model's variables `{"params": ..., "batch_stats": ...}`.
    source: flattened source variables, as from `load_source`.
    mapping: `"OLD->NEW"` prefix renames applied to the source's paths.
    exclude: path prefixes (within a collection) that keep their fresh values.
    name: the source as named in error messages.
  Returns:
    `(merged variables, {"loaded": [...], "fresh": [...]})` lists of flattened paths.
  Raises:
    InputError: a shape mismatch (naming the path and both shapes), or no
      parameter at all found in the source.
  """
  rules = parse_mapping(mapping)
  excluded = optim.path_prefixes(exclude, "init_exclude") if exclude else ()
  renamed = {}
  for key, value in source.items():
    collection, _, path = key.partition("/")
    renamed[f"{collection}/{rename(path, rules)}"] = value
  target = flatten_variables(variables)
  out, loaded, fresh = {}, [], []
  for key, value in target.items():
    collection, _, path = key.partition("/")
    if any(optim.is_under(path, p) for p in excluded) or key not in renamed:
      out[key] = value
      fresh.append(key)
      continue
    new = renamed[key]
    if new.shape != value.shape:
      raise InputError(
          f"config.init_from={name}: {collection} {path} has shape {tuple(new.shape)} in the "
          f"source but {tuple(value.shape)} in the model (list it in config.init_exclude to "
          "keep it fresh, or rename with config.init_mapping)")
    out[key] = new.astype(value.dtype)
    loaded.append(key)
  if not any(k.startswith("params/") for k in loaded):
    sample = ", ".join(sorted(renamed)[:3])
    raise InputError(f"config.init_from={name}: no parameter of the model found in the source "
                     f"(source paths look like {sample}; set config.init_mapping)")
  return flax.traverse_util.unflatten_dict(out, sep="/"), {"loaded": loaded, "fresh": fresh}


def apply(config: ml_collections.ConfigDict, variables: dict,
          model: Optional[nn.Module] = None) -> dict:
  """The initial variables of a run: `variables` (fresh) warm-started from
  `config.init_from` when it is set, else `variables` unchanged."""
  source = config.get("init_from", "") or ""
  if not source:
    return variables
  exclude = config.get("init_exclude", ())
  include_head = not any(str(p).strip("/") == "head" for p in exclude)
  loaded = load_source(source, model, in_channels=int(config.get("in_channels", 3)),
                       include_head=include_head)
  merged, report = merge(variables, loaded, mapping=config.get("init_mapping", ()),
                         exclude=exclude, name=source)
  if jax.process_index() == 0:
    fresh = [k for k in report["fresh"] if k.startswith("params/")]
    shown = ", ".join(k[len("params/"):] for k in fresh[:4]) + (" ..." if len(fresh) > 4 else "")
    print(f"init_from {source}: {len(report['loaded'])} arrays loaded, "
          f"{len(fresh)} parameters kept fresh{': ' + shown if fresh else ''}", flush=True)
  return merged


__all__ = ["apply", "merge", "load_source", "save_npz", "parse_mapping", "rename",
           "flatten_variables"]
