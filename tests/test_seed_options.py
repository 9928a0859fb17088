"""The seed's own details as config options (seed/PROTOCOL.md), each against a
hand-computed case, and the exact recipe (configs/coco_person_r50_c5_exact.py)
shrunk to a tiny size, trained a few steps and evaluated."""

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import coco_person_r50_c5_exact
from rpn_jax import defaults
from rpn_jax import eval_lib
from rpn_jax import proposals as proposals_lib
from rpn_jax import setup_model
from rpn_jax import targets as targets_lib
from rpn_jax import train_lib
from rpn_jax.anchors import generate_anchors
from rpn_jax.data import transforms
from tests import tiny_config

# ------------------------------------------------------- model.anchor_placement


def test_seed_placement_hand_computed():
  # Sizes (8, 32) x ratios (0.5, 2), index a = ratio_index * 2 + size_index:
  # a0 w 8 h 4, a1 w 32 h 16, a2 w 8 h 16, a3 w 32 h 64 (h = size * ratio),
  # top-left corners at the stride-16 cell corners, cells row by row.
  anchors = generate_anchors(
      (2, 2), 16, (8.0, 32.0), (0.5, 2.0), offset=0.5, placement="seed"
  )
  expected = np.array(
      [
          # row 0, col 0: corner (0, 0)
          [0, 0, 8, 4],
          [0, 0, 32, 16],
          [0, 0, 8, 16],
          [0, 0, 32, 64],
          # row 0, col 1: corner (16, 0)
          [16, 0, 24, 4],
          [16, 0, 48, 16],
          [16, 0, 24, 16],
          [16, 0, 48, 64],
          # row 1, col 0: corner (0, 16)
          [0, 16, 8, 20],
          [0, 16, 32, 32],
          [0, 16, 8, 32],
          [0, 16, 32, 80],
          # row 1, col 1: corner (16, 16)
          [16, 16, 24, 20],
          [16, 16, 48, 32],
          [16, 16, 24, 32],
          [16, 16, 48, 80],
      ],
      np.float32,
  )
  assert anchors.dtype == np.float32
  np.testing.assert_array_equal(anchors, expected)
  # The offset belongs to the centred placement only.
  np.testing.assert_array_equal(
      generate_anchors(
          (2, 2), 16, (8.0, 32.0), (0.5, 2.0), offset=0.0, placement="seed"
      ),
      expected,
  )


def test_centred_placement_is_the_default():
  sizes, ratios = (32.0, 64.0), (0.5, 1.0, 2.0)
  np.testing.assert_array_equal(
      generate_anchors((3, 2), 32, sizes, ratios, offset=0.0),
      generate_anchors((3, 2), 32, sizes, ratios, 0.0, placement="centred"),
  )
  # Cell (0, 0), ratio 1, size 32, offset 0: centred on the origin.
  np.testing.assert_array_equal(
      generate_anchors((1, 1), 32, (32.0,), (1.0,), 0.0),
      [[-16, -16, 16, 16]],
  )


def test_model_anchors_take_the_seed_placement():
  config = coco_person_r50_c5_exact.get_config()
  config.data.image_size = 64  # C5: a 2 x 2 map, stride 32
  anchors = setup_model.model_anchors(config)
  assert anchors.shape == (2 * 2 * 15, 4)
  # Cell (0, 0): a0 = ratio 0.5, size 32; a5 = ratio 1, size 32.
  np.testing.assert_array_equal(anchors[0], [0, 0, 32, 16])
  np.testing.assert_array_equal(anchors[5], [0, 0, 32, 32])
  # Last: cell (1, 1), corner (32, 32), ratio 2, size 512: w 512, h 1024.
  np.testing.assert_array_equal(anchors[-1], [32, 32, 544, 1056])


