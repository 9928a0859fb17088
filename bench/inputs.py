"""Deterministic inputs that rpn_jax and torchvision are timed on.

Everything is numpy, made from a seed, so both libraries see the same bytes.
"""

from __future__ import annotations

import numpy as np


def _random_objects(rng: np.random.Generator, count: int, image_size: int,
                    min_size: float, max_size: float) -> np.ndarray:
    """[count, 4] xyxy boxes inside the image, sides log-uniform in [min_size, max_size]."""
    sizes = np.exp(rng.uniform(np.log(min_size), np.log(max_size), size=(count, 2)))
    sizes = np.minimum(sizes, image_size - 1)
    x1 = rng.uniform(0, image_size - sizes[:, 0])
    y1 = rng.uniform(0, image_size - sizes[:, 1])
    return np.stack([x1, y1, x1 + sizes[:, 0], y1 + sizes[:, 1]], axis=1)


def _iou_with(boxes: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Row-wise IoU of boxes [N, 4] with targets [N, 4]."""
    lt = np.maximum(boxes[:, :2], targets[:, :2])
    rb = np.minimum(boxes[:, 2:], targets[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area(boxes) + area(targets) - inter)


def proposal_boxes(n: int, image_size: int = 1024, num_objects: int = 12,
                   background_fraction: float = 0.2, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes like an RPN's pre-NMS top-k: dense clusters around objects.

    Most boxes are jittered copies of one of `num_objects` objects (centre
    shifted by ~15% of its size, sides scaled by ~exp(N(0, 0.25))), scored by
    their IoU with it plus noise; the rest are scattered low-score boxes.
    Returns boxes [n, 4] float32 xyxy clipped to the image and scores [n]
    float32 in (0, 1), all distinct.
    """
    rng = np.random.default_rng(seed)
    objects = _random_objects(rng, num_objects, image_size, 24.0, 600.0)
    n_background = int(round(n * background_fraction))
    n_near = n - n_background
    owner = objects[rng.integers(0, num_objects, n_near)]
    centre = (owner[:, :2] + owner[:, 2:]) / 2
    size = owner[:, 2:] - owner[:, :2]
    centre = centre + rng.normal(0.0, 0.15, size=(n_near, 2)) * size
    size = size * np.exp(rng.normal(0.0, 0.25, size=(n_near, 2)))
    near = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    near_scores = 0.6 * _iou_with(near, owner) + 0.4 * rng.uniform(size=n_near)
    background = _random_objects(rng, n_background, image_size, 8.0, 400.0)
    background_scores = 0.3 * rng.uniform(size=n_background)
    boxes = np.clip(np.concatenate([near, background]), 0, image_size).astype(np.float32)
    scores = np.concatenate([near_scores, background_scores]).astype(np.float32)
    # Distinct scores: the order of tied boxes is not what is being measured.
    scores = scores + np.linspace(0, 1e-4, n, dtype=np.float32)[rng.permutation(n)]
    permutation = rng.permutation(n)
    return boxes[permutation], scores[permutation]


def train_batch(batch_size: int, image_size: int, max_boxes: int = 128,
                boxes_per_image: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
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
            rng, boxes_per_image, image_size, image_size / 16, image_size / 2)
        valid[b, :boxes_per_image] = True
    return {
        "image": rng.integers(0, 256, size=(batch_size, image_size, image_size, 3), dtype=np.uint8),
        "boxes": boxes,
        "box_valid": valid,
        "box_crowd": np.zeros_like(valid),
        "image_hw": np.full((batch_size, 2), image_size, np.int32),
        "scale": np.ones(batch_size, np.float32),
        "image_id": np.arange(batch_size, dtype=np.int64),
        "image_valid": np.ones(batch_size, bool),
    }
