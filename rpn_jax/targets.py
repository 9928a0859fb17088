"""RPN training targets: anchor matching, balanced sampling, regression targets.

All functions work on one image with fixed shapes (gt boxes padded to ``G``
with a validity mask); ``jax.vmap`` them over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from rpn_jax.boxes import Clamp, aligned_overlaps, box_ioa, box_iou, encode


def match_anchors(
    anchors: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    high: float = 0.7,
    low: float = 0.3,
    allow_low_quality: bool = True,
) -> tuple[jax.Array, jax.Array]:
  """Match each anchor to its best ground-truth box, as torchvision's ``Matcher``.

  Args:
    anchors: ``[N, 4]`` xyxy pixels.
    gt_boxes: ``[G, 4]`` xyxy pixels; rows with ``gt_valid`` False are padding.
    gt_valid: ``[G]`` bool.
    high, low: IoU >= high is positive, IoU < low negative, between ignored.
    allow_low_quality: every anchor that ties for the highest IoU of some gt
      box is positive too (matched to its own best gt box, as torchvision).
      Unlike torchvision, a gt box whose best IoU is 0 makes no such positives
      (torchvision would mark every anchor it does not touch as positive).

  Returns:
    ``matched_idx [N] int32`` (the best valid gt box of each anchor, 0 when
    there is none) and ``labels [N] int32``: 1 positive, 0 negative, -1 ignore.
    Padded gt boxes never match; with no valid gt box every anchor is negative.
  """
  n = anchors.shape[0]
  gt_valid = jnp.asarray(gt_valid, bool)
  if gt_boxes.shape[0] == 0:
    return jnp.zeros((n,), jnp.int32), jnp.zeros((n,), jnp.int32)
  # [G, N], gt boxes major: XLA's CPU reductions over the long anchor axis
  # vectorise, where reductions over a short minor axis of G do not (4x faster).
  iou = jnp.where(gt_valid[:, None], box_iou(gt_boxes, anchors), -1.0)
  best = jnp.max(iou, axis=0)
  matched_idx = _first_index_of_max(iou, best)
  labels = jnp.where(best >= high, 1, jnp.where(best < low, 0, -1)).astype(
      jnp.int32
  )
  if allow_low_quality:
    gt_best = jnp.max(iou, axis=1)  # [G]
    # An anchor ties for a gt box's best IoU where iou - gt_best is 0; a gt
    # box with best IoU 0 (or padding) gets 2, above any IoU, and so none.
    # (A max of differences: XLA's CPU any-of-compares is 6x slower.)
    gt_best = jnp.where((gt_best > 0) & gt_valid, gt_best, 2.0)
    ties = jnp.max(iou - gt_best[:, None], axis=0) >= 0
    labels = jnp.where(ties, 1, labels)
  matched_idx = jnp.where(jnp.any(gt_valid), matched_idx, 0)
  return matched_idx, labels


def atss_match(
    anchors: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    level_sizes: Sequence[int],
    top_k: int = 9,
    anchors_per_cell: int = 1,
) -> tuple[jax.Array, jax.Array]:
  """Adaptive training sample selection (Zhang et al. 2020, ATSS).

  Each gt box takes, on every level, the ``ceil(top_k / anchors_per_cell)``
  grid cells whose centres are nearest its centre, and all their anchors, as
  candidates (ATSS's ``top_k`` nearest anchors when a cell has one anchor);
  candidates with IoU >= mean + std (unbiased) of the candidates' IoUs and
  their centre strictly inside the box are positive. An anchor positive for
  several boxes goes to the one it overlaps most (the first on ties). There
  is no ignore band: every other anchor is negative, and a box with no
  positive gets none.

  Args:
    anchors: ``[N, 4]`` xyxy pixels, level after level, each in (cell,
      anchor) order with ``anchors_per_cell`` anchors per cell sharing a
      centre (``setup_model.model_anchors``' order).
    gt_boxes: ``[G, 4]`` xyxy pixels (padded); gt_valid ``[G]`` bool.
    level_sizes: anchors per level (static, sums to N).

  Returns:
    ``matched_idx [N] int32`` and ``labels [N] int32`` (1 positive, 0
    negative), as ``match_anchors``.
  """
  anchors = jnp.asarray(anchors, jnp.float32)
  gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
  n, a = anchors.shape[0], int(anchors_per_cell)
  num_gt = gt_boxes.shape[0]
  gt_valid = jnp.asarray(gt_valid, bool)
  if num_gt == 0:
    return jnp.zeros((n,), jnp.int32), jnp.zeros((n,), jnp.int32)
  if int(top_k) < 1:
    raise ValueError(f"targets.atss_top_k must be at least 1, got {top_k}")
  if sum(level_sizes) != n or any(size % a for size in level_sizes):
    raise ValueError(
        f"atss_match: level sizes {tuple(level_sizes)} do not split "
        f"{n} anchors into cells of {a}"
    )
  centre = (anchors[:, :2] + anchors[:, 2:]) / 2
  gt_centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
  cells_per_level = -(-int(top_k) // a)
  candidates, start = [], 0
  for size in level_sizes:
    cell_centre = centre[start : start + size : a]  # [cells, 2]
    k = min(cells_per_level, size // a)
    if k:
      dist = (gt_centre[:, None, 0] - cell_centre[None, :, 0]) ** 2 + (
          gt_centre[:, None, 1] - cell_centre[None, :, 1]
      ) ** 2
      _, cell = jax.lax.top_k(-dist, k)  # [G, k]
      index = start + cell[:, :, None] * a + jnp.arange(a)
      candidates.append(index.reshape(num_gt, k * a))
    start += size
  cand = jnp.concatenate(candidates, axis=1)  # [G, K]
  cand_boxes = anchors[cand]  # [G, K, 4]
  iou = aligned_overlaps(cand_boxes, gt_boxes[:, None, :])[0]  # [G, K]
  threshold = jnp.mean(iou, axis=1) + jnp.std(
      iou, axis=1, ddof=min(1, cand.shape[1] - 1)
  )
  c = centre[cand]
  inside = (
      (c[..., 0] > gt_boxes[:, None, 0])
      & (c[..., 0] < gt_boxes[:, None, 2])
      & (c[..., 1] > gt_boxes[:, None, 1])
      & (c[..., 1] < gt_boxes[:, None, 3])
  )
  chosen = (iou >= threshold[:, None]) & inside & gt_valid[:, None]
  flat = cand.reshape(-1)
  score = jnp.where(chosen, iou, -1.0).reshape(-1)
  best = jnp.full((n,), -1.0).at[flat].max(score)
  gt_index = jnp.broadcast_to(
      jnp.arange(num_gt, dtype=jnp.int32)[:, None], cand.shape
  )
  wins = chosen.reshape(-1) & (score == best[flat])
  matched_idx = (
      jnp.full((n,), num_gt, jnp.int32)
      .at[flat]
      .min(jnp.where(wins, gt_index.reshape(-1), num_gt))
  )
  positive = best >= 0.0
  return jnp.where(positive, matched_idx, 0), positive.astype(jnp.int32)


def _first_index_of_max(values: jax.Array, best: jax.Array) -> jax.Array:
  """``argmax(values [G, N], axis=0)`` given ``best = values.max(0)``: the first row attaining it.

  A chain of G selects, a few times faster on CPU than XLA's variadic argmax reduction.
  """
  index = jnp.zeros(values.shape[1], jnp.int32)
  for row in range(values.shape[0] - 1, -1, -1):
    index = jnp.where(values[row] == best, row, index)
  return index


def _random_subset(
    priority: jax.Array, candidates: jax.Array, max_count: int, count: jax.Array
) -> jax.Array:
  """Mask of the ``count`` candidates with the highest ``priority`` (``count <= max_count``)."""
  k = min(max_count, priority.shape[0])
  if k == 0:
    return jnp.zeros(priority.shape, bool)
  values, index = jax.lax.top_k(jnp.where(candidates, priority, -1.0), k)
  chosen = (jnp.arange(k) < count) & (values >= 0)
  return jnp.zeros(priority.shape, bool).at[index].set(chosen)


def sample_labels(
    key: jax.Array,
    labels: jax.Array,
    num_samples: int = 256,
    positive_fraction: float = 0.5,
) -> tuple[jax.Array, jax.Array]:
  """Random balanced subset of labelled anchors, with fixed shapes.

  Takes up to ``int(num_samples * positive_fraction)`` positives (labels 1) and
  fills the rest of ``num_samples`` with negatives (labels 0), as torchvision's
  ``BalancedPositiveNegativeSampler``; uniform random priorities drawn from
  ``key`` decide which. ``num_samples=0`` takes every positive and every
  negative (no sampling: for a loss over all anchors, such as focal loss).

  Returns:
    ``pos_mask [N] bool``, ``neg_mask [N] bool``.
  """
  num_samples = int(num_samples)
  if num_samples == 0:
    return labels == 1, labels == 0
  max_pos = int(num_samples * positive_fraction)
  priority = jax.random.uniform(key, labels.shape, jnp.float32)
  is_pos = labels == 1
  is_neg = labels == 0
  num_pos = jnp.minimum(jnp.sum(is_pos, dtype=jnp.int32), max_pos)
  num_neg = num_samples - num_pos
  pos_mask = _random_subset(priority, is_pos, max_pos, num_pos)
  neg_mask = _random_subset(priority, is_neg, num_samples, num_neg)
  return pos_mask, neg_mask


def rpn_targets(
    key: jax.Array,
    anchors: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    gt_crowd: jax.Array,
    *,
    high: float = 0.7,
    low: float = 0.3,
    crowd_ioa: float = 0.7,
    num_samples: int = 256,
    positive_fraction: float = 0.5,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    clamp: Clamp = None,
    assigner: str = "iou",
    level_sizes: Sequence[int] = (),
    atss_top_k: int = 9,
    anchors_per_cell: int = 1,
) -> dict[str, jax.Array]:
  """Sampled objectness labels and regression targets for one image.

  Args:
    key: PRNG key for the sampling.
    anchors: ``[N, 4]`` xyxy pixels.
    gt_boxes: ``[G, 4]`` xyxy pixels (padded).
    gt_valid: ``[G]`` bool, real non-crowd boxes; only these make positives.
    gt_crowd: ``[G]`` bool, crowd regions: an anchor whose intersection with
      one covers >= ``crowd_ioa`` of the anchor's area is never a negative.
    assigner: ``"iou"`` (``match_anchors`` with ``high``/``low``, the seed's)
      or ``"atss"`` (``atss_match`` with ``level_sizes``, ``atss_top_k`` and
      ``anchors_per_cell``; ``high``/``low`` unused).

  Returns:
    ``pos_mask [N] bool``, ``neg_mask [N] bool`` (the sampled anchors) and
    ``target_deltas [N, 4]``: ``encode(anchor, matched gt box, weights, clamp)``
    for every positive anchor (sampled or not), zero elsewhere.
  """
  gt_valid = jnp.asarray(gt_valid, bool)
  gt_crowd = jnp.asarray(gt_crowd, bool)
  if assigner == "atss":
    matched_idx, labels = atss_match(
        anchors,
        gt_boxes,
        gt_valid & ~gt_crowd,
        level_sizes or (anchors.shape[0],),
        atss_top_k,
        anchors_per_cell,
    )
  elif assigner == "iou":
    matched_idx, labels = match_anchors(
        anchors, gt_boxes, gt_valid & ~gt_crowd, high, low
    )
  else:
    raise ValueError(
        f"targets.assigner must be 'iou' or 'atss', got {assigner!r}"
    )
  labels = _ignore_in_crowd(anchors, labels, gt_boxes, gt_crowd, crowd_ioa)
  return _sampled_targets(
      key,
      anchors,
      labels,
      matched_idx,
      gt_boxes,
      num_samples,
      positive_fraction,
      weights,
      clamp,
  )


def _ignore_in_crowd(
    boxes: jax.Array,
    labels: jax.Array,
    gt_boxes: jax.Array,
    gt_crowd: jax.Array,
    crowd_ioa: float,
) -> jax.Array:
  """``labels [M]`` of ``boxes [M, 4]`` with each negative covered >= ``crowd_ioa``
  by a crowd region turned to ignored (-1)."""
  if gt_boxes.shape[0] == 0:
    return labels
  in_crowd = jnp.any(
      (box_ioa(boxes, gt_boxes) >= crowd_ioa) & gt_crowd[None, :], axis=1
  )
  return jnp.where((labels == 0) & in_crowd, -1, labels)


def _sampled_targets(
    key: jax.Array,
    anchors: jax.Array,
    labels: jax.Array,
    matched_idx: jax.Array,
    gt_boxes: jax.Array,
    num_samples: int,
    positive_fraction: float,
    weights: Sequence[float],
    clamp: Clamp,
) -> dict[str, jax.Array]:
  """Sampled masks and regression targets from anchor ``labels [N]`` (1, 0, -1)
  and each anchor's matched gt row ``matched_idx [N]`` (``rpn_targets``' result).
  """
  pos_mask, neg_mask = sample_labels(
      key, labels, num_samples, positive_fraction
  )
  positive = labels == 1
  matched = gt_boxes[matched_idx] if gt_boxes.shape[0] > 0 else anchors
  # Non-positives encode onto themselves (zero deltas), so no log(0) from padding.
  matched = jnp.where(positive[:, None], matched, anchors)
  target_deltas = jnp.where(
      positive[:, None], encode(anchors, matched, weights, clamp), 0.0
  )
  return {
      "pos_mask": pos_mask,
      "neg_mask": neg_mask,
      "target_deltas": target_deltas,
  }


# Values of ``targets.label_on``: which anchors ``batch_targets`` labels.
LABEL_ON = ("anchors", "proposals")


def proposal_targets(
    key: jax.Array,
    anchors: jax.Array,
    proposal_boxes: jax.Array,
    proposal_anchor: jax.Array,
    proposal_valid: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    gt_crowd: jax.Array,
    *,
    high: float = 0.7,
    low: float = 0.3,
    crowd_ioa: float = 0.7,
    num_samples: int = 256,
    positive_fraction: float = 0.5,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    clamp: Clamp = None,
) -> dict[str, jax.Array]:
  """``rpn_targets`` with the seed's labelling: only the anchors behind proposals.

  The seed (seed/PROTOCOL.md, "Labels") labelled only each image's post-NMS
  proposals. Here the ``K`` proposal boxes (decoded and clipped, as
  ``proposals.propose_indexed`` returns them) are matched to the gt boxes
  with ``match_anchors``' rule (IoU >= ``high`` positive, < ``low`` negative,
  each gt box's best proposal positive) and crowd regions as in
  ``rpn_targets`` (a negative proposal covered >= ``crowd_ioa`` by a crowd
  box is ignored); each label goes to the anchor the proposal was decoded
  from. Every other anchor (suppressed by NMS, beyond the pre- or post-NMS
  top-k, or too small) is ignored: never sampled. ``sample_labels`` then
  samples ``num_samples`` of the labelled anchors.

  Reading taken of the protocol: the regression target of a positive is its
  matched gt box encoded RELATIVE TO ITS ANCHOR, ``encode(anchor, gt, weights,
  clamp)``, not relative to the proposal box. The head's deltas are decoded
  from the anchor (``propose``), and the loss compares them with the target,
  so only a target encoded on the anchor decodes to the gt box; one encoded
  on the proposal (a correction of the current prediction) would, decoded
  from the anchor, give another box. The protocol does not say which; the
  proposal box decides here only whether its anchor is positive, negative or
  ignored, and which gt box it regresses to.

  Args:
    key: PRNG key for the sampling.
    anchors: ``[N, 4]`` xyxy pixels.
    proposal_boxes: ``[K, 4]`` xyxy pixels, the image's proposals.
    proposal_anchor: ``[K] int32``, the anchor row each proposal was decoded
      from (distinct over the valid proposals).
    proposal_valid: ``[K]`` bool; invalid proposals label nothing.
    gt_boxes, gt_valid, gt_crowd: as ``rpn_targets``.

  Returns:
    As ``rpn_targets``: ``pos_mask [N] bool``, ``neg_mask [N] bool`` (the
    sampled anchors, all behind valid proposals) and ``target_deltas [N, 4]``
    (``encode(anchor, matched gt box)`` for every positive anchor, zero
    elsewhere).
  """
  n = anchors.shape[0]
  gt_valid = jnp.asarray(gt_valid, bool)
  gt_crowd = jnp.asarray(gt_crowd, bool)
  proposal_valid = jnp.asarray(proposal_valid, bool)
  # Padded proposals are zero boxes (IoU 0 with every gt box), so they never
  # tie for a gt box's best match; their labels are dropped below anyway.
  matched_k, labels_k = match_anchors(
      proposal_boxes, gt_boxes, gt_valid & ~gt_crowd, high, low
  )
  labels_k = _ignore_in_crowd(
      proposal_boxes, labels_k, gt_boxes, gt_crowd, crowd_ioa
  )
  # Invalid proposals scatter to row n, out of range, and are dropped.
  row = jnp.where(proposal_valid, jnp.asarray(proposal_anchor, jnp.int32), n)
  labels = jnp.full((n,), -1, jnp.int32).at[row].set(labels_k, mode="drop")
  matched_idx = jnp.zeros((n,), jnp.int32).at[row].set(matched_k, mode="drop")
  return _sampled_targets(
      key,
      anchors,
      labels,
      matched_idx,
      gt_boxes,
      num_samples,
      positive_fraction,
      weights,
      clamp,
  )