def test_unknown_anchor_placement_names_the_key():
  with pytest.raises(ValueError, match="model.anchor_placement"):
    generate_anchors((1, 1), 32, (32.0,), (1.0,), placement="corner")
  config = defaults.base_config()
  config.model.anchor_placement = "corner"
  config.data.image_size = 64
  with pytest.raises(ValueError, match="model.anchor_placement"):
    setup_model.model_anchors(config)


# ------------------------------------------------------------ data.pixel_norm


def test_pixel_norm_hand_computed():
  pixel = np.array([[[200, 100, 50]]], np.uint8)  # RGB
  data = defaults.base_config().data
  mean, std = transforms.pixel_norm_stats(data)
  # (x - mean) / std with ImageNet's statistics, 0-255:
  # 76.325 / 58.395, -16.28 / 57.12, -53.53 / 57.375.
  np.testing.assert_allclose(
      transforms.normalize_images(pixel, mean, std)[0, 0],
      [1.307047, -0.285014, -0.932985],
      rtol=1e-5,
  )
  data.pixel_norm = "mean_only"
  data.std = (2.0, 3.0, 4.0)  # unused by mean_only
  mean, std = transforms.pixel_norm_stats(data)
  assert std == (1.0, 1.0, 1.0)
  # The seed: the BGR pixel (50, 100, 200) minus the BGR mean (103.530,
  # 116.280, 123.675) is (-53.53, -16.28, 76.325); reordered to RGB:
  np.testing.assert_allclose(
      transforms.normalize_images(pixel, mean, std)[0, 0],
      [76.325, -16.28, -53.53],
      rtol=1e-6,
  )


def test_unknown_pixel_norm_names_the_key():
  data = defaults.base_config().data
  data.pixel_norm = "std_only"
  with pytest.raises(ValueError, match="data.pixel_norm"):
    transforms.pixel_norm_stats(data)


def _small_config(tiny):
  """The tiny recipe with the seed's IoU labelling and 256 samples."""
  tiny.targets.assigner = "iou"
  tiny.targets.num_samples = 256
  tiny.targets.normalizer = "samples"
  tiny.train.batch_size = 2
  return tiny


def _batch(config, boxes):
  """Random images, the same `boxes` [n, 4] (canvas xyxy) in every image."""
  b, s, g = (
      config.train.batch_size,
      config.data.image_size,
      config.data.max_boxes,
  )
  gt = np.zeros((b, g, 4), np.float32)
  gt[:, : len(boxes)] = boxes
  valid = np.zeros((b, g), bool)
  valid[:, : len(boxes)] = True
  rng = np.random.default_rng(0)
  return dict(
      image=rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
      boxes=gt,
      box_valid=valid,
      box_crowd=np.zeros((b, g), bool),
      image_hw=np.full((b, 2), s, np.int32),
      scale=np.ones(b, np.float32),
      image_id=np.arange(b),
      image_valid=np.ones(b, bool),
  )


class _Normalised(Exception):
  """Raised by the recording normalize_images with the (mean, std) it got."""


def _record_normalize(images, mean, std, bgr=False):
  raise _Normalised(tuple(mean), tuple(std))


def test_every_normaliser_follows_pixel_norm(tiny, monkeypatch):
  # The loss and prediction take their statistics from pixel_norm_stats: a
  # recording normalize_images stops each at its first step and tells.
  monkeypatch.setattr(transforms, "normalize_images", _record_normalize)
  config = _small_config(tiny)
  config.data.std = (2.0, 3.0, 4.0)
  anchors = setup_model.model_anchors(config)
  batch = _batch(config, [[10, 12, 40, 90]])
  model = setup_model.build_model(config.model)
  mean = tuple(config.data.mean)
  for norm, std in (("mean_std", (2.0, 3.0, 4.0)), ("mean_only", (1.0,) * 3)):
    config.data.pixel_norm = norm
    loss_fn = train_lib.make_loss_fn(config, model, anchors)
    with pytest.raises(_Normalised) as loss_call:
      loss_fn({}, {}, batch, jax.random.key(0))
    predict = eval_lib.make_predict_fn(config, model, anchors)
    with pytest.raises(_Normalised) as predict_call:
      predict({}, batch)
    assert loss_call.value.args == predict_call.value.args == (mean, std)


