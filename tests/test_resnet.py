"""ResNet backbone: parity with torchvision, parameter counts, norms, frozen stages."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from rpn_jax.models.layers import Conv, conv2d, max_pool_3x3_s2
from rpn_jax.models.resnet import ResNet, group_count
from rpn_jax.models.rpn import init_module
from rpn_jax.weights import convert_torchvision_resnet

torch.set_num_threads(2)


def random_torchvision_resnet(arch: str, seed: int = 0) -> torch.nn.Module:
  """torchvision ResNet in eval mode with randomised BN affine and running stats.

  Fresh BN layers are the identity in eval mode, which would hide a wrong mapping
  of running_mean / running_var / weight / bias. Gammas below 1 keep activations
  O(1), as in a trained network (at gamma ~ 1 a random ResNet-50's C5 reaches ~3000,
  where float32 rounding alone exceeds the absolute tolerance).
  """
  torch.manual_seed(seed)
  model = torchvision.models.get_model(arch, weights=None).eval()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.2, 0.6)
        module.bias.normal_(0.0, 0.1)
        module.running_mean.normal_(0.0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
  return model


def torchvision_features(
    model: torch.nn.Module, image_nhwc: np.ndarray
) -> dict[str, np.ndarray]:
  x = torch.from_numpy(image_nhwc).permute(0, 3, 1, 2)
  out = {}
  with torch.no_grad():
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    for stage in range(1, 5):
      x = getattr(model, f"layer{stage}")(x)
      out[f"C{stage + 1}"] = x.permute(0, 2, 3, 1).numpy()
  return out


def assert_close(name: str, got: np.ndarray, ref: np.ndarray) -> None:
  assert got.shape == ref.shape, name
  max_abs = float(np.max(np.abs(got - ref)))
  rel = max_abs / float(np.max(np.abs(ref)))
  assert (
      max_abs <= 1e-3 and rel <= 1e-4
  ), f"{name}: max abs {max_abs:.2e}, rel {rel:.2e}"


@pytest.mark.parametrize(
    "arch,depth,norms",
    [("resnet18", 18, ("frozen_bn", "bn")), ("resnet50", 50, ("frozen_bn",))],
)
def test_matches_torchvision(arch, depth, norms):
  model = random_torchvision_resnet(arch)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  image = (
      np.random.default_rng(0).normal(size=(1, 128, 128, 3)).astype(np.float32)
  )
  ref = torchvision_features(model, image)
  for norm in norms:
    variables = convert_torchvision_resnet(state, arch, norm=norm)
    got = jax.jit(ResNet(depth=depth, norm=norm).apply)(variables, image)
    for level in ("C2", "C3", "C4", "C5"):
      assert_close(f"{arch} {norm} {level}", np.asarray(got[level]), ref[level])


@pytest.mark.parametrize("arch,depth", [("resnet18", 18), ("resnet50", 50)])
def test_parameter_count_matches_torchvision(arch, depth):
  model = torchvision.models.get_model(arch, weights=None)
  expected = sum(
      p.numel()
      for name, p in model.named_parameters()
      if not name.startswith("fc.")
  )
  shapes = jax.eval_shape(
      lambda: ResNet(depth=depth, norm="bn").init(
          jax.random.key(0), jnp.zeros((1, 64, 64, 3))
      )
  )
  assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == expected


def test_frozen_bn_has_no_trainable_norm_params():
  shapes = jax.eval_shape(
      lambda: ResNet(depth=18, width=16).init(
          jax.random.key(0), jnp.zeros((1, 64, 64, 3))
      )
  )
  assert "bn1" not in shapes["params"]
  assert set(shapes["batch_stats"]["bn1"]) == {"scale", "bias", "mean", "var"}
  assert all(len(x.shape) == 4 for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize(
    "depth,width,channels",
    [(18, 16, (16, 32, 64, 128)), (50, 16, (64, 128, 256, 512))],
)
def test_feature_shapes_and_width(depth, width, channels):
  model = ResNet(depth=depth, width=width, norm="gn")
  shapes = jax.eval_shape(
      lambda: model.init_with_output(
          jax.random.key(0), jnp.zeros((2, 96, 128, 3))
      )[0]
  )
  for level, stride, c in zip(
      ("C2", "C3", "C4", "C5"), (4, 8, 16, 32), channels, strict=True
  ):
    assert shapes[level].shape == (2, 96 // stride, 128 // stride, c)


def test_group_count():
  assert group_count(256) == 32
  assert group_count(16) == 16
  assert group_count(24) == 24
  assert group_count(48) == 24


def test_bfloat16_compute_keeps_float32_params():
  model = ResNet(depth=18, width=8, norm="bn", dtype=jnp.bfloat16)
  out, variables = jax.eval_shape(
      lambda: model.init_with_output(
          jax.random.key(0), jnp.ones((1, 32, 32, 3))
      )
  )
  assert {x.dtype for x in jax.tree.leaves(variables)} == {
      jnp.dtype(jnp.float32)
  }
  assert out["C5"].dtype == jnp.bfloat16


def test_bn_train_updates_running_stats_with_torch_momentum():
  model = ResNet(depth=18, width=8, norm="bn", num_stages=1)
  images = (
      np.random.default_rng(1)
      .normal(2.0, 3.0, size=(2, 32, 32, 3))
      .astype(np.float32)
  )
  variables = init_module(model, jax.random.key(0), images)
  _, state = jax.jit(
      lambda v, x: model.apply(
          v,
          x,
          train=True,
          mutable=["batch_stats", "intermediates"],
          capture_intermediates=lambda module, _: module.name == "conv1",
      )
  )(variables, images)
  stem = np.asarray(state["intermediates"]["conv1"]["__call__"][0])
  # torchvision's momentum 0.1: running = 0.9 * running + 0.1 * batch
  # (running mean starts at 0, running var at 1), with the unbiased batch
  # variance (ddof 1 over the 2 x 16 x 16 values), as torch keeps it.
  bn1 = state["batch_stats"]["bn1"]
  np.testing.assert_allclose(
      bn1["mean"], 0.1 * stem.mean((0, 1, 2)), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
      bn1["var"], 0.9 + 0.1 * stem.var((0, 1, 2), ddof=1), rtol=1e-5
  )


def test_frozen_stages_give_exactly_zero_gradients():
  model = ResNet(depth=18, width=8, norm="bn", frozen_stages=2, num_stages=2)
  images = (
      np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
  )
  variables = init_module(model, jax.random.key(0), images)

  def loss(params):
    out, _ = model.apply(
        {**variables, "params": params},
        images,
        train=True,
        mutable=["batch_stats"],
    )
    return sum(jnp.sum(out[level] ** 2) for level in out)

  grads = jax.jit(jax.grad(loss))(variables["params"])
  for name in ("conv1", "bn1", "layer1"):
    assert all(
        np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads[name])
    ), name
  assert all(
      np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads["layer2"])
  )


@pytest.mark.parametrize(
    "kwargs", [dict(depth=42), dict(norm="ln"), dict(frozen_stages=6)]
)
def test_bad_settings_raise(kwargs):
  with pytest.raises(ValueError):
    jax.eval_shape(
        lambda: ResNet(**kwargs).init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3))
        )
    )


@pytest.mark.parametrize(
    "kernel,stride,size", [(3, 1, 9), (3, 2, 9), (3, 2, 8), (7, 2, 11)]
)
def test_conv2d_gradients_match_xla(kernel, stride, size):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
  w = rng.normal(size=(kernel, kernel, 3, 5)).astype(np.float32)
  out_size = (size + 2 * (kernel // 2) - kernel) // stride + 1
  g = rng.normal(size=(2, out_size, out_size, 5)).astype(np.float32)
  pad = ((kernel // 2,) * 2,) * 2

  def reference(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

  @jax.jit
  def outputs_and_grads(x, w, g):
    y, ref_vjp = jax.vjp(reference, x, w)
    ours, our_vjp = jax.vjp(
        lambda a, b: conv2d(a, b, stride, kernel // 2), x, w
    )
    return (ours, *our_vjp(g)), (y, *ref_vjp(g))

  got, want = outputs_and_grads(x, w, g)
  for name, a, b in zip(
      ("output", "input grad", "kernel grad"), got, want, strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("stride,size", [(1, 6), (2, 7)])
def test_pointwise_conv_matches_nn_conv(stride, size):
  x = (
      np.random.default_rng(0)
      .normal(size=(2, size, size, 4))
      .astype(np.float32)
  )
  ours = Conv(6, 1, stride)
  variables = ours.init(jax.random.key(1), x)
  ref = nn.Conv(
      6, (1, 1), strides=(stride, stride), padding="VALID", use_bias=False
  )
  np.testing.assert_allclose(
      ours.apply(variables, x), ref.apply(variables, x), rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize("size", [(9, 9), (16, 12)])
def test_max_pool_matches_torch_values_and_gradients(size):
  x = np.random.default_rng(3).normal(size=(2, *size, 5)).astype(np.float32)
  g = np.random.default_rng(4).normal(
      size=(2, (size[0] + 1) // 2, (size[1] + 1) // 2, 5)
  )
  g = g.astype(np.float32)
  ours, vjp = jax.vjp(max_pool_3x3_s2, jnp.asarray(x))
  (ours_grad,) = vjp(jnp.asarray(g))
  tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  ref = torch.nn.functional.max_pool2d(tx, 3, stride=2, padding=1)
  ref.backward(torch.tensor(g.transpose(0, 3, 1, 2)))
  np.testing.assert_array_equal(
      np.asarray(ours), ref.detach().numpy().transpose(0, 2, 3, 1)
  )
  np.testing.assert_allclose(
      np.asarray(ours_grad),
      tx.grad.numpy().transpose(0, 2, 3, 1),
      rtol=1e-6,
      atol=1e-6,
  )
