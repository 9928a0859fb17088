"""ATSS anchor assignment against a per-box numpy rendering of the paper's rule."""

import jax
import numpy as np
import pytest
import torch
import torchvision

from rpn_jax.anchors import generate_anchors
from rpn_jax.targets import atss_match, rpn_targets

# Three levels of a 128 px canvas (strides 8, 16, 32), one size each.
LEVELS = [
    generate_anchors((128 // s, 128 // s), s, (2.0 * s,), (0.5, 1.0, 2.0))
    for s in (8, 16, 32)
]
ANCHORS = np.concatenate(LEVELS)
SIZES = tuple(len(level) for level in LEVELS)
G = 8

_atss = jax.jit(atss_match, static_argnums=(3, 4, 5))


def _oracle(anchors, sizes, gt, valid, top_k, per_cell):
  """ATSS one gt box at a time: the nearest ceil(top_k / per_cell) * per_cell
  anchors of each level by centre distance, IoU (torchvision) >= mean + std,
  centre inside; each anchor to its highest-IoU box."""
  k = -(-top_k // per_cell) * per_cell
  iou = torchvision.ops.box_iou(
      torch.from_numpy(gt), torch.from_numpy(anchors)
  ).numpy()
  centre = (anchors[:, :2] + anchors[:, 2:]) / 2
  best = np.full(len(anchors), -1.0)
  matched = np.zeros(len(anchors), np.int64)
  for g in np.flatnonzero(valid):
    gc = (gt[g, :2] + gt[g, 2:]) / 2
    cand, start = [], 0
    for size in sizes:
      d = np.sum((centre[start : start + size] - gc) ** 2, axis=1)
      cand.extend(start + np.argsort(d, kind="stable")[:k])
      start += size
    cand = np.array(cand)
    threshold = iou[g, cand].mean() + iou[g, cand].std(ddof=1)
    for i in cand:
      inside = (
          gt[g, 0] < centre[i, 0] < gt[g, 2]
          and gt[g, 1] < centre[i, 1] < gt[g, 3]
      )
      if iou[g, i] >= threshold and inside and iou[g, i] > best[i]:
        best[i], matched[i] = iou[g, i], g
  return matched, (best >= 0).astype(np.int64)


def _random_gt(rng):
  xy = rng.uniform(-10, 120, (G, 2))
  wh = rng.uniform(5, 90, (G, 2))
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


@pytest.mark.parametrize("top_k,per_cell", [(9, 3), (4, 3), (9, 1)])
def test_atss_matches_per_box_rule(top_k, per_cell):
  rng = np.random.default_rng(top_k + per_cell)
  anchors = ANCHORS if per_cell == 3 else ANCHORS[::3]
  sizes = SIZES if per_cell == 3 else tuple(s // 3 for s in SIZES)
  for _ in range(5):
    gt, valid = _random_gt(rng), rng.random(G) < 0.7
    matched, labels = map(
        np.asarray, _atss(anchors, gt, valid, sizes, top_k, per_cell)
    )
    want_matched, want_labels = _oracle(
        anchors, sizes, gt, valid, top_k, per_cell
    )
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_array_equal(
        matched[labels == 1], want_matched[want_labels == 1]
    )
    assert labels.sum() > 0


def test_atss_small_box_gets_several_positives_and_no_valid_box_none():
  gt = np.zeros((G, 4), np.float32)
  gt[0] = [41.0, 30.0, 47.0, 44.0]  # a 6 x 14 px person
  valid = np.zeros(G, bool)
  valid[0] = True
  _, labels = map(np.asarray, _atss(ANCHORS, gt, valid, SIZES, 9, 3))
  assert labels.sum() >= 2
  _, none = _atss(ANCHORS, gt, np.zeros(G, bool), SIZES, 9, 3)
  assert int(np.asarray(none).sum()) == 0


def test_rpn_targets_with_atss_and_unknown_assigner():
  rng = np.random.default_rng(3)
  gt, valid = _random_gt(rng), np.ones(G, bool)
  out = rpn_targets(
      jax.random.PRNGKey(0),
      ANCHORS,
      gt,
      valid,
      np.zeros(G, bool),
      num_samples=0,
      assigner="atss",
      level_sizes=SIZES,
      anchors_per_cell=3,
  )
  _, labels = atss_match(ANCHORS, gt, valid, SIZES, 9, 3)
  np.testing.assert_array_equal(
      np.asarray(out["pos_mask"]), np.asarray(labels) == 1
  )
  np.testing.assert_array_equal(
      np.asarray(out["neg_mask"]), np.asarray(labels) == 0
  )
  with pytest.raises(ValueError, match="targets.assigner"):
    rpn_targets(
        jax.random.PRNGKey(0),
        ANCHORS,
        gt,
        valid,
        np.zeros(G, bool),
        assigner="nearest",
    )
  with pytest.raises(ValueError, match="targets.atss_top_k must be at least 1"):
    atss_match(ANCHORS, gt, valid, SIZES, 0, 3)
  with pytest.raises(ValueError, match="cells of 3"):
    atss_match(
        ANCHORS[:-1], gt, valid, (SIZES[0], SIZES[1], SIZES[2] - 1), 9, 3
    )
