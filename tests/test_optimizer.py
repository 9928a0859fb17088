"""Optimizer: freeze masks, schedules, and torch.optim.SGD / AdamW semantics."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch

from rpn_jax.optimizer import freeze_mask, make_optimizer, make_schedule


def cfg(**overrides) -> ml_collections.ConfigDict:
  base = dict(
      optimizer="sgd",
      learning_rate=0.1,
      momentum=0.9,
      weight_decay=1e-4,
      schedule="constant",
      warmup_steps=0,
      warmup_factor=0.001,
      decay_steps=[],
      decay_factor=0.1,
  )
  return ml_collections.ConfigDict({**base, **overrides})


def toy_params():
  rng = np.random.default_rng(0)

  def leaf(*shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)

  return {
      "backbone": {
          "conv1": {"kernel": leaf(3, 3, 3, 4)},
          "layer1": {"0": {"conv1": {"kernel": leaf(1, 1, 4, 4)}}},
          "layer10": {"kernel": leaf(2, 2)},
      },
      "head": {"conv": {"kernel": leaf(3, 3, 4, 2), "bias": leaf(2)}},
  }


def test_freeze_mask_matches_whole_components():
  mask = freeze_mask(toy_params(), ["backbone/conv1", "backbone/layer1"])
  assert mask["backbone"]["conv1"]["kernel"]
  assert mask["backbone"]["layer1"]["0"]["conv1"]["kernel"]
  assert not mask["backbone"]["layer10"]["kernel"]
  assert not mask["head"]["conv"]["kernel"] and not mask["head"]["conv"]["bias"]
  assert not any(jax.tree.leaves(freeze_mask(toy_params(), [])))


def test_freeze_mask_unknown_pattern():
  with pytest.raises(ValueError, match="backbone/layer7"):
    freeze_mask(toy_params(), ["backbone/conv1", "backbone/layer7"])


def test_freeze_mask_accepts_statistics_only_layers():
  """Frozen BN keeps bn1 entirely in batch_stats: the pattern is known but freezes no param."""
  stats = {"backbone": {"bn1": {"mean": jnp.zeros(4), "var": jnp.ones(4)}}}
  with pytest.raises(ValueError, match="backbone/bn1"):
    freeze_mask(toy_params(), ["backbone/bn1"])
  mask = freeze_mask(
      toy_params(), ["backbone/bn1", "backbone/conv1"], batch_stats=stats
  )
  assert sum(jax.tree.leaves(mask)) == 1
  make_optimizer(cfg(), toy_params(), ["backbone/bn1"], batch_stats=stats)


@pytest.mark.parametrize("weight_decay", [1e-4, 0.5])
def test_matches_torch_sgd(weight_decay):
  """Three steps with different gradients.

  The large decay makes its position (added to the gradient before momentum) matter.
  """
  rng = np.random.default_rng(1)
  w0 = rng.normal(size=(4, 3)).astype(np.float32)
  grads = rng.normal(size=(3, 4, 3)).astype(np.float32)

  weight = torch.nn.Parameter(torch.from_numpy(w0.copy()))
  torch_opt = torch.optim.SGD(
      [weight], lr=0.1, momentum=0.9, weight_decay=weight_decay
  )
  for g in grads:
    weight.grad = torch.from_numpy(g.copy())
    torch_opt.step()

  params = {"w": jnp.asarray(w0)}
  tx = make_optimizer(cfg(weight_decay=weight_decay), params, [])
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(
      np.asarray(params["w"]), weight.detach().numpy(), rtol=1e-6, atol=1e-6
  )


@pytest.mark.parametrize(
    "optimizer, buffers_per_leaf", [("sgd", 1), ("adamw", 2)]
)
def test_frozen_leaves_get_no_update_and_no_state(optimizer, buffers_per_leaf):
  """Frozen leaves: zero updates and no momentum buffer (sgd) or Adam mu/nu (adamw)."""
  params = toy_params()
  tx = make_optimizer(
      cfg(optimizer=optimizer), params, ["backbone/conv1", "backbone/layer1"]
  )
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert np.all(np.asarray(updates["backbone"]["conv1"]["kernel"]) == 0)
  assert np.all(
      np.asarray(updates["backbone"]["layer1"]["0"]["conv1"]["kernel"]) == 0
  )
  assert np.all(np.asarray(updates["backbone"]["layer10"]["kernel"]) != 0)
  buffers = [x for x in jax.tree.leaves(state) if getattr(x, "ndim", 0) > 0]
  trainable = [(2, 2), (3, 3, 4, 2), (2,)]
  assert sorted(b.shape for b in buffers) == sorted(
      trainable * buffers_per_leaf
  )


@pytest.mark.parametrize("weight_decay", [1e-4, 0.5])
def test_adamw_matches_torch_adamw(weight_decay):
  """Five steps with different gradients on a two-leaf tree, constant schedule.

  The large decay makes its decoupled form (lr * weight_decay * p, not added to the
  gradient) matter.
  """
  rng = np.random.default_rng(2)
  w0 = {
      "a": rng.normal(size=(4, 3)).astype(np.float32),
      "b": rng.normal(size=(3,)).astype(np.float32),
  }
  grads = [
      {k: rng.normal(size=v.shape).astype(np.float32) for k, v in w0.items()}
      for _ in range(5)
  ]

  weights = {
      k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in w0.items()
  }
  torch_opt = torch.optim.AdamW(
      list(weights.values()),
      lr=0.01,
      betas=(0.9, 0.999),
      eps=1e-8,
      weight_decay=weight_decay,
  )
  params = {k: jnp.asarray(v) for k, v in w0.items()}
  tx = make_optimizer(
      cfg(optimizer="adamw", learning_rate=0.01, weight_decay=weight_decay),
      params,
      [],
  )
  state = tx.init(params)
  for step, g in enumerate(grads):
    for k, w in weights.items():
      w.grad = torch.from_numpy(g[k].copy())
    torch_opt.step()
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
    params = optax.apply_updates(params, updates)
    for k, w in weights.items():
      np.testing.assert_allclose(
          np.asarray(params[k]),
          w.detach().numpy(),
          rtol=1e-5,
          atol=1e-6,
          err_msg=f"step {step} leaf {k}",
      )


def test_unknown_optimizer():
  with pytest.raises(ValueError, match=r"train\.optimizer.*'lamb'"):
    make_optimizer(cfg(optimizer="lamb"), toy_params(), [])


def test_constant_schedule():
  schedule = make_schedule(cfg(learning_rate=0.02))
  assert float(schedule(0)) == pytest.approx(0.02)
  assert float(schedule(10_000)) == pytest.approx(0.02)


def test_warmup_step_schedule():
  schedule = make_schedule(
      cfg(
          learning_rate=0.02,
          schedule="warmup_step",
          warmup_steps=100,
          decay_steps=[1000, 2000],
          decay_factor=0.1,
      )
  )
  expected = {
      0: 0.02 * 0.001,
      50: 0.02 * (0.001 + 0.999 * 0.5),
      100: 0.02,
      999: 0.02,
      1000: 0.002,
      1999: 0.002,
      2000: 0.0002,
      5000: 0.0002,
  }
  for step, lr in expected.items():
    assert float(schedule(jnp.asarray(step))) == pytest.approx(
        lr, rel=1e-5
    ), step
  no_warmup = make_schedule(
      cfg(schedule="warmup_step", warmup_steps=0, decay_steps=[5])
  )
  assert float(no_warmup(jnp.asarray(0))) == pytest.approx(0.1)
  assert float(no_warmup(jnp.asarray(5))) == pytest.approx(0.01)


def test_unknown_schedule():
  with pytest.raises(ValueError, match="cosine"):
    make_schedule(cfg(schedule="cosine"))
