"""Opening a derived TFDS config logs none of TFDS's per-open notices; other warnings pass."""
import logging

from absl import logging as absl_logging

from medjax.data.builders import datasets


def test_tfds_notices_are_dropped_and_other_warnings_kept(tmp_path, caplog):
  caplog.set_level(logging.WARNING)
  builder = datasets.get_builder("synthetic_organs/3d", str(tmp_path), shape=(16, 24, 24),
                                 split_sizes={"train": 1, "validation": 1, "test": 1})
  assert builder.builder_config.name.startswith("3d_")  # a derived config: TFDS would warn
  absl_logging.warning("a real warning, on the logger TFDS uses")
  messages = [r.getMessage() for r in caplog.records]
  assert not [m for m in messages if any(n in m for n in datasets.TfdsNoticeFilter.NOTICES)]
  assert "a real warning, on the logger TFDS uses" in messages
  assert [r.name for r in caplog.records] == [datasets.TFDS_LOGGER]
