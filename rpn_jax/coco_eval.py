"""COCO evaluation of person detections with pycocotools, the seed's table,
and the recall of raw proposals.

Detections are COCO results dicts: {"image_id", "category_id", "bbox": [x, y,
w, h] original-image pixels, "score"}. Metrics are COCOeval's numbers as it
gives them: -1 where it has nothing to measure (no ground truth in an area
range), printed `n/a` (docs/metrics.md).
"""

import contextlib
import dataclasses
import io
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from pycocotools.cocoeval import Params

if TYPE_CHECKING:  # postprocess imports JAX, which scoring does not need
  from rpn_jax.postprocess import Proposals

METRIC_KEYS = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
# (kind, IoU, area, maxDets) of each row, as COCOeval.summarize prints them.
_ROWS = (
    ("AP", "0.50:0.95", "all", 100),
    ("AP", "0.50", "all", 100),
    ("AP", "0.75", "all", 100),
    ("AP", "0.50:0.95", "small", 100),
    ("AP", "0.50:0.95", "medium", 100),
    ("AP", "0.50:0.95", "large", 100),
    ("AR", "0.50:0.95", "all", 1),
    ("AR", "0.50:0.95", "all", 10),
    ("AR", "0.50:0.95", "all", 100),
    ("AR", "0.50:0.95", "small", 100),
    ("AR", "0.50:0.95", "medium", 100),
    ("AR", "0.50:0.95", "large", 100),
)


def load_ground_truth(annotation_file: str) -> COCO:
  with contextlib.redirect_stdout(io.StringIO()):
    return COCO(annotation_file)


def person_category_id(coco: COCO, annotation_file: str) -> int:
  """The id of the one category named 'person' in `coco` (a ValueError
  naming `annotation_file` when there is none, or more than one)."""
  ids = [
      c["id"] for c in coco.dataset["categories"] if c.get("name") == "person"
  ]
  if len(ids) != 1:
    raise ValueError(
        f"{annotation_file}: expected one category named "
        f"'person', found {len(ids)}"
    )
  return int(ids[0])


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


def evaluate(
    coco: COCO,
    results: list[dict] | np.ndarray,
    image_ids: Sequence[int],
    category_id: int,
    max_dets: Sequence[int] = (1, 10, 100),
) -> dict[str, float]:
  """COCOeval(iouType='bbox') restricted to `category_id` and `image_ids`.

  `results` are COCO results dicts or the [M, 7] array of `to_array`.
  Returns the 12 summary numbers under METRIC_KEYS (with other `max_dets`,
  AR1/AR10/AR100 are the recalls at those three limits), -1 where COCOeval
  gives -1 (no ground truth in that area range). No detections at all is
  evaluated too (0 where there is ground truth), with a warning, where
  pycocotools' loadRes would fail.
  """
  return evaluate_with_curve(coco, results, image_ids, category_id, max_dets)[0]


def _no_results(coco: COCO) -> COCO:
  """An empty result set over `coco`'s images, as loadRes would build one
  from detections (it refuses an empty list)."""
  dt = COCO()
  dt.dataset = {
      "images": list(coco.dataset["images"]),
      "categories": list(coco.dataset["categories"]),
      "annotations": [],
  }
  dt.createIndex()
  return dt


def evaluate_with_curve(
    coco: COCO,
    results: list[dict] | np.ndarray,
    image_ids: Sequence[int],
    category_id: int,
    max_dets: Sequence[int] = (1, 10, 100),
    warn_if_empty: bool = True,
) -> tuple[dict[str, float], PrecisionRecall]:
  """`evaluate`, and the precision-recall curves of the same COCOeval."""
  if len(results) == 0 and warn_if_empty:
    logging.warning(
        "No detections on the %d evaluated images: every metric "
        "with ground truth is 0",
        len(image_ids),
    )
  with contextlib.redirect_stdout(io.StringIO()):
    dt = coco.loadRes(results) if len(results) else _no_results(coco)
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
      np.array(ev.params.iouThrs),
      np.array(ev.params.recThrs),
      np.array(ev.eval["precision"][:, :, 0, area, -1]),
  )
  metrics = {k: float(v) for k, v in zip(METRIC_KEYS, ev.stats)}
  return metrics, curve


def format_metric(value: float) -> str:
  """A metric to 3 decimals; COCOeval's -1 (nothing to measure) as `n/a`."""
  return "n/a" if value < 0 else f"{value:.3f}"


def format_table(metrics: dict[str, float]) -> str:
  """The 12-line markdown table of the seed report (week7.md)."""
  lines = [
      "| 종류 |    IoU    |  area  |maxDets| value |",
      "|:----:|:---------:|:------:|:-----:|:-----:|",
  ]
  for key, (kind, iou, area, dets) in zip(METRIC_KEYS, _ROWS):
    lines.append(
        f"|  {kind}  | {iou:^9} | {area:^6} | {dets:>5} | "
        f"{format_metric(metrics[key]):^5} |"
    )
  return "\n".join(lines)


