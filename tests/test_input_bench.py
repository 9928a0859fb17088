"""bench.input_bench's code path on 8 tiny images and one pass: it runs the
real loader over a COCO-layout folder and records positive rates."""

import json

from bench import input_bench, report


def test_input_bench_tiny_records_positive_rates(tmp_path):
  out = tmp_path / "r.json"
  rows = input_bench.main(
      [
          "--images=8",
          "--passes=1",
          "--warmup=0",
          "--height=48",
          "--width=64",
          "--image_size=128",
          f"--out={out}",
      ]
  )
  assert [r["workers"] for r in rows] == [1, 2]
  for row in rows:
    assert row["images_per_pass"] == 8
    assert row["images_per_s"] > 0 and row["images_per_s_per_worker"] > 0
    assert row["cores_for_200"] >= 1 and row["cores_for_400"] >= 1
  assert rows[0]["scaling_vs_1"] == 1.0
  saved = json.loads(out.read_text())
  assert saved["sections"]["input"]["settings"]["image_size"] == 128
  assert "| 1 |" in report.render(str(out), ["input"])
