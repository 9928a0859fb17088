"""RPN losses: objectness BCE and box smooth-L1, summed and normalised."""

from __future__ import annotations

from typing import Dict, Union

import jax
import jax.numpy as jnp


def sigmoid_bce_with_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Elementwise binary cross-entropy on logits (stable form, as torch's BCEWithLogits)."""
    return jnp.maximum(logits, 0.0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


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


def rpn_losses(
    logits: jax.Array,
    pred_deltas: jax.Array,
    target_deltas: jax.Array,
    pos_mask: jax.Array,
    neg_mask: jax.Array,
    *,
    normalizer: Union[float, jax.Array],
    beta: float = 1.0,
    box_weight: float = 1.0,
) -> Dict[str, jax.Array]:
    """Objectness and box regression losses of a batch.

    Args:
      logits: ``[B, N]`` objectness logits.
      pred_deltas: ``[B, N, 4]`` predicted (dx, dy, dw, dh).
      target_deltas: ``[B, N, 4]`` regression targets.
      pos_mask, neg_mask: ``[B, N]`` bool sampled positives / negatives.
      normalizer: both sums are divided by it (the seed: batch_size * 256).
      beta: smooth-L1 beta (Python float); 0 means L1.
      box_weight: weight of ``box`` in ``total`` (the seed: 1).

    Returns:
      float32 scalars ``objectness`` (BCE summed over pos | neg), ``box``
      (smooth-L1 summed over the positives' 4 deltas), both normalised, and
      ``total = objectness + box_weight * box``.
    """
    logits = jnp.asarray(logits, jnp.float32)
    pos = jnp.asarray(pos_mask, bool)
    sampled = pos | jnp.asarray(neg_mask, bool)
    bce = sigmoid_bce_with_logits(logits, pos.astype(jnp.float32))
    objectness = jnp.sum(jnp.where(sampled, bce, 0.0))
    box_terms = smooth_l1(jnp.asarray(pred_deltas, jnp.float32) - target_deltas, float(beta))
    box = jnp.sum(jnp.where(pos[..., None], box_terms, 0.0))
    normalizer = jnp.asarray(normalizer, jnp.float32)
    objectness = objectness / normalizer
    box = box / normalizer
    return {"objectness": objectness, "box": box, "total": objectness + box_weight * box}
