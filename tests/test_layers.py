"""The CPU-fast gradient formulations of rpn_jax.models.layers and
kernel_grads against XLA's own, and how kernel_grads picks one."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpn_jax.models import kernel_grads, layers


def _reference_kernel_grad(x, w, g, stride, padding):
  return jax.vjp(lambda k: kernel_grads.conv(x, k, stride, padding), w)[1](g)[0]


@pytest.mark.parametrize("method", kernel_grads.methods(2))
@pytest.mark.parametrize(
    "kernel,stride,size", [(3, 1, 9), (3, 2, 9), (3, 2, 8), (7, 2, 11)]
)
def test_kernel_grad_methods_match_xla(kernel, stride, size, method):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
  w = rng.normal(size=(kernel, kernel, 3, 5)).astype(np.float32)
  out = (size + 2 * (kernel // 2) - kernel) // stride + 1
  g = rng.normal(size=(2, out, out, 5)).astype(np.float32)
  got = jax.jit(kernel_grads.kernel_grad, static_argnums=(0, 4, 5))(
      method, x, w, g, stride, kernel // 2
  )
  want = _reference_kernel_grad(x, w, g, stride, kernel // 2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_rule_method_choices():
  # ResNet-50 at 512 px: layer2's wide-image 3x3 conv, layer4's narrow-image one,
  # and the default recipe's width-16 ResNet-18.
  assert kernel_grads.rule_method(64 * 64, 128, 128, 9) == "gradient_first"
  assert kernel_grads.rule_method(16 * 16, 512, 512, 9) == "windows"
  assert kernel_grads.rule_method(16 * 48 * 48, 16, 16, 9) == "xla"
  assert kernel_grads.rule_method(16 * 96 * 96, 3, 16, 49) == "xla"


def test_per_image_methods_only_for_small_batches():
  assert "xla_per_image" in kernel_grads.methods(4)
  assert kernel_grads.methods(1) == kernel_grads.BASE_METHODS
  assert kernel_grads.methods(64) == kernel_grads.BASE_METHODS


_SHAPES = ((2, 8, 8, 4), (3, 3, 4, 6), (2, 8, 8, 6), 1, 1, np.float32)


@pytest.fixture
def timing_on(monkeypatch, tmp_path):
  """Every convolution timed, nothing chosen yet, choices saved under tmp_path."""
  monkeypatch.setenv("RPN_JAX_CACHE", str(tmp_path))
  monkeypatch.setattr(kernel_grads, "_chosen", {})
  monkeypatch.setattr(kernel_grads, "TUNING_MIN_FLOPS", 0)
  return tmp_path


def test_method_for_times_large_convolutions_once(
    monkeypatch, caplog, timing_on
):
  timed = []
  real = kernel_grads._time_methods

  def counting(*args):
    timed.append(args[0])
    return real(*args)

  monkeypatch.setattr(kernel_grads, "_time_methods", counting)
  with caplog.at_level("INFO"):
    first = kernel_grads.method_for(*_SHAPES)
    second = kernel_grads.method_for(*_SHAPES)
  assert first == second and first in kernel_grads.methods(2)
  assert timed == [kernel_grads.methods(2)]
  assert (
      f"conv kernel gradient x[2, 8, 8, 4] kernel[3, 3, 4, 6] stride 1: {first} ("
      in caplog.text
  )
  # A new process (no choices in memory) reads the saved one, untimed.
  saved = timing_on / "conv_kernel_grads.json"
  assert list(json.loads(saved.read_text()).values()) == [first]
  kernel_grads._chosen.clear()
  assert kernel_grads.method_for(*_SHAPES) == first
  assert len(timed) == 1
  # An unreadable file only means timing again.
  saved.write_text("{not json")
  kernel_grads._chosen.clear()
  assert kernel_grads.method_for(*_SHAPES) in kernel_grads.methods(2)
  assert len(timed) == 2


@pytest.mark.parametrize(
    "rule_slowdown,expect_rule", [(1.05, True), (2, False)]
)
def test_method_for_keeps_the_rule_unless_clearly_slower(
    monkeypatch, timing_on, rule_slowdown, expect_rule
):
  rule = kernel_grads.rule_method(2 * 8 * 8, 4, 6, 9)
  other = next(m for m in kernel_grads.methods(2) if m != rule)
  seconds = {m: 1.0 for m in kernel_grads.methods(2)}
  seconds.update({other: 0.01, rule: 0.01 * rule_slowdown})
  monkeypatch.setattr(kernel_grads, "_time_methods", lambda *a: seconds)
  chosen = kernel_grads.method_for(*_SHAPES)
  assert chosen == (rule if expect_rule else other)


def test_method_for_keeps_the_rule_when_small_or_turned_off(monkeypatch):
  monkeypatch.setattr(kernel_grads, "_chosen", {})
  monkeypatch.setattr(
      kernel_grads, "_time_methods", lambda *a: pytest.fail("timed")
  )
  rule = kernel_grads.rule_method(2 * 8 * 8, 4, 6, 9)
  assert kernel_grads.method_for(*_SHAPES) == rule
  monkeypatch.setattr(kernel_grads, "TUNING_MIN_FLOPS", 0)
  monkeypatch.setenv("RPN_JAX_CONV_TUNING", "0")
  assert kernel_grads.method_for(*_SHAPES) == rule


def _assert_conv2d_gradients_match_xla(x_shape, w_shape, stride, padding):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=w_shape) * 0.1, jnp.float32)
  loss = lambda conv: jax.grad(
      lambda a, b: jnp.sum(conv(a, b) ** 2), argnums=(0, 1)
  )
  got = jax.jit(loss(lambda a, b: layers.conv2d(a, b, stride, padding)))(x, w)
  want = jax.jit(loss(lambda a, b: kernel_grads.conv(a, b, stride, padding)))(
      x, w
  )
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_timed_conv2d_gradients_match_xla(timing_on):
  # Every convolution timed: the step is traced with whichever formulation won.
  _assert_conv2d_gradients_match_xla((2, 9, 9, 8), (7, 7, 8, 16), 2, 3)
  assert len(kernel_grads._chosen) == 1


@pytest.mark.parametrize("channels", [(4, 12), (12, 4)])
def test_pointwise_conv_matches_autodiff(channels):
  cin, cout = channels
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 5, 6, cin)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(cin, cout)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(2, 5, 6, cout)), jnp.float32)
  y, vjp = jax.vjp(layers.pointwise_conv, x, k)
  y_ref, vjp_ref = jax.vjp(lambda a, b: jnp.einsum("bhwc,cd->bhwd", a, b), x, k)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6)
  for got, want in zip(vjp(g), vjp_ref(g), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_wide_conv2d_gradients_match_xla():
  # Wide enough (I * O > 64 * 64) that conv2d's CPU kernel gradient uses matmuls.
  _assert_conv2d_gradients_match_xla((1, 6, 6, 72), (3, 3, 72, 64), 2, 1)
