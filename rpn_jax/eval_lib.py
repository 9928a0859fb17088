"""Evaluation of a split: the predict loop over it, then COCO evaluation at
the configured thresholds, the proposals' recall and the threshold sweep;
`run_evaluation` is evaluate.py.

Its parts live elsewhere: restoring a checkpoint's variables in
`rpn_jax.checkpoint`, the model on device in `rpn_jax.predictor`, thresholds
and the second NMS in `rpn_jax.postprocess`, COCOeval and proposal recall in
`rpn_jax.coco_eval`. Proposals are computed once per image ([K, 4] canvas
pixels with scores and a validity mask) and cached, so any number of (score,
NMS) threshold pairs can be evaluated from one forward pass over the split.
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
from tqdm import tqdm

from rpn_jax import checkpoint as checkpoint_lib
from rpn_jax import coco_eval
from rpn_jax import parallel
from rpn_jax import setup_model
from rpn_jax import tta as tta_lib
from rpn_jax.data import loader as loader_lib
from rpn_jax.data import open_dataset

# Names that live in the modules above, kept importable from here for the
# callers in bench/ and tests/.
from rpn_jax.postprocess import Proposals, select_detections
from rpn_jax.predictor import make_predict_fn, with_eval_canvas


def predict_proposals(
    config: ml_collections.ConfigDict, variables: dict[str, Any], dataset: Any
) -> Proposals:
  """Runs the model over `dataset`, letterboxed to the eval.image_size canvas
  (with_eval_canvas), and returns its proposals in original pixels, with a
  progress bar (images/s)."""
  config = with_eval_canvas(config)
  model = setup_model.build_model(config.model)
  anchors = setup_model.model_anchors(config)
  mesh = parallel.data_mesh()
  predict = parallel.jit_sharded_map(
      make_predict_fn(config, model, anchors), mesh
  )
  loader = loader_lib.eval_loader(
      config, dataset, jax.process_index(), jax.process_count()
  )
  variables = parallel.replicate(variables, mesh)
  ids, boxes, scores, valid = [], [], [], []
  with tqdm(
      total=len(dataset),
      unit="img",
      desc="predict",
      dynamic_ncols=True,
      mininterval=1.0,
      disable=jax.process_index() != 0,
  ) as bar:
    for batch in loader.epoch(0):
      out = parallel.gather(
          predict(variables, parallel.shard_batch(batch, mesh))
      )
      batch = parallel.gather({k: batch[k] for k in ("image_id", "scale")})
      keep = batch["image_id"] >= 0
      scale = batch["scale"][keep][:, None, None]
      ids.append(batch["image_id"][keep])
      boxes.append(out["boxes"][keep] / scale)
      scores.append(out["scores"][keep])
      valid.append(out["valid"][keep])
      bar.update(int(keep.sum()))
  return Proposals(
      np.concatenate(ids),
      np.concatenate(boxes),
      np.concatenate(scores),
      np.concatenate(valid),
  )


def evaluate_proposals(
    props: Proposals,
    coco,
    image_ids,
    category_id: int,
    score_threshold: float,
    nms_threshold: float,
    max_detections: int,
) -> tuple[dict[str, float], list[dict]]:
  """Metrics and COCO results for one (score, NMS) threshold pair."""
  metrics, results, _ = evaluate_proposals_with_curve(
      props,
      coco,
      image_ids,
      category_id,
      score_threshold,
      nms_threshold,
      max_detections,
  )
  return metrics, results


def evaluate_proposals_with_curve(
    props: Proposals,
    coco,
    image_ids,
    category_id: int,
    score_threshold: float,
    nms_threshold: float,
    max_detections: int,
) -> tuple[dict[str, float], list[dict], coco_eval.PrecisionRecall]:
  """`evaluate_proposals`, and the precision-recall curves of its COCOeval
  (`coco_eval.evaluate_with_curve`)."""
  boxes, scores, valid = select_detections(
      props, score_threshold, nms_threshold, max_detections
  )
  results = coco_eval.to_results(
      props.image_ids, boxes, scores, valid, category_id
  )
  metrics, curve = coco_eval.evaluate_with_curve(
      coco, results, image_ids, category_id
  )
  return metrics, results, curve


def threshold_sweep(
    props: Proposals,
    coco,
    image_ids,
    category_id: int,
    score_thresholds: list[float],
    nms_thresholds: list[float],
    max_detections: int,
) -> list[dict[str, float]]:
  """Every (nms, score) pair evaluated on the same cached proposals: one row
  per pair with all 12 metrics, as the seed's sweep table (PROTOCOL.md)."""
  rows = []
  for nms in nms_thresholds:
    for score in score_thresholds:
      metrics, _ = evaluate_proposals(
          props, coco, image_ids, category_id, score, nms, max_detections
      )
      rows.append(dict(metrics, nms_threshold=nms, score_threshold=score))
  return rows


def format_sweep(rows: list[dict[str, float]]) -> str:
  """Markdown table of a sweep, the best AP marked with *."""
  best = max(range(len(rows)), key=lambda i: rows[i]["AP"])
  lines = [
      "| NMS | score thr | AP    | AP50  | AP75  | AR100 |",
      "|-----|-----------|-------|-------|-------|-------|",
  ]
  for i, r in enumerate(rows):
    mark = " *" if i == best else ""
    values = " | ".join(
        f"{coco_eval.format_metric(r[k]):<5}"
        for k in ("AP", "AP50", "AP75", "AR100")
    )
    lines.append(
        f"| {r['nms_threshold']:.2f} | {r['score_threshold']:.2f} | "
        f"{values} |{mark}"
    )
  return "\n".join(lines)


