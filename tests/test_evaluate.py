"""Segmentation evaluation: per-class scores and case-level detection from the segmentation."""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import common
from medjax.train import evaluate


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
  out = evaluate.evaluate(_config(), model, variables, source)
  assert out["detection_auc/tumour"] == pytest.approx(1.0)
  assert "detection_auc/organ" not in out  # no case has an organ: AUC undefined, left out
  probs = [c["max_prob/tumour"] for c in out["per_case"]]
  assert min(probs[:3]) > max(probs[3:])
  assert "max_prob/tumour" not in out  # per case only, not averaged
  # Bright spots in the tumour-free cases instead: the detector is always wrong.
  swapped = [_case(f"c{i}", bright_spot=i >= 3, tumour=i < 3, seed=i) for i in range(6)]
  assert evaluate.evaluate(_config(), model, variables, swapped)[
      "detection_auc/tumour"] == pytest.approx(0.0)
  # Every case has a tumour: no detection AUC.
  all_present = [_case(f"c{i}", bright_spot=True, tumour=True, seed=i) for i in range(3)]
  assert "detection_auc/tumour" not in evaluate.evaluate(_config(), model, variables, all_present)
