"""RPN losses against hand-computed values and torch's loss functions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rpn_jax.losses import rpn_losses


def test_hand_computed():
  logits = np.array([[2.0, -1.0, 0.0, 5.0]], np.float32)
  pos = np.array([[True, False, False, False]])
  neg = np.array([[False, True, False, False]])
  pred = np.zeros((1, 4, 4), np.float32)
  pred[0, 0] = [0.5, -2.0, 0.0, 1.0]
  pred[0, 1] = [9.0, 9.0, 9.0, 9.0]  # not positive: no box loss
  target = np.zeros((1, 4, 4), np.float32)
  out = rpn_losses(logits, pred, target, pos, neg, normalizer=2.0, beta=1.0)
  objectness = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
  box = (0.5 * 0.25 + (2.0 - 0.5) + 0.0 + 0.5) / 2
  np.testing.assert_allclose(float(out["objectness"]), objectness, rtol=1e-6)
  np.testing.assert_allclose(float(out["box"]), box, rtol=1e-6)
  np.testing.assert_allclose(float(out["total"]), objectness + box, rtol=1e-6)
  assert all(v.dtype == jnp.float32 and v.shape == () for v in out.values())
  # beta = 0 is plain L1.
  out = rpn_losses(logits, pred, target, pos, neg, normalizer=2.0, beta=0.0)
  np.testing.assert_allclose(
      float(out["box"]), (0.5 + 2.0 + 0.0 + 1.0) / 2, rtol=1e-6
  )
  # box_weight scales the box term of the total only.
  out = rpn_losses(
      logits, pred, target, pos, neg, normalizer=2.0, beta=1.0, box_weight=3.0
  )
  np.testing.assert_allclose(float(out["box"]), box, rtol=1e-6)
  np.testing.assert_allclose(
      float(out["total"]), objectness + 3.0 * box, rtol=1e-6
  )


def test_matches_torch_on_random_batch():
  rng = np.random.default_rng(0)
  b, n = 3, 500
  logits = rng.normal(0, 4, (b, n)).astype(np.float32)
  pred = rng.normal(0, 1, (b, n, 4)).astype(np.float32)
  target = rng.normal(0, 1, (b, n, 4)).astype(np.float32)
  draw = rng.random((b, n))
  pos, neg = draw < 0.1, (draw >= 0.1) & (draw < 0.5)
  for beta in [1.0, 1 / 9, 0.0]:
    losses = jax.jit(lambda *a: rpn_losses(*a, normalizer=b * 256, beta=beta))
    out = losses(logits, pred, target, pos, neg)
    sampled = torch.from_numpy(pos | neg)
    bce = F.binary_cross_entropy_with_logits(
        torch.from_numpy(logits)[sampled],
        torch.from_numpy(pos)[sampled].float(),
        reduction="sum",
    )
    box = F.smooth_l1_loss(
        torch.from_numpy(pred)[torch.from_numpy(pos)],
        torch.from_numpy(target)[torch.from_numpy(pos)],
        beta=beta,
        reduction="sum",
    )
    np.testing.assert_allclose(
        float(out["objectness"]), bce.item() / (b * 256), rtol=1e-5
    )
    np.testing.assert_allclose(
        float(out["box"]), box.item() / (b * 256), rtol=1e-5
    )


def test_gradients_finite_and_masked():
  logits = jnp.array([[30.0, -30.0, 0.0]])
  pred = jnp.array(
      [[[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]]
  )
  target = jnp.zeros((1, 3, 4))
  pos = jnp.array([[True, False, False]])
  neg = jnp.array([[False, True, False]])
  for beta in [1.0, 0.0]:
    grads = jax.grad(
        lambda l, p: rpn_losses(
            l, p, target, pos, neg, normalizer=1.0, beta=beta
        )["total"],
        argnums=(0, 1),
    )(logits, pred)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    # Unsampled anchors and non-positive deltas get no gradient.
    assert float(grads[0][0, 2]) == 0.0
    assert np.all(np.asarray(grads[1][0, 1:]) == 0.0)


def test_giou_box_loss_matches_torchvision():
  from torchvision.ops import generalized_box_iou_loss

  from rpn_jax import boxes
  from rpn_jax.defaults import SEED_BOX_CLAMP

  rng = np.random.default_rng(1)
  b, n = 2, 400
  xy = rng.uniform(0, 100, (n, 2))
  anchors = np.concatenate([xy, xy + rng.uniform(4, 60, (n, 2))], 1).astype(
      np.float32
  )
  # Wide enough to leave the clamp's range, so clamped decoding is exercised.
  pred = rng.normal(0, 0.8, (b, n, 4)).astype(np.float32)
  target = rng.normal(0, 0.3, (b, n, 4)).astype(np.float32)
  draw = rng.random((b, n))
  pos, neg = draw < 0.2, draw >= 0.6
  coder = dict(weights=(1.0, 1.0, 1.0, 1.0), clamp=SEED_BOX_CLAMP)
  out = rpn_losses(
      np.zeros((b, n), np.float32),
      pred,
      target,
      pos,
      neg,
      normalizer=7.0,
      box_loss="giou",
      box_weight=2.0,
      anchors=anchors,
      box_coder=coder,
  )
  pred_boxes = np.asarray(
      boxes.decode(np.broadcast_to(anchors, pred.shape), pred, **coder)
  )
  target_boxes = np.asarray(
      boxes.decode(np.broadcast_to(anchors, pred.shape), target, **coder)
  )
  expected = generalized_box_iou_loss(
      torch.from_numpy(pred_boxes[pos]),
      torch.from_numpy(target_boxes[pos]),
      reduction="sum",
  )
  np.testing.assert_allclose(
      float(out["box"]), expected.item() / 7.0, rtol=1e-5
  )
  np.testing.assert_allclose(
      float(out["total"]),
      float(out["objectness"]) + 2.0 * float(out["box"]),
      rtol=1e-6,
  )
  # A perfect prediction costs nothing; gradients are finite and only reach positives.
  assert (
      float(
          rpn_losses(
              np.zeros((b, n), np.float32),
              target,
              target,
              pos,
              neg,
              normalizer=1.0,
              box_loss="giou",
              anchors=anchors,
              box_coder=coder,
          )["box"]
      )
      < 1e-5
  )
  grad = jax.grad(
      lambda p: rpn_losses(
          np.zeros((b, n), np.float32),
          p,
          target,
          pos,
          neg,
          normalizer=1.0,
          box_loss="giou",
          anchors=anchors,
          box_coder=coder,
      )["box"]
  )(pred)
  assert np.isfinite(np.asarray(grad)).all()
  assert np.all(np.asarray(grad)[~pos] == 0.0) and np.any(
      np.asarray(grad)[pos] != 0.0
  )


def test_unknown_box_loss_is_one_line_error():
  with pytest.raises(ValueError, match="targets.box_loss must be one of"):
    rpn_losses(
        np.zeros((1, 3), np.float32),
        np.zeros((1, 3, 4), np.float32),
        np.zeros((1, 3, 4), np.float32),
        np.ones((1, 3), bool),
        np.zeros((1, 3), bool),
        normalizer=1.0,
        box_loss="iou",
    )


def test_focal_objectness_matches_torchvision():
  from torchvision.ops import sigmoid_focal_loss

  rng = np.random.default_rng(2)
  b, n = 2, 300
  logits = rng.normal(0, 3, (b, n)).astype(np.float32)
  draw = rng.random((b, n))
  pos, neg = draw < 0.1, draw >= 0.3
  zeros = np.zeros((b, n, 4), np.float32)
  sampled = torch.from_numpy(pos | neg)
  for alpha, gamma in [(0.25, 2.0), (-1.0, 1.5)]:
    out = rpn_losses(
        logits,
        zeros,
        zeros,
        pos,
        neg,
        normalizer=5.0,
        objectness_loss="focal",
        focal_alpha=alpha,
        focal_gamma=gamma,
    )
    expected = sigmoid_focal_loss(
        torch.from_numpy(logits)[sampled],
        torch.from_numpy(pos)[sampled].float(),
        alpha=alpha,
        gamma=gamma,
        reduction="sum",
    )
    np.testing.assert_allclose(
        float(out["objectness"]), expected.item() / 5.0, rtol=1e-5
    )
  with pytest.raises(
      ValueError, match="targets.objectness_loss must be one of"
  ):
    rpn_losses(
        logits, zeros, zeros, pos, neg, normalizer=1.0, objectness_loss="ce"
    )


def test_quality_focal_objectness_targets_the_iou_of_decoded_boxes():
  from torchvision.ops import box_iou

  from rpn_jax import boxes

  rng = np.random.default_rng(3)
  b, n = 2, 200
  xy = rng.uniform(0, 100, (n, 2))
  anchors = np.concatenate([xy, xy + rng.uniform(4, 60, (n, 2))], 1).astype(
      np.float32
  )
  logits = rng.normal(0, 3, (b, n)).astype(np.float32)
  pred = rng.normal(0, 0.3, (b, n, 4)).astype(np.float32)
  target = rng.normal(0, 0.3, (b, n, 4)).astype(np.float32)
  draw = rng.random((b, n))
  pos, neg = draw < 0.2, draw >= 0.5
  coder = dict(weights=(1.0, 1.0, 1.0, 1.0), clamp=None)
  loss = lambda lg, p: rpn_losses(
      lg,
      p,
      target,
      pos,
      neg,
      normalizer=3.0,
      objectness_loss="quality_focal",
      focal_gamma=2.0,
      anchors=anchors,
      box_coder=coder,
  )["objectness"]
  pred_boxes = torch.from_numpy(
      np.array(boxes.decode(np.broadcast_to(anchors, pred.shape), pred))
  )
  target_boxes = torch.from_numpy(
      np.array(boxes.decode(np.broadcast_to(anchors, pred.shape), target))
  )
  quality = torch.stack(
      [
          torch.diagonal(box_iou(pred_boxes[i], target_boxes[i]))
          for i in range(b)
      ]
  )
  quality = torch.where(torch.from_numpy(pos), quality, torch.zeros(()))
  logit_t = torch.from_numpy(logits)
  per_anchor = (
      F.binary_cross_entropy_with_logits(logit_t, quality, reduction="none")
      * (quality - torch.sigmoid(logit_t)).abs() ** 2
  )
  expected = per_anchor[torch.from_numpy(pos | neg)].sum().item() / 3.0
  np.testing.assert_allclose(float(loss(logits, pred)), expected, rtol=1e-5)
  # The IoU is a target, not a path for gradients into the box deltas.
  assert np.all(np.asarray(jax.grad(loss, argnums=1)(logits, pred)) == 0.0)
