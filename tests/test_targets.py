"""Anchor matching against torchvision's Matcher; sampling and crowd properties."""

import jax
import numpy as np
import torch
import torchvision
from torchvision.models.detection._utils import Matcher

from rpn_jax.anchors import generate_anchors
from rpn_jax.boxes import box_ioa, encode
from rpn_jax.targets import match_anchors, rpn_targets, sample_labels

ANCHORS = generate_anchors(
    (8, 8), 32, (32, 64, 128), (0.5, 1.0, 2.0)
)  # 576 anchors, 256 px image
G = 10

_match = jax.jit(match_anchors)
_sample = jax.jit(sample_labels, static_argnums=(2, 3))
_targets = jax.jit(
    rpn_targets, static_argnames=("num_samples", "positive_fraction")
)


def _random_gt(rng, count):
  xy = rng.uniform(0, 200, (count, 2))
  wh = rng.uniform(16, 160, (count, 2))
  return np.concatenate([xy, np.minimum(xy + wh, 256)], 1).astype(np.float32)


def _torch_match(gt_boxes):
  iou = torchvision.ops.box_iou(
      torch.from_numpy(gt_boxes), torch.from_numpy(ANCHORS)
  )
  matches = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).numpy()
  labels = np.where(
      matches >= 0, 1, np.where(matches == Matcher.BELOW_LOW_THRESHOLD, 0, -1)
  )
  return matches, labels


def test_match_anchors_matches_torchvision():
  rng = np.random.default_rng(0)
  for case in range(20):
    num_valid = 1 + case % 6
    gt = _random_gt(rng, G)
    valid = np.zeros(G, bool)
    valid[rng.choice(G, num_valid, replace=False)] = True
    # A padded row placed exactly on an anchor must still never match.
    gt[np.flatnonzero(~valid)[0]] = ANCHORS[rng.integers(len(ANCHORS))]
    matched_idx, labels = _match(ANCHORS, gt, valid)
    matched_idx, labels = np.asarray(matched_idx), np.asarray(labels)
    expected_matches, expected_labels = _torch_match(gt[valid])
    np.testing.assert_array_equal(labels, expected_labels)
    positive = labels == 1
    assert positive.any()
    expected_idx = np.flatnonzero(valid)[expected_matches[positive]]
    np.testing.assert_array_equal(matched_idx[positive], expected_idx)
    assert valid[matched_idx[positive]].all()


def test_low_quality_ties_and_zero_overlap_gt():
  anchors = np.array(
      [[0, 0, 15, 10], [15, 0, 30, 10], [0, 50, 10, 60]], np.float32
  )
  # gt 0 overlaps anchors 0 and 1 equally (IoU 0.4): both become positive.
  # gt 1 touches no anchor: torchvision would make every anchor positive; here none.
  gt = np.array([[5, 0, 25, 10], [100, 100, 110, 110]], np.float32)
  matched_idx, labels = match_anchors(anchors, gt, np.array([True, True]))
  np.testing.assert_array_equal(np.asarray(labels), [1, 1, 0])
  np.testing.assert_array_equal(np.asarray(matched_idx)[:2], [0, 0])
  # Without low-quality matches IoU 0.4 is between the thresholds.
  _, labels = match_anchors(
      anchors, gt, np.array([True, True]), allow_low_quality=False
  )
  np.testing.assert_array_equal(np.asarray(labels), [-1, -1, 0])


def test_no_valid_gt_means_all_negative():
  matched_idx, labels = _match(
      ANCHORS, _random_gt(np.random.default_rng(1), G), np.zeros(G, bool)
  )
  assert (np.asarray(labels) == 0).all() and (
      np.asarray(matched_idx) == 0
  ).all()
  _, labels = match_anchors(
      ANCHORS, np.zeros((0, 4), np.float32), np.zeros(0, bool)
  )
  assert (np.asarray(labels) == 0).all()


def _labels(rng, num_pos, num_neg, n=2000):
  labels = np.full(n, -1, np.int32)
  chosen = rng.permutation(n)[: num_pos + num_neg]
  labels[chosen[:num_pos]] = 1
  labels[chosen[num_pos:]] = 0
  return labels


def test_sampler_counts():
  rng = np.random.default_rng(2)
  key = jax.random.PRNGKey(0)
  for num_pos, num_neg, want_pos, want_neg in [
      (500, 1000, 128, 128),  # enough of both
      (10, 1000, 10, 246),  # few positives: negatives fill up
      (500, 20, 128, 20),  # few negatives: fewer than 256 in total
      (0, 1000, 0, 256),
  ]:
    labels = _labels(rng, num_pos, num_neg)
    pos, neg = map(np.asarray, _sample(key, labels, 256, 0.5))
    assert pos.sum() == want_pos and neg.sum() == want_neg
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    assert not (pos & neg).any()


