"""Evaluation: fixed-size proposals on device (`rpn_jax.predictor`), then
thresholds and a second NMS (`rpn_jax.postprocess`) and COCO evaluation on
the host side.

Proposals are computed once per image ([K, 4] canvas pixels with scores and a
validity mask) and cached, so any number of (score, NMS) threshold pairs can
be evaluated from one forward pass over the split.
"""

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import jax
import ml_collections
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import Params
from tqdm import tqdm

from rpn_jax import checkpoint as checkpoint_lib
from rpn_jax import coco_eval
from rpn_jax import parallel
from rpn_jax import setup_model
from rpn_jax import train_lib
from rpn_jax import tta as tta_lib
from rpn_jax.data import loader as loader_lib
from rpn_jax.data import open_dataset
# The predictor and the post-processing live in modules free of the training
# code (for the exported detector); their names stay available here.
from rpn_jax.postprocess import Proposals, select_detections
from rpn_jax.predictor import make_predict_fn, with_eval_canvas


def predict_proposals(config: ml_collections.ConfigDict,
                      variables: dict[str, Any], dataset: Any) -> Proposals:
  """Runs the model over `dataset`, letterboxed to the eval.image_size canvas
  (with_eval_canvas), and returns its proposals in original pixels, with a
  progress bar (images/s)."""
  config = with_eval_canvas(config)
  model = setup_model.build_model(config.model)
  anchors = setup_model.model_anchors(config)
  mesh = parallel.data_mesh()
  predict = parallel.jit_sharded_map(
      make_predict_fn(config, model, anchors), mesh)
  loader = loader_lib.BatchLoader(
      dataset, batch_size=config.eval.batch_size,
      image_size=config.data.image_size, max_boxes=config.data.max_boxes,
      shuffle=False, seed=config.seed, hflip=False, drop_last=False,
      num_workers=config.data.num_workers,
      process_index=jax.process_index(), process_count=jax.process_count())
  variables = parallel.replicate(variables, mesh)
  ids, boxes, scores, valid = [], [], [], []
  with tqdm(total=len(dataset), unit="img", desc="predict",
            dynamic_ncols=True, mininterval=1.0,
            disable=jax.process_index() != 0) as bar:
    for batch in loader.epoch(0):
      out = parallel.gather(predict(variables, parallel.shard_batch(batch, mesh)))
      batch = parallel.gather({k: batch[k] for k in ("image_id", "scale")})
      keep = batch["image_id"] >= 0
      scale = batch["scale"][keep][:, None, None]
      ids.append(batch["image_id"][keep])
      boxes.append(out["boxes"][keep] / scale)
      scores.append(out["scores"][keep])
      valid.append(out["valid"][keep])
      bar.update(int(keep.sum()))
  return Proposals(np.concatenate(ids), np.concatenate(boxes),
                   np.concatenate(scores), np.concatenate(valid))


def restore_variables(config: ml_collections.ConfigDict, ckpt_dir: str,
                      step: int | None = None) -> tuple[dict[str, Any], int]:
  """Params and statistics of checkpoint `step` (default: newest) of a workdir.

  `config` must agree with the workdir's config.json on every model setting
  (else a ValueError names the differing keys)."""
  saved = checkpoint_lib.load_config(ckpt_dir)
  diff = checkpoint_lib.config_mismatch(saved.to_dict(), config)
  if diff:
    raise ValueError(f"the checkpoint in {ckpt_dir} was trained with other "
                     f"model settings: {', '.join(diff)}")
  ckpt = checkpoint_lib.Checkpointer(
      os.path.join(ckpt_dir, checkpoint_lib.CHECKPOINT_DIR))
  steps = ckpt.all_steps()
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
  if step is not None and step not in steps:
    raise ValueError(f"--step {step} not in {ckpt.directory} (has {steps})")
  model = setup_model.build_model(config.model)
  variables = setup_model.init_variables(_without_pretrained(config), model,
                                         jax.random.key(0))
  tx = train_lib.make_optimizer(config, variables)
  target = train_lib.create_train_state(config, model, tx, variables)
  if step is None:
    state = ckpt.restore_latest(target)
    if state is None:
      raise ValueError(f"no readable checkpoint in {ckpt.directory}")
  else:
    state = ckpt.restore(step, target)
  ckpt.close()
  return ({"params": state.params, "batch_stats": state.batch_stats},
          int(state.step))


def _without_pretrained(config: ml_collections.ConfigDict
                        ) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.pretrained = ""
  return config


def evaluate_proposals(props: Proposals, coco, image_ids, category_id: int,
                       score_threshold: float, nms_threshold: float,
                       max_detections: int) -> tuple[dict[str, float], list[dict]]:
  """Metrics and COCO results for one (score, NMS) threshold pair."""
  metrics, results, _ = evaluate_proposals_with_curve(
      props, coco, image_ids, category_id, score_threshold, nms_threshold,
      max_detections)
  return metrics, results


