"""Proposal pictures like the seed report's: boxes drawn on original images."""

import os
from typing import Any

import ml_collections
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rpn_jax import postprocess


def draw_detections(
    image: np.ndarray, boxes: np.ndarray, scores: np.ndarray
) -> Image.Image:
  """`image` uint8 [H, W, 3] with detections boxes [n, 4] (xyxy, its pixels)
  outlined in red and their scores [n] written inside the top-left corner.
  Lines and text grow with the image, so a 4000 px photo stays legible."""
  picture = Image.fromarray(np.asarray(image))
  draw = ImageDraw.Draw(picture)
  unit = max(1, round(max(picture.size) / 500))
  font = ImageFont.load_default(size=10 * unit)
  for box, score in zip(
      np.asarray(boxes).tolist(), np.asarray(scores).tolist()
  ):
    draw.rectangle(box, outline=(255, 0, 0), width=2 * unit)
    draw.text(
        (box[0] + 2 * unit, box[1] + unit),
        f"{score:.2f}",
        fill=(255, 0, 0),
        font=font,
    )
  return picture


def draw_proposals(
    dataset: Any,
    props: postprocess.Proposals,
    config: ml_collections.ConfigDict,
    output_dir: str,
    num_images: int,
) -> list[str]:
  """Saves `num_images` JPEGs of proposals (score >= eval.draw_score_threshold,
  NMS at eval.draw_nms_threshold) over the ground truth, into
  `output_dir/pictures`. Returns the paths written."""
  boxes, scores, valid = postprocess.select_detections(
      props,
      config.eval.draw_score_threshold,
      config.eval.draw_nms_threshold,
      config.eval.max_detections,
  )
  index_of = {int(image_id): i for i, image_id in enumerate(dataset.image_ids)}
  folder = os.path.join(output_dir, "pictures")
  os.makedirs(folder, exist_ok=True)
  paths = []
  for row in range(min(num_images, len(props.image_ids))):
    image_id = int(props.image_ids[row])
    image, record = dataset.load(index_of[image_id])
    picture = Image.fromarray(np.asarray(image))
    draw = ImageDraw.Draw(picture)
    for box in np.asarray(record.boxes).tolist():
      draw.rectangle(box, outline=(0, 255, 0), width=2)
    for box, score in zip(
        boxes[row][valid[row]].tolist(), scores[row][valid[row]].tolist()
    ):
      draw.rectangle(box, outline=(255, 0, 0), width=2)
      draw.text((box[0] + 2, box[1] + 1), f"{score:.2f}", fill=(255, 0, 0))
    path = os.path.join(folder, f"test{row}.jpg")
    picture.save(path, quality=90)
    paths.append(path)
  print(
      f"Wrote {len(paths)} proposal pictures (red: proposals, green: ground "
      f"truth) to {folder}"
  )
  return paths
