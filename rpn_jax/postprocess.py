"""From fixed-size proposals to detections: score threshold and second NMS.

The device side (`rpn_jax.predictor`) yields a fixed number K of proposals per
image with a validity mask; what a user calls a detection is the subset above
a score threshold after one more NMS, the seed's output stage. Shared by
evaluation, prediction on files and the exported detector, so the three
select the same boxes.
"""

import functools
from dataclasses import dataclass

import jax
import numpy as np

from rpn_jax import nms as nms_lib


@dataclass
class Proposals:
  """Post-NMS proposals of every evaluated image (host numpy).

  image_ids [N]; boxes [N, K, 4] xyxy original-image pixels; scores [N, K]
  objectness probabilities, descending among valid; valid [N, K].
  """

  image_ids: np.ndarray
  boxes: np.ndarray
  scores: np.ndarray
  valid: np.ndarray


@functools.partial(jax.jit, static_argnames=("max_detections",))
def _select(
    boxes, scores, valid, score_threshold, nms_threshold, max_detections
):
  def one(b, s, v):
    keep = v & (s >= score_threshold)
    idx, ok = nms_lib.nms_padded(
        b, s, nms_threshold, max_detections, valid=keep
    )
    return b[idx], s[idx], ok

  return jax.vmap(one)(boxes, scores, valid)


def select_detections(
    props: Proposals,
    score_threshold: float,
    nms_threshold: float,
    max_detections: int = 100,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The seed's output stage: proposals with score >= score_threshold, NMS at
  nms_threshold, the best `max_detections` per image (COCO counts at most 100).

  Returns boxes [N, D, 4], scores [N, D], valid [N, D] (numpy).
  """
  chunks = []
  for start in range(0, len(props.image_ids), 256):
    sl = slice(start, start + 256)
    chunks.append(
        jax.device_get(
            _select(
                props.boxes[sl],
                props.scores[sl],
                props.valid[sl],
                np.float32(score_threshold),
                np.float32(nms_threshold),
                max_detections,
            )
        )
    )
  if not chunks:
    empty = np.zeros((0, max_detections))
    return np.zeros((0, max_detections, 4)), empty, empty.astype(bool)
  return tuple(np.concatenate(parts) for parts in zip(*chunks))
