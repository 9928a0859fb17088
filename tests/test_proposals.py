"""Proposals: planted boxes, suppression, padding, and a torchvision pipeline as oracle."""

import functools

import jax
import numpy as np
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder

from rpn_jax.anchors import generate_anchors
from rpn_jax.boxes import box_iou
from rpn_jax.proposals import propose, propose_batch

ANCHORS = generate_anchors(
    (16, 16), 16, (32, 64, 128), (0.5, 1.0, 2.0)
)  # 2304 anchors, 256 px
SETTINGS = dict(
    pre_nms_top_k=1000, nms_threshold=0.7, post_nms_top_k=100, min_size=1.0
)
_propose = jax.jit(functools.partial(propose, **SETTINGS))


def _torchvision_reference(logits, deltas, image_hw):
  top_logits, top_idx = torch.topk(
      torch.from_numpy(logits), SETTINGS["pre_nms_top_k"]
  )
  boxes = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)).decode_single(
      torch.from_numpy(deltas)[top_idx], torch.from_numpy(ANCHORS)[top_idx]
  )
  boxes = torchvision.ops.clip_boxes_to_image(boxes, tuple(image_hw))
  keep = torchvision.ops.remove_small_boxes(boxes, SETTINGS["min_size"])
  boxes, scores = boxes[keep], torch.sigmoid(top_logits[keep])
  keep = torchvision.ops.nms(boxes, scores, SETTINGS["nms_threshold"])[
      : SETTINGS["post_nms_top_k"]
  ]
  return boxes[keep].numpy(), scores[keep].numpy()


def test_matches_torchvision_pipeline():
  rng = np.random.default_rng(0)
  for image_hw in [(256, 256), (200, 150)]:
    logits = rng.normal(0, 2, len(ANCHORS)).astype(np.float32)
    deltas = rng.normal(0, 0.3, (len(ANCHORS), 4)).astype(np.float32)
    boxes, scores, valid = map(
        np.asarray, _propose(ANCHORS, logits, deltas, np.array(image_hw))
    )
    expected_boxes, expected_scores = _torchvision_reference(
        logits, deltas, image_hw
    )
    assert valid.sum() == len(expected_boxes)
    np.testing.assert_allclose(boxes[valid], expected_boxes, atol=1e-3)
    np.testing.assert_allclose(scores[valid], expected_scores, rtol=1e-6)
    # Sorted, inside the image, padding zero.
    assert np.all(np.diff(scores[valid]) <= 0)
    h, w = image_hw
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= w).all()
    assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= h).all()


def test_planted_box_survives_and_near_duplicates_are_suppressed():
  logits = np.full(len(ANCHORS), -10.0, np.float32)
  deltas = np.zeros((len(ANCHORS), 4), np.float32)
  planted = (
      5 * 16 + 6
  ) * 9 + 4  # 64 px square anchor of cell (5, 6), centre (104, 88)
  neighbour = (
      5 * 16 + 7
  ) * 9 + 4  # same anchor one cell right: IoU 0.6 at zero deltas
  logits[planted], logits[neighbour] = 8.0, 7.0
  deltas[neighbour] = [
      -0.2,
      0.0,
      0.0,
      0.0,
  ]  # moved onto the planted box: IoU ~ 0.9
  far = (12 * 16 + 12) * 9 + 4
  logits[far] = 6.0
  boxes, scores, valid = map(
      np.asarray, _propose(ANCHORS, logits, deltas, np.array([256, 256]))
  )
  np.testing.assert_allclose(boxes[0], ANCHORS[planted], atol=1e-4)
  np.testing.assert_allclose(scores[0], 1 / (1 + np.exp(-8.0)), rtol=1e-6)
  np.testing.assert_allclose(boxes[1], ANCHORS[far], atol=1e-4)
  kept_ious = np.array(box_iou(boxes[valid], boxes[valid]))
  np.fill_diagonal(kept_ious, 0)
  assert kept_ious.max() <= 0.7
  moved = boxes[valid] - (
      ANCHORS[neighbour] + np.array([-12.8, 0, -12.8, 0], np.float32)
  )
  assert not np.any(np.all(np.abs(moved) < 1e-3, axis=1))


def test_padding_and_small_boxes_are_invalid():
  logits = np.linspace(5, -5, len(ANCHORS)).astype(np.float32)
  deltas = np.zeros((len(ANCHORS), 4), np.float32)
  # A 40 x 30 image: anchors centred outside it clip to nothing and are dropped,
  # and few boxes survive NMS, so most of the 100 slots are padding.
  boxes, scores, valid = map(
      np.asarray, _propose(ANCHORS, logits, deltas, np.array([30, 40]))
  )
  assert 0 < valid.sum() < 100
  assert (boxes[~valid] == 0).all() and (scores[~valid] == 0).all()
  widths, heights = (
      boxes[valid, 2] - boxes[valid, 0],
      boxes[valid, 3] - boxes[valid, 1],
  )
  assert (widths >= 1).all() and (heights >= 1).all()
  assert (boxes[valid, 2] <= 40).all() and (boxes[valid, 3] <= 30).all()


def test_batch_equals_single_images():
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 2, (2, len(ANCHORS))).astype(np.float32)
  deltas = rng.normal(0, 0.3, (2, len(ANCHORS), 4)).astype(np.float32)
  image_hw = np.array([[256, 256], [180, 220]], np.int32)
  batch = jax.jit(functools.partial(propose_batch, **SETTINGS))(
      ANCHORS, logits, deltas, image_hw
  )
  assert (
      batch[0].shape == (2, 100, 4)
      and batch[1].shape == (2, 100)
      and batch[2].shape == (2, 100)
  )
  for i in range(2):
    single = _propose(ANCHORS, logits[i], deltas[i], image_hw[i])
    for got, want in zip(batch, single):
      np.testing.assert_array_equal(np.asarray(got[i]), np.asarray(want))
