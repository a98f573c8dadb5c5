"""A few training steps of the 3D U-Net with the Pallas kernels (interpreted on CPU)
give the losses of the XLA path."""
import json
import os

import numpy as np
import pytest

from experiments.configs import unet3d_synthetic
from medjax.train import loop


def _losses(workdir, data_dir, kernels):
  config = unet3d_synthetic.get_config("smoke")
  config.data_dir = data_dir
  config.kernels = kernels
  config.num_steps = 3
  config.eval.report_cases = 0
  config.eval.surface_metrics = False
  results = loop.train_and_evaluate(config, workdir)
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r["loss"] for r in rows], results


@pytest.mark.e2e
def test_pallas_kernels_train_like_xla(tmp_path, data_dir):
  xla, xla_eval = _losses(str(tmp_path / "xla"), data_dir, "xla")
  pallas, pallas_eval = _losses(str(tmp_path / "pallas"), data_dir, "pallas")
  assert len(xla) == len(pallas) == 3
  assert xla[0] != xla[2]  # it trained
  np.testing.assert_allclose(pallas, xla, rtol=1e-4)
  np.testing.assert_allclose(pallas_eval["dice/organ"], xla_eval["dice/organ"], atol=1e-3)
