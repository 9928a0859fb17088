"""Host-side image and box transforms, and the on-device normalisation.

Boxes are float32 xyxy in continuous pixel coordinates (width = x2 - x1).
"""

import logging
from typing import Any, TypeVar
from collections.abc import Sequence

import numpy as np
from PIL import Image

Array = TypeVar("Array")  # np.ndarray or jax.Array

_overflow_warned = False


def _resized(image: np.ndarray, scale: float) -> np.ndarray:
  """uint8 [H, W, 3] -> [round(H scale), round(W scale), 3] (each at least
  1 px), PIL bilinear; unchanged when the size is."""
  height, width = image.shape[:2]
  h = max(1, int(round(height * scale)))
  w = max(1, int(round(width * scale)))
  if (h, w) == (height, width):
    return image
  return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def letterbox(
    image: np.ndarray, boxes: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, float, tuple[int, int]]:
  """Resizes the longer side to `size` (aspect kept, PIL bilinear) and puts
  the result at the top-left of a zero `size` x `size` canvas.

  image: uint8 [H, W, 3]; boxes: [n, 4] xyxy original pixels.
  Returns canvas uint8 [size, size, 3], boxes * scale (float32 [n, 4], canvas
  pixels), scale = size / max(H, W), and (h, w) of the resized content
  (round(H * scale), round(W * scale)).
  """
  scale = size / max(image.shape[:2])
  image = _resized(image, scale)
  h, w = image.shape[:2]
  canvas = np.zeros((size, size, 3), np.uint8)
  canvas[:h, :w] = image
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4) * np.float32(scale)
  return canvas, boxes, float(scale), (h, w)


def scale_crop(
    image: np.ndarray,
    boxes: np.ndarray,
    size: int,
    factor: float,
    offset: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, tuple[int, int]]:
  """Scale jitter (LSJ-style): letterbox to a longer side of size x factor,
  then the `size` x `size` window at `offset` (fractions (x, y) in [0, 1] of
  the slack) of the result, top-left on a zero canvas.

  image: uint8 [H, W, 3]; boxes: [n, 4] xyxy original pixels. Returns canvas
  uint8 [size, size, 3], boxes (float32 [n, 4] canvas pixels, clipped to the
  window), keep (bool [n]: at least 2 x 2 px left inside the window), scale
  (canvas px / original px) and the (h, w) of the content in the canvas.
  With factor <= 1 nothing is cut: letterbox with a smaller content.
  """
  scale = size * factor / max(image.shape[:2])
  image = _resized(image, scale)
  h, w = image.shape[:2]
  x0 = int((w - size) * offset[0]) if w > size else 0
  y0 = int((h - size) * offset[1]) if h > size else 0
  window = image[y0 : y0 + size, x0 : x0 + size]
  hw = window.shape[:2]
  canvas = np.zeros((size, size, 3), np.uint8)
  canvas[: hw[0], : hw[1]] = window
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4) * np.float32(
      scale
  ) - np.array([x0, y0, x0, y0], np.float32)
  limit = np.array([hw[1], hw[0], hw[1], hw[0]], np.float32)
  boxes = np.clip(boxes, 0.0, limit)
  keep = ((boxes[:, 2] - boxes[:, 0]) >= 2) & ((boxes[:, 3] - boxes[:, 1]) >= 2)
  return canvas, boxes, keep, float(scale), (int(hw[0]), int(hw[1]))


def hflip(
    image: np.ndarray, boxes: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
  """Mirrors image [H, W, 3] and xyxy boxes [n, 4] about the vertical axis of
  an image `width` pixels wide: x -> width - x (x1 and x2 swap roles)."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  flipped = np.stack(
      [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]],
      axis=1,
  )
  return np.ascontiguousarray(image[:, ::-1]), flipped


def _largest(boxes: np.ndarray, k: int) -> np.ndarray:
  """The `k` largest boxes by area, in their original order."""
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  keep = np.sort(np.argsort(-area, kind="stable")[:k])
  return boxes[keep]


def pad_boxes(
    boxes: np.ndarray, crowd: np.ndarray, max_boxes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Packs person boxes [n, 4] then crowd boxes [m, 4] into `max_boxes` rows.

  Returns boxes float32 [G, 4] (padded rows zero), box_valid bool [G] (person
  rows), box_crowd bool [G] (crowd rows), G = max_boxes. When n + m > G, the
  person boxes come first and the largest of each kind are kept; the first
  such image logs a warning (the loader counts them all).
  """
  global _overflow_warned
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  crowd = np.asarray(crowd, np.float32).reshape(-1, 4)
  if len(boxes) + len(crowd) > max_boxes:
    if not _overflow_warned:
      _overflow_warned = True
      logging.warning(
          "An image has %d person + %d crowd boxes, more than "
          "data.max_boxes=%d; keeping the largest (warned once, counted in "
          "the loader's stats)",
          len(boxes),
          len(crowd),
          max_boxes,
      )
    boxes = _largest(boxes, max_boxes)
    crowd = _largest(crowd, max_boxes - len(boxes))
  n, m = len(boxes), len(crowd)
  out = np.zeros((max_boxes, 4), np.float32)
  out[:n] = boxes
  out[n : n + m] = crowd
  valid = np.zeros(max_boxes, bool)
  valid[:n] = True
  is_crowd = np.zeros(max_boxes, bool)
  is_crowd[n : n + m] = True
  return out, valid, is_crowd


# Values of data.pixel_norm (pixel_norm_stats).
PIXEL_NORMS = ("mean_std", "mean_only")


def pixel_norm_stats(
    data_cfg: Any,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) for `normalize_images`, RGB order, 0-255 range, as the
  config's data.pixel_norm says: "mean_std" gives (data.mean, data.std);
  "mean_only" gives (data.mean, (1, 1, 1)), the seed's input (data.std is not
  read). Every caller that normalises images takes its statistics here.
  """
  norm = data_cfg.pixel_norm
  if norm not in PIXEL_NORMS:
    raise ValueError(
        f"data.pixel_norm must be one of {PIXEL_NORMS}, " f"got {norm!r}"
    )
  mean = tuple(float(v) for v in data_cfg.mean)
  if norm == "mean_only":
    return mean, (1.0, 1.0, 1.0)
  return mean, tuple(float(v) for v in data_cfg.std)


def normalize_images(
    images: Array,
    mean: Sequence[float],
    std: Sequence[float],
    bgr: bool = False,
) -> Array:
  """uint8 RGB images [..., 3] -> float32 (images - mean) / std.

  Works on numpy arrays and on jax arrays (inside jit too). `mean` and `std`
  are per channel in RGB order, 0-255 range. bgr=True reverses the output
  channels to BGR, for weights trained on BGR input; it does not change how
  mean and std are given. The seed's input ("BGR mean (103.53, 116.28,
  123.675) subtracted, then reordered to RGB, no std") is bgr=False, mean
  (123.675, 116.28, 103.53), std (1, 1, 1): `pixel_norm_stats` with
  data.pixel_norm = "mean_only".
  """
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  if mean.shape != (3,) or std.shape != (3,):
    raise ValueError(
        f"data.mean and data.std need 3 values, got "
        f"{mean.tolist()} and {std.tolist()}"
    )
  out = (images.astype(np.float32) - mean) * (np.float32(1.0) / std)
  return out[..., ::-1] if bgr else out
