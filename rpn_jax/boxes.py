"""Box geometry and box coding.

Boxes are float32 ``[..., 4]`` xyxy in continuous pixel coordinates with
torchvision's convention: width = x2 - x1 and height = y2 - y1 (no +1).
``xywh`` means COCO's (x1, y1, width, height). Deltas are ``[..., 4]`` as
(dx, dy, dw, dh) in the R-CNN parameterisation, scaled by ``weights``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

Clamp = tuple[float, float, float] | None


def _unfused(product: jnp.ndarray) -> jnp.ndarray:
  """Identity on a product that keeps XLA from fusing it into a later add/subtract.

  XLA's CPU backend contracts ``a * b + c`` into one fused multiply-add, which
  rounds once instead of twice. torchvision rounds twice; this select (an exact
  identity, NaN included) hides the product from the contraction so IoUs match
  torchvision bit for bit, and NMS decisions at the threshold match too.
  """
  return jnp.where(product >= 0, product, -jnp.abs(product))


def box_area(boxes: jnp.ndarray) -> jnp.ndarray:
  """Area of xyxy boxes ``[..., 4]`` -> ``[...]`` (negative for inverted boxes)."""
  return _unfused(
      (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
  )


def pairwise_intersection(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Intersection areas of ``a [N, 4]`` and ``b [M, 4]`` (xyxy) -> ``[N, M]``."""
  w = jnp.minimum(a[:, None, 2], b[None, :, 2]) - jnp.maximum(
      a[:, None, 0], b[None, :, 0]
  )
  h = jnp.minimum(a[:, None, 3], b[None, :, 3]) - jnp.maximum(
      a[:, None, 1], b[None, :, 1]
  )
  return _unfused(jnp.maximum(w, 0.0) * jnp.maximum(h, 0.0))


def box_iou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Pairwise IoU of xyxy boxes ``a [N, 4]`` and ``b [M, 4]`` -> ``[N, M]``.

  Computed as torchvision's ``box_iou`` does (inter / (area_a + area_b - inter)),
  bit for bit; pairs whose union is 0 get IoU 0 instead of NaN.
  """
  inter = pairwise_intersection(a, b)
  union = box_area(a)[:, None] + box_area(b)[None, :] - inter
  return jnp.where(union != 0, inter / jnp.where(union != 0, union, 1.0), 0.0)


def aligned_overlaps(
    pred: jnp.ndarray, target: jnp.ndarray, eps: float = 1e-7
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """(IoU, union, enclosing-box area), each ``[...]``, of the xyxy box pairs
  ``pred [..., 4]`` and ``target [..., 4]`` (elementwise, not pairwise as
  ``box_iou``); IoU is ``inter / (union + eps)``."""
  px0, py0, px1, py1 = jnp.moveaxis(pred, -1, 0)
  tx0, ty0, tx1, ty1 = jnp.moveaxis(target, -1, 0)
  inter_w = jnp.maximum(jnp.minimum(px1, tx1) - jnp.maximum(px0, tx0), 0.0)
  inter_h = jnp.maximum(jnp.minimum(py1, ty1) - jnp.maximum(py0, ty0), 0.0)
  inter = inter_w * inter_h
  union = (px1 - px0) * (py1 - py0) + (tx1 - tx0) * (ty1 - ty0) - inter
  hull = (jnp.maximum(px1, tx1) - jnp.minimum(px0, tx0)) * (
      jnp.maximum(py1, ty1) - jnp.minimum(py0, ty0)
  )
  return inter / (union + eps), union, hull


def box_ioa(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Intersection over the area of ``a``: ``a [N, 4]``, ``b [M, 4]`` -> ``[N, M]``.

  Used to find anchors lying mostly inside crowd regions; 0 where area(a) is 0.
  """
  inter = pairwise_intersection(a, b)
  area = box_area(a)[:, None]
  return jnp.where(area > 0, inter / jnp.where(area > 0, area, 1.0), 0.0)


def _check_clamp(clamp: Clamp) -> None:
  if clamp is not None and len(clamp) != 3:
    raise ValueError(
        f"clamp must be None or (xy_limit, wh_min, wh_max), got {clamp!r}"
    )


def _clamp_deltas(deltas: jnp.ndarray, clamp: Clamp) -> jnp.ndarray:
  """Clamp (dx, dy) to [-xy_limit, xy_limit] and (dw, dh) to [wh_min, wh_max]."""
  if clamp is None:
    return deltas
  xy_limit, wh_min, wh_max = (float(c) for c in clamp)
  xy = jnp.clip(deltas[..., :2], -xy_limit, xy_limit)
  wh = jnp.clip(deltas[..., 2:], wh_min, wh_max)
  return jnp.concatenate([xy, wh], axis=-1)


