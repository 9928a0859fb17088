"""Deterministic inputs that rpn_jax and torchvision are timed on.

Everything is numpy, made from a seed, so both libraries see the same bytes.
"""

from __future__ import annotations

import numpy as np

from rpn_jax.anchors import generate_anchors
from rpn_jax.boxes import box_iou, decode


def _random_objects(
    rng: np.random.Generator,
    count: int,
    image_size: int,
    min_size: float,
    max_size: float,
) -> np.ndarray:
  """[count, 4] xyxy boxes inside the image, sides log-uniform in [min_size, max_size]."""
  sizes = np.exp(
      rng.uniform(np.log(min_size), np.log(max_size), size=(count, 2))
  )
  sizes = np.minimum(sizes, image_size - 1)
  x1 = rng.uniform(0, image_size - sizes[:, 0])
  y1 = rng.uniform(0, image_size - sizes[:, 1])
  return np.stack([x1, y1, x1 + sizes[:, 0], y1 + sizes[:, 1]], axis=1)


def proposal_boxes(
    n: int, image_size: int = 1024, num_objects: int = 12, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """What NMS gets from an R50-C5 RPN: its top-n decoded anchors by objectness.

  The 15 anchors per cell of the stride-32 grid (sizes 32..512, ratios 0.5,
  1, 2) are moved by deltas ~N(0, 0.1), clipped, and scored by their best
  IoU with one of `num_objects` objects plus noise, so the best boxes cluster
  around objects and the rest cover the image as real proposals do.
  Returns the n best: boxes [n, 4] float32 xyxy pixels, scores [n] float32,
  all distinct. n is at most the anchor count (15,360 at 1024 px).
  """
  rng = np.random.default_rng(seed)
  cells = image_size // 32
  anchors = generate_anchors(
      (cells, cells), 32, (32.0, 64.0, 128.0, 256.0, 512.0), (0.5, 1.0, 2.0)
  )
  if n > len(anchors):
    raise ValueError(
        f"proposal_boxes: n={n} is more than the {len(anchors)} anchors"
    )
  deltas = rng.normal(0.0, 0.1, size=anchors.shape).astype(np.float32)
  boxes = np.clip(np.asarray(decode(anchors, deltas)), 0, image_size)
  objects = _random_objects(rng, num_objects, image_size, 24.0, 600.0)
  overlap = np.asarray(box_iou(boxes, objects.astype(np.float32))).max(axis=1)
  scores = 0.7 * overlap + 0.3 * rng.uniform(size=len(boxes))
  # Distinct scores: the order of tied boxes is not what is being measured.
  scores = (scores + rng.permutation(len(boxes)) * 1e-7).astype(np.float32)
  best = np.argsort(-scores)[:n]
  permutation = best[rng.permutation(n)]
  return boxes[permutation].astype(np.float32), scores[permutation]


def train_batch(
    batch_size: int,
    image_size: int,
    max_boxes: int = 128,
    boxes_per_image: int = 4,
    seed: int = 0,
) -> dict[str, np.ndarray]:
  """A batch in the shared format (see rpn_jax.data.loader): noise images, a few person boxes.

  image uint8 [B, S, S, 3], boxes float32 [B, G, 4] xyxy canvas pixels (G =
  max_boxes, the first `boxes_per_image` rows real), box_valid / box_crowd
  bool [B, G], image_hw int32 [B, 2] = (S, S), scale float32 [B] = 1,
  image_id int64 [B], image_valid bool [B].
  """
  rng = np.random.default_rng(seed)
  boxes = np.zeros((batch_size, max_boxes, 4), np.float32)
  valid = np.zeros((batch_size, max_boxes), bool)
  for b in range(batch_size):
    boxes[b, :boxes_per_image] = _random_objects(
        rng, boxes_per_image, image_size, image_size / 16, image_size / 2
    )
    valid[b, :boxes_per_image] = True
  return {
      "image": rng.integers(
          0, 256, size=(batch_size, image_size, image_size, 3), dtype=np.uint8
      ),
      "boxes": boxes,
      "box_valid": valid,
      "box_crowd": np.zeros_like(valid),
      "image_hw": np.full((batch_size, 2), image_size, np.int32),
      "scale": np.ones(batch_size, np.float32),
      "image_id": np.arange(batch_size, dtype=np.int64),
      "image_valid": np.ones(batch_size, bool),
  }
