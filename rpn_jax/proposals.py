"""Fixed-size RPN proposals: top-k by objectness, decode, clip, NMS.

Anchors may come from several pyramid levels laid end to end (FPN): then the
top-k is taken per level and NMS runs per level, as torchvision's
RegionProposalNetwork and detectron2's find_top_rpn_proposals do.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rpn_jax.boxes import Clamp, clip_boxes, decode, min_size_mask
from rpn_jax.nms import nms_padded


def _top_k_per_level(
    logits: jax.Array, k: int, level_sizes: Sequence[int]
) -> tuple[jax.Array, jax.Array, np.ndarray]:
  """The ``min(k, n_l)`` highest logits of each level: values ``[M]``, indices ``[M]``
  into ``logits`` and static level numbers ``[M]``, level by level."""
  values, indices, levels = [], [], []
  start = 0
  for level, size in enumerate(level_sizes):
    top, idx = jax.lax.top_k(logits[start : start + size], min(k, size))
    values.append(top)
    indices.append(idx + start)
    levels.append(np.full(top.shape[0], level, np.float32))
    start += size
  return (
      jnp.concatenate(values),
      jnp.concatenate(indices),
      np.concatenate(levels),
  )


def _separate_levels(
    boxes: jax.Array, levels: np.ndarray, valid: jax.Array
) -> jax.Array:
  """``boxes [M, 4]`` shifted by ``level * (max coordinate + 1)``, so that boxes of
  different levels never overlap and one NMS acts per level.

  torchvision's ``batched_nms`` coordinate trick, the maximum taken over the
  boxes that are still candidates, so that the shifted float32 coordinates (and
  thus the NMS decisions) equal torchvision's.
  """
  max_coordinate = jnp.max(jnp.where(valid[:, None], boxes, 0.0))
  return boxes + (jnp.asarray(levels) * (max_coordinate + 1.0))[:, None]


def propose_indexed(
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
    level_sizes: Sequence[int] | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """``propose`` (same arguments and results), plus the anchor behind each proposal.

  Returns:
    ``boxes [K, 4]``, ``scores [K]``, ``valid [K]`` as ``propose``, and
    ``anchor_index [K] int32``: the row of ``anchors`` (and of ``logits``,
    ``deltas``) each proposal was decoded from; distinct over the valid
    entries, 0 where ``valid`` is False. For labelling the proposals'
    anchors in training (``targets.proposal_targets``).
  """
  logits = jnp.asarray(logits, jnp.float32)
  if logits.ndim != 1 or logits.shape[0] == 0:
    raise ValueError(
        f"propose: logits must be [N] with N > 0, got {logits.shape}"
    )
  level_sizes = (
      (logits.shape[0],)
      if level_sizes is None
      else tuple(int(n) for n in level_sizes)
  )
  if sum(level_sizes) != logits.shape[0] or min(level_sizes) <= 0:
    raise ValueError(
        f"propose: level_sizes {level_sizes} must be positive and sum to N={logits.shape[0]}"
    )
  top_logits, top_idx, levels = _top_k_per_level(
      logits, int(pre_nms_top_k), level_sizes
  )
  boxes = decode(anchors[top_idx], deltas[top_idx], weights, clamp)
  boxes = clip_boxes(boxes, image_hw)
  big_enough = min_size_mask(boxes, min_size)
  nms_boxes = (
      boxes
      if len(level_sizes) == 1
      else _separate_levels(boxes, levels, big_enough)
  )
  keep, valid = nms_padded(
      nms_boxes, top_logits, nms_threshold, post_nms_top_k, valid=big_enough
  )
  out_boxes = jnp.where(valid[:, None], boxes[keep], 0.0)
  scores = jnp.where(valid, jax.nn.sigmoid(top_logits[keep]), 0.0)
  anchor_index = jnp.where(valid, top_idx[keep], 0).astype(jnp.int32)
  return out_boxes, scores, valid, anchor_index


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
    level_sizes: Sequence[int] | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Proposals of one image.

  The ``min(pre_nms_top_k, N)`` anchors with the highest logits are decoded,
  clipped to the image, those narrower or shorter than ``min_size`` dropped,
  and the rest reduced by NMS (ordered by logit) to ``K = post_nms_top_k``.

  With ``level_sizes`` the anchors are pyramid levels laid end to end, and
  the top ``min(pre_nms_top_k, n_l)`` are taken from each level, a box only
  suppresses boxes of its own level, and the ``K`` highest-scoring survivors
  of all levels are kept (torchvision's RPN with ``batched_nms`` by level).

  Args:
    anchors: ``[N, 4]`` xyxy pixels.
    logits: ``[N]`` objectness logits.
    deltas: ``[N, 4]`` predicted (dx, dy, dw, dh).
    image_hw: ``[2]`` (height, width) of the image content, for clipping.
    level_sizes: static anchors per level ``(n_0, n_1, ...)`` summing to
      ``N``, in the order of ``anchors``; ``None`` is one level.

  Returns:
    ``boxes [K, 4]`` xyxy pixels, ``scores [K]`` sigmoid probabilities sorted
    descending over the valid entries, ``valid [K]`` bool; invalid entries
    are zero.
  """
  boxes, scores, valid, _ = propose_indexed(
      anchors,
      logits,
      deltas,
      image_hw,
      pre_nms_top_k=pre_nms_top_k,
      nms_threshold=nms_threshold,
      post_nms_top_k=post_nms_top_k,
      min_size=min_size,
      weights=weights,
      clamp=clamp,
      level_sizes=level_sizes,
  )
  return boxes, scores, valid


def propose_batch(
    anchors: jax.Array,
    logits: jax.Array,
    deltas: jax.Array,
    image_hw: jax.Array,
    **kwargs,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``propose`` (same keywords, ``level_sizes`` included) over a batch.

  anchors ``[N, 4]`` shared, logits ``[B, N]``, deltas ``[B, N, 4]``, image_hw
  ``[B, 2]`` -> boxes ``[B, K, 4]``, scores ``[B, K]``, valid ``[B, K]``.
  """
  return jax.vmap(lambda l, d, hw: propose(anchors, l, d, hw, **kwargs))(
      logits, deltas, image_hw
  )


def propose_batch_indexed(
    anchors: jax.Array,
    logits: jax.Array,
    deltas: jax.Array,
    image_hw: jax.Array,
    **kwargs,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """``propose_indexed`` over a batch, as ``propose_batch``: also ``anchor_index [B, K]``."""
  return jax.vmap(
      lambda l, d, hw: propose_indexed(anchors, l, d, hw, **kwargs)
  )(logits, deltas, image_hw)
