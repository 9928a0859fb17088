"""Test-time augmentation (rpn_jax/tta.py) through eval_lib.make_predict_fn:
mirrored and rescaled passes, their proposals fused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpn_jax import eval_lib
from rpn_jax import setup_model
from rpn_jax import tta
from tests import tiny_config


def _predict(
    hflip_tta: bool,
    match_iou: float = 0.6,
    scales=(1.0,),
    upscaled_max_size: float = float("inf"),
):
  config = tiny_config.get_config()
  config.eval.hflip_tta = hflip_tta
  config.eval.tta_match_iou = match_iou
  config.eval.tta_scales = scales
  config.eval.tta_upscaled_max_size = upscaled_max_size
  model = setup_model.build_model(config.model)
  variables = setup_model.init_variables(config, model, jax.random.key(3))
  fn = jax.jit(
      eval_lib.make_predict_fn(config, model, setup_model.model_anchors(config))
  )
  return config, lambda batch: jax.device_get(fn(variables, batch))


def _batch(image: np.ndarray, hw: tuple[int, int]) -> dict[str, np.ndarray]:
  return {
      "image": image[None],
      "image_hw": np.array([hw], np.int32),
      "image_valid": np.array([True]),
  }


def _canvas(size: int, hw: tuple[int, int], seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  image = np.zeros((size, size, 3), np.uint8)
  image[: hw[0], : hw[1]] = rng.integers(0, 256, (*hw, 3), np.uint8)
  return image


def _valid(out):
  return out["boxes"][0][out["valid"][0]], out["scores"][0][out["valid"][0]]


def _nearest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """For each box of a [N, 4]: the index of the nearest box of b (L1) and
  that distance."""
  dist = np.abs(a[:, None] - b[None]).sum(-1)
  return dist.argmin(1), dist.min(1)


@pytest.fixture(scope="module")
def predictors():
  return (
      _predict(False),
      _predict(True),
      _predict(True, match_iou=1.01),
      _predict(False, match_iou=1.01, scales=(1.0, 1.5)),
      _predict(
          False, match_iou=1.01, scales=(1.0, 1.5), upscaled_max_size=30.0
      ),
  )


def test_flipping_the_input_mirrors_the_tta_output(predictors):
  _, (config, predict), _, _, _ = predictors
  size = config.data.image_size
  hw = (100, size)  # content spans the canvas width, so a flip is exact
  image = _canvas(size, hw, 0)
  boxes, scores = _valid(predict(_batch(image, hw)))
  boxes_f, scores_f = _valid(predict(_batch(image[:, ::-1].copy(), hw)))
  assert len(boxes) == len(boxes_f) > config.proposals.post_nms_top_k
  mirrored = np.stack(
      [
          size - boxes_f[:, 2],
          boxes_f[:, 1],
          size - boxes_f[:, 0],
          boxes_f[:, 3],
      ],
      axis=1,
  )
  nearest, dist = _nearest(boxes, mirrored)
  assert dist.max() < 1e-3
  np.testing.assert_allclose(scores, scores_f[nearest], rtol=1e-5)
  assert np.all(np.diff(scores) <= 0)


def test_unmatched_tta_keeps_the_plain_proposals_at_half_score(predictors):
  (config, plain), _, (_, unmatched), _, _ = predictors
  size = config.data.image_size
  hw = (90, 70)  # letterboxed: the mirrored pass sees content on the right
  batch = _batch(_canvas(size, hw, 1), hw)
  out_plain, out_tta = plain(batch), unmatched(batch)
  k = config.proposals.post_nms_top_k
  assert out_plain["boxes"].shape == (1, k, 4)
  assert out_tta["boxes"].shape == (1, 2 * k, 4)
  boxes, scores = _valid(out_plain)
  boxes_t, scores_t = _valid(out_tta)
  assert len(boxes_t) > len(boxes)
  nearest, dist = _nearest(boxes, boxes_t)
  assert dist.max() == 0.0
  np.testing.assert_allclose(scores_t[nearest], scores / 2, rtol=1e-6)
  assert boxes_t[:, [0, 2]].max() <= hw[1] and boxes_t[:, [1, 3]].max() <= hw[0]
  assert boxes_t.min() >= 0
  assert (boxes_t[:, 2] - boxes_t[:, 0]).min() >= config.proposals.min_size
  assert np.all(np.diff(scores_t) <= 0)
  assert not out_tta["valid"][0][len(boxes_t) :].any()


def test_unmatched_rescaled_pass_keeps_the_plain_proposals(predictors):
  (config, plain), _, _, (_, rescaled), _ = predictors
  size = config.data.image_size
  hw = (90, 70)
  batch = _batch(_canvas(size, hw, 2), hw)
  out_plain, out_tta = plain(batch), rescaled(batch)
  assert out_tta["boxes"].shape == (1, 2 * config.proposals.post_nms_top_k, 4)
  boxes, scores = _valid(out_plain)
  boxes_t, scores_t = _valid(out_tta)
  nearest, dist = _nearest(boxes, boxes_t)
  assert dist.max() == 0.0
  np.testing.assert_allclose(scores_t[nearest], scores / 2, rtol=1e-6)
  # The 192 px pass's boxes, mapped back to the 128 px canvas, stay inside.
  assert len(boxes_t) > len(boxes)
  assert boxes_t[:, [0, 2]].max() <= hw[1] + 1e-4
  assert boxes_t[:, [1, 3]].max() <= hw[0] + 1e-4


def test_enlarged_pass_stays_below_its_size_limit(predictors):
  # The 1.5x pass (192 px canvas) may propose and vote only below 30 px of
  # its canvas, 20 px of the 128 px one: larger plain proposals keep their
  # whole score (no other pass may vote), smaller ones are averaged over two.
  (config, plain), _, _, _, (_, limited) = predictors
  hw = (110, 128)
  batch = _batch(_canvas(config.data.image_size, hw, 3), hw)
  boxes, scores = _valid(plain(batch))
  boxes_t, scores_t = _valid(limited(batch))
  nearest, dist = _nearest(boxes, boxes_t)
  assert dist.max() == 0.0
  small = np.asarray(tta.box_sizes(boxes)) < 20.0
  assert small.any() and (~small).any()
  np.testing.assert_allclose(
      scores_t[nearest], np.where(small, scores / 2, scores), rtol=1e-6
  )
  others = np.setdiff1d(np.arange(len(boxes_t)), nearest)
  assert len(others) and np.asarray(tta.box_sizes(boxes_t[others])).max() < 20.0


def test_size_limits_restrict_the_voters():
  # Pass 1 may vote below 15 px: for the 10 px box the mean is over both
  # passes, for the 20 px box over pass 0 alone, so it keeps its box and score.
  boxes = jnp.array(
      [[[0, 0, 10, 10], [20, 20, 40, 40]], [[0, 0, 10, 11], [20, 20, 40, 41]]],
      jnp.float32,
  )
  scores = jnp.array([[0.8, 0.6], [0.4, 0.2]])
  fused, fused_scores = jax.device_get(
      tta.fuse_passes(
          boxes,
          scores,
          jnp.ones((2, 2), bool),
          match_iou=0.8,
          max_sizes=jnp.array([jnp.inf, 15.0]),
      )
  )
  np.testing.assert_allclose(fused_scores[0], [0.6, 0.6], rtol=1e-6)
  np.testing.assert_allclose(fused[0, 0], [0, 0, 10, 10 + 0.4 / 1.2], rtol=1e-6)
  np.testing.assert_array_equal(fused[0, 1], boxes[0, 1])


def test_fusion_hand_computed():
  # Pass 0: a box matched in pass 1 at IoU 100/120 and one without a match
  # (pass 1's identical box is invalid), then an invalid entry.
  boxes = jnp.array(
      [
          [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]],
          [[0, 0, 10, 12], [20, 20, 30, 30], [5, 5, 6, 6]],
      ],
      jnp.float32,
  )
  scores = jnp.array([[0.8, 0.4, 0.0], [0.4, 0.9, 0.3]])
  valid = jnp.array([[True, True, False], [True, False, True]])
  fused, fused_scores = jax.device_get(
      tta.fuse_passes(boxes, scores, valid, match_iou=0.8)
  )
  np.testing.assert_allclose(
      fused[0, :2], [[0, 0, 10, 32 / 3], [20, 20, 30, 30]], rtol=1e-6
  )
  np.testing.assert_allclose(fused_scores[0], [0.6, 0.2, 0.0], rtol=1e-6)
  np.testing.assert_array_equal(fused[0, 2], 0.0)
  np.testing.assert_allclose(fused[1, 0], fused[0, 0], rtol=1e-6)
  np.testing.assert_allclose(fused_scores[1], [0.6, 0.0, 0.15], rtol=1e-6)
  strict, strict_scores = jax.device_get(
      tta.fuse_passes(boxes, scores, valid, match_iou=0.9)
  )
  np.testing.assert_allclose(strict_scores[0], [0.4, 0.2, 0.0], rtol=1e-6)
  np.testing.assert_array_equal(strict[0, :2], boxes[0, :2])
  one, one_scores = jax.device_get(
      tta.fuse_passes(boxes[:1], scores[:1], valid[:1], match_iou=0.5)
  )
  np.testing.assert_array_equal(one[0, :2], boxes[0, :2])
  np.testing.assert_array_equal(one_scores[0], scores[0])


def test_three_passes_average_over_all():
  box = jnp.array([0, 0, 10, 10], jnp.float32)
  boxes = jnp.stack(
      [box, box + jnp.array([0, 0, 0, 1.0]), box + jnp.array([0, 0, 0, 2.0])]
  )[:, None]
  scores = jnp.array([[0.9], [0.6], [0.3]])
  fused, fused_scores = jax.device_get(
      tta.fuse_passes(boxes, scores, jnp.ones((3, 1), bool), match_iou=0.8)
  )
  np.testing.assert_allclose(fused_scores[:, 0], 0.6, rtol=1e-6)
  np.testing.assert_allclose(fused[:, 0, 3], (9 + 6.6 + 3.6) / 1.8, rtol=1e-6)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("tta_scales", (), "eval.tta_scales must be positive"),
        ("tta_scales", (1.0, -2.0), "eval.tta_scales must be positive"),
        ("tta_scales", (1.0, 1.0), "eval.tta_scales has a scale twice"),
        ("tta_match_iou", 0.0, "eval.tta_match_iou must be > 0"),
        (
            "tta_scales",
            (1.0, 0.1),
            "a canvas of 13 px from data.image_size 128",
        ),
        (
            "tta_upscaled_max_size",
            0.0,
            "eval.tta_upscaled_max_size must be > 0",
        ),
    ],
)
def test_bad_settings_name_the_key(key, value, message):
  config = tiny_config.get_config()
  config.eval[key] = value
  model = setup_model.build_model(config.model)
  with pytest.raises(ValueError, match=message):
    eval_lib.make_predict_fn(config, model, setup_model.model_anchors(config))
