"""Fixed-size RPN proposals: top-k by objectness, decode, clip, NMS."""

from __future__ import annotations

from typing import Sequence, Tuple

import jax
import jax.numpy as jnp

from rpn_jax.boxes import Clamp, clip_boxes, decode, min_size_mask
from rpn_jax.nms import nms_padded


def propose(
    anchors: jax.Array,
    logits: jax.Array,
    deltas: jax.Array,
    image_hw: jax.Array,
    *,
    pre_nms_top_k: int = 12000,
    nms_threshold: float = 0.7,
    post_nms_top_k: int = 1000,
    min_size: float = 1e-3,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    clamp: Clamp = None,
) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """Proposals of one image.

    The ``min(pre_nms_top_k, N)`` anchors with the highest logits are decoded,
    clipped to the image, those narrower or shorter than ``min_size`` dropped,
    and the rest reduced by NMS (ordered by logit) to ``K = post_nms_top_k``.

    Args:
      anchors: ``[N, 4]`` xyxy pixels.
      logits: ``[N]`` objectness logits.
      deltas: ``[N, 4]`` predicted (dx, dy, dw, dh).
      image_hw: ``[2]`` (height, width) of the image content, for clipping.

    Returns:
      ``boxes [K, 4]`` xyxy pixels, ``scores [K]`` sigmoid probabilities sorted
      descending over the valid entries, ``valid [K]`` bool; invalid entries
      are zero.
    """
    logits = jnp.asarray(logits, jnp.float32)
    if logits.ndim != 1 or logits.shape[0] == 0:
        raise ValueError(f"propose: logits must be [N] with N > 0, got {logits.shape}")
    k = min(int(pre_nms_top_k), logits.shape[0])
    top_logits, top_idx = jax.lax.top_k(logits, k)
    boxes = decode(anchors[top_idx], deltas[top_idx], weights, clamp)
    boxes = clip_boxes(boxes, image_hw)
    big_enough = min_size_mask(boxes, min_size)
    keep, valid = nms_padded(boxes, top_logits, nms_threshold, post_nms_top_k, valid=big_enough)
    out_boxes = jnp.where(valid[:, None], boxes[keep], 0.0)
    scores = jnp.where(valid, jax.nn.sigmoid(top_logits[keep]), 0.0)
    return out_boxes, scores, valid


def propose_batch(
    anchors: jax.Array,
    logits: jax.Array,
    deltas: jax.Array,
    image_hw: jax.Array,
    **kwargs,
) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """``propose`` (same keywords) over a batch.

    anchors ``[N, 4]`` shared, logits ``[B, N]``, deltas ``[B, N, 4]``, image_hw
    ``[B, 2]`` -> boxes ``[B, K, 4]``, scores ``[B, K]``, valid ``[B, K]``.
    """
    return jax.vmap(lambda l, d, hw: propose(anchors, l, d, hw, **kwargs))(logits, deltas, image_hw)
