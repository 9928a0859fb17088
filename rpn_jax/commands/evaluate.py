"""Evaluates a rpn_jax checkpoint on the COCO person protocol.

  rpn-evaluate (or python evaluate.py in a clone) --ckpt DIR [--step N] [--config.a.b=v ...] [--output_dir DIR]
                     [--num_images_to_draw N] [--sweep_score 0.4,0.5 --sweep_nms 0.5,0.6]

Restores the config saved with the checkpoint (`--config.*` overrides apply on
top of it), prints the seed's 12-line table and writes metrics.json,
detections.json, pr_curve.png (precision-recall at IoU 0.50, 0.75 and
0.50:0.95), loss_curve.png (from <ckpt>/metrics.jsonl) and proposal pictures
(pictures/) into --output_dir (default <ckpt>/eval).
"""

import os

from absl import app
from absl import flags

from rpn_jax import cli

_CKPT, _STEP, _CONFIG = cli.define_checkpoint_flags(
    "Overrides of the checkpoint's config."
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where outputs go (default: <ckpt>/eval)."
)
_NUM_DRAW = flags.DEFINE_integer(
    "num_images_to_draw",
    8,
    "Save this many proposal pictures (score >= "
    "eval.draw_score_threshold, NMS eval.draw_nms_threshold); 0: none.",
)


_SWEEP_SCORE = flags.DEFINE_list(
    "sweep_score", [], "Score thresholds to sweep, e.g. 0.4,0.5,0.6,0.7,0.8."
)
_SWEEP_NMS = flags.DEFINE_list(
    "sweep_nms", [], "NMS thresholds to sweep, e.g. 0.4,0.5,0.6."
)


def _floats(values: list[str], flag: str) -> list[float]:
  try:
    return [float(v) for v in values]
  except ValueError:
    raise ValueError(f"--{flag}: expected numbers, got {','.join(values)}")


_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-host run: call jax.distributed.initialize() "
    "(each host then reads its own share of every batch).",
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _CKPT.value:
    raise app.UsageError("--ckpt DIR is required")
  cli.setup(_DISTRIBUTED.value)
  output_dir = _OUTPUT_DIR.value or os.path.join(_CKPT.value, "eval")
  with cli.one_line_errors():
    from rpn_jax import eval_lib

    eval_lib.run_evaluation(
        _CONFIG.value,
        _CKPT.value,
        output_dir,
        step=_STEP.value,
        num_images_to_draw=_NUM_DRAW.value,
        sweep_scores=_floats(_SWEEP_SCORE.value, "sweep_score"),
        sweep_nms=_floats(_SWEEP_NMS.value, "sweep_nms"),
    )


def run() -> None:
  app.run(main)
