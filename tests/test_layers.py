"""The CPU-fast gradient formulations of rpn_jax.models.layers against XLA's own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpn_jax.models import layers


def _reference_kernel_grad(x, w, g, stride, padding):
  return jax.vjp(lambda k: layers._conv(x, k, stride, padding), w)[1](g)[0]


@pytest.mark.parametrize("gradient_first", [False, True])
@pytest.mark.parametrize(
    "kernel,stride,size", [(3, 1, 9), (3, 2, 9), (3, 2, 8), (7, 2, 11)]
)
def test_kernel_grad_matmuls_match_xla(kernel, stride, size, gradient_first):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
  w = rng.normal(size=(kernel, kernel, 3, 5)).astype(np.float32)
  out = (size + 2 * (kernel // 2) - kernel) // stride + 1
  g = rng.normal(size=(2, out, out, 5)).astype(np.float32)
  got = jax.jit(layers._kernel_grad_matmuls, static_argnums=(3, 4, 5))(
      x, w, g, stride, kernel // 2, gradient_first
  )
  want = _reference_kernel_grad(x, w, g, stride, kernel // 2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_kernel_grad_method_choices():
  # ResNet-50 at 512 px: layer2's wide-image 3x3 conv, layer4's narrow-image one,
  # and the default recipe's width-16 ResNet-18.
  assert layers.kernel_grad_method(64 * 64, 128, 128, 9) == "gradient_first"
  assert layers.kernel_grad_method(16 * 16, 512, 512, 9) == "windows"
  assert layers.kernel_grad_method(16 * 48 * 48, 16, 16, 9) == "xla"
  assert layers.kernel_grad_method(16 * 96 * 96, 3, 16, 49) == "xla"


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
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(1, 6, 6, 72)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 72, 64)) * 0.1, jnp.float32)
  loss = lambda conv: jax.grad(
      lambda a, b: jnp.sum(conv(a, b) ** 2), argnums=(0, 1)
  )
  got = jax.jit(loss(lambda a, b: layers.conv2d(a, b, 2, 1)))(x, w)
  want = jax.jit(loss(lambda a, b: layers._conv(a, b, 2, 1)))(x, w)
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
