"""Test-time augmentation: proposals of rescaled and mirrored canvases, fused.

Every pass (a scale of `eval.tta_scales`, unmirrored and, with
`eval.hflip_tta`, mirrored) yields fixed-size proposals in the canvas pixels
of the unscaled, unmirrored canvas. Each proposal is then fused with its best
match (IoU >= `eval.tta_match_iou`) in every other pass: its score becomes
the mean over the passes of the matched scores (0 for a pass without a
match), its box the score-weighted mean of the matched boxes. A box found by
all passes keeps its score; one seen by a single pass loses most of it.
"""

import functools
import math
from typing import Any
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from rpn_jax import boxes as boxes_lib
from rpn_jax import proposals as proposals_lib
from rpn_jax import setup_model


def unflip(boxes: jax.Array, canvas_w: float, image_hw: jax.Array) -> jax.Array:
  """Boxes [B, K, 4] xyxy found on horizontally mirrored canvases of width
  `canvas_w`, mapped back (x -> canvas_w - x) and clipped to the content
  (image_hw [B, 2] (h, w), top-left)."""
  x1 = canvas_w - boxes[..., 2]
  x2 = canvas_w - boxes[..., 0]
  w = image_hw[:, 1, None].astype(boxes.dtype)
  return jnp.stack(
      [jnp.minimum(x1, w), boxes[..., 1], jnp.minimum(x2, w), boxes[..., 3]],
      axis=-1,
  )


def box_sizes(boxes: jax.Array) -> jax.Array:
  """sqrt(w h) of boxes [..., 4] xyxy (0 for empty ones)."""
  return jnp.sqrt(jnp.maximum(boxes_lib.box_area(boxes), 0.0))


