"""Post-processing: largest component (per class, of the union), removal of small
components in mL, the validation decision, and the rules stored in a workdir."""
import json

import numpy as np
import pytest

from medjax import postprocess
from medjax.errors import InputError
from medjax.postprocess import Rule, ValidationCase
from medjax.train.workdir import Workdir


def _labels():
  """(3, 8, 10): class 1 in a 2x3x3 block (18 voxels) and a 1x1x2 bar (2), class 2 in a 1x2x2
  block (4, touching the big class-1 block) and a lone voxel (1)."""
  x = np.zeros((3, 8, 10), np.uint8)
  x[0:2, 0:3, 0:3] = 1      # 18 voxels
  x[2, 6, 6:8] = 1          # 2 voxels, separate
  x[0, 3:5, 0:2] = 2        # 4 voxels, touches the class-1 block (face at row 2 -> 3)
  x[2, 0, 9] = 2            # 1 voxel, separate
  return x


def test_largest_component_per_class_keeps_exactly_the_largest():
  x = _labels()
  out = postprocess.apply(x, [Rule("largest_component", (1,))], (1.0, 1.0, 1.0))
  expected = x.copy()
  expected[2, 6, 6:8] = 0
  np.testing.assert_array_equal(out, expected)
  assert out.dtype == x.dtype and x[2, 6, 6] == 1  # input untouched
  out2 = postprocess.apply(x, [Rule("largest_component", (2,))], (1.0, 1.0, 1.0))
  expected2 = x.copy()
  expected2[2, 0, 9] = 0
  np.testing.assert_array_equal(out2, expected2)


def test_largest_component_of_the_union_keeps_touching_classes():
  x = _labels()
  out = postprocess.apply(x, [Rule("largest_component", (1, 2))], (1.0, 1.0, 1.0))
  # union components: block + touching class-2 block (22 voxels), bar (2), lone voxel (1)
  expected = x.copy()
  expected[2, 6, 6:8] = 0
  expected[2, 0, 9] = 0
  np.testing.assert_array_equal(out, expected)
  assert (out == 2).sum() == 4  # class 2 survives where it touches class 1
  # face connectivity: a diagonal neighbour is another component
  d = np.zeros((4, 4), np.int32)
  d[0, 0] = d[1, 1] = d[2, 1] = 1
  np.testing.assert_array_equal(postprocess.apply(d, [Rule("largest_component", (1,))], (1, 1)),
                                np.where(np.arange(16).reshape(4, 4) == 0, 0, d))


def test_min_volume_in_ml_with_anisotropic_spacing():
  x = _labels()
  # voxel 2.5 x 0.8 x 0.5 mm = 1 mm^3: the 2-voxel bar is 0.002 mL, the 18-voxel block 0.018 mL
  spacing = (2.5, 0.8, 0.5)
  out = postprocess.apply(x, [Rule("min_volume", (1,), 0.0025)], spacing)
  assert (out == 1).sum() == 18 and out[2, 6, 6] == 0
  assert (out == 2).sum() == 5  # other classes untouched
  out = postprocess.apply(x, [Rule("min_volume", (1,), 0.002)], spacing)
  np.testing.assert_array_equal(out, x)  # 0.002 mL is not below 0.002 mL
  # 4 mm^3 voxels: bar 0.008 mL, block 0.072 mL; class 2: block 0.016 mL, lone voxel 0.004 mL
  out = postprocess.apply(x, [Rule("min_volume", (1, 2), 0.02)], (4.0, 1.0, 1.0))
  assert (out == 1).sum() == 18 and (out == 2).sum() == 0
  # 8 mm^3 voxels: class 2's block is 0.032 mL, kept; the lone voxel (0.008 mL) and bar are not
  out = postprocess.apply(x, [Rule("min_volume", (1, 2), 0.02)], (4.0, 2.0, 1.0))
  assert (out == 2).sum() == 4 and (out == 1).sum() == 18 and out[2, 0, 9] == 0
  with pytest.raises(InputError, match="spacing"):
    postprocess.apply(x, [], (1.0, 1.0))


def _case(pred, label, spacing=(1.0, 1.0)):
  return ValidationCase(np.asarray(pred), np.asarray(label), spacing)


