"""Fixed-size greedy non-maximum suppression for jit and vmap.

The result equals ``torchvision.ops.nms`` truncated to ``max_output``: boxes are
visited in stable descending score order (ties keep input order), and a box is
dropped when its IoU with an already kept box is strictly above the threshold.

To avoid an N x N IoU matrix the sorted boxes are processed in tiles. Each tile
is first suppressed by the boxes kept so far (a compact buffer of at most
``max_output`` boxes, visited chunk by chunk), then resolved internally by a
fixed-point iteration on its tile x tile overlap matrix, and its survivors are
appended to the buffer. The loop stops as soon as ``max_output`` boxes are kept.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rpn_jax.boxes import box_area, pairwise_intersection

# Tile length: large enough that the per-tile loop overhead is small, small
# enough that the tile x tile overlap matrix stays in cache.
_TILE = 256
# Kept-buffer chunk: small, so that a tile is compared with little more than
# the boxes actually kept so far.
_CHUNK = 32


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _float32_threshold(iou_threshold: float | jax.Array) -> jax.Array:
  """The float32 t with ``iou > t`` (in float32) iff ``iou > iou_threshold`` (as a double).

  torchvision compares its float32 IoU against a double threshold; rounding a
  Python threshold down to float32 keeps that strict comparison exact (0.3,
  for one, rounds up to nearest). A traced threshold is only cast.
  """
  if isinstance(iou_threshold, (int, float, np.integer, np.floating)):
    value = float(iou_threshold)
    rounded = np.float32(value)
    if float(rounded) > value:
      rounded = np.nextafter(rounded, np.float32(-np.inf))
    return jnp.asarray(rounded, jnp.float32)
  return jnp.asarray(iou_threshold, jnp.float32)


def _descending_order(scores: jax.Array, alive: jax.Array) -> jax.Array:
  """Permutation ``[N] int32`` sorting alive boxes by score, high first, ties by index.

  Dead boxes go last. XLA's CPU sort is several times faster on one int32
  operand than on (key, payload) pairs, so the float scores are mapped to
  order-preserving int32 keys, replaced by their dense ranks, and each rank is
  packed with its index into one int32 (rank * N + index) for a second sort.
  """
  n = scores.shape[0]
  iota = lax.iota(jnp.int32, n)
  # -0.0 ties with 0.0, as in torch's sort.
  bits = lax.bitcast_convert_type(
      jnp.where(scores == 0, 0.0, scores), jnp.int32
  )
  ascending = jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)
  key = jnp.where(alive, ~ascending, jnp.iinfo(jnp.int32).max)
  if n * n > jnp.iinfo(jnp.int32).max:
    return lax.sort((key, iota), num_keys=2)[1]
  rank = jnp.searchsorted(lax.sort(key), key, side="left").astype(jnp.int32)
  return lax.sort(rank * n + iota) % n


def _overlaps(a: jax.Array, b: jax.Array, threshold: jax.Array) -> jax.Array:
  """``IoU(a_i, b_j) > threshold`` as torchvision's NMS kernel rounds it: ``[Na, Nb]`` bool."""
  inter = pairwise_intersection(a, b)
  return (
      inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter) > threshold
  )


