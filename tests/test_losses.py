"""RPN losses against hand-computed values and torch's loss functions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
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
    np.testing.assert_allclose(float(out["box"]), (0.5 + 2.0 + 0.0 + 1.0) / 2, rtol=1e-6)
    # box_weight scales the box term of the total only.
    out = rpn_losses(logits, pred, target, pos, neg, normalizer=2.0, beta=1.0, box_weight=3.0)
    np.testing.assert_allclose(float(out["box"]), box, rtol=1e-6)
    np.testing.assert_allclose(float(out["total"]), objectness + 3.0 * box, rtol=1e-6)


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
            torch.from_numpy(logits)[sampled], torch.from_numpy(pos)[sampled].float(), reduction="sum")
        box = F.smooth_l1_loss(torch.from_numpy(pred)[torch.from_numpy(pos)],
                               torch.from_numpy(target)[torch.from_numpy(pos)], beta=beta, reduction="sum")
        np.testing.assert_allclose(float(out["objectness"]), bce.item() / (b * 256), rtol=1e-5)
        np.testing.assert_allclose(float(out["box"]), box.item() / (b * 256), rtol=1e-5)


def test_gradients_finite_and_masked():
    logits = jnp.array([[30.0, -30.0, 0.0]])
    pred = jnp.array([[[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]])
    target = jnp.zeros((1, 3, 4))
    pos = jnp.array([[True, False, False]])
    neg = jnp.array([[False, True, False]])
    for beta in [1.0, 0.0]:
        grads = jax.grad(lambda l, p: rpn_losses(l, p, target, pos, neg, normalizer=1.0, beta=beta)["total"],
                         argnums=(0, 1))(logits, pred)
        assert all(np.isfinite(np.asarray(g)).all() for g in grads)
        # Unsampled anchors and non-positive deltas get no gradient.
        assert float(grads[0][0, 2]) == 0.0
        assert np.all(np.asarray(grads[1][0, 1:]) == 0.0)
