"""COCO evaluation of person detections with pycocotools, and the seed's table.

Detections are COCO results dicts: {"image_id", "category_id", "bbox": [x, y,
w, h] original-image pixels, "score"}.
"""

import contextlib
import dataclasses
import io
import logging
from typing import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from pycocotools.cocoeval import Params

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl",
               "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# (kind, IoU, area, maxDets) of each row, as COCOeval.summarize prints them.
_ROWS = (("AP", "0.50:0.95", "all", 100), ("AP", "0.50", "all", 100),
         ("AP", "0.75", "all", 100), ("AP", "0.50:0.95", "small", 100),
         ("AP", "0.50:0.95", "medium", 100), ("AP", "0.50:0.95", "large", 100),
         ("AR", "0.50:0.95", "all", 1), ("AR", "0.50:0.95", "all", 10),
         ("AR", "0.50:0.95", "all", 100), ("AR", "0.50:0.95", "small", 100),
         ("AR", "0.50:0.95", "medium", 100), ("AR", "0.50:0.95", "large", 100))


def load_ground_truth(annotation_file: str) -> COCO:
  with contextlib.redirect_stdout(io.StringIO()):
    return COCO(annotation_file)


def person_category_id(coco: COCO, annotation_file: str) -> int:
  ids = coco.getCatIds(catNms=["person"])
  if not ids:
    raise ValueError(f"{annotation_file}: no 'person' category")
  return ids[0]


@dataclasses.dataclass
class PrecisionRecall:
  """COCOeval's interpolated precision of one category, area "all", at the
  largest maxDets (100 by default): the curves AP averages.

  precision [T, R] at iou_thresholds [T] (0.50:0.05:0.95) and
  recall_thresholds [R] (0:0.01:1); -1 where COCOeval leaves it undefined
  (no ground truth).
  """
  iou_thresholds: np.ndarray
  recall_thresholds: np.ndarray
  precision: np.ndarray


def evaluate(coco: COCO, results: list[dict] | np.ndarray,
             image_ids: Sequence[int],
             category_id: int, max_dets: Sequence[int] = (1, 10, 100)
             ) -> dict[str, float]:
  """COCOeval(iouType='bbox') restricted to `category_id` and `image_ids`.

  `results` are COCO results dicts or the [M, 7] array of `to_array`.
  Returns the 12 summary numbers under METRIC_KEYS (with other `max_dets`,
  AR1/AR10/AR100 are the recalls at those three limits). No detections at all
  gives zeros with a warning instead of pycocotools' error.
  """
  return evaluate_with_curve(coco, results, image_ids, category_id,
                             max_dets)[0]


def evaluate_with_curve(coco: COCO, results: list[dict] | np.ndarray,
                        image_ids: Sequence[int], category_id: int,
                        max_dets: Sequence[int] = (1, 10, 100)
                        ) -> tuple[dict[str, float], PrecisionRecall]:
  """`evaluate`, and the precision-recall curves of the same COCOeval."""
  params = Params(iouType="bbox")
  if len(results) == 0:
    logging.warning("No detections on the %d evaluated images: every metric "
                    "is 0", len(image_ids))
    # Nothing detected: precision 0 at every recall level.
    return ({k: 0.0 for k in METRIC_KEYS}, PrecisionRecall(
        params.iouThrs, params.recThrs,
        np.zeros((len(params.iouThrs), len(params.recThrs)))))
  with contextlib.redirect_stdout(io.StringIO()):
    dt = coco.loadRes(results)
    ev = COCOeval(coco, dt, iouType="bbox")
    ev.params.catIds = [category_id]
    ev.params.imgIds = sorted(int(i) for i in image_ids)
    ev.params.maxDets = list(max_dets)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  # eval["precision"] is [T, R, K, A, M] with one category here; summarize's
  # AP rows read the last maxDets.
  area = ev.params.areaRngLbl.index("all")
  curve = PrecisionRecall(
      np.array(ev.params.iouThrs), np.array(ev.params.recThrs),
      np.array(ev.eval["precision"][:, :, 0, area, -1]))
  # COCOeval marks "no ground truth in this area range" with -1.
  metrics = {k: max(float(v), 0.0) for k, v in zip(METRIC_KEYS, ev.stats)}
  return metrics, curve


def format_table(metrics: dict[str, float]) -> str:
  """The 12-line markdown table of the seed report (week7.md)."""
  lines = ["| 종류 |    IoU    |  area  |maxDets| value |",
           "|:----:|:---------:|:------:|:-----:|:-----:|"]
  for key, (kind, iou, area, dets) in zip(METRIC_KEYS, _ROWS):
    lines.append(f"|  {kind}  | {iou:^9} | {area:^6} | {dets:>5} | "
                 f"{metrics[key]:.3f} |")
  return "\n".join(lines)


def to_results(image_ids: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
               valid: np.ndarray, category_id: int) -> list[dict]:
  """COCO results from per-image detections.

  image_ids [N]; boxes [N, D, 4] xyxy original pixels; scores, valid [N, D].
  """
  out = []
  for i, image_id in enumerate(image_ids):
    b = boxes[i][valid[i]]
    s = scores[i][valid[i]]
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
    for box, score in zip(xywh.tolist(), s.tolist()):
      out.append({"image_id": int(image_id), "category_id": category_id,
                  "bbox": [round(v, 2) for v in box], "score": round(score, 5)})
  return out


def to_array(image_ids: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
             valid: np.ndarray, category_id: int) -> np.ndarray:
  """The same detections as `to_results`, as pycocotools' [M, 7] array
  (image_id, x, y, w, h, score, category_id): fast for many detections."""
  rows = np.repeat(np.arange(len(image_ids)), valid.sum(axis=1))
  b = boxes[valid].astype(np.float64)
  return np.concatenate([
      np.asarray(image_ids, np.float64)[rows][:, None], b[:, :2],
      b[:, 2:] - b[:, :2], scores[valid].astype(np.float64)[:, None],
      np.full((len(b), 1), category_id, np.float64)], axis=1)