def fuse_passes(
    boxes: jax.Array,
    scores: jax.Array,
    valid: jax.Array,
    match_iou: float,
    max_sizes: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """One image's proposals of P passes, boxes [P, K, 4] xyxy, scores [P, K],
  valid [P, K] -> fused boxes [P, K, 4] and scores [P, K] (module docstring);
  invalid entries are 0. With P = 1 the proposals are returned as they are.

  max_sizes [P] (default: no limit): pass q votes only for boxes smaller
  (box_sizes, same pixels as `boxes`) than max_sizes[q], and a box's score is
  the mean over the passes that may vote for it (its own pass always counts;
  the caller invalidates a pass's proposals outside its range)."""
  num_passes, k = scores.shape
  if max_sizes is None:
    max_sizes = jnp.full((num_passes,), jnp.inf)
  flat_boxes = boxes.reshape(num_passes * k, 4)
  flat_valid = valid.reshape(num_passes * k)
  out_boxes, out_scores = [], []
  for p in range(num_passes):
    iou = jnp.where(
        flat_valid[None], boxes_lib.box_iou(boxes[p], flat_boxes), 0.0
    ).reshape(k, num_passes, k)
    match = jnp.argmax(iou, axis=2)  # [K, P]
    best = jnp.take_along_axis(iou, match[..., None], axis=2)[..., 0]
    votes = (box_sizes(boxes[p])[:, None] < max_sizes[None]).at[:, p].set(True)
    others = (best >= match_iou) & (jnp.arange(num_passes) != p)[None] & votes
    weight = jnp.where(others, scores[jnp.arange(num_passes)[None], match], 0.0)
    partners = boxes[jnp.arange(num_passes)[None], match]  # [K, P, 4]
    total = scores[p] + weight.sum(1)
    fused = (
        scores[p][:, None] * boxes[p]
        + jnp.einsum("kp,kpc->kc", weight, partners)
    ) / jnp.maximum(total, 1e-12)[:, None]
    fused = jnp.where(others.any(1)[:, None], fused, boxes[p])
    out_boxes.append(jnp.where(valid[p][:, None], fused, 0.0))
    out_scores.append(jnp.where(valid[p], total / votes.sum(1), 0.0))
  return jnp.stack(out_boxes), jnp.stack(out_scores)


def _proposer(config: ml_collections.ConfigDict, canvas: int) -> Callable:
  """propose_batch with the anchors of a `canvas`-pixel square canvas."""
  scaled = setup_model.on_canvas(config, canvas)
  return functools.partial(
      proposals_lib.propose_batch,
      jnp.asarray(setup_model.model_anchors(scaled)),
      **setup_model.proposal_settings(scaled),
  )


def is_augmented(ev: ml_collections.ConfigDict) -> bool:
  """Whether the eval.tta_* settings ask for more than the plain pass."""
  return tuple(ev.tta_scales) != (1.0,) or bool(ev.hflip_tta)


def describe(ev: ml_collections.ConfigDict) -> str:
  """The passes of the eval.tta_* settings in words, e.g. 'scales 1/1.5 +
  flips'."""
  scales = tuple(ev.tta_scales)
  limit = (
      f" (enlarged below {ev.tta_upscaled_max_size:g} px)"
      if max(scales) > 1 and math.isfinite(ev.tta_upscaled_max_size)
      else ""
  )
  parts = (
      ["scales " + "/".join(f"{x:g}" for x in scales) + limit]
      if scales != (1.0,)
      else []
  ) + (["flips"] if ev.hflip_tta else [])
  return " + ".join(parts)


def check_config(ev: ml_collections.ConfigDict) -> None:
  """ValueError naming the key when the eval.tta_* settings are unusable."""
  scales = tuple(ev.tta_scales)
  if not scales or any(not s > 0 for s in scales):
    raise ValueError(f"eval.tta_scales must be positive numbers, got {scales}")
  if len(set(scales)) != len(scales):
    raise ValueError(f"eval.tta_scales has a scale twice: {scales}")
  if not ev.tta_match_iou > 0:  # above 1 nothing matches: scores / P only
    raise ValueError(f"eval.tta_match_iou must be > 0, got {ev.tta_match_iou}")
  if not ev.tta_upscaled_max_size > 0:
    raise ValueError(
        "eval.tta_upscaled_max_size must be > 0 (inf: no limit), "
        f"got {ev.tta_upscaled_max_size}"
    )


def make_tta_propose(config: ml_collections.ConfigDict, model: Any) -> Callable:
  """`(variables, images [B, S, S, 3] normalised, image_hw [B, 2]) ->
  (boxes [B, P x K, 4], scores [B, P x K], valid [B, P x K])`: every pass's
  proposals (canvas pixels), fused, sorted by score (valid first); P =
  len(eval.tta_scales) x (2 if eval.hflip_tta else 1), K = post_nms_top_k."""
  ev = config.eval
  check_config(ev)
  size = config.data.image_size
  canvases = [int(round(size * s)) for s in ev.tta_scales]
  if min(canvases) < 32:
    raise ValueError(
        f"eval.tta_scales {tuple(ev.tta_scales)}: a canvas of "
        f"{min(canvases)} px from data.image_size {size}"
    )
  passes = [(canvas, _proposer(config, canvas)) for canvas in canvases]
  flip = bool(ev.hflip_tta)
  min_size = config.proposals.min_size
  # Each pass's size limit in the pixels of the unscaled canvas.
  limits = [
      ev.tta_upscaled_max_size * size / canvas if canvas > size else math.inf
      for canvas in canvases
  ]
  max_sizes = jnp.asarray(
      [limit for limit in limits for _ in range(2 if flip else 1)], jnp.float32
  )

  def run(variables, images, image_hw):
    n = images.shape[0]
    all_boxes, all_scores, all_valid = [], [], []
    for (canvas, propose), limit in zip(passes, limits):
      factor = canvas / size
      scaled = (
          images
          if canvas == size
          else jax.image.resize(
              images, (n, canvas, canvas, images.shape[3]), "linear"
          )
      )
      hw = image_hw.astype(jnp.float32) * factor
      if flip:
        scaled = jnp.concatenate([scaled, scaled[:, :, ::-1]])
        hw = jnp.concatenate(
            [
                hw,
                jnp.stack([hw[:, 0], jnp.full_like(hw[:, 1], canvas)], axis=-1),
            ]
        )
      out = model.apply(variables, scaled, train=False)
      boxes, scores, valid = propose(out["objectness"], out["deltas"], hw)
      if flip:
        mirrored = unflip(boxes[n:], canvas, hw[:n])
        boxes = jnp.concatenate([boxes[:n], mirrored])
        valid = jnp.concatenate(
            [valid[:n], valid[n:] & boxes_lib.min_size_mask(mirrored, min_size)]
        )
      boxes = boxes / factor
      valid = valid & (box_sizes(boxes) < limit)
      for part in range(2 if flip else 1):
        rows = slice(part * n, (part + 1) * n)
        all_boxes.append(boxes[rows])
        all_scores.append(jnp.where(valid[rows], scores[rows], 0.0))
        all_valid.append(valid[rows])
    boxes = jnp.stack(all_boxes, axis=1)  # [B, P, K, 4]
    scores = jnp.stack(all_scores, axis=1)
    valid = jnp.stack(all_valid, axis=1)
    boxes, scores = jax.lax.map(
        lambda x: fuse_passes(
            *x, match_iou=ev.tta_match_iou, max_sizes=max_sizes
        ),
        (boxes, scores, valid),
    )
    boxes = boxes.reshape(n, -1, 4)
    scores = scores.reshape(n, -1)
    valid = valid.reshape(n, -1)
    order = jnp.argsort(-jnp.where(valid, scores, -1.0), axis=1)
    return (
        jnp.take_along_axis(boxes, order[..., None], axis=1),
        jnp.take_along_axis(scores, order, axis=1),
        jnp.take_along_axis(valid, order, axis=1),
    )

  return run