# ---------------------------------------------------------- targets.label_on

# Image 100 x 100; gt boxes G1 = [10, 10, 50, 50], G2 = [60, 10, 90, 40].
_GT1 = [10.0, 10.0, 50.0, 50.0]
_GT2 = [60.0, 10.0, 90.0, 40.0]
# a0 is G1 itself. a1 is G1 moved 2 px right: IoU 38*40 / 1680 = 0.905 with
# a0's proposal (and with G1), so NMS 0.7 drops it. a2 touches nothing. a3
# (IoU 450 / 1350 = 0.33 with G2) decodes with dy = -0.5 (15 px up) onto G2.
# a4 has the lowest logit: beyond pre-NMS top 5. a5 overlaps G1 (IoU 0.905)
# but its deltas (0.5, 0.5) move it 20 px right and down to [30, 32, 70, 72]:
# IoU 20*18 / (3200 - 360) = 0.127 with G1, a negative proposal.
_ANCHORS = np.array(
    [
        _GT1,
        [12, 10, 52, 50],
        [60, 60, 90, 90],
        [60, 25, 90, 55],
        [0, 60, 30, 90],
        [10, 12, 50, 52],
    ],
    np.float32,
)
_LOGITS = np.array([3.0, 2.0, 1.0, 1.5, -5.0, 1.2], np.float32)
_DELTAS = np.zeros((6, 4), np.float32)
_DELTAS[3] = [0.0, -0.5, 0.0, 0.0]
_DELTAS[5] = [0.5, 0.5, 0.0, 0.0]
_SETTINGS = dict(
    pre_nms_top_k=5,
    nms_threshold=0.7,
    post_nms_top_k=6,  # two more slots than survivors: padding
    min_size=1e-3,
    clamp=defaults.SEED_BOX_CLAMP,
)


@functools.cache
def _proposals():
  return proposals_lib.propose_indexed(
      jnp.asarray(_ANCHORS),
      jnp.asarray(_LOGITS),
      jnp.asarray(_DELTAS),
      jnp.array([100, 100]),
      **_SETTINGS,
  )


def test_propose_indexed_names_the_anchor_of_each_proposal():
  boxes, scores, valid, index = _proposals()
  # Survivors by logit: a0 (3), a3 (1.5), a5 (1.2), a2 (1); a1 suppressed.
  np.testing.assert_array_equal(index, [0, 3, 5, 2, 0, 0])
  np.testing.assert_array_equal(valid, [1, 1, 1, 1, 0, 0])
  np.testing.assert_allclose(
      boxes,
      [_GT1, _GT2, [30, 32, 70, 72], [60, 60, 90, 90], [0] * 4, [0] * 4],
      atol=1e-5,
  )
  np.testing.assert_allclose(
      scores, 1 / (1 + np.exp(-np.array([3, 1.5, 1.2, 1, 0, 0]))) * valid
  )


@functools.partial(jax.jit, static_argnums=4)
def _jit_label(key, gt_boxes, gt_valid, gt_crowd, num_samples):
  boxes, _, valid, index = _proposals()
  return targets_lib.proposal_targets(
      key,
      jnp.asarray(_ANCHORS),
      boxes,
      index,
      valid,
      gt_boxes,
      gt_valid,
      gt_crowd,
      num_samples=num_samples,
      clamp=defaults.SEED_BOX_CLAMP,
  )


def _label(key, gt_boxes, gt_valid, gt_crowd, num_samples=256):
  return _jit_label(
      key,
      np.asarray(gt_boxes, np.float32),
      np.asarray(gt_valid),
      np.asarray(gt_crowd),
      num_samples,
  )


