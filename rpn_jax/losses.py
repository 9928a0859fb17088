"""RPN losses, summed and normalised: objectness (BCE, focal, quality focal) and
box (smooth-L1 on the deltas, or GIoU of the decoded boxes)."""

from __future__ import annotations


import jax
import jax.numpy as jnp

from rpn_jax import boxes

BOX_LOSSES = ("smooth_l1", "giou")
OBJECTNESS_LOSSES = ("bce", "focal", "quality_focal")


def sigmoid_bce_with_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Elementwise binary cross-entropy on logits (stable form, as torch's BCEWithLogits)."""
  return (
      jnp.maximum(logits, 0.0)
      - logits * labels
      + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  )


def sigmoid_focal_loss(
    logits: jax.Array,
    labels: jax.Array,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> jax.Array:
  """Elementwise focal loss on logits (Lin et al. 2017), as torchvision's ``sigmoid_focal_loss``.

  ``alpha_t * (1 - p_t) ** gamma * BCE``; ``alpha < 0`` leaves out ``alpha_t``.
  """
  p = jax.nn.sigmoid(logits)
  p_t = p * labels + (1.0 - p) * (1.0 - labels)
  loss = sigmoid_bce_with_logits(logits, labels) * (1.0 - p_t) ** gamma
  if alpha >= 0:
    loss = (alpha * labels + (1.0 - alpha) * (1.0 - labels)) * loss
  return loss


def smooth_l1(diff: jax.Array, beta: float) -> jax.Array:
  """Elementwise smooth-L1 of ``diff``: 0.5 x^2 / beta below beta, |x| - 0.5 beta above.

  ``beta`` is a Python float; ``beta <= 0`` gives plain L1.
  """
  diff = jnp.abs(diff)
  if beta <= 0:
    return diff
  # Huber split (quadratic part + linear part) keeps gradients finite everywhere.
  quadratic = jnp.minimum(diff, beta)
  return 0.5 * quadratic * quadratic / beta + (diff - quadratic)


def giou_loss(
    pred: jax.Array, target: jax.Array, eps: float = 1e-7
) -> jax.Array:
  """Elementwise ``1 - GIoU`` of xyxy boxes ``pred [..., 4]`` and ``target [..., 4]`` -> ``[...]``.

  GIoU (Rezatofighi et al. 2019) is IoU minus the share of the smallest
  enclosing box that neither box covers; the loss lies in [0, 2] and equals
  torchvision's ``generalized_box_iou_loss``.
  """
  iou, union, hull = boxes.aligned_overlaps(pred, target, eps)
  return 1.0 - iou + (hull - union) / (hull + eps)


def quality_focal_loss(
    logits: jax.Array, quality: jax.Array, beta: float = 2.0
) -> jax.Array:
  """Elementwise quality focal loss (Li et al. 2020, GFL): ``|q - p| ** beta * BCE(p, q)``.

  ``quality [...]`` in [0, 1] is the soft target: the IoU of a positive's
  predicted box with its ground truth, 0 for negatives.
  """
  p = jax.nn.sigmoid(logits)
  return sigmoid_bce_with_logits(logits, quality) * jnp.abs(quality - p) ** beta


def rpn_losses(
    logits: jax.Array,
    pred_deltas: jax.Array,
    target_deltas: jax.Array,
    pos_mask: jax.Array,
    neg_mask: jax.Array,
    *,
    normalizer: float | jax.Array,
    beta: float = 1.0,
    box_weight: float = 1.0,
    box_loss: str = "smooth_l1",
    anchors: jax.Array | None = None,
    box_coder: dict | None = None,
    objectness_loss: str = "bce",
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> dict[str, jax.Array]:
  """Objectness and box regression losses of a batch.

  Args:
    logits: ``[B, N]`` objectness logits.
    pred_deltas: ``[B, N, 4]`` predicted (dx, dy, dw, dh).
    target_deltas: ``[B, N, 4]`` regression targets.
    pos_mask, neg_mask: ``[B, N]`` bool sampled positives / negatives.
    normalizer: both sums are divided by it (the seed: batch_size * 256).
    beta: smooth-L1 beta (Python float); 0 means L1.
    box_weight: weight of ``box`` in ``total`` (the seed: 1).
    box_loss: ``"smooth_l1"`` on the 4 deltas (the seed) or ``"giou"``:
      ``1 - GIoU`` of the boxes that the predicted and the target deltas
      decode to on ``anchors [N, 4]`` (xyxy pixels), with ``box_coder``'s
      ``weights`` and ``clamp`` (keyword arguments of ``boxes.decode``).
    objectness_loss: ``"bce"`` (the seed), ``"focal"`` (``sigmoid_focal_loss``
      with ``focal_alpha``, ``focal_gamma``) or ``"quality_focal"``
      (``quality_focal_loss`` with beta ``focal_gamma``: a positive's target
      is the IoU of its decoded box with its ground truth, so the score
      ranks boxes by how well they fit; needs ``anchors`` as ``"giou"``).

  Returns:
    float32 scalars ``objectness`` (BCE or focal loss summed over pos | neg), ``box``
    (the box loss summed over the positives), both normalised, and
    ``total = objectness + box_weight * box``.
  """
  if box_loss not in BOX_LOSSES:
    raise ValueError(
        f"targets.box_loss must be one of {BOX_LOSSES}, got {box_loss!r}"
    )
  if objectness_loss not in OBJECTNESS_LOSSES:
    raise ValueError(
        f"targets.objectness_loss must be one of {OBJECTNESS_LOSSES}, "
        f"got {objectness_loss!r}"
    )
  logits = jnp.asarray(logits, jnp.float32)
  pred_deltas = jnp.asarray(pred_deltas, jnp.float32)
  pos = jnp.asarray(pos_mask, bool)
  sampled = pos | jnp.asarray(neg_mask, bool)
  labels = pos.astype(jnp.float32)
  if box_loss == "giou" or objectness_loss == "quality_focal":
    if anchors is None:
      raise ValueError(
          f"box_loss={box_loss!r} / objectness_loss={objectness_loss!r} "
          "needs the anchors"
      )
    coder = dict(box_coder or {})
    anchors = jnp.broadcast_to(
        jnp.asarray(anchors, jnp.float32), pred_deltas.shape
    )
    pred_boxes = boxes.decode(anchors, pred_deltas, **coder)
    target_boxes = boxes.decode(anchors, target_deltas, **coder)
  if objectness_loss == "focal":
    per_anchor = sigmoid_focal_loss(logits, labels, focal_alpha, focal_gamma)
  elif objectness_loss == "quality_focal":
    quality = jax.lax.stop_gradient(
        boxes.aligned_overlaps(pred_boxes, target_boxes)[0]
    )
    per_anchor = quality_focal_loss(
        logits, jnp.where(pos, quality, 0.0), focal_gamma
    )
  else:
    per_anchor = sigmoid_bce_with_logits(logits, labels)
  objectness = jnp.sum(jnp.where(sampled, per_anchor, 0.0))
  if box_loss == "giou":
    box_terms = giou_loss(pred_boxes, target_boxes)
    box = jnp.sum(jnp.where(pos, box_terms, 0.0))
  else:
    box_terms = smooth_l1(pred_deltas - target_deltas, float(beta))
    box = jnp.sum(jnp.where(pos[..., None], box_terms, 0.0))
  normalizer = jnp.asarray(normalizer, jnp.float32)
  objectness = objectness / normalizer
  box = box / normalizer
  return {
      "objectness": objectness,
      "box": box,
      "total": objectness + box_weight * box,
  }