def ground_truth(dataset: Any) -> tuple[Any, int]:
  """The pycocotools COCO of `dataset`'s annotation file and its person
  category id."""
  coco = coco_eval.load_ground_truth(dataset.annotation_file)
  return coco, coco_eval.person_category_id(coco, dataset.annotation_file)


@dataclass
class SplitScores:
  """What `score_proposals` measures on a split.

  metrics: the 12 COCO numbers (coco_eval.METRIC_KEYS, -1 where COCOeval
  has no ground truth to measure) of the detections at eval.score_threshold /
  eval.nms_threshold; results: those detections (COCO results dicts); curve:
  their precision-recall curves; recall: the raw proposals' recall,
  {"proposal_AR@n": ...} (`coco_eval.proposal_recall`).
  """

  metrics: dict[str, float]
  results: list[dict]
  curve: coco_eval.PrecisionRecall
  recall: dict[str, float]


def score_proposals(
    config: ml_collections.ConfigDict,
    props: Proposals,
    coco,
    category_id: int,
    recall_limits: tuple[int, ...] = (100, 300, 1000),
) -> SplitScores:
  """COCO evaluation of `props` at the configured thresholds (config.eval)
  and the proposals' recall at `recall_limits`, over every image in
  `props`."""
  image_ids = [int(i) for i in props.image_ids]
  metrics, results, curve = evaluate_proposals_with_curve(
      props,
      coco,
      image_ids,
      category_id,
      config.eval.score_threshold,
      config.eval.nms_threshold,
      config.eval.max_detections,
  )
  recall = coco_eval.proposal_recall(
      props, coco, image_ids, category_id, recall_limits
  )
  return SplitScores(metrics, results, curve, recall)


def run_evaluation(
    config: ml_collections.ConfigDict,
    ckpt_dir: str,
    output_dir: str,
    step: int | None = None,
    num_images_to_draw: int = 8,
    sweep_scores: list[float] | None = None,
    sweep_nms: list[float] | None = None,
) -> dict[str, Any]:
  """evaluate.py: restore, predict, select, COCOeval; writes metrics.json,
  detections.json, pr_curve.png, loss_curve.png (from `ckpt_dir`'s
  metrics.jsonl), `num_images_to_draw` proposal pictures (and sweep.json)
  into `output_dir`; returns the metrics of the configured thresholds."""
  canvas = with_eval_canvas(config).data.image_size
  variables, restored_step = checkpoint_lib.restore_variables(
      config, ckpt_dir, step
  )
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
  record = dict(
      metrics,
      **recall,
      annotation_file=os.path.abspath(dataset.annotation_file),
      image_ids=image_ids,
      step=restored_step,
      image_size=canvas,
      score_threshold=config.eval.score_threshold,
      nms_threshold=config.eval.nms_threshold,
      tta_scales=list(config.eval.tta_scales),
      hflip_tta=config.eval.hflip_tta,
      tta_match_iou=config.eval.tta_match_iou,
      tta_upscaled_max_size=(  # JSON has no inf: null is no limit
          config.eval.tta_upscaled_max_size
          if math.isfinite(config.eval.tta_upscaled_max_size)
          else None
      ),
  )
  with open(os.path.join(output_dir, "metrics.json"), "w") as f:
    json.dump(record, f, indent=1)
  with open(os.path.join(output_dir, "detections.json"), "w") as f:
    json.dump(results, f)
  tta_note = (
      ", TTA " + tta_lib.describe(config.eval)
      if tta_lib.is_augmented(config.eval)
      else ""
  )
  print(
      f"\nPerson detection on {len(image_ids)} {config.data.val_split} images "
      f"(step {restored_step}, {canvas} px canvas, "
      f"score >= {config.eval.score_threshold}, "
      f"NMS {config.eval.nms_threshold}{tta_note}), "
      f"{len(image_ids) / seconds:.1f} img/s"
  )
  print(coco_eval.format_table(metrics))
  if recall:
    kind = (
        "fused proposals of the TTA passes"
        if tta_note
        else "raw post-NMS proposals"
    )
    print(
        f"Proposal recall ({kind}): "
        + ", ".join(
            f"{k} {coco_eval.format_metric(v)}" for k, v in recall.items()
        )
    )
  if sweep_scores or sweep_nms:
    rows = threshold_sweep(
        props,
        coco,
        image_ids,
        category_id,
        sweep_scores or [config.eval.score_threshold],
        sweep_nms or [config.eval.nms_threshold],
        config.eval.max_detections,
    )
    with open(os.path.join(output_dir, "sweep.json"), "w") as f:
      json.dump(rows, f, indent=1)
    print("\nThreshold sweep (one forward pass; * = best AP):")
    print(format_sweep(rows))
  from rpn_jax import plots

  written = ["metrics.json", "detections.json"]
  if sweep_scores or sweep_nms:
    written.append("sweep.json")
  plots.plot_precision_recall(
      scores.curve,
      os.path.join(output_dir, "pr_curve.png"),
      f"Person detection, {config.data.val_split} (step {restored_step}): "
      "precision-recall",
  )
  written.append("pr_curve.png")
  if plots.plot_loss_curve(
      os.path.join(ckpt_dir, "metrics.jsonl"),
      os.path.join(output_dir, "loss_curve.png"),
  ):
    written.append("loss_curve.png")
  if num_images_to_draw:
    from rpn_jax import visualize

    visualize.draw_proposals(
        dataset, props, config, output_dir, num_images_to_draw
    )
  print(f"Wrote {', '.join(written)} to {output_dir}", flush=True)
  return record