_GT = [_GT1, _GT2, [0.0] * 4]  # padded to G = 3


def test_proposal_labels_hand_computed():
  out = _label(jax.random.key(0), _GT, [True, True, False], [False] * 3)
  # a0 (IoU 1 with G1) and a3 (its proposal is G2) positive; a5 (proposal
  # IoU 0.127) and a2 (0) negative; a1 (suppressed) and a4 (beyond top-k)
  # unlabelled, though as anchors a1 and a5 would be positives, a4 negative.
  np.testing.assert_array_equal(out["pos_mask"], [1, 0, 0, 1, 0, 0])
  np.testing.assert_array_equal(out["neg_mask"], [0, 0, 1, 0, 0, 1])
  # a3's target is G2 encoded on the anchor [60, 25, 90, 55]: centre (75, 40),
  # 30 x 30; G2's centre (75, 25), 30 x 30: dx 0, dy -15 / 30, dw dh log 1.
  expected = np.zeros((6, 4), np.float32)
  expected[3] = [0.0, -0.5, 0.0, 0.0]
  np.testing.assert_allclose(out["target_deltas"], expected, atol=1e-6)


def test_proposal_labels_crowd_region_ignores_negatives():
  # A crowd box holding a2's proposal [60, 60, 90, 90] whole (IoA 1): ignored.
  # It covers 15 * 17 / 1600 = 0.16 of a5's proposal: a5 stays negative.
  out = _label(
      jax.random.key(0),
      [_GT1, _GT2, [55.0, 55.0, 95.0, 95.0]],
      [True, True, False],
      [False, False, True],
  )
  np.testing.assert_array_equal(out["pos_mask"], [1, 0, 0, 1, 0, 0])
  np.testing.assert_array_equal(out["neg_mask"], [0, 0, 0, 0, 0, 1])


def test_sampling_never_takes_an_anchor_without_a_kept_proposal():
  seen_pos, seen_neg = set(), set()
  for seed in range(16):
    out = _label(jax.random.key(seed), _GT, [True, True, False], [False] * 3, 2)
    pos = np.flatnonzero(out["pos_mask"]).tolist()
    neg = np.flatnonzero(out["neg_mask"]).tolist()
    assert len(pos) == len(neg) == 1  # 2 samples, at most half positive
    seen_pos.update(pos)
    seen_neg.update(neg)
  assert seen_pos == {0, 3}
  assert seen_neg == {2, 5}


def test_label_on_proposals_in_batch_targets_labels_only_kept_anchors(tiny):
  config = _small_config(tiny)
  config.targets.label_on = "proposals"
  model = setup_model.build_model(config.model)
  variables = setup_model.init_variables(config, model, jax.random.key(0))
  anchors = jnp.asarray(setup_model.model_anchors(config))
  batch = _batch(config, [[10, 12, 40, 90], [60, 30, 100, 70]])
  mean, std = transforms.pixel_norm_stats(config.data)

  @jax.jit
  def targets_and_proposals(batch, key):
    images = transforms.normalize_images(batch["image"], mean, std)
    outputs = model.apply(variables, images, train=False)
    tgt = train_lib.batch_targets(config, anchors, batch, key, outputs)
    _, _, valid, index = proposals_lib.propose_batch_indexed(
        anchors,
        outputs["objectness"],
        outputs["deltas"],
        batch["image_hw"],
        **setup_model.proposal_settings(config),
    )
    return tgt, valid, index

  tgt, valid, index = targets_and_proposals(batch, jax.random.key(0))
  for i in range(config.train.batch_size):
    kept = set(np.asarray(index[i])[np.asarray(valid[i])].tolist())
    sampled = np.flatnonzero(tgt["pos_mask"][i] | tgt["neg_mask"][i])
    assert 0 < len(sampled) <= config.targets.num_samples
    assert set(sampled.tolist()) <= kept
    # Regression targets too only behind kept proposals.
    targeted = np.flatnonzero(np.any(tgt["target_deltas"][i] != 0, axis=-1))
    assert set(targeted.tolist()) <= kept


