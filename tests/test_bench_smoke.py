"""The benchmarks' code paths at a tiny size on CPU, so that they cannot rot.

No timings are asserted; what must hold is what the benchmarks themselves
check (equal NMS results, no recompiles, finite losses) and the JSON they write.
"""

import json

import numpy as np
import torch

from bench import common, gpu, inputs, nms_bench, run_all, torch_rpn
from bench.jax_rpn import r50_c5_config

torch.set_num_threads(2)


def test_gpu_script_tiny(tmp_path):
    out = tmp_path / "gpu.json"
    rows = gpu.main(["--tiny", "--out", str(out)])
    assert [r["dtype"] for r in rows] == ["float32", "bfloat16"]
    for row in rows:
        assert row["step_tflops"] > 0
        assert row["proposals_per_batch"] > 0
        assert all(np.isfinite(v) for v in row["first_losses"].values())
    # Same weights and batch: bfloat16 tracks float32 closely on the first step.
    assert max(rows[1]["relative_loss_error"].values()) < 0.05
    saved = json.loads(out.read_text())
    assert saved["sections"]["gpu"]["settings"]["tiny"] is True
    assert saved["environment"]["jax"]


def test_nms_bench_checks_torchvision_and_records(tmp_path):
    row = nms_bench.measure(300, repeats=2)
    assert row["kept"] == min(row["torchvision_survivors"], 1000)
    path = common.record("nms", [row], {"n": 300}, str(tmp_path / "r.json"))
    common.record("gpu", [{"dtype": "float32"}], {}, path)
    sections = json.loads(open(path).read())["sections"]
    assert set(sections) == {"nms", "gpu"}
    table = common.markdown_table([row], nms_bench.COLUMNS)
    assert table.count("\n") == 2 and "| 300 |" in table
    assert table in run_all.report(path, ["nms"])


def test_proposal_boxes_are_clustered_top_scores():
    boxes, scores = inputs.proposal_boxes(500, image_size=256)
    assert boxes.shape == (500, 4) and scores.shape == (500,)
    assert len(np.unique(scores)) == 500
    assert np.all(boxes[:, 2:] >= boxes[:, :2]) and boxes.min() >= 0 and boxes.max() <= 256


def test_torchvision_reference_steps_and_predicts():
    config = r50_c5_config(64, 2, backbone="resnet18")
    batch = inputs.train_batch(2, 64, config.data.max_boxes)
    step = torch_rpn.train_step(config, batch)
    first, second = step(), step()
    assert all(np.isfinite(v) for v in (*first.values(), *second.values()))
    boxes = torch_rpn.predictor(config, batch)()
    assert len(boxes) == 2 and all(b.shape[1] == 4 for b in boxes)


def test_timing_helpers():
    calls = []
    times, background = common.time_alternating(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2)
    assert calls == ["a", "b"] * 3
    assert set(times) == {"a", "b"} and all(len(t) == 2 for t in times.values())
    assert background >= 0
    assert common.summary([3.0, 1.0, 2.0]) == {"median_s": 2.0, "min_s": 1.0, "runs": 3}
