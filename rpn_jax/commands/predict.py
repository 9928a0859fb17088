"""Runs a trained detector on your own images.

  rpn-predict (or python predict.py in a clone) --ckpt DIR --images PATH
      [--output_dir DIR] [--score_threshold F] [--nms_threshold F] [--step N]
      [--batch_size N] [--nodraw] [--config.eval.a=v ...]

PATH is an image file, a folder (its .jpg/.jpeg/.png/.bmp/.webp/.gif/.tif
files, any case, not its subfolders') or a quoted glob ("photos/*.jpg",
"photos/**/*.png"). Images of any size and mode are letterboxed onto the eval
canvas and go through evaluate.py's predictor and post-processing
(`rpn_jax.predictor.Detector`; `--config.eval.tta_scales` and the other eval
settings apply as in evaluate.py). Writes detections.json (COCO results with
file names), images.json and pictures/ into --output_dir (default
<ckpt>/predict; `rpn_jax.predict_lib` describes them). A file that cannot be
read is named in a warning and skipped.
"""

import os

from absl import app
from absl import flags

from rpn_jax import cli

_CKPT, _STEP, _CONFIG = cli.define_checkpoint_flags(
    "Overrides of the checkpoint's config."
)
_IMAGES = flags.DEFINE_string(
    "images", None, "An image file, a folder of images or a quoted glob."
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where outputs go (default: <ckpt>/predict)."
)
_SCORE = flags.DEFINE_float(
    "score_threshold",
    None,
    "Keep detections scoring at least this "
    "(default: the config's eval.score_threshold).",
)
_NMS = flags.DEFINE_float(
    "nms_threshold",
    None,
    "IoU of the second NMS (default: the config's eval.nms_threshold).",
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size",
    None,
    "Images per forward pass (default: the config's eval.batch_size).",
)
_DRAW = flags.DEFINE_bool(
    "draw",
    True,
    "Save a picture of each image with "
    "its detections (--nodraw: only the JSON files).",
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _CKPT.value or not _IMAGES.value:
    raise app.UsageError("--ckpt DIR and --images PATH are required")
  cli.setup()
  config = _CONFIG.value
  output_dir = _OUTPUT_DIR.value or os.path.join(_CKPT.value, "predict")
  with cli.one_line_errors():
    from rpn_jax.data import image_files

    paths = image_files.find_images(_IMAGES.value)
    for key, flag in (
        ("score_threshold", _SCORE),
        ("nms_threshold", _NMS),
        ("batch_size", _BATCH_SIZE),
    ):
      if flag.value is not None:
        config.eval[key] = flag.value
    from rpn_jax import checkpoint
    from rpn_jax import predict_lib
    from rpn_jax import predictor

    variables, step = checkpoint.restore_variables(
        config, _CKPT.value, _STEP.value
    )
    detector = predictor.Detector(config, variables)
    summary = predict_lib.predict_images(
        detector,
        paths,
        output_dir,
        draw=_DRAW.value,
        num_workers=config.data.num_workers,
    )
  ev = detector.config.eval
  print(
      f"{summary['detections']} detections in {summary['images']} images "
      f"(step {step}, {detector.canvas} px canvas, score >= "
      f"{ev.score_threshold}, NMS {ev.nms_threshold}), "
      f"{summary['images'] / max(summary['seconds'], 1e-9):.1f} img/s"
  )
  if summary["skipped"]:
    shown = ", ".join(summary["skipped"][:10])
    more = len(summary["skipped"]) - 10
    print(
        f"Skipped {len(summary['skipped'])} unreadable file(s): {shown}"
        + (f" and {more} more" if more > 0 else "")
    )
  drawn = " and pictures/" if _DRAW.value else ""
  print(
      f"Wrote detections.json, images.json{drawn} to {output_dir}", flush=True
  )


def run() -> None:
  app.run(main)
