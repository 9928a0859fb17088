"""Train, checkpoint, resume and evaluate the tiny recipe end to end."""

import json
import os

import jax
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rpn_jax import checkpoint as checkpoint_lib
from rpn_jax import coco_eval
from rpn_jax import eval_lib
from rpn_jax import train_lib
from rpn_jax.data import open_dataset


def _steps_per_epoch(config):
  return len(open_dataset(config.data, config.data.train_split)) // (
      config.train.batch_size
  )


def test_train_then_evaluate_beats_untrained(tiny, tmp_path):
  untrained = tiny.copy_and_resolve_references()
  untrained.train.max_steps = 1
  train_lib.train_and_evaluate(untrained, str(tmp_path / "untrained"))
  before = eval_lib.run_evaluation(
      untrained, str(tmp_path / "untrained"), str(tmp_path / "untrained_eval")
  )

  tiny.train.epochs = 25
  workdir = str(tmp_path / "trained")
  train_lib.train_and_evaluate(tiny, workdir)
  out = str(tmp_path / "eval")
  after = eval_lib.run_evaluation(tiny, workdir, out)

  assert after["step"] == 25 * _steps_per_epoch(tiny)
  # 25 short epochs of a width-8 net: far from converged, but learning. How
  # far it gets depends on the host's float rounding (on an AVX-512 host the
  # proposal recall only rose from 0.032 to 0.036), so no margin is asserted.
  assert after["AP"] > before["AP"]
  assert after["AP50"] > before["AP50"]
  assert after["proposal_AR@100"] > before["proposal_AR@100"]
  with open(os.path.join(out, "metrics.json")) as f:
    metrics = json.load(f)
  assert set(coco_eval.METRIC_KEYS) <= set(metrics)
  assert os.path.isfile(metrics["annotation_file"])
  val = open_dataset(tiny.data, tiny.data.val_split)
  assert sorted(metrics["image_ids"]) == sorted(val.image_ids)

  # An independent pycocotools evaluation of detections.json gives the same AP.
  gt = COCO(metrics["annotation_file"])
  dt = gt.loadRes(os.path.join(out, "detections.json"))
  ev = COCOeval(gt, dt, iouType="bbox")
  ev.params.catIds = gt.getCatIds(catNms=["person"])
  ev.params.imgIds = metrics["image_ids"]
  ev.evaluate()
  ev.accumulate()
  ev.summarize()
  assert abs(ev.stats[0] - metrics["AP"]) < 1e-12
  assert abs(ev.stats[1] - metrics["AP50"]) < 1e-12
  assert abs(ev.stats[8] - metrics["AR100"]) < 1e-12

  # One forward pass, a sweep of thresholds: each row equals its own evaluation.
  other = tiny.copy_and_resolve_references()
  other.eval.score_threshold, other.eval.nms_threshold = 0.3, 0.6
  separate = eval_lib.run_evaluation(
      other,
      workdir,
      str(tmp_path / "other"),
      sweep_scores=[tiny.eval.score_threshold, 0.3],
      sweep_nms=[0.5, 0.6],
  )
  with open(tmp_path / "other" / "sweep.json") as f:
    rows = {(r["score_threshold"], r["nms_threshold"]): r for r in json.load(f)}
  assert len(rows) == 4
  for key in coco_eval.METRIC_KEYS:
    assert rows[(0.3, 0.6)][key] == separate[key]
    assert rows[(tiny.eval.score_threshold, 0.5)][key] == metrics[key]
  assert 0.0 <= metrics["proposal_AR@100"] <= 1.0

  # The enlarged test-time passes through the same path: their boxes come back
  # inside the original images, metrics.json names the settings.
  scaled = tiny.copy_and_resolve_references()
  scaled.eval.tta_scales = (1.0, 1.5)
  scaled.eval.tta_upscaled_max_size = 48.0
  tta_out = eval_lib.run_evaluation(scaled, workdir, str(tmp_path / "tta"))
  assert tta_out["AP50"] > before["AP50"]
  assert tta_out["tta_scales"] == [1.0, 1.5]
  assert tta_out["tta_upscaled_max_size"] == 48.0
  tta_dt = gt.loadRes(str(tmp_path / "tta" / "detections.json"))
  assert len(tta_dt.anns) > 0
  for det in tta_dt.anns.values():
    image = gt.imgs[det["image_id"]]
    x, y, w, h = det["bbox"]
    assert x >= 0 and y >= 0 and w > 0 and h > 0
    assert x + w <= image["width"] + 1 and y + h <= image["height"] + 1

  # Evaluated on larger canvases than it was trained on (eval.image_size):
  # still learnt, boxes still in original pixels. Proposal recall, not AP50:
  # on an AMD EPYC with AVX-512 the tiny model's 60 detections at 160 px all
  # missed (AP50 0, as untrained) while its proposal recall rose from 0.032
  # to 0.050.
  larger = tiny.copy_and_resolve_references()
  larger.eval.image_size = 160
  big = eval_lib.run_evaluation(larger, workdir, str(tmp_path / "larger"))
  assert big["image_size"] == 160 and metrics["image_size"] == 128
  assert big["proposal_AR@100"] > before["proposal_AR@100"]
  big_dt = gt.loadRes(str(tmp_path / "larger" / "detections.json"))
  for det in big_dt.anns.values():
    x, y, w, h = det["bbox"]
    image = gt.imgs[det["image_id"]]
    assert x + w <= image["width"] + 1 and y + h <= image["height"] + 1