def nms_padded(
    boxes: jax.Array,
    scores: jax.Array,
    iou_threshold: float | jax.Array,
    max_output: int,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Greedy NMS with a fixed-size result.

  Args:
    boxes: ``[N, 4]`` xyxy pixels.
    scores: ``[N]``; higher first, ties in input order.
    iou_threshold: a box is suppressed by a kept box when their IoU is > this.
      A Python number gives torchvision's exact decisions at the threshold.
    max_output: static number of output slots.
    valid: optional ``[N]`` bool; masked boxes are never kept and never suppress.

  Returns:
    ``indices [max_output] int32`` into ``boxes``, in the order torchvision's
    ``nms`` returns them, and ``valid [max_output] bool``. Unused slots hold
    index 0 and False.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f"nms_padded: boxes must be [N, 4], got {boxes.shape}")
  n = boxes.shape[0]
  if scores.shape != (n,):
    raise ValueError(f"nms_padded: scores must be [{n}], got {scores.shape}")
  max_output = int(max_output)
  if max_output < 0:
    raise ValueError(f"nms_padded: max_output must be >= 0, got {max_output}")
  alive = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
  if alive.shape != (n,):
    raise ValueError(f"nms_padded: valid must be [{n}], got {alive.shape}")
  if n == 0 or max_output == 0:
    return jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool)

  threshold = _float32_threshold(iou_threshold)
  tile = min(_TILE, _round_up(n, 8))
  n_pad = _round_up(n, tile)
  num_tiles = n_pad // tile
  chunk = min(_CHUNK, tile)
  out_pad = _round_up(max_output, chunk)

  order = _descending_order(scores, alive)
  pad = n_pad - n
  order = jnp.pad(order, (0, pad))
  sorted_boxes = jnp.pad(boxes[order[:n]], ((0, pad), (0, 0)))
  sorted_alive = jnp.pad(alive[order[:n]], (0, pad))
  upper = (
      lax.iota(jnp.int32, tile)[:, None] < lax.iota(jnp.int32, tile)[None, :]
  )

  def tile_step(state):
    t, count, kept_idx, kept_boxes = state
    start = t * tile
    t_boxes = lax.dynamic_slice_in_dim(sorted_boxes, start, tile)
    t_alive = lax.dynamic_slice_in_dim(sorted_alive, start, tile)
    t_idx = lax.dynamic_slice_in_dim(order, start, tile)

    # Suppression by the boxes kept in earlier tiles, one buffer chunk at a time.
    def chunk_cond(c):
      j, alive_now = c
      return (j * chunk < count) & jnp.any(alive_now)

    def chunk_step(c):
      j, alive_now = c
      k_boxes = lax.dynamic_slice_in_dim(kept_boxes, j * chunk, chunk)
      k_used = j * chunk + lax.iota(jnp.int32, chunk) < count
      hit = _overlaps(k_boxes, t_boxes, threshold) & k_used[:, None]
      return j + 1, alive_now & ~jnp.any(hit, axis=0)

    _, t_alive = lax.while_loop(chunk_cond, chunk_step, (jnp.int32(0), t_alive))

    # Greedy order inside the tile: keep[j] = alive[j] and no kept i < j overlaps j.
    # Iterating that rule from keep = alive fixes one more position per pass at
    # least, and its fixed point is the greedy answer.
    def resolve(alive_now):
      hit = _overlaps(t_boxes, t_boxes, threshold) & upper

      def resolve_step(c):
        keep, _ = c
        new = alive_now & ~jnp.any(hit & keep[:, None], axis=0)
        return new, jnp.any(new != keep)

      return lax.while_loop(
          lambda c: c[1], resolve_step, (alive_now, jnp.array(True))
      )[0]

    # Under heavy suppression whole tiles die to earlier boxes: skip their matrix.
    keep = lax.cond(jnp.any(t_alive), resolve, lambda a: a, t_alive)

    slot = jnp.where(
        keep, count + jnp.cumsum(keep, dtype=jnp.int32) - 1, out_pad
    )
    kept_idx = kept_idx.at[slot].set(t_idx, mode="drop")
    kept_boxes = kept_boxes.at[slot].set(t_boxes, mode="drop")
    count = count + jnp.sum(keep, dtype=jnp.int32)
    return t + 1, count, kept_idx, kept_boxes

  def tile_cond(state):
    t, count = state[0], state[1]
    return (t < num_tiles) & (count < max_output)

  init = (
      jnp.int32(0),
      jnp.int32(0),
      jnp.zeros((out_pad,), jnp.int32),
      jnp.zeros((out_pad, 4), jnp.float32),
  )
  _, count, kept_idx, _ = lax.while_loop(tile_cond, tile_step, init)
  out_valid = lax.iota(jnp.int32, max_output) < count
  return jnp.where(out_valid, kept_idx[:max_output], 0), out_valid
