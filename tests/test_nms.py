"""nms_padded against torchvision.ops.nms: same kept indices in the same order."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from rpn_jax.nms import _descending_order, _float32_threshold, nms_padded

_jit_nms = jax.jit(nms_padded, static_argnums=3)


def _nms(boxes, scores, threshold, max_output, valid=None):
  """Jitted NMS compiled once per (N, max_output): the threshold is traced,
  already rounded as a static Python threshold would be."""
  valid = np.ones(len(boxes), bool) if valid is None else valid
  return _jit_nms(
      boxes, scores, _float32_threshold(threshold), max_output, valid
  )


def _torch_nms(boxes, scores, threshold):
  return torchvision.ops.nms(
      torch.from_numpy(boxes), torch.from_numpy(scores), threshold
  ).numpy()


def _kept(indices, valid):
  indices, valid = np.asarray(indices), np.asarray(valid)
  assert indices.dtype == np.int32 and valid.dtype == bool
  # Valid slots come first and padding is (0, False).
  count = int(valid.sum())
  assert valid[:count].all() and not valid[count:].any()
  assert (indices[count:] == 0).all()
  return indices[:count]


def _uniform(rng, n, max_wh=300.0):
  xy = rng.uniform(0, 1000, (n, 2))
  wh = rng.uniform(1, max_wh, (n, 2))
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def _clustered(rng, n):
  centres = rng.uniform(0, 800, (8, 2))[rng.integers(0, 8, n)]
  size = rng.uniform(30, 200, (n, 1))
  xy = centres + rng.normal(0, 6, (n, 2))
  return np.concatenate(
      [xy, xy + size * rng.uniform(0.8, 1.2, (n, 2))], 1
  ).astype(np.float32)


def _integer(rng, n):
  # Small integer boxes: many IoUs are exact fractions such as 1/2 or 3/10,
  # which test the strict ">" and the float32 rounding of the threshold.
  xy = rng.integers(0, 6, (n, 2))
  wh = rng.integers(1, 6, (n, 2))
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def _scores(rng, n, kind):
  if kind == "ties":
    return rng.integers(0, 4, n).astype(np.float32)
  return rng.random(n).astype(np.float32)


def _boxes(rng, n, kind):
  if kind == "uniform":
    return _uniform(rng, n)
  if kind == "clustered":
    return _clustered(rng, n)
  if kind == "duplicates":
    base = _uniform(rng, max(n // 3, 1))
    return base[rng.integers(0, len(base), n)]
  if kind == "identical":
    return np.repeat(_uniform(rng, 1), n, axis=0)
  return _integer(rng, n)


CASES = [
    # (N, threshold, max_output, box kinds, score kinds, seeds per kind pair)
    (1, 0.7, 5, ["uniform"], ["random"], 1),
    (
        7,
        0.5,
        7,
        ["uniform", "integer", "identical", "duplicates"],
        ["random", "ties"],
        1,
    ),
    (
        300,
        0.7,
        300,
        ["uniform", "clustered", "duplicates", "integer"],
        ["random", "ties"],
        2,
    ),
    (300, 0.3, 300, ["uniform", "integer", "identical"], ["random", "ties"], 1),
    (
        300,
        0.5,
        50,
        ["clustered", "integer", "duplicates"],
        ["random", "ties"],
        1,
    ),
    (
        2000,
        0.7,
        1000,
        ["uniform", "clustered", "duplicates", "identical"],
        ["random", "ties"],
        1,
    ),
    (2000, 0.5, 1000, ["uniform", "integer"], ["random", "ties"], 1),
]


def _expand():
  for n, threshold, max_output, box_kinds, score_kinds, seeds in CASES:
    for box_kind in box_kinds:
      for score_kind in score_kinds:
        for seed in range(seeds):
          yield pytest.param(
              n,
              threshold,
              max_output,
              box_kind,
              score_kind,
              seed,
              id=f"n{n}-t{threshold}-k{max_output}-{box_kind}-{score_kind}-{seed}",
          )


EXPANDED = list(_expand())


def test_enough_cases():
  assert len(EXPANDED) + 2 >= 50


@pytest.mark.parametrize(
    "n,threshold,max_output,box_kind,score_kind,seed", EXPANDED
)
def test_matches_torchvision(
    n, threshold, max_output, box_kind, score_kind, seed
):
  rng = np.random.default_rng(
      [n, int(threshold * 10), max_output, seed, len(box_kind), len(score_kind)]
  )
  boxes = _boxes(rng, n, box_kind)
  scores = _scores(rng, n, score_kind)
  expected = _torch_nms(boxes, scores, threshold)[:max_output]
  np.testing.assert_array_equal(
      _kept(*_nms(boxes, scores, threshold, max_output)), expected
  )


@pytest.mark.parametrize("kind", ["uniform", "clustered"])
def test_matches_torchvision_12000(kind):
  rng = np.random.default_rng(12000 + len(kind))
  boxes = _boxes(rng, 12000, kind)
  scores = _scores(rng, 12000, "random")
  expected = _torch_nms(boxes, scores, 0.7)
  np.testing.assert_array_equal(
      _kept(*_nms(boxes, scores, 0.7, 1000)), expected[:1000]
  )
  if kind == "clustered":
    # Few survivors: every tile is visited and the result is complete.
    assert len(expected) < 1000


def test_threshold_equal_to_an_iou_is_not_suppressed():
  # Threshold = the exact float32 IoU of a pair: "> threshold" must keep both.
  rng = np.random.default_rng(7)
  boxes = _uniform(rng, 300, max_wh=100.0)
  scores = rng.random(300).astype(np.float32)
  ious = torchvision.ops.box_iou(
      torch.from_numpy(boxes), torch.from_numpy(boxes)
  ).numpy()
  np.fill_diagonal(ious, 0)
  for threshold in [float(ious.max()), float(np.sort(ious[ious > 0.4])[0])]:
    expected = _torch_nms(boxes, scores, threshold)
    np.testing.assert_array_equal(
        _kept(*_nms(boxes, scores, threshold, 300)), expected
    )


def test_static_threshold_rounds_like_torchvision():
  # 0.3 rounds up to float32; IoUs of exactly float32(3/10) must still count as
  # above the (double) threshold, as they do in torchvision.
  boxes = np.array(
      [[0, 0, 10, 1], [0, 0, 3, 1], [7, 0, 10, 1], [0, 0, 10, 1]], np.float32
  )
  scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
  expected = _torch_nms(boxes, scores, 0.3)
  np.testing.assert_array_equal(expected, [0])
  static = jax.jit(
      functools.partial(nms_padded, iou_threshold=0.3, max_output=4)
  )
  np.testing.assert_array_equal(_kept(*static(boxes, scores)), expected)
  # A traced float32 threshold is only cast: float32(0.3) keeps the 3/10 pairs.
  kept = _kept(*_jit_nms(boxes, scores, jnp.float32(0.3), 4, np.ones(4, bool)))
  np.testing.assert_array_equal(kept, [0, 1, 2])


def test_empty_input():
  indices, valid = nms_padded(
      np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), 0.5, 4
  )
  assert indices.shape == (4,) and valid.shape == (4,)
  assert not np.asarray(valid).any()
  assert nms_padded(
      np.ones((3, 4), np.float32), np.ones(3, np.float32), 0.5, 0
  )[0].shape == (0,)
  indices, valid = jax.jit(
      functools.partial(nms_padded, iou_threshold=0.5, max_output=3)
  )(jnp.zeros((0, 4)), jnp.zeros((0,)))
  assert indices.shape == (3,) and not np.asarray(valid).any()


def test_kept_boxes_do_not_overlap_and_suppressed_boxes_are_explained():
  rng = np.random.default_rng(11)
  boxes = _clustered(rng, 2000)
  scores = rng.random(2000).astype(np.float32)
  kept = _kept(*_nms(boxes, scores, 0.5, 1000))
  assert len(kept) < 1000
  ious = torchvision.ops.box_iou(
      torch.from_numpy(boxes), torch.from_numpy(boxes)
  ).numpy()
  pair = ious[np.ix_(kept, kept)]
  np.fill_diagonal(pair, 0)
  assert pair.max() <= 0.5
  # Kept in descending score order, and every dropped box overlaps a kept
  # box that comes before it in the stable descending order.
  assert np.all(np.diff(scores[kept]) <= 0)
  rank = np.empty(2000, int)
  rank[np.argsort(-scores, kind="stable")] = np.arange(2000)
  dropped = np.setdiff1d(np.arange(2000), kept)
  over = ious[np.ix_(kept, dropped)] > 0.5
  earlier = rank[kept][:, None] < rank[dropped][None, :]
  assert np.all(np.any(over & earlier, axis=0))


def test_valid_mask():
  rng = np.random.default_rng(3)
  boxes = _clustered(rng, 300)
  scores = _scores(rng, 300, "ties")
  valid = rng.random(300) < 0.6
  subset = np.flatnonzero(valid)
  expected = subset[_torch_nms(boxes[subset], scores[subset], 0.7)]
  kept = _kept(*_nms(boxes, scores, 0.7, 300, valid))
  np.testing.assert_array_equal(kept, expected)
  # All masked: nothing kept.
  _, out_valid = _nms(boxes, scores, 0.7, 300, np.zeros(300, bool))
  assert not np.asarray(out_valid).any()


def test_vmap_over_batch():
  rng = np.random.default_rng(5)
  kinds = ["uniform", "clustered", "duplicates", "identical"]
  boxes = np.stack([_boxes(rng, 300, kind) for kind in kinds])
  scores = np.stack([_scores(rng, 300, "ties") for _ in kinds])
  valid = rng.random((4, 300)) < 0.8
  batched = jax.jit(jax.vmap(lambda b, s, v: nms_padded(b, s, 0.7, 100, v)))
  indices, out_valid = batched(boxes, scores, valid)
  assert indices.shape == (4, 100) and out_valid.shape == (4, 100)
  for i in range(4):
    subset = np.flatnonzero(valid[i])
    expected = subset[_torch_nms(boxes[i][subset], scores[i][subset], 0.7)][
        :100
    ]
    np.testing.assert_array_equal(_kept(indices[i], out_valid[i]), expected)


def test_traced_threshold():
  rng = np.random.default_rng(9)
  boxes = _uniform(rng, 300)
  scores = rng.random(300).astype(np.float32)
  for threshold in [0.4, 0.6]:
    kept = _kept(
        *_jit_nms(
            boxes, scores, jnp.float32(threshold), 300, np.ones(300, bool)
        )
    )
    np.testing.assert_array_equal(kept, _torch_nms(boxes, scores, threshold))


@pytest.mark.parametrize("n", [12000, 50000])
def test_descending_order_is_stable(n):
  # 50,000 is past the rank * N + index int32 packing and takes the pair sort.
  rng = np.random.default_rng(n)
  scores = rng.integers(-3, 4, n).astype(np.float32) / 2
  scores[rng.random(n) < 0.1] = -0.0
  alive = rng.random(n) < 0.9
  order = np.asarray(jax.jit(_descending_order)(scores, alive))
  expected = np.flatnonzero(alive)[
      np.argsort(-(scores[alive] + 0.0), kind="stable")
  ]
  np.testing.assert_array_equal(order[: alive.sum()], expected)
  assert set(order[alive.sum() :]) == set(np.flatnonzero(~alive))


def test_bad_input():
  with pytest.raises(ValueError):
    nms_padded(np.zeros((5, 3), np.float32), np.zeros(5, np.float32), 0.5, 2)
  with pytest.raises(ValueError):
    nms_padded(np.zeros((5, 4), np.float32), np.zeros(4, np.float32), 0.5, 2)
