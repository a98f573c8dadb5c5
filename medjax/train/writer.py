"""Training metrics: `metrics.jsonl` (one JSON object per logged step) and TensorBoard."""
from __future__ import annotations

import json
import math
import os
from typing import Mapping, Union

from medjax.train.workdir import Workdir


class MetricWriter:
  """Appends scalars to `<workdir>/metrics.jsonl` and TensorBoard event files.

  Only the writing process (process 0) should create one. Non-finite values are
  written as JSON `null`.
  """

  def __init__(self, workdir: Union[str, os.PathLike, Workdir]):
    from tensorboardX import SummaryWriter  # TensorBoard events without TensorFlow
    workdir = Workdir.of(workdir)
    self.path = workdir.metrics_path
    self._tb = SummaryWriter(workdir.tensorboard_dir)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    row = {"step": int(step)}
    for k, v in scalars.items():
      v = float(v)
      row[k] = v if math.isfinite(v) else None
      if math.isfinite(v):
        self._tb.add_scalar(k, v, int(step))
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")

  def close(self) -> None:
    self._tb.flush()
    self._tb.close()


def read_metrics(workdir: Union[str, os.PathLike, Workdir]) -> list[dict]:
  """The rows of `<workdir>/metrics.jsonl` (later rows win for a repeated step)."""
  path = Workdir.of(workdir).metrics_path
  if not os.path.exists(path):
    return []
  rows = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        row = json.loads(line)
        rows[row["step"]] = row
  return [rows[k] for k in sorted(rows)]
