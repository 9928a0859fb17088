"""The benchmarks' code paths at a tiny size on CPU, so that they cannot rot.

No timings are asserted; what must hold is what the benchmarks themselves
check (equal NMS results, no recompiles, finite losses) and the JSON they write.
"""

import json
import os

import numpy as np
import torch

import pytest

from bench import (
    common,
    gpu,
    inputs,
    nms_bench,
    profile_step,
    report,
    run_all,
    scratch_step_bench,
    torch_fpn_rpn,
    torch_rpn,
)
from bench.jax_rpn import r50_c5_config

torch.set_num_threads(2)


@pytest.mark.parametrize("recipe", ["seed", "atss"])
def test_gpu_script_tiny(tmp_path, recipe):
  out = tmp_path / "gpu.json"
  rows = gpu.main(["--tiny", "--recipe", recipe, "--out", str(out)])
  assert [r["dtype"] for r in rows] == ["float32", "bfloat16"]
  for row in rows:
    assert row["step_tflops"] > 0
    assert row["proposals_per_batch"] > 0
    assert all(np.isfinite(v) for v in row["first_losses"].values())
  # Same weights and batch: bfloat16 tracks float32 closely on the first step.
  assert max(rows[1]["relative_loss_error"].values()) < 0.05
  saved = json.loads(out.read_text())
  assert saved["sections"]["gpu"]["settings"]["tiny"] is True
  assert saved["sections"]["gpu"]["settings"]["recipe"] == recipe
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
  assert table in report.render(path, ["nms"])


def test_proposal_boxes_are_clustered_top_scores():
  boxes, scores = inputs.proposal_boxes(500, image_size=256)
  assert boxes.shape == (500, 4) and scores.shape == (500,)
  assert len(np.unique(scores)) == 500
  assert (
      np.all(boxes[:, 2:] >= boxes[:, :2])
      and boxes.min() >= 0
      and boxes.max() <= 256
  )


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
      {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
      repeats=2,
  )
  assert calls == ["a", "b"] * 3
  assert set(times) == {"a", "b"} and all(len(t) == 2 for t in times.values())
  assert background >= 0
  assert common.summary([3.0, 1.0, 2.0]) == {
      "median_s": 2.0,
      "min_s": 1.0,
      "runs": 3,
  }


def _results(tmp_path):
  """A results file with one NMS row that meets its target and one train-step row that doesn't."""
  path = str(tmp_path / "r.json")
  common.record(
      "nms",
      [
          {"boxes": 12000, "kept": 1000, "speedup": 80.5},
          {"boxes": 1000, "kept": 431, "speedup": 2.2},
      ],
      {"repeats": 20},
      path,
  )
  common.record(
      "train_step",
      [{"image_size": 512, "batch": 1, "speedup": 0.916}],
      {},
      path,
  )
  return path


def test_report_renders_targets_and_writes_between_markers(tmp_path):
  path = _results(tmp_path)
  text = report.render(path)
  assert "| NMS 12,000 -> 1,000 boxes | 80.50x | 10.0x | yes |" in text
  assert "| train step 512 px, batch 1 | 0.92x | 1.0x | no |" in text
  assert "NMS 1,000" not in text  # not a target
  assert "Settings: repeats: 20" in text and "jax " in text
  markdown = tmp_path / "B.md"
  markdown.write_text(
      f"# prose\n{report.BEGIN}\nold\n{report.END}\nmore prose\n"
  )
  report.write(str(markdown), text)
  report.write(str(markdown), text)  # again: the same file
  content = markdown.read_text()
  assert (
      content
      == f"# prose\n{report.BEGIN}\n\n{text}\n{report.END}\nmore prose\n"
  )
  with pytest.raises(ValueError, match="needs one line"):
    report.write(str(tmp_path / "r.json"), text)


def test_run_all_report_only_writes_markdown(tmp_path, monkeypatch, capsys):
  path = _results(tmp_path)
  monkeypatch.setattr(common, "results_path", lambda machine=None: path)
  markdown = tmp_path / "B.md"
  markdown.write_text(f"{report.BEGIN}\n{report.END}\n")
  run_all.main(["--report_only", "--write", str(markdown)])
  assert report.render(path) in markdown.read_text()
  run_all.main(["--report_only"])
  assert "### targets" in capsys.readouterr().out


@pytest.mark.parametrize(
    "key, value",
    [
        ("model.anchor_scales", (1.0, 2.0)),
        ("model.head_convs", 2),
        ("model.head_norm", "gn"),
        ("targets.assigner", "atss"),
        ("targets.objectness_loss", "focal"),
        ("targets.box_loss", "giou"),
        ("targets.normalizer", "positives"),
    ],
)
def test_torch_reference_refuses_what_it_cannot_mirror(key, value):
  config = r50_c5_config(64, 2, backbone="resnet18")
  torch_rpn.build(config)  # the seed's settings build
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match="the seed's anchors and losses only"):
    torch_rpn.build(config)


@pytest.mark.parametrize("setting", scratch_step_bench.SETTINGS)
def test_scratch_step_bench_tiny(setting):
  full = scratch_step_bench.setting_config(setting)
  # The benchmark's own settings: from scratch, nothing frozen.
  assert (full.model.norm, tuple(full.model.freeze)) == ("bn", ())
  config = full.copy_and_resolve_references()
  config.data.image_size = 64
  config.train.batch_size = 2
  row = scratch_step_bench.measure(setting, repeats=1, config=config)
  assert set(scratch_step_bench.COLUMNS) <= set(row)
  assert (row["image_size"], row["batch"]) == (64, 2)
  assert np.isfinite(row["rpn_jax_loss"]) and row["speedup"] > 0
  assert report.TARGETS["scratch_step"][1](row).startswith("from-scratch")


def test_torch_fpn_reference_refuses_what_it_cannot_mirror():
  config = scratch_step_bench.default_config()
  config.data.image_size = 64
  torch_fpn_rpn.build(config)
  config.model.freeze = ("backbone/conv1",)
  with pytest.raises(ValueError, match="nothing frozen"):
    torch_fpn_rpn.build(config)
  config = scratch_step_bench.default_config()
  config.model.head_channels = 64
  with pytest.raises(ValueError, match="head_channels == model.fpn_channels"):
    torch_fpn_rpn.build(config)


def test_profile_step_names_the_model_code_of_each_operation():
  config = scratch_step_bench.default_config()
  config.data.image_size = 64
  config.train.batch_size = 2
  rows, trace_dir = profile_step.profile("default", 1, config=config)
  assert rows and all(ms >= 0 for _, ms, _ in rows)
  times = [ms for _, ms, _ in rows]
  assert times == sorted(times, reverse=True)
  named = [op_name for _, _, op_name in rows]
  # The convolutions' forward and gradient ops are traced back to the model.
  assert any("jvp(RPN)/backbone/conv1" in n for n in named)
  assert any("transpose(jvp(RPN))/head" in n for n in named)
  assert os.path.isdir(trace_dir)
