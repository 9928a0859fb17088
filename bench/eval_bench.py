"""End to end: evaluation of the synthetic val split, and where its time goes.

  python -m bench.eval_bench [--config configs/default.py] [--ckpt DIR]

Runs what evaluate.py runs (eval_lib: predict_proposals, evaluate_proposals at
the config's thresholds; coco_eval.proposal_recall) once to compile, then times it again
(the compiled programs come from the persistent compilation cache, as for a
second evaluate.py), and times its stages alone: decode (the threaded
BatchLoader), device (the jitted forward + proposals per batch), host
post-processing (score threshold + second NMS + COCO results), COCOeval of
the detections and COCOeval of the raw proposals (proposal recall).
Without --ckpt the weights are random: every image then gets the full 100
detections, the most COCOeval ever has to match. JSON section "eval".
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from bench import common
from rpn_jax import checkpoint as checkpoint_lib
from rpn_jax import cli, coco_eval, eval_lib, setup_model
from rpn_jax.data import loader as loader_lib
from rpn_jax.data import open_dataset

COLUMNS = (
    "images",
    "image_size",
    "end_to_end_img_s",
    "decode_s",
    "device_s",
    "host_post_s",
    "cocoeval_s",
    "recall_s",
    "end_to_end_s",
)


def load_config(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file (configs/*.py)."""
  spec = importlib.util.spec_from_file_location("bench_config", path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"no config file {path}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _evaluate(
    config, variables, dataset, coco, category_id
) -> dict[str, float]:
  """evaluate.py's work: proposals, metrics at the configured thresholds, recall."""
  props = eval_lib.predict_proposals(config, variables, dataset)
  image_ids = [int(i) for i in props.image_ids]
  metrics, _ = eval_lib.evaluate_proposals(
      props,
      coco,
      image_ids,
      category_id,
      config.eval.score_threshold,
      config.eval.nms_threshold,
      config.eval.max_detections,
  )
  return dict(
      metrics, **coco_eval.proposal_recall(props, coco, image_ids, category_id)
  )


def _timed(fn, *args) -> tuple[Any, float]:
  start = time.perf_counter()
  out = fn(*args)
  return out, time.perf_counter() - start


def stages(config, variables, dataset, coco, category_id) -> dict[str, float]:
  """Seconds of each stage over the whole split, each run on its own.

  cocoeval_s: COCOeval of the thresholded detections (the 12 metrics);
  recall_s: COCOeval of every raw proposal (AR@100/300/1000).
  """
  loader = loader_lib.eval_loader(config, dataset)
  batches, decode_s = _timed(lambda: list(loader.epoch(0)))

  model = setup_model.build_model(config.model)
  predict = jax.jit(
      eval_lib.make_predict_fn(config, model, setup_model.model_anchors(config))
  )
  device_batches = [jax.device_put(b) for b in batches]
  jax.block_until_ready(predict(variables, device_batches[0]))
  outputs, device_s = _timed(
      lambda: [jax.device_get(predict(variables, b)) for b in device_batches]
  )

  def proposals():
    # As predict_proposals: drop padding entries, boxes back to original pixels.
    keep = [b["image_id"] >= 0 for b in batches]
    return eval_lib.Proposals(
        np.concatenate([b["image_id"][k] for b, k in zip(batches, keep)]),
        np.concatenate(
            [
                o["boxes"][k] / b["scale"][k][:, None, None]
                for o, b, k in zip(outputs, batches, keep)
            ]
        ),
        np.concatenate([o["scores"][k] for o, k in zip(outputs, keep)]),
        np.concatenate([o["valid"][k] for o, k in zip(outputs, keep)]),
    )

  props = proposals()
  eval_lib.select_detections(
      props,
      config.eval.score_threshold,
      config.eval.nms_threshold,
      config.eval.max_detections,
  )  # compiles the second NMS

  def post():
    selected = eval_lib.select_detections(
        proposals(),
        config.eval.score_threshold,
        config.eval.nms_threshold,
        config.eval.max_detections,
    )
    return coco_eval.to_results(props.image_ids, *selected, category_id)

  results, host_post_s = _timed(post)
  image_ids = [int(i) for i in props.image_ids]

  _, cocoeval_s = _timed(
      coco_eval.evaluate, coco, results, image_ids, category_id
  )
  _, recall_s = _timed(
      coco_eval.proposal_recall, props, coco, image_ids, category_id
  )
  return {
      "decode_s": decode_s,
      "device_s": device_s,
      "host_post_s": host_post_s,
      "cocoeval_s": cocoeval_s,
      "recall_s": recall_s,
      "detections": len(results),
      "proposals": int(props.valid.sum()),
  }


def measure(
    config: ml_collections.ConfigDict, ckpt: str | None = None
) -> dict[str, Any]:
  """One row: end-to-end images/s of the split and the seconds of each stage."""
  if ckpt:
    variables, _ = checkpoint_lib.restore_variables(config, ckpt)
  else:
    model = setup_model.build_model(config.model)
    variables = setup_model.init_variables(
        config, model, jax.random.key(config.seed)
    )
  dataset = open_dataset(config.data, config.data.val_split)
  coco = coco_eval.load_ground_truth(dataset.annotation_file)
  category_id = coco_eval.person_category_id(coco, dataset.annotation_file)
  _, first_s = _timed(_evaluate, config, variables, dataset, coco, category_id)
  metrics, total_s = _timed(
      _evaluate, config, variables, dataset, coco, category_id
  )
  row = {
      "images": len(dataset),
      "image_size": config.data.image_size,
      "backbone": config.model.backbone,
      "batch": config.eval.batch_size,
      "end_to_end_img_s": len(dataset) / total_s,
      "end_to_end_s": total_s,
      "first_run_s": first_s,
      "AP": metrics["AP"],
  }
  row.update(stages(config, variables, dataset, coco, category_id))
  return row


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--config",
      default="configs/default.py",
      help="config file; ignored with --ckpt (the checkpoint's is used)",
  )
  parser.add_argument(
      "--ckpt", default="", help="train.py workdir (default: random weights)"
  )
  args = parser.parse_args(argv)
  cli.setup()
  config = (
      checkpoint_lib.load_config(args.ckpt)
      if args.ckpt
      else load_config(args.config)
  )
  rows = [measure(config, args.ckpt or None)]
  settings = {
      "config": args.ckpt or args.config,
      "split": config.data.val_split,
      "weights": "checkpoint" if args.ckpt else "random",
      "score_threshold": config.eval.score_threshold,
      "nms_threshold": config.eval.nms_threshold,
  }
  path = common.record("eval", rows, settings)
  print(common.markdown_table(rows, COLUMNS))
  print(f"wrote {path}")
  return rows


if __name__ == "__main__":
  main()
