"""Scoring: per-class segmentation scores, case-level detection from the segmentation,
classification in the source's order with real case ids."""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import common
from medjax.data import transforms
from medjax.train import evaluate
from medjax.train.tasks import SegmentationTask


def _evaluate(config, model, variables, source):
  return SegmentationTask().evaluate(config, model, variables, source).results


class BrightIsTumour(nn.Module):
  """Logits (0, 0, 4 * x): the brighter a pixel, the more 'tumour' (a fixed, parameter-free model)."""

  @nn.compact
  def __call__(self, x, *, train=False):
    zeros = jnp.zeros_like(x)
    return jnp.concatenate([zeros, zeros, 4.0 * x], axis=-1)


def _case(name, bright_spot: bool, tumour: bool, seed: int):
  rng = np.random.default_rng(seed)
  image = rng.normal(0.0, 10.0, (16, 16)).astype(np.float32)
  label = np.zeros((16, 16), np.uint8)
  if bright_spot:
    image[6:9, 6:9] += 200.0
  if tumour:
    label[6:9, 6:9] = 2
  return {"case": name, "image": image, "label": label, "spacing": np.ones(2, np.float32)}


def _config():
  c = common.base_config()
  c.patch_size = (16, 16)
  c.eval.surface_metrics = False
  c.eval.report_cases = 0
  return c


def test_detection_auc_from_segmentation_max_probability():
  model, variables = BrightIsTumour(), {}
  # Tumour cases have the bright spot: the max tumour probability separates them perfectly.
  source = [_case(f"c{i}", bright_spot=i < 3, tumour=i < 3, seed=i) for i in range(6)]
  out = _evaluate(_config(), model, variables, source)
  assert out["detection_auc/tumour"] == pytest.approx(1.0)
  assert "detection_auc/organ" not in out  # no case has an organ: AUC undefined, left out
  probs = [c["max_prob/tumour"] for c in out["per_case"]]
  assert min(probs[:3]) > max(probs[3:])
  assert "max_prob/tumour" not in out  # per case only, not averaged
  # Bright spots in the tumour-free cases instead: the detector is always wrong.
  swapped = [_case(f"c{i}", bright_spot=i >= 3, tumour=i < 3, seed=i) for i in range(6)]
  assert _evaluate(_config(), model, variables, swapped)[
      "detection_auc/tumour"] == pytest.approx(0.0)
  # Every case has a tumour: no detection AUC.
  all_present = [_case(f"c{i}", bright_spot=True, tumour=True, seed=i) for i in range(3)]
  assert "detection_auc/tumour" not in _evaluate(_config(), model, variables, all_present)


def test_scoring_keeps_examples_for_the_report_and_draws_nothing(tmp_path):
  config = _config()
  config.eval.report_cases = 2
  source = [_case(f"c{i}", bright_spot=True, tumour=True, seed=i) for i in range(3)]
  evaluation = SegmentationTask().evaluate(config, BrightIsTumour(), {}, source)
  assert [e.case for e in evaluation.examples] == ["c0", "c1"]
  example = evaluation.examples[0]
  assert example.image.shape == example.label.shape == example.pred.shape == (16, 16)
  # the image as the network sees it (normalised), for the report's contrast
  np.testing.assert_allclose(example.image, transforms.normalize_ct(source[0]["image"]), rtol=1e-6)
  assert example.scores["dice/tumour"] == evaluation.results["per_case"][0]["dice/tumour"]
  assert not list(tmp_path.iterdir())


def test_classification_scores_in_source_order_with_case_ids():
  images = [(f"img{i}", np.full((4, 4, 1), float(i)), i % 2) for i in range(5)]
  # P(positive) = 0.1 + 0.05 * mean intensity: images 1 and 3 (label 1) score 0.15 and 0.25
  predict = lambda x: np.stack([1 - (0.1 + 0.05 * x.mean((1, 2, 3))),
                                0.1 + 0.05 * x.mean((1, 2, 3))], -1)
  out = evaluate.score_classification(predict, iter(images), ("neg", "pos"), batch_size=2).results
  assert [c["case"] for c in out["per_case"]] == ["img0", "img1", "img2", "img3", "img4"]
  assert [c["label"] for c in out["per_case"]] == [0, 1, 0, 1, 0]
  assert out["accuracy"] == pytest.approx(3 / 5)  # all predicted negative
  # scores 0.1, 0.15, 0.2, 0.25, 0.3 for labels 0,1,0,1,0: 3 of 6 pairs ranked right
  assert out["auc/pos"] == pytest.approx(3 / 6)
  assert out["per_case"][4]["prob"] == pytest.approx(0.3)
