"""COCO person annotations: clean boxes, write a person-only gt json."""

import json
import os
from typing import Any
from collections.abc import Sequence

import numpy as np

PERSON_CATEGORY = {"id": 1, "name": "person", "supercategory": "person"}


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
  """[n, 4] COCO (x, y, w, h) -> float32 [n, 4] xyxy."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def clean_boxes(
    boxes: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, int]:
  """Clips xyxy boxes [n, 4] to the image and drops the degenerate ones.

  A box is degenerate when, after clipping, it is under 1 px wide or high
  (this includes boxes outside the image) or not finite. Returns the kept
  boxes float32 [k, 4] and how many were dropped.
  """
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  finite = np.isfinite(boxes).all(axis=1)
  limits = np.array([width, height, width, height], np.float32)
  clipped = np.clip(np.where(finite[:, None], boxes, 0.0), 0.0, limits)
  keep = (
      finite
      & (clipped[:, 2] - clipped[:, 0] >= 1.0)
      & (clipped[:, 3] - clipped[:, 1] >= 1.0)
  )
  return clipped[keep], int((~keep).sum())


def write_person_ground_truth(
    path: str,
    images: Sequence[dict[str, Any]],
    annotations: Sequence[dict[str, Any]],
) -> str:
  """Writes a COCO gt json with the person category as id 1.

  images: dicts with id, width, height, file_name. annotations: dicts with
  id, image_id, bbox [x, y, w, h] (original pixels), area, iscrowd; their
  category_id is set to 1. The file appears atomically (written beside it,
  then renamed), so a reader never sees half a file.
  """
  data = {
      "info": {"description": "rpn_jax person ground truth"},
      "images": [dict(im) for im in images],
      "annotations": [
          dict(a, category_id=PERSON_CATEGORY["id"]) for a in annotations
      ],
      "categories": [dict(PERSON_CATEGORY)],
  }
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(data, f)
  os.replace(tmp, path)
  return path