def test_train_step_with_label_on_proposals_is_finite(tiny):
  config = _small_config(tiny)
  config.targets.label_on = "proposals"
  config.model.anchor_placement = "seed"
  config.data.pixel_norm = "mean_only"
  model = setup_model.build_model(config.model)
  variables = setup_model.init_variables(config, model, jax.random.key(0))
  tx = train_lib.make_optimizer(config, variables)
  state = train_lib.create_train_state(config, model, tx, variables)
  step = jax.jit(
      train_lib.make_train_step(
          config, model, tx, setup_model.model_anchors(config)
      )
  )
  batch = _batch(config, [[10, 12, 40, 90], [60, 30, 100, 70]])
  for _ in range(3):
    state, metrics = step(state, batch)
    assert int(metrics["finite"]) == 1
    assert np.isfinite(float(metrics["total"]))
    assert int(metrics["num_pos"]) >= 1
    assert int(metrics["num_pos"]) + int(metrics["num_neg"]) <= (
        config.train.batch_size * config.proposals.post_nms_top_k
    )


def test_label_on_errors_name_the_key(tiny):
  config = _small_config(tiny)
  anchors = jnp.asarray(setup_model.model_anchors(config))
  batch = _batch(config, [[10, 12, 40, 90]])
  config.targets.label_on = "everything"
  with pytest.raises(ValueError, match="targets.label_on"):
    train_lib.batch_targets(config, anchors, batch, jax.random.key(0))
  config.targets.label_on = "proposals"
  with pytest.raises(ValueError, match="targets.label_on='proposals' needs"):
    train_lib.batch_targets(config, anchors, batch, jax.random.key(0))
  config.targets.assigner = "atss"
  with pytest.raises(ValueError, match="targets.assigner='iou'"):
    train_lib.batch_targets(config, anchors, batch, jax.random.key(0), {})


# ------------------------------------------------------------ the exact recipe


def test_exact_recipe_sets_the_seed_details():
  config = coco_person_r50_c5_exact.get_config()
  assert config.model.anchor_placement == "seed"
  assert config.data.pixel_norm == "mean_only"
  assert tuple(config.data.mean) == (123.675, 116.28, 103.53)
  assert config.targets.label_on == "proposals"
  assert tuple(config.targets.box_clamp) == defaults.SEED_BOX_CLAMP
  assert config.model.norm == "bn"
  assert config.train.learning_rate == 0.01
  assert config.train.schedule == "constant"
  assert (config.train.epochs, config.train.batch_size) == (24, 8)
  p = config.proposals
  assert (p.pre_nms_top_k, p.nms_threshold, p.post_nms_top_k) == (
      12000,
      0.7,
      1000,
  )
  assert (config.eval.score_threshold, config.eval.nms_threshold) == (0.4, 0.5)
  # Every key it sets exists in the base config (no typo made a new key).
  base = defaults.base_config().to_dict()
  for section, values in config.to_dict().items():
    if isinstance(values, dict):
      assert set(values) <= set(base[section]), section


def test_exact_recipe_tiny_trains_and_evaluates(tmp_path):
  config = tiny_config.tiny_coco_recipe(coco_person_r50_c5_exact.get_config())
  workdir = str(tmp_path / "run")
  train_lib.train_and_evaluate(config, workdir)
  out = str(tmp_path / "eval")
  metrics = eval_lib.run_evaluation(config, workdir, out)
  assert metrics["step"] == 2
  with open(os.path.join(out, "metrics.json")) as f:
    saved = json.load(f)
  assert isinstance(saved["AP"], float) and math.isfinite(saved["AP"])
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [json.loads(line)["total"] for line in f]
  assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
