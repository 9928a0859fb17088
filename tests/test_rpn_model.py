"""RPN model: output shapes and order, parameter tree, one jitted train step with frozen layers."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from rpn_jax.models.rpn import RPN, RPNHead, feature_stride, init_module, init_rpn
from rpn_jax.optimizer import make_optimizer

STEM_AND_LAYER1 = ("backbone/conv1", "backbone/bn1", "backbone/layer1")


def test_feature_stride():
  assert feature_stride("C4") == 16
  assert feature_stride("C5") == 32
  with pytest.raises(ValueError, match="C6"):
    feature_stride("C6")


@pytest.mark.parametrize(
    "feature,size,cells", [("C5", 1024, 32), ("C4", 512, 32)]
)
def test_output_shapes_r50(feature, size, cells):
  model = RPN(depth=50, feature=feature)
  shapes = jax.eval_shape(
      lambda: model.init_with_output(
          jax.random.key(0), jnp.zeros((2, size, size, 3))
      )[0]
  )
  assert shapes["objectness"].shape == (2, cells * cells * 15)
  assert shapes["deltas"].shape == (2, cells * cells * 15, 4)
  assert shapes["objectness"].dtype == shapes["deltas"].dtype == jnp.float32


def test_parameter_tree():
  c5 = jax.eval_shape(
      lambda: RPN(depth=50).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  )
  assert set(c5["params"]) == {"backbone", "head"}
  assert set(c5["batch_stats"]) == {"backbone"}
  head = c5["params"]["head"]
  assert head["conv"]["kernel"].shape == (3, 3, 2048, 256)
  assert head["cls_logits"]["kernel"].shape == (1, 1, 256, 15)
  assert head["bbox_pred"]["kernel"].shape == (1, 1, 256, 60)
  c4 = jax.eval_shape(
      lambda: RPN(depth=50, feature="C4").init(
          jax.random.key(0), jnp.zeros((1, 64, 64, 3))
      )
  )
  assert "layer4" not in c4["params"]["backbone"]
  assert c4["params"]["head"]["conv"]["kernel"].shape == (3, 3, 1024, 256)


def test_head_init_like_torchvision():
  features = jnp.zeros((1, 4, 4, 64))
  params = init_module(
      RPNHead(num_anchors=3, channels=512), jax.random.key(0), features
  )["params"]
  kernel = np.asarray(params["conv"]["kernel"])
  assert abs(kernel.std() - 0.01) < 0.001
  assert all(
      np.all(np.asarray(params[name]["bias"]) == 0)
      for name in ("conv", "cls_logits", "bbox_pred")
  )


def test_objectness_prior_sets_the_logit_bias():
  features = jnp.zeros((1, 4, 4, 8))
  params = init_module(
      RPNHead(num_anchors=3, channels=8, objectness_prior=0.01),
      jax.random.key(0),
      features,
  )["params"]
  np.testing.assert_allclose(
      np.asarray(params["cls_logits"]["bias"]), np.log(0.01 / 0.99), rtol=1e-6
  )
  assert np.all(np.asarray(params["bbox_pred"]["bias"]) == 0)
  with pytest.raises(ValueError, match="model.objectness_prior must lie in"):
    init_module(
        RPNHead(num_anchors=3, channels=8, objectness_prior=1.0),
        jax.random.key(0),
        features,
    )


def test_head_convs_stack_3x3_layers_before_the_outputs():
  features = jnp.asarray(
      np.random.default_rng(0).normal(size=(1, 4, 4, 8)), jnp.float32
  )
  deep = RPNHead(num_anchors=3, channels=8, num_convs=3)
  variables = init_module(deep, jax.random.key(0), features)
  params = variables["params"]
  assert sorted(params) == ["bbox_pred", "cls_logits", "conv", "conv1", "conv2"]
  assert params["conv2"]["kernel"].shape == (3, 3, 8, 8)
  # The same layers by hand: three 3x3 conv + ReLU, then the 1x1 outputs.
  x = features
  for name in ("conv", "conv1", "conv2"):
    x = jax.nn.relu(
        jax.lax.conv_general_dilated(
            x,
            params[name]["kernel"],
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        + params[name]["bias"]
    )
  logits = (
      x @ params["cls_logits"]["kernel"][0, 0] + params["cls_logits"]["bias"]
  )
  out = deep.apply(variables, features)
  np.testing.assert_allclose(
      np.asarray(out["objectness"]),
      np.asarray(logits).reshape(1, -1),
      rtol=1e-5,
      atol=1e-6,
  )
  with pytest.raises(ValueError, match="model.head_convs must be at least 1"):
    init_module(
        RPNHead(num_anchors=3, channels=8, num_convs=0),
        jax.random.key(0),
        features,
    )


def test_flatten_order_is_row_column_anchor():
  """objectness[b, (r*W + c)*A + a] is logit a of cell (r, c); deltas channel 4a + k is (a, k)."""
  num_anchors, height, width = 3, 2, 5
  features = (
      np.random.default_rng(1)
      .normal(size=(2, height, width, 8))
      .astype(np.float32)
  )
  head = RPNHead(num_anchors=num_anchors, channels=16)
  variables = init_module(head, jax.random.key(0), features)
  out, state = jax.jit(
      lambda v, x: head.apply(v, x, capture_intermediates=True)
  )(variables, features)
  logits = np.asarray(state["intermediates"]["cls_logits"]["__call__"][0])
  deltas = np.asarray(state["intermediates"]["bbox_pred"]["__call__"][0])
  objectness, flat_deltas = np.asarray(out["objectness"]), np.asarray(
      out["deltas"]
  )
  for r in range(height):
    for c in range(width):
      for a in range(num_anchors):
        i = (r * width + c) * num_anchors + a
        np.testing.assert_array_equal(objectness[:, i], logits[:, r, c, a])
        np.testing.assert_array_equal(
            flat_deltas[:, i], deltas[:, r, c, 4 * a : 4 * a + 4]
        )


def train_cfg() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      dict(
          optimizer="sgd",
          learning_rate=0.1,
          momentum=0.9,
          weight_decay=1e-4,
          schedule="constant",
          warmup_steps=0,
          decay_steps=[],
          decay_factor=0.1,
      )
  )


def make_train_step(model, tx):
  """Toy loss on the RPN outputs: BCE against fixed labels plus squared deltas."""

  def loss_fn(params, batch_stats, images, labels):
    out, updates = model.apply(
        {"params": params, "batch_stats": batch_stats},
        images,
        train=True,
        mutable=["batch_stats"],
    )
    bce = optax.sigmoid_binary_cross_entropy(out["objectness"], labels).mean()
    return bce + jnp.mean(out["deltas"] ** 2), updates["batch_stats"]

  @jax.jit
  def step(params, batch_stats, opt_state, images, labels):
    (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, images, labels
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, grads

  return step


def test_train_step_freezes_stem_and_layer1():
  # C3 keeps the compile short: layer2 and the head are what stay trainable.
  model = RPN(
      depth=18,
      width=8,
      norm="bn",
      feature="C3",
      num_anchors=3,
      head_channels=16,
  )
  variables = init_rpn(model, jax.random.key(0), 64)
  params = variables["params"]
  tx = make_optimizer(train_cfg(), params, STEM_AND_LAYER1)
  opt_state = tx.init(params)
  rng = np.random.default_rng(1)
  images = rng.normal(size=(2, 64, 64, 3)).astype(np.float32)
  labels = (rng.uniform(size=(2, 8 * 8 * 3)) > 0.5).astype(np.float32)
  step = make_train_step(model, tx)
  new_params, _, new_opt_state, grads = step(
      params, variables["batch_stats"], opt_state, images, labels
  )

  flat_old = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  flat_new = dict(jax.tree_util.tree_flatten_with_path(new_params)[0])
  flat_grads = dict(jax.tree_util.tree_flatten_with_path(grads)[0])
  num_frozen = 0
  for path, old in flat_old.items():
    name = "/".join(p.key for p in path)
    frozen = name.startswith(STEM_AND_LAYER1)
    num_frozen += frozen
    # Frozen leaves do get gradients here (frozen_stages=0): the optimizer alone stops them.
    assert np.any(np.asarray(flat_grads[path]) != 0), name
    same = np.array_equal(np.asarray(flat_new[path]), np.asarray(old))
    assert same == frozen, name
  assert num_frozen > 0

  # Momentum buffers exist only for the trainable leaves.
  buffers = [
      x for x in jax.tree.leaves(new_opt_state) if getattr(x, "ndim", 0) > 0
  ]
  assert len(buffers) == len(flat_old) - num_frozen
  trace = new_opt_state.inner_states["trainable"].inner_state[1][0].trace
  assert all(
      isinstance(leaf, optax.MaskedNode)
      for leaf in jax.tree.leaves(
          trace["backbone"]["layer1"],
          is_leaf=lambda x: isinstance(x, optax.MaskedNode),
      )
  )
  assert new_opt_state.inner_states["frozen"].inner_state == optax.EmptyState()


def test_bfloat16_outputs_float32():
  model = RPN(
      depth=18,
      width=8,
      norm="gn",
      num_anchors=3,
      head_channels=16,
      dtype=jnp.bfloat16,
  )
  shapes = jax.eval_shape(
      lambda: model.init_with_output(
          jax.random.key(0), jnp.zeros((1, 64, 64, 3))
      )
  )
  out, variables = shapes
  assert out["objectness"].dtype == out["deltas"].dtype == jnp.float32
  assert {x.dtype for x in jax.tree.leaves(variables)} == {
      jnp.dtype(jnp.float32)
  }
