"""splits.kfold: nnU-Net's 5-fold cross-validation (scikit-learn KFold, shuffled, seed 12345)."""
import pytest

from medjax.data.builders import splits
from medjax.errors import InputError

IDS = [f"case_{i:02d}" for i in range(10)]
# sklearn.model_selection.KFold(n_splits=5, shuffle=True, random_state=12345).split(IDS),
# computed once with scikit-learn 1.9.1 (what nnU-Net writes to splits_final.json).
SKLEARN_VALIDATION = [["case_00", "case_07"], ["case_03", "case_09"], ["case_04", "case_06"],
                      ["case_01", "case_08"], ["case_02", "case_05"]]


def test_folds_equal_sklearn_kfold_as_nnunet():
  for fold, expected in enumerate(SKLEARN_VALIDATION):
    train, validation = splits.kfold(IDS, num_folds=5, fold=fold)
    assert validation == expected
    assert train == [c for c in IDS if c not in expected]


def test_folds_partition_the_cases_and_ignore_input_order():
  ids = [f"p{i}" for i in range(7)]
  folds = [splits.kfold(ids, 5, f) for f in range(5)]
  validations = [v for _, v in folds]
  assert sorted(len(v) for v in validations) == [1, 1, 1, 2, 2]
  assert sorted(c for v in validations for c in v) == ids
  for train, validation in folds:
    assert sorted(train + validation) == ids and not set(train) & set(validation)
  assert splits.kfold(ids[::-1], 5, 3) == folds[3]
  assert splits.kfold(ids, 5, 3, seed=1) != folds[3] or splits.kfold(ids, 5, 0, seed=1) != folds[0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(case_ids=["a", "b", "a"], num_folds=2), "duplicate case ids ['a']"),
    (dict(case_ids=["a", "b"], num_folds=3), "num_folds=3: more folds than the 2 training cases"),
    (dict(case_ids=["a", "b"], num_folds=1), "num_folds=1: expected at least 2 folds"),
    (dict(case_ids=["a", "b", "c"], num_folds=2, fold=2), "fold=2: expected 0..1"),
])
def test_bad_fold_arguments(kwargs, message):
  with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
    splits.kfold(**kwargs)