def test_resume_after_an_epoch_matches_uninterrupted_run(tiny, tmp_path):
  straight = str(tmp_path / "straight")
  train_lib.train_and_evaluate(tiny, straight)

  resumed = str(tmp_path / "resumed")
  first = tiny.copy_and_resolve_references()
  epoch = _steps_per_epoch(tiny)
  first.train.max_steps = epoch
  train_lib.train_and_evaluate(first, resumed)
  assert checkpoint_lib.Checkpointer(
      os.path.join(resumed, "checkpoints")
  ).all_steps() == [epoch]
  train_lib.train_and_evaluate(tiny, resumed)

  a, step_a = checkpoint_lib.restore_variables(tiny, straight)
  b, step_b = checkpoint_lib.restore_variables(tiny, resumed)
  assert step_a == step_b == 2 * epoch
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _ground_truth(rng):
  """Six images of persons (category 1) and cars (2), a crowd of persons in
  image 2, no box in image 0."""
  images = [{"id": i, "width": 400, "height": 300} for i in range(6)]
  anns = []
  for image_id in range(1, 6):
    for j, category_id in enumerate((1, 1, 1, 2)):
      x, y = rng.uniform(0, 250), rng.uniform(0, 150)
      w, h = rng.uniform(10, 150), rng.uniform(10, 150)
      anns.append(
          {
              "id": len(anns) + 1,
              "image_id": image_id,
              "category_id": category_id,
              "bbox": [x, y, w, h],
              "area": w * h,
              "iscrowd": int(image_id == 2 and j == 0),
          }
      )
  gt = COCO()
  gt.dataset = {
      "images": images,
      "annotations": anns,
      "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}],
  }
  gt.createIndex()
  return gt


def test_proposal_recall_equals_plain_cocoeval():
  rng = np.random.default_rng(0)
  gt = _ground_truth(rng)
  k = 1000
  # Proposals around every box (IoU from ~0.3 to ~1), among random ones,
  # scores with ties: the matchable ones are scattered over the ranks.
  boxes = rng.uniform(0, 200, (6, k, 2))
  boxes = np.concatenate([boxes, boxes + rng.uniform(5, 200, (6, k, 2))], -1)
  for image_id in range(1, 6):
    for j, ann in enumerate(gt.imgToAnns[image_id]):
      x, y, w, h = ann["bbox"]
      jitter = rng.normal(0, 0.15, (40, 4)) * [w, h, w, h]
      boxes[image_id, 40 * j : 40 * (j + 1)] = [x, y, x + w, y + h] + jitter
  boxes[..., 2:] = np.maximum(boxes[..., 2:], boxes[..., :2] + 1)
  scores = np.round(rng.uniform(0, 1, (6, k)), 2)
  valid = rng.uniform(size=(6, k)) < 0.9
  valid[5] = False  # an image with persons and no proposal
  props = eval_lib.Proposals(np.arange(6), boxes, scores, valid)
  image_ids = list(range(6))

  for limits, padded in (
      ((100, 300, 1000), [100, 300, 1000]),
      ((10, 50), [10, 10, 50]),
  ):
    ev = COCOeval(
        gt,
        gt.loadRes(
            coco_eval.to_array(props.image_ids, boxes, scores, valid, 1)
        ),
        iouType="bbox",
    )
    ev.params.catIds, ev.params.imgIds, ev.params.maxDets = (
        [1],
        image_ids,
        padded,
    )
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    expected = {
        f"proposal_AR@{n}": ev.stats[6 + i] for i, n in enumerate(padded)
    }
    recall = coco_eval.proposal_recall(props, gt, image_ids, 1, limits)
    assert recall == expected
    assert (
        0
        < recall[f"proposal_AR@{limits[0]}"]
        < recall[f"proposal_AR@{limits[-1]}"]
    )