def to_results(
    image_ids: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    valid: np.ndarray,
    category_id: int,
) -> list[dict]:
  """COCO results from per-image detections.

  image_ids [N]; boxes [N, D, 4] xyxy original pixels; scores, valid [N, D].
  """
  out = []
  for i, image_id in enumerate(image_ids):
    b = boxes[i][valid[i]]
    s = scores[i][valid[i]]
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
    for box, score in zip(xywh.tolist(), s.tolist()):
      out.append(
          {
              "image_id": int(image_id),
              "category_id": category_id,
              "bbox": [round(v, 2) for v in box],
              "score": round(score, 5),
          }
      )
  return out


def to_array(
    image_ids: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    valid: np.ndarray,
    category_id: int,
) -> np.ndarray:
  """The same detections as `to_results`, as pycocotools' [M, 7] array
  (image_id, x, y, w, h, score, category_id): fast for many detections."""
  rows = np.repeat(np.arange(len(image_ids)), valid.sum(axis=1))
  b = boxes[valid].astype(np.float64)
  return np.concatenate(
      [
          np.asarray(image_ids, np.float64)[rows][:, None],
          b[:, :2],
          b[:, 2:] - b[:, :2],
          scores[valid].astype(np.float64)[:, None],
          np.full((len(b), 1), category_id, np.float64),
      ],
      axis=1,
  )


def proposal_recall_key(limit: int) -> str:
  """The metrics.json key of the proposals' recall at `limit`: proposal_AR@100
  (COCOeval's own AR100 is the detections')."""
  return f"proposal_AR@{limit}"


def _ranks_and_matchable(
    results: np.ndarray, coco: COCO, category_id: int
) -> tuple[np.ndarray, np.ndarray]:
  """For each row of `to_array`'s [M, 7] results: its rank among its image's
  detections in COCOeval's order (stable sort by descending score), and
  whether its IoU with some ground-truth box of `category_id` reaches
  COCOeval's lowest IoU threshold (IoU as COCOeval's computeIoU has it:
  pycocotools' bbox IoU, crowd boxes as intersection over detection area)."""
  lowest_iou = Params(iouType="bbox").iouThrs.min()
  ranks = np.empty(len(results), np.int64)
  matchable = np.zeros(len(results), bool)
  by_image = np.argsort(results[:, 0], kind="stable")
  image_ids, starts = np.unique(results[by_image, 0], return_index=True)
  for image_id, rows in zip(image_ids, np.split(by_image, starts[1:])):
    order = np.argsort(-results[rows, 5], kind="mergesort")
    ranks[rows[order]] = np.arange(len(rows))
    gt = coco.loadAnns(
        coco.getAnnIds(imgIds=[int(image_id)], catIds=[category_id])
    )
    if gt:
      ious = mask_utils.iou(
          results[rows, 1:5],
          [g["bbox"] for g in gt],
          [int(g["iscrowd"]) for g in gt],
      )
      matchable[rows] = ious.max(axis=1) >= lowest_iou
  return ranks, matchable


def proposal_recall(
    props: "Proposals",
    coco: COCO,
    image_ids: Sequence[int],
    category_id: int,
    limits: tuple[int, ...] = (100, 300, 1000),
) -> dict[str, float]:
  """AR@n of the raw post-NMS proposals (no score threshold, no second NMS),
  the recall RPN papers report: COCOeval recall (IoU 0.50:0.95) with maxDets
  set to `limits`. Returns {"proposal_AR@100": ..., ...}
  (`proposal_recall_key`) for the limits the proposals reach
  (n <= post_nms_top_k).

  The numbers are those of one COCOeval of every proposal, computed from far
  fewer (COCOeval's per-detection matching loop is what costs: 1,000
  proposals x 10 IoU thresholds x 4 area ranges per image). A proposal whose
  IoU with every ground-truth box is below 0.5 never matches, so it never
  changes another's match and is never a true positive: it only takes a
  place in its image's ranking. AR@n therefore equals COCOeval, at the same
  maxDets, of the matchable proposals ranked within their image's top n.
  """
  limits = tuple(n for n in limits if n <= props.boxes.shape[1])
  if not limits:
    return {}
  results = to_array(
      props.image_ids, props.boxes, props.scores, props.valid, category_id
  )
  while len(limits) < 3:  # COCOeval.summarize reads three limits
    limits = (limits[0],) + limits
  ranks, matchable = _ranks_and_matchable(results, coco, category_id)
  recall = {}
  for n, key in zip(limits, ("AR1", "AR10", "AR100")):
    if proposal_recall_key(n) in recall:  # a padded limit: the same again
      continue
    # Nothing matchable is evaluated too: 0, or -1 without ground truth.
    recall[proposal_recall_key(n)] = evaluate_with_curve(
        coco,
        results[matchable & (ranks < n)],
        image_ids,
        category_id,
        max_dets=limits,
        warn_if_empty=False,
    )[0][key]
  return recall
