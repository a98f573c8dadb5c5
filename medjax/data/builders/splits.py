"""Deterministic K-fold cross-validation over case ids, as nnU-Net.

nnU-Net (Isensee et al., Nature Methods 2021) splits the training cases of a
dataset into 5 folds with scikit-learn's ``KFold(n_splits=5, shuffle=True,
random_state=12345)`` over the sorted case ids (`splits_final.json`).
`kfold` computes the same split without scikit-learn: the folds of the same
case ids are the same as nnU-Net's.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from medjax.errors import InputError


def fold_indices(num_cases: int, num_folds: int = 5, seed: int = 12345) -> list[np.ndarray]:
  """The case indices (into the sorted ids) of each validation fold, each sorted.

  scikit-learn's shuffled `KFold`: `np.random.RandomState(seed)` shuffles
  `arange(num_cases)`; the first `num_cases % num_folds` folds hold one case
  more than the others.
  """
  order = np.arange(num_cases)
  np.random.RandomState(seed).shuffle(order)
  sizes = np.full(num_folds, num_cases // num_folds)
  sizes[:num_cases % num_folds] += 1
  bounds = np.concatenate([[0], np.cumsum(sizes)])
  return [np.sort(order[bounds[f]:bounds[f + 1]]) for f in range(num_folds)]


def kfold(case_ids: Sequence[str], num_folds: int = 5, fold: int = 0,
          seed: int = 12345) -> tuple[list[str], list[str]]:
  """(train ids, validation ids) of fold `fold` of `num_folds` over `case_ids`.

  Deterministic: depends only on the set of ids (they are sorted first), the
  fold count and the seed. The validation folds partition the cases; each
  list is sorted.

  Raises:
    InputError: duplicate ids, `num_folds < 2`, more folds than cases, or
      `fold` outside `0..num_folds-1`.
  """
  ids = sorted(str(c) for c in case_ids)
  if len(set(ids)) != len(ids):
    raise InputError(f"kfold: duplicate case ids {sorted({i for i in ids if ids.count(i) > 1})}")
  if int(num_folds) < 2:
    raise InputError(f"num_folds={num_folds}: expected at least 2 folds")
  if int(num_folds) > len(ids):
    raise InputError(f"num_folds={num_folds}: more folds than the {len(ids)} training cases")
  if not 0 <= int(fold) < int(num_folds):
    raise InputError(f"fold={fold}: expected 0..{int(num_folds) - 1}")
  validation = set(fold_indices(len(ids), int(num_folds), seed)[int(fold)].tolist())
  return ([c for i, c in enumerate(ids) if i not in validation],
          [c for i, c in enumerate(ids) if i in validation])
