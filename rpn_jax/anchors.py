"""Anchor grids for one feature map (host side, numpy)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Values of ``model.anchor_placement`` (``generate_anchors``' ``placement``).
PLACEMENTS = ("centred", "seed")


def generate_anchors(
    feature_hw: tuple[int, int],
    stride: int,
    sizes: Sequence[float],
    ratios: Sequence[float],
    offset: float = 0.5,
    *,
    placement: str = "centred",
) -> np.ndarray:
  """Anchors of a ``feature_hw = (H, W)`` feature map with the given stride.

  Each cell gets ``A = len(ratios) * len(sizes)`` anchors, anchor index
  ``a = ratio_index * len(sizes) + size_index`` (torchvision's order), ratio =
  height / width. ``placement`` (``model.anchor_placement``) decides where:

  - ``"centred"`` (the standard): area size**2 at every ratio, centred at
    ``((col + offset) * stride, (row + offset) * stride)``. ``offset=0.0``
    puts centres on torchvision's grid (torchvision also rounds its base
    anchors to integers; these are not rounded).
  - ``"seed"``: the original implementation's anchors (seed/PROTOCOL.md,
    "Model"): top-left corner at the cell's corner
    ``(col * stride, row * stride)``, width ``size``, height
    ``size * ratio`` (area not kept across ratios). ``offset`` is unused.

  Returns:
    ``[H * W * A, 4]`` float32 xyxy pixels, ordered (row, column, anchor), the
    order the RPN head's flattened outputs use.
  """
  height, width = (int(v) for v in feature_hw)
  if height < 0 or width < 0:
    raise ValueError(
        f"generate_anchors: feature_hw must be non-negative, got {feature_hw}"
    )
  if stride <= 0:
    raise ValueError(f"generate_anchors: stride must be positive, got {stride}")
  sizes = np.asarray(sizes, np.float64)
  ratios = np.asarray(ratios, np.float64)
  if sizes.ndim != 1 or ratios.ndim != 1 or sizes.size == 0 or ratios.size == 0:
    raise ValueError(
        "generate_anchors: sizes and ratios must be non-empty 1-D sequences"
    )
  if np.any(sizes <= 0) or np.any(ratios <= 0):
    raise ValueError("generate_anchors: sizes and ratios must be positive")
  if placement not in PLACEMENTS:
    raise ValueError(
        f"model.anchor_placement must be one of {PLACEMENTS}, got {placement!r}"
    )

  if placement == "seed":
    # [A] extents, ratio-major; corners on the cell grid, not centres.
    w = np.broadcast_to(sizes[None, :], (ratios.size, sizes.size)).reshape(-1)
    h = (sizes[None, :] * ratios[:, None]).reshape(-1)
    zero = np.zeros((height, width, w.size))
    x0 = zero + (np.arange(width, dtype=np.float64) * stride)[None, :, None]
    y0 = zero + (np.arange(height, dtype=np.float64) * stride)[:, None, None]
    anchors = np.stack([x0, y0, x0 + w, y0 + h], axis=-1)
    return anchors.reshape(-1, 4).astype(np.float32)

  # [A] half extents, ratio-major: sqrt(ratio) stretches height, shrinks width.
  half_w = (sizes[None, :] / np.sqrt(ratios)[:, None]).reshape(-1) / 2
  half_h = (sizes[None, :] * np.sqrt(ratios)[:, None]).reshape(-1) / 2
  cy = (np.arange(height, dtype=np.float64) + offset) * stride
  cx = (np.arange(width, dtype=np.float64) + offset) * stride
  cy, cx = np.meshgrid(cy, cx, indexing="ij")
  cx = cx[:, :, None]
  cy = cy[:, :, None]
  anchors = np.stack(
      [cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1
  )
  return anchors.reshape(-1, 4).astype(np.float32)