def evaluate_proposals_with_curve(
    props: Proposals, coco, image_ids, category_id: int,
    score_threshold: float, nms_threshold: float, max_detections: int
) -> tuple[dict[str, float], list[dict], coco_eval.PrecisionRecall]:
  """`evaluate_proposals`, and the precision-recall curves of its COCOeval
  (`coco_eval.evaluate_with_curve`)."""
  boxes, scores, valid = select_detections(props, score_threshold,
                                           nms_threshold, max_detections)
  results = coco_eval.to_results(props.image_ids, boxes, scores, valid,
                                 category_id)
  metrics, curve = coco_eval.evaluate_with_curve(coco, results, image_ids,
                                                 category_id)
  return metrics, results, curve


def _ranks_and_matchable(results: np.ndarray, coco, category_id: int
                         ) -> tuple[np.ndarray, np.ndarray]:
  """For each row of `coco_eval.to_array`'s [M, 7] results: its rank among its
  image's detections in COCOeval's order (stable sort by descending score),
  and whether its IoU with some ground-truth box of `category_id` reaches
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
    gt = coco.loadAnns(coco.getAnnIds(imgIds=[int(image_id)],
                                      catIds=[category_id]))
    if gt:
      ious = mask_utils.iou(results[rows, 1:5], [g["bbox"] for g in gt],
                            [int(g["iscrowd"]) for g in gt])
      matchable[rows] = ious.max(axis=1) >= lowest_iou
  return ranks, matchable


def proposal_recall(props: Proposals, coco, image_ids, category_id: int,
                    limits: tuple[int, ...] = (100, 300, 1000)
                    ) -> dict[str, float]:
  """AR@n of the raw post-NMS proposals (no score threshold, no second NMS),
  the recall RPN papers report: COCOeval recall (IoU 0.50:0.95) with maxDets
  set to `limits`. Returns {"AR@100": ..., ...} for the limits the proposals
  reach (n <= post_nms_top_k).

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
  results = coco_eval.to_array(props.image_ids, props.boxes, props.scores,
                               props.valid, category_id)
  while len(limits) < 3:  # COCOeval.summarize reads three limits
    limits = (limits[0],) + limits
  ranks, matchable = _ranks_and_matchable(results, coco, category_id)
  recall = {}
  for n, key in zip(limits, ("AR1", "AR10", "AR100")):
    if f"AR@{n}" in recall:  # a padded limit: the same number again
      continue
    counted = results[matchable & (ranks < n)]
    if len(counted):
      recall[f"AR@{n}"] = coco_eval.evaluate(
          coco, counted, image_ids, category_id, max_dets=limits)[key]
    else:  # nothing can match: 0, without evaluate's no-detections warning
      recall[f"AR@{n}"] = 0.0
  return recall


def threshold_sweep(props: Proposals, coco, image_ids, category_id: int,
                    score_thresholds: list[float], nms_thresholds: list[float],
                    max_detections: int) -> list[dict[str, float]]:
  """Every (nms, score) pair evaluated on the same cached proposals: one row
  per pair with all 12 metrics, as the seed's sweep table (PROTOCOL.md)."""
  rows = []
  for nms in nms_thresholds:
    for score in score_thresholds:
      metrics, _ = evaluate_proposals(props, coco, image_ids, category_id,
                                      score, nms, max_detections)
      rows.append(dict(metrics, nms_threshold=nms, score_threshold=score))
  return rows


def format_sweep(rows: list[dict[str, float]]) -> str:
  """Markdown table of a sweep, the best AP marked with *."""
  best = max(range(len(rows)), key=lambda i: rows[i]["AP"])
  lines = ["| NMS | score thr | AP    | AP50  | AP75  | AR100 |",
           "|-----|-----------|-------|-------|-------|-------|"]
  for i, r in enumerate(rows):
    mark = " *" if i == best else ""
    lines.append(f"| {r['nms_threshold']:.2f} | {r['score_threshold']:.2f} | "
                 f"{r['AP']:.3f} | {r['AP50']:.3f} | {r['AP75']:.3f} | "
                 f"{r['AR100']:.3f} |{mark}")
  return "\n".join(lines)


def ground_truth(dataset: Any) -> tuple[Any, int]:
  """The pycocotools COCO of `dataset`'s annotation file and its person
  category id."""
  coco = coco_eval.load_ground_truth(dataset.annotation_file)
  return coco, coco_eval.person_category_id(coco, dataset.annotation_file)


@dataclass
class SplitScores:
  """What `score_proposals` measures on a split.

  metrics: the 12 COCO numbers (coco_eval.METRIC_KEYS) of the detections at
  eval.score_threshold / eval.nms_threshold; results: those detections (COCO
  results dicts); curve: their precision-recall curves; recall: the raw
  proposals' AR@n (`proposal_recall`).
  """
  metrics: dict[str, float]
  results: list[dict]
  curve: coco_eval.PrecisionRecall
  recall: dict[str, float]


