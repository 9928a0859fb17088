"""Metrics mean what COCOeval means: its -1 ("no ground truth in this area
range") is kept, printed `n/a`; the proposals' recall has its own keys."""

import json
import os

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rpn_jax import checkpoint as checkpoint_lib
from rpn_jax import coco_eval
from rpn_jax import eval_lib

LARGE = 96**2  # COCOeval's "large" area range starts here


def test_metrics_json_equals_an_independent_cocoeval_of_detections_json(
    tiny_workdir, tmp_path, capsys
):
  config = checkpoint_lib.load_config(tiny_workdir)
  # Two short epochs leave every objectness below the recipe's threshold.
  config.eval.score_threshold = 0.0
  out = str(tmp_path / "eval")
  record = eval_lib.run_evaluation(
      config, tiny_workdir, out, num_images_to_draw=0
  )
  printed = capsys.readouterr().out
  with open(os.path.join(out, "metrics.json")) as f:
    metrics = json.load(f)

  gt = COCO(metrics["annotation_file"])
  person = gt.getCatIds(catNms=["person"])
  persons = gt.loadAnns(
      gt.getAnnIds(imgIds=metrics["image_ids"], catIds=person)
  )
  # The tiny val set (128 px canvas, images of at most 160 px) has small and
  # medium persons and no large one: COCOeval has nothing to measure there.
  assert persons and max(a["area"] for a in persons) <= LARGE
  assert any(a["area"] > 32**2 for a in persons)
  ev = COCOeval(
      gt, gt.loadRes(os.path.join(out, "detections.json")), iouType="bbox"
  )
  ev.params.catIds = person
  ev.params.imgIds = metrics["image_ids"]
  ev.evaluate()
  ev.accumulate()
  ev.summarize()
  assert [metrics[k] for k in coco_eval.METRIC_KEYS] == ev.stats.tolist()
  assert metrics["APl"] == metrics["ARl"] == -1.0
  assert 0.0 <= metrics["AP50"] <= 1.0 and 0.0 <= metrics["APm"] <= 1.0
  assert {k: record[k] for k in coco_eval.METRIC_KEYS} == {
      k: metrics[k] for k in coco_eval.METRIC_KEYS
  }

  # The proposals' recall under its own names, beside COCOeval's AR100.
  limit = config.proposals.post_nms_top_k  # 100 in the tiny recipe
  assert [k for k in metrics if "AR@" in k] == [f"proposal_AR@{limit}"]
  assert f"proposal_AR@{limit} " in printed
  rows = [line for line in printed.splitlines() if "| large  |" in line]
  assert len(rows) == 2 and all(row.endswith("|  n/a  |") for row in rows)


def _ground_truth(boxes_per_image: list[list[list[float]]]) -> COCO:
  """Persons (category 1) with these [x, y, w, h] boxes, in 300x300 images."""
  anns = [
      {
          "image_id": i,
          "category_id": 1,
          "bbox": b,
          "area": b[2] * b[3],
          "iscrowd": 0,
      }
      for i, boxes in enumerate(boxes_per_image)
      for b in boxes
  ]
  for n, a in enumerate(anns):
    a["id"] = n + 1
  gt = COCO()
  gt.dataset = {
      "images": [
          {"id": i, "width": 300, "height": 300}
          for i in range(len(boxes_per_image))
      ],
      "annotations": anns,
      "categories": [{"id": 1, "name": "person"}],
  }
  gt.createIndex()
  return gt


def test_no_ground_truth_in_an_area_range_stays_minus_one():
  gt = _ground_truth([[[10, 10, 20, 20], [50, 50, 60, 50]], [[5, 5, 40, 40]]])
  found = [
      {"image_id": 0, "category_id": 1, "bbox": [11, 10, 20, 20], "score": 0.9},
      {"image_id": 1, "category_id": 1, "bbox": [5, 6, 40, 40], "score": 0.8},
  ]
  metrics = coco_eval.evaluate(gt, found, [0, 1], 1)
  assert metrics["APl"] == metrics["ARl"] == -1.0
  assert 0.0 < metrics["AP"] < 1.0 and metrics["APm"] > 0.0
  # Nothing detected: 0 where there are persons, -1 where there are none,
  # as COCOeval of an empty result set gives.
  empty = coco_eval.evaluate(gt, [], [0, 1], 1)
  assert empty["AP"] == empty["AR100"] == empty["APm"] == 0.0
  assert empty["APl"] == empty["ARl"] == -1.0
  props = eval_lib.Proposals(
      np.array([0, 1]),
      np.zeros((2, 3, 4)),
      np.zeros((2, 3)),
      np.zeros((2, 3), bool),
  )
  assert coco_eval.proposal_recall(props, gt, [0, 1], 1, (1, 3)) == {
      "proposal_AR@1": 0.0,
      "proposal_AR@3": 0.0,
  }


def test_tables_print_minus_one_as_not_available():
  metrics = {k: 0.25 for k in coco_eval.METRIC_KEYS}
  metrics["APl"] = metrics["ARl"] = -1.0
  table = coco_eval.format_table(metrics).splitlines()
  assert len(table) == 14 and "-1" not in "".join(table)
  assert [row.endswith("|  n/a  |") for row in table[2:]] == [
      k in ("APl", "ARl") for k in coco_eval.METRIC_KEYS
  ]
  sweep = eval_lib.format_sweep(
      [
          dict(
              metrics, AP=0.3, AP75=-1.0, nms_threshold=0.5, score_threshold=0.4
          ),
          dict(metrics, AP=0.2, nms_threshold=0.6, score_threshold=0.4),
      ]
  )
  assert sweep.splitlines()[2] == (
      "| 0.50 | 0.40 | 0.300 | 0.250 | n/a   | 0.250 | *"
  )
