"""benchmarks.bench_nms: the same kept sets, the table, and its RESULTS.md section."""
from benchmarks import bench_nms


def test_bench_nms_small_run_table_and_section(tmp_path):
  result = bench_nms.bench([300], [0.1], repeats=1, monai_repeats=1, use_monai=False, seed=0)
  (row,) = result["rows"]
  assert row["same_kept_numpy"] and 1 < row["kept"] < 300
  table = bench_nms.markdown(result, "python -m benchmarks.bench_nms --sizes=300")
  assert "| 300 | 0.1 |" in table and table.startswith(bench_nms.BEGIN)
  path = tmp_path / "RESULTS.md"
  path.write_text("# Other results\n\nkept as is\n")
  bench_nms.write_section(str(path), table)
  bench_nms.write_section(str(path), table.replace("| 300 |", "| 301 |"))
  text = path.read_text()
  assert text.startswith("# Other results") and text.count(bench_nms.BEGIN) == 1
  assert "| 301 |" in text and "| 300 |" not in text