def encode(
    anchors: jnp.ndarray,
    targets: jnp.ndarray,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    clamp: Clamp = None,
) -> jnp.ndarray:
  """Deltas that move ``anchors [..., 4]`` onto ``targets [..., 4]`` (both xyxy).

  Returns ``[..., 4]`` (dx, dy, dw, dh), each multiplied by its weight, then
  clamped by ``clamp = (xy_limit, wh_min, wh_max)`` when given. Zero-size
  anchors or targets give non-finite deltas, as in torchvision.
  """
  _check_clamp(clamp)
  wx, wy, ww, wh = (float(w) for w in weights)
  anchors = jnp.asarray(anchors, jnp.float32)
  targets = jnp.asarray(targets, jnp.float32)
  aw = anchors[..., 2] - anchors[..., 0]
  ah = anchors[..., 3] - anchors[..., 1]
  acx = anchors[..., 0] + 0.5 * aw
  acy = anchors[..., 1] + 0.5 * ah
  tw = targets[..., 2] - targets[..., 0]
  th = targets[..., 3] - targets[..., 1]
  tcx = targets[..., 0] + 0.5 * tw
  tcy = targets[..., 1] + 0.5 * th
  deltas = jnp.stack(
      [
          wx * (tcx - acx) / aw,
          wy * (tcy - acy) / ah,
          ww * jnp.log(tw / aw),
          wh * jnp.log(th / ah),
      ],
      axis=-1,
  )
  return _clamp_deltas(deltas, clamp)


def decode(
    anchors: jnp.ndarray,
    deltas: jnp.ndarray,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    clamp: Clamp = None,
) -> jnp.ndarray:
  """Apply ``deltas [..., 4]`` (dx, dy, dw, dh) to ``anchors [..., 4]`` -> xyxy ``[..., 4]``.

  ``clamp`` acts on the weighted deltas as given (before dividing by
  ``weights``). With ``clamp=None`` and unit weights this equals torchvision's
  ``BoxCoder.decode`` for dw, dh below its log(1000/16) cap; pass
  ``rpn_jax.defaults.TORCHVISION_BOX_CLAMP`` to get that cap too.
  """
  _check_clamp(clamp)
  wx, wy, ww, wh = (float(w) for w in weights)
  anchors = jnp.asarray(anchors, jnp.float32)
  deltas = _clamp_deltas(jnp.asarray(deltas, jnp.float32), clamp)
  aw = anchors[..., 2] - anchors[..., 0]
  ah = anchors[..., 3] - anchors[..., 1]
  acx = anchors[..., 0] + 0.5 * aw
  acy = anchors[..., 1] + 0.5 * ah
  cx = deltas[..., 0] / wx * aw + acx
  cy = deltas[..., 1] / wy * ah + acy
  half_w = 0.5 * (jnp.exp(deltas[..., 2] / ww) * aw)
  half_h = 0.5 * (jnp.exp(deltas[..., 3] / wh) * ah)
  return jnp.stack(
      [cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1
  )


def clip_boxes(boxes: jnp.ndarray, image_hw: jnp.ndarray) -> jnp.ndarray:
  """Clip xyxy ``boxes [..., 4]`` to the image ``image_hw [2]`` = (height, width)."""
  image_hw = jnp.asarray(image_hw).astype(jnp.float32)
  h, w = image_hw[0], image_hw[1]
  x = jnp.clip(boxes[..., 0::2], 0.0, w)
  y = jnp.clip(boxes[..., 1::2], 0.0, h)
  return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def xyxy_to_xywh(boxes: jnp.ndarray) -> jnp.ndarray:
  """xyxy ``[..., 4]`` -> COCO xywh (x1, y1, width, height) ``[..., 4]``."""
  return jnp.concatenate(
      [boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1
  )


def xywh_to_xyxy(boxes: jnp.ndarray) -> jnp.ndarray:
  """COCO xywh (x1, y1, width, height) ``[..., 4]`` -> xyxy ``[..., 4]``."""
  return jnp.concatenate(
      [boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1
  )


def min_size_mask(boxes: jnp.ndarray, min_size: float) -> jnp.ndarray:
  """True where both width and height of xyxy ``boxes [..., 4]`` are >= ``min_size``."""
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  return (w >= min_size) & (h >= min_size)
