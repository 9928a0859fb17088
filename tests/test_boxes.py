"""Box geometry and coding against torchvision and hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder

from rpn_jax import boxes as B
from rpn_jax import defaults

SEED_CLAMP = (0.5, math.log(0.5), math.log(2.0))


def _random_boxes(rng, n, max_wh=300.0):
  xy = rng.uniform(0, 1000, (n, 2))
  wh = rng.uniform(1, max_wh, (n, 2))
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def test_box_iou_matches_torchvision_bit_for_bit():
  rng = np.random.default_rng(0)
  a, b = _random_boxes(rng, 500), _random_boxes(rng, 400)
  expected = torchvision.ops.box_iou(
      torch.from_numpy(a), torch.from_numpy(b)
  ).numpy()
  np.testing.assert_array_equal(np.asarray(jax.jit(B.box_iou)(a, b)), expected)
  np.testing.assert_array_equal(np.asarray(B.box_iou(a, b)), expected)


def test_box_iou_zero_union_and_hand_values():
  a = np.array([[0, 0, 10, 10], [5, 5, 5, 5]], np.float32)
  b = np.array([[5, 0, 15, 10], [5, 5, 5, 5], [20, 20, 30, 30]], np.float32)
  expected = np.array([[50 / 150, 0, 0], [0, 0, 0]], np.float32)
  np.testing.assert_allclose(np.asarray(B.box_iou(a, b)), expected, rtol=1e-6)


def test_box_ioa_and_area():
  a = np.array([[0, 0, 10, 10], [0, 0, 0, 4]], np.float32)
  b = np.array([[5, 0, 100, 100], [-10, -10, 20, 20]], np.float32)
  np.testing.assert_allclose(
      np.asarray(B.box_ioa(a, b)), [[0.5, 1.0], [0.0, 0.0]]
  )
  np.testing.assert_allclose(np.asarray(B.box_area(a)), [100.0, 0.0])


@pytest.mark.parametrize(
    "weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]
)
def test_encode_decode_match_torchvision(weights):
  rng = np.random.default_rng(1)
  anchors = _random_boxes(rng, 2000)
  targets = _random_boxes(rng, 2000)
  coder = BoxCoder(weights=weights)
  expected = coder.encode_single(
      torch.from_numpy(targets), torch.from_numpy(anchors)
  ).numpy()
  deltas = np.asarray(
      jax.jit(lambda a, t: B.encode(a, t, weights))(anchors, targets)
  )
  np.testing.assert_allclose(deltas, expected, rtol=1e-5, atol=1e-5)

  # Deltas below torchvision's log(1000/16) cap on dw, dh.
  codes = (
      rng.normal(0, 1, (2000, 4)).astype(np.float32)
      * np.array(weights, np.float32)
      / 2
  )
  expected_boxes = coder.decode_single(
      torch.from_numpy(codes), torch.from_numpy(anchors)
  ).numpy()
  decoded = np.asarray(
      jax.jit(lambda a, d: B.decode(a, d, weights))(anchors, codes)
  )
  np.testing.assert_allclose(decoded, expected_boxes, rtol=1e-5, atol=1e-3)


def test_decode_with_torchvision_clamp_matches_its_cap():
  rng = np.random.default_rng(2)
  anchors = _random_boxes(rng, 100)
  codes = rng.normal(0, 3, (100, 4)).astype(np.float32)
  codes[:10, 2:] = 8.0  # above log(1000/16) ~ 4.14: capped by torchvision
  expected = (
      BoxCoder(weights=(1, 1, 1, 1))
      .decode_single(torch.from_numpy(codes), torch.from_numpy(anchors))
      .numpy()
  )
  decoded = np.asarray(
      B.decode(anchors, codes, clamp=defaults.TORCHVISION_BOX_CLAMP)
  )
  np.testing.assert_allclose(decoded, expected, rtol=1e-5, atol=1e-2)


def test_clamp_hand_computed():
  anchor = np.array([[0, 0, 10, 20]], np.float32)
  deltas = np.array([[1.0, -1.0, 2.0, -2.0]], np.float32)
  # Clamped to (0.5, -0.5, log 2, log 0.5): centre (5 + 5, 10 - 10), size (20, 10).
  np.testing.assert_allclose(
      np.asarray(B.decode(anchor, deltas, clamp=SEED_CLAMP)),
      [[0, -5, 20, 5]],
      atol=1e-5,
  )
  # Unclamped: centre (15, -10), size (10 e^2, 20 e^-2).
  w, h = 10 * math.exp(2), 20 * math.exp(-2)
  np.testing.assert_allclose(
      np.asarray(B.decode(anchor, deltas)),
      [[15 - w / 2, -10 - h / 2, 15 + w / 2, -10 + h / 2]],
      rtol=1e-5,
  )
  # Encoding clamps too: raw (14.5, -0.5, log 10, log 0.2).
  target = np.array([[100, -10, 200, 10]], np.float32)
  anchor = np.array([[0, 0, 10, 100]], np.float32)
  np.testing.assert_allclose(
      np.asarray(B.encode(anchor, target)),
      [[14.5, -0.5, math.log(10), math.log(0.2)]],
      rtol=1e-5,
  )
  np.testing.assert_allclose(
      np.asarray(B.encode(anchor, target, clamp=SEED_CLAMP)),
      [[0.5, -0.5, math.log(2), math.log(0.5)]],
      rtol=1e-5,
  )
  # Weighted deltas are clamped as given: 0.5 / 10 of the width moves the centre.
  np.testing.assert_allclose(
      np.asarray(
          B.decode(
              np.array([[0, 0, 10, 10]], np.float32),
              np.array([[9.0, 0, 0, 0]]),
              weights=(10, 10, 5, 5),
              clamp=SEED_CLAMP,
          )
      ),
      [[0.5, 0, 10.5, 10]],
      atol=1e-5,
  )
  with pytest.raises(ValueError):
    B.decode(anchor, deltas, clamp=(1.0, 2.0))


def test_encode_decode_roundtrip_vmap():
  rng = np.random.default_rng(3)
  anchors = _random_boxes(rng, 64).reshape(4, 16, 4)
  targets = _random_boxes(rng, 64).reshape(4, 16, 4)
  deltas = jax.vmap(B.encode)(anchors, targets)
  np.testing.assert_allclose(
      np.asarray(jax.vmap(B.decode)(anchors, deltas)), targets, atol=1e-3
  )


def test_clip_boxes():
  boxes = np.array(
      [[-5, -5, 50, 30], [10, 20, 700, 900], [600, 500, 700, 600]], np.float32
  )
  clipped = jax.jit(B.clip_boxes)(boxes, jnp.array([480, 640], jnp.int32))
  np.testing.assert_array_equal(
      np.asarray(clipped),
      [[0, 0, 50, 30], [10, 20, 640, 480], [600, 480, 640, 480]],
  )
  expected = torchvision.ops.clip_boxes_to_image(
      torch.from_numpy(boxes), (480, 640)
  ).numpy()
  np.testing.assert_array_equal(np.asarray(clipped), expected)


def test_min_size_mask_and_xywh():
  boxes = np.array(
      [[0, 0, 1, 5], [0, 0, 5, 0.5], [0, 0, 2, 2], [3, 3, 3, 3]], np.float32
  )
  np.testing.assert_array_equal(
      np.asarray(B.min_size_mask(boxes, 1.0)), [True, False, True, False]
  )
  kept = torchvision.ops.remove_small_boxes(
      torch.from_numpy(boxes), 1.0
  ).numpy()
  np.testing.assert_array_equal(
      np.flatnonzero(np.asarray(B.min_size_mask(boxes, 1.0))), kept
  )
  xywh = np.asarray(B.xyxy_to_xywh(boxes))
  np.testing.assert_array_equal(xywh[0], [0, 0, 1, 5])
  np.testing.assert_array_equal(np.asarray(B.xywh_to_xyxy(xywh)), boxes)
  np.testing.assert_array_equal(
      np.asarray(B.xyxy_to_xywh(boxes)),
      torchvision.ops.box_convert(
          torch.from_numpy(boxes), "xyxy", "xywh"
      ).numpy(),
  )