def test_sampler_zero_samples_takes_every_labelled_anchor():
  labels = _labels(np.random.default_rng(3), 300, 700)
  pos, neg = map(np.asarray, _sample(jax.random.PRNGKey(0), labels, 0, 0.5))
  np.testing.assert_array_equal(pos, labels == 1)
  np.testing.assert_array_equal(neg, labels == 0)


def test_sampler_keys():
  labels = _labels(np.random.default_rng(3), 500, 1000)
  a = _sample(jax.random.PRNGKey(1), labels, 256, 0.5)
  b = _sample(jax.random.PRNGKey(2), labels, 256, 0.5)
  c = _sample(jax.random.PRNGKey(1), labels, 256, 0.5)
  assert not np.array_equal(a[0], b[0]) and not np.array_equal(a[1], b[1])
  np.testing.assert_array_equal(a[0], c[0])
  np.testing.assert_array_equal(a[1], c[1])
  # Each positive is about equally likely to be drawn.
  counts = sum(
      np.asarray(_sample(k, labels, 256, 0.5)[0], np.int32)
      for k in jax.random.split(jax.random.PRNGKey(4), 40)
  )
  assert counts[labels == 1].min() > 0 and counts[labels != 1].max() == 0


def test_rpn_targets_deltas_and_vmap():
  rng = np.random.default_rng(5)
  gt = np.stack([_random_gt(rng, G) for _ in range(3)])
  valid = rng.random((3, G)) < 0.5
  valid[:, 0] = True
  crowd = np.zeros((3, G), bool)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  out = jax.jit(jax.vmap(lambda k, g, v, c: rpn_targets(k, ANCHORS, g, v, c)))(
      keys, gt, valid, crowd
  )
  for i in range(3):
    matched_idx, labels = map(
        np.asarray, match_anchors(ANCHORS, gt[i], valid[i])
    )
    positive = labels == 1
    pos, neg = np.asarray(out["pos_mask"][i]), np.asarray(out["neg_mask"][i])
    assert (
        pos.sum() == min(positive.sum(), 128) and pos.sum() + neg.sum() == 256
    )
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    deltas = np.asarray(out["target_deltas"][i])
    expected = np.asarray(
        encode(ANCHORS[positive], gt[i][matched_idx[positive]])
    )
    np.testing.assert_allclose(deltas[positive], expected, rtol=1e-6, atol=1e-6)
    assert (deltas[~positive] == 0).all()


def test_rpn_targets_clamp_and_weights():
  gt = np.zeros((G, 4), np.float32)
  gt[0] = ANCHORS[100] + np.array([-3, 2, 9, 5], np.float32)
  valid = np.zeros(G, bool)
  valid[0] = True
  clamp = (0.01, -0.01, 0.01)
  out = rpn_targets(
      jax.random.PRNGKey(0),
      ANCHORS,
      gt,
      valid,
      np.zeros(G, bool),
      weights=(10.0, 10.0, 5.0, 5.0),
      clamp=clamp,
  )
  deltas = np.asarray(out["target_deltas"])
  assert np.abs(deltas).max() <= 0.01 + 1e-7 and np.abs(deltas).max() > 0


def test_crowd_regions():
  crowd_box = ANCHORS[
      (1 * 8 + 1) * 9 + 5
  ]  # the 128 px square anchor of cell (1, 1)
  np.testing.assert_array_equal(crowd_box, [-16, -16, 112, 112])
  gt = np.zeros((G, 4), np.float32)
  gt[0] = crowd_box
  gt[1] = [160, 160, 224, 224]
  valid = np.zeros(G, bool)
  valid[1] = True
  crowd = np.zeros(G, bool)
  crowd[0] = True
  out = _targets(
      jax.random.PRNGKey(0),
      ANCHORS,
      gt,
      valid,
      crowd,
      num_samples=576,
      positive_fraction=0.5,
  )
  pos, neg = np.asarray(out["pos_mask"]), np.asarray(out["neg_mask"])
  inside = np.asarray(box_ioa(ANCHORS, crowd_box[None]))[:, 0] >= 0.7
  assert inside.sum() > 10
  # Anchors mostly inside the crowd region are never negatives ...
  assert not neg[inside].any()
  # ... and the crowd box (equal to an anchor) makes no positives.
  _, real_labels = match_anchors(ANCHORS, gt, valid)
  np.testing.assert_array_equal(pos, np.asarray(real_labels) == 1)
  # Without the crowd flag those anchors would be negatives.
  out = _targets(
      jax.random.PRNGKey(0),
      ANCHORS,
      gt,
      valid,
      np.zeros(G, bool),
      num_samples=576,
      positive_fraction=0.5,
  )
  assert np.asarray(out["neg_mask"])[inside].sum() > 0
