"""Convolution and pooling layers whose gradients are fast on XLA's CPU backend.

XLA's CPU backend computes many convolutions' kernel gradients and a max
pool's gradient (select-and-scatter) slower than equivalent formulations
(per-tap matmuls, one convolution per image, elementwise maxima), and runs a
matmul whose contraction is over pixels only after transposing one operand
in memory, which costs more the wider it is. These layers give the same
values and gradients as `lax.conv_general_dilated` and `nn.max_pool` through
the faster formulations (on CPU only, for the convolution's kernel gradient:
`rpn_jax.models.kernel_grads`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from rpn_jax.models import kernel_grads

# torchvision initialises convolutions with kaiming_normal_(mode="fan_out", relu).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(
    x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int
) -> jnp.ndarray:
  """Convolution x [B, H, W, I] * kernel [kh, kw, I, O], symmetric zero padding -> [B, H', W', O].

  Same values and gradients as `lax.conv_general_dilated`; on CPU the kernel
  gradient is computed in the formulation `kernel_grads.method_for` picks
  for the shape (timed on this machine for large convolutions).
  """
  return kernel_grads.conv(x, kernel, stride, padding)


def _conv2d_fwd(x, kernel, stride, padding):
  return kernel_grads.conv(x, kernel, stride, padding), (x, kernel)


def _conv2d_bwd(stride, padding, residuals, g):
  x, kernel = residuals
  x_grad = jax.vjp(
      lambda x_: kernel_grads.conv(x_, kernel, stride, padding), x
  )[1](g)[0]
  kernel_grad = lax.platform_dependent(
      x,
      kernel,
      g,
      cpu=functools.partial(
          kernel_grads.on_cpu, stride=stride, padding=padding
      ),
      default=functools.partial(
          kernel_grads.kernel_grad, "xla", stride=stride, padding=padding
      ),
  )
  return x_grad, kernel_grad


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


@jax.custom_vjp
def pointwise_conv(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """1x1 convolution as a channel matmul: x [B, H, W, I] @ kernel [I, O] -> [B, H, W, O].

  The kernel gradient contracts over pixels, so XLA's CPU matmul needs x or g
  transposed in memory; autodiff always transposes g, this transposes the one
  with fewer channels (x in ResNet's expanding 1x1 convs and shortcuts).
  """
  return jnp.einsum("bhwc,cd->bhwd", x, kernel)


def _pointwise_fwd(x, kernel):
  return pointwise_conv(x, kernel), (x, kernel)


def _pointwise_bwd(residuals, g):
  x, kernel = residuals
  x_grad = jnp.einsum("bhwd,cd->bhwc", g, kernel)
  if x.shape[-1] <= g.shape[-1]:
    kernel_grad = jnp.einsum("bhwc,bhwd->cd", x, g)
  else:
    kernel_grad = jnp.einsum("bhwd,bhwc->dc", g, x).T
  return x_grad, kernel_grad


pointwise_conv.defvjp(_pointwise_fwd, _pointwise_bwd)


class Conv(nn.Module):
  """Square conv, stride `stride`, torch's symmetric padding kernel_size // 2, NHWC.

  Params: "kernel" [k, k, I, O] (+ "bias" [O]), float32, names and layout as
  `nn.Conv`; computation in `dtype`. A 1x1 kernel runs as `pointwise_conv` on
  x[:, ::stride, ::stride] (same result), larger kernels through `conv2d`.
  """

  features: int
  kernel_size: int
  stride: int = 1
  use_bias: bool = False
  kernel_init: Callable = _conv_init
  bias_init: Callable = nn.initializers.zeros
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, jnp.float32).astype(
        self.dtype
    )
    x = x.astype(self.dtype)
    if self.kernel_size == 1:
      y = pointwise_conv(x[:, :: self.stride, :: self.stride], kernel[0, 0])
    else:
      y = conv2d(x, kernel, self.stride, self.kernel_size // 2)
    if self.use_bias:
      y = y + self.param(
          "bias", self.bias_init, (self.features,), jnp.float32
      ).astype(self.dtype)
    return y


def max_pool_3x3_s2(x: jnp.ndarray) -> jnp.ndarray:
  """torchvision's stem pool, MaxPool2d(3, stride=2, padding=1), on [B, H, W, C].

  Separable: the maximum of three column-strided slices of the (-inf padded)
  input, then of three row-strided slices of that. The same values as
  `nn.max_pool`, and a gradient made of pads and selects instead of XLA's
  select-and-scatter (4x faster on CPU at 128x128x32 with nine slices, and the
  separable form halves that again: 25 vs 36 ms for ResNet-18 width 16's stem
  at batch 8 x 192 px, forward and backward). Ties (equal maxima) share the
  gradient, where torch gives it to one of them; after the stem's ReLU the
  tied zeros carry no gradient either way.
  """
  b, h, w, c = x.shape
  out_h, out_w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  columns = None
  for j in range(3):
    window = lax.slice(
        xp, (0, 0, j, 0), (b, h + 2, j + 2 * (out_w - 1) + 1, c), (1, 1, 2, 1)
    )
    columns = window if columns is None else jnp.maximum(columns, window)
  out = None
  for i in range(3):
    window = lax.slice(
        columns,
        (0, i, 0, 0),
        (b, i + 2 * (out_h - 1) + 1, out_w, c),
        (1, 2, 1, 1),
    )
    out = window if out is None else jnp.maximum(out, window)
  return out