def score_proposals(config: ml_collections.ConfigDict, props: Proposals,
                    coco, category_id: int,
                    recall_limits: tuple[int, ...] = (100, 300, 1000)
                    ) -> SplitScores:
  """COCO evaluation of `props` at the configured thresholds (config.eval)
  and the proposals' recall at `recall_limits`, over every image in
  `props`."""
  image_ids = [int(i) for i in props.image_ids]
  metrics, results, curve = evaluate_proposals_with_curve(
      props, coco, image_ids, category_id, config.eval.score_threshold,
      config.eval.nms_threshold, config.eval.max_detections)
  recall = proposal_recall(props, coco, image_ids, category_id, recall_limits)
  return SplitScores(metrics, results, curve, recall)


def run_evaluation(config: ml_collections.ConfigDict, ckpt_dir: str,
                   output_dir: str, step: int | None = None,
                   num_images_to_draw: int = 8,
                   sweep_scores: list[float] | None = None,
                   sweep_nms: list[float] | None = None) -> dict[str, Any]:
  """evaluate.py: restore, predict, select, COCOeval; writes metrics.json,
  detections.json, pr_curve.png, loss_curve.png (from `ckpt_dir`'s
  metrics.jsonl), `num_images_to_draw` proposal pictures (and sweep.json)
  into `output_dir`; returns the metrics of the configured thresholds."""
  canvas = with_eval_canvas(config).data.image_size
  variables, restored_step = restore_variables(config, ckpt_dir, step)
  dataset = open_dataset(config.data, config.data.val_split)
  os.makedirs(output_dir, exist_ok=True)
  t0 = time.perf_counter()
  props = predict_proposals(config, variables, dataset)
  if jax.process_index() != 0:  # every process predicts, one evaluates
    return {}
  coco, category_id = ground_truth(dataset)
  image_ids = [int(i) for i in props.image_ids]
  scores = score_proposals(config, props, coco, category_id)
  metrics, results, recall = scores.metrics, scores.results, scores.recall
  seconds = time.perf_counter() - t0
  record = dict(metrics, **recall,
                annotation_file=os.path.abspath(dataset.annotation_file),
                image_ids=image_ids, step=restored_step,
                image_size=canvas,
                score_threshold=config.eval.score_threshold,
                nms_threshold=config.eval.nms_threshold,
                tta_scales=list(config.eval.tta_scales),
                hflip_tta=config.eval.hflip_tta,
                tta_match_iou=config.eval.tta_match_iou,
                tta_upscaled_max_size=(  # JSON has no inf: null is no limit
                    config.eval.tta_upscaled_max_size
                    if math.isfinite(config.eval.tta_upscaled_max_size)
                    else None))
  with open(os.path.join(output_dir, "metrics.json"), "w") as f:
    json.dump(record, f, indent=1)
  with open(os.path.join(output_dir, "detections.json"), "w") as f:
    json.dump(results, f)
  tta_note = (", TTA " + tta_lib.describe(config.eval)
              if tta_lib.is_augmented(config.eval) else "")
  print(f"\nPerson detection on {len(image_ids)} {config.data.val_split} images "
        f"(step {restored_step}, {canvas} px canvas, "
        f"score >= {config.eval.score_threshold}, "
        f"NMS {config.eval.nms_threshold}{tta_note}), "
        f"{len(image_ids) / seconds:.1f} img/s")
  print(coco_eval.format_table(metrics))
  if recall:
    kind = ("fused proposals of the TTA passes" if tta_note
            else "raw post-NMS proposals")
    print(f"Proposal recall ({kind}): " + ", ".join(
        f"{k} {v:.3f}" for k, v in recall.items()))
  if sweep_scores or sweep_nms:
    rows = threshold_sweep(
        props, coco, image_ids, category_id,
        sweep_scores or [config.eval.score_threshold],
        sweep_nms or [config.eval.nms_threshold], config.eval.max_detections)
    with open(os.path.join(output_dir, "sweep.json"), "w") as f:
      json.dump(rows, f, indent=1)
    print("\nThreshold sweep (one forward pass; * = best AP):")
    print(format_sweep(rows))
  from rpn_jax import plots
  written = ["metrics.json", "detections.json"]
  if sweep_scores or sweep_nms:
    written.append("sweep.json")
  plots.plot_precision_recall(
      scores.curve, os.path.join(output_dir, "pr_curve.png"),
      f"Person detection, {config.data.val_split} (step {restored_step}): "
      "precision-recall")
  written.append("pr_curve.png")
  if plots.plot_loss_curve(os.path.join(ckpt_dir, "metrics.jsonl"),
                           os.path.join(output_dir, "loss_curve.png")):
    written.append("loss_curve.png")
  if num_images_to_draw:
    from rpn_jax import visualize
    visualize.draw_proposals(dataset, props, config, output_dir,
                             num_images_to_draw)
  print(f"Wrote {', '.join(written)} to {output_dir}", flush=True)
  return record