def test_decision_keeps_a_rule_only_when_it_improves_dice():
  # Class 1: a 4x4 organ; the prediction adds a far 1-voxel island in case a -> largest component
  # helps class 1. Class 2 is predicted exactly, in two separate true pieces in case b -> its
  # largest component would hurt.
  a_label = np.zeros((10, 10), int)
  a_label[1:5, 1:5] = 1
  a_pred = a_label.copy()
  a_pred[8, 8] = 1
  b_label = np.zeros((10, 10), int)
  b_label[1:5, 1:5] = 1
  b_label[7, 1:3] = 2
  b_label[7, 6:9] = 2
  b_pred = b_label.copy()
  cases = [_case(a_pred, a_label), _case(b_pred, b_label)]
  rules, record = postprocess.decide(cases, [1, 2], min_volumes_ml=(0.0015,))
  # union rule: removes the island (class 1 Dice of case a 32/33 -> 1) but also class 2's
  # pieces in case b (Dice 1 -> 0): mean over classes falls -> not kept
  union = record["tried"][0]
  assert union["rule"] == {"kind": "largest_component", "classes": [1, 2]} and not union["kept"]
  assert union["dice_before"] == pytest.approx(((32 / 33 + 1) / 2 + 1) / 2)
  assert union["dice_after"] == pytest.approx((1 + 0.5) / 2)
  # class 1's largest component: Dice (32/33 + 1) / 2 -> 1, kept; class 2's: 1 -> (1 + 6/8) / 2
  # (case b keeps the 3-voxel piece of 5), not kept; min_volume 0.0015 mL (1.5 voxels) removes
  # nothing (the pieces are 2 and 3 voxels) -> not kept
  assert rules == (Rule("largest_component", (1,)),)
  per_class = {tuple(e["rule"]["classes"]) + (e["rule"]["kind"],): e for e in record["tried"]}
  assert per_class[(2, "largest_component")]["dice_after"] == pytest.approx((1 + 6 / 8) / 2)
  assert not per_class[(2, "largest_component")]["kept"]
  assert per_class[(2, "min_volume")]["dice_after"] == per_class[(2, "min_volume")]["dice_before"]
  assert record["dice_raw"] == {"1": pytest.approx((32 / 33 + 1) / 2), "2": 1.0}
  assert record["dice_final"] == {"1": 1.0, "2": 1.0}
  # A small false alarm of class 2 in a case without class 2: only min_volume removes it.
  c_label = a_label.copy()
  c_pred = a_label.copy()
  c_pred[8, 8] = 2
  rules, record = postprocess.decide([_case(c_pred, c_label)] + cases[1:], [1, 2],
                                     min_volumes_ml=(0.0015, 0.01))
  # 0.0015 mL (1.5 voxels) removes the false alarm (Dice 0 -> 1) and nothing true; 0.01 mL
  # (10 voxels) also removes class 2's true 2- and 3-voxel pieces: the better one is kept
  assert rules == (Rule("min_volume", (2,), 0.0015),)
  # No change at all: nothing kept.
  assert postprocess.decide([_case(b_label, b_label)], [1, 2])[0] == ()
  assert postprocess.decide([], [1, 2])[0] == ()


def test_rules_round_trip_through_the_workdir(tmp_path):
  wd = Workdir(str(tmp_path)).create()
  assert Workdir.of(wd).read_postprocessing_rules() is None
  rules = (Rule("largest_component", (1, 2)), Rule("min_volume", (2,), 0.5))
  wd.write_postprocessing(postprocess.rules_to_json(rules, {"cases": 4}, ("bg", "a", "b")))
  assert Workdir.of(str(tmp_path)).read_postprocessing_rules() == rules
  with open(wd.postprocessing_path) as f:
    assert json.load(f)["rules"][1] == {"kind": "min_volume", "classes": [2], "min_volume_ml": 0.5}
  with open(wd.postprocessing_path, "w") as f:
    f.write('{"rules": [{"kind": "dilate", "classes": [1]}]}')
  with pytest.raises(InputError, match="postprocessing.json.*dilate"):
    Workdir.of(wd).read_postprocessing_rules()
