"""Convolution and pooling layers whose gradients are fast on XLA's CPU backend.

XLA's CPU backend computes a wide convolution's kernel gradient and a max
pool's gradient (select-and-scatter) slower than equivalent matmuls and
elementwise maxima, and runs a matmul whose contraction is over pixels (every
kernel gradient) only after transposing one operand in memory, which costs
more the wider it is. These layers give the same values and gradients as
`lax.conv_general_dilated` and `nn.max_pool` through the faster formulations
(on CPU only, for the convolution's kernel gradient).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# torchvision initialises convolutions with kaiming_normal_(mode="fan_out", relu).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _conv(
    x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int
) -> jnp.ndarray:
  pad = ((padding, padding), (padding, padding))
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), pad, dimension_numbers=_DIMENSIONS
  )


def _kernel_grad_xla(
    x: jnp.ndarray,
    kernel: jnp.ndarray,
    g: jnp.ndarray,
    stride: int,
    padding: int,
) -> jnp.ndarray:
  return jax.vjp(lambda k: _conv(x, k, stride, padding), kernel)[1](g)[0]


def _windows(
    xp: jnp.ndarray,
    out_hw: tuple[int, int],
    kernel_hw: tuple[int, int],
    stride: int,
) -> list[jnp.ndarray]:
  """The kh*kw strided windows [B, H', W', I] of a padded input that tap (i, j) multiplies."""
  out_h, out_w = out_hw
  return [
      xp[
          :,
          i : i + stride * (out_h - 1) + 1 : stride,
          j : j + stride * (out_w - 1) + 1 : stride,
      ]
      for i in range(kernel_hw[0])
      for j in range(kernel_hw[1])
  ]


def _kernel_grad_matmuls(
    x: jnp.ndarray,
    kernel: jnp.ndarray,
    g: jnp.ndarray,
    stride: int,
    padding: int,
    gradient_first: bool,
) -> jnp.ndarray:
  """dL/dkernel [kh, kw, I, O] as kh*kw matmuls: window (i, j) of the padded input with g.

  A matmul over pixels needs one operand transposed in memory, and XLA's CPU
  transposes are slow. `gradient_first` picks which: g once for all taps
  (then each window is only copied, and the small [O, I] results are
  transposed), else every window.
  """
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  windows = _windows(xp, g.shape[1:3], kernel.shape[:2], stride)
  if gradient_first:
    taps = [
        jnp.einsum("bhwd,bhwc->dc", g, w, preferred_element_type=jnp.float32)
        for w in windows
    ]
    grad = jnp.swapaxes(jnp.stack(taps), 1, 2)
  else:
    grad = jnp.stack(
        [
            jnp.einsum(
                "bhwc,bhwd->cd", w, g, preferred_element_type=jnp.float32
            )
            for w in windows
        ]
    )
  return grad.reshape(kernel.shape).astype(kernel.dtype)


def kernel_grad_method(
    pixels: int, in_channels: int, out_channels: int, taps: int
) -> str:
  """How `conv2d` computes its kernel gradient on CPU: "xla", "gradient_first" or "windows".

  `pixels` = B * H' * W' of the output. Measured on ResNet layers (2 cores):
  XLA's own kernel gradient wins for narrow layers (I * O <= 64 * 64); for
  wider ones the per-tap matmuls win, transposing g once when the kh*kw
  window transposes would move more data than g plus the kernel-sized result
  (transposed bytes counted 3x a plain copy's).
  """
  if in_channels * out_channels <= 64 * 64:
    return "xla"
  windows_cost = 3 * taps * pixels * in_channels
  gradient_cost = (
      3 * pixels * out_channels
      + taps * pixels * in_channels
      + 3 * taps * in_channels * out_channels
  )
  return "gradient_first" if gradient_cost < windows_cost else "windows"


def _kernel_grad_cpu(
    x: jnp.ndarray,
    kernel: jnp.ndarray,
    g: jnp.ndarray,
    stride: int,
    padding: int,
) -> jnp.ndarray:
  method = kernel_grad_method(
      g.shape[0] * g.shape[1] * g.shape[2],
      kernel.shape[2],
      kernel.shape[3],
      kernel.shape[0] * kernel.shape[1],
  )
  if method == "xla":
    return _kernel_grad_xla(x, kernel, g, stride, padding)
  return _kernel_grad_matmuls(
      x, kernel, g, stride, padding, method == "gradient_first"
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(
    x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int
) -> jnp.ndarray:
  """Convolution x [B, H, W, I] * kernel [kh, kw, I, O], symmetric zero padding -> [B, H', W', O].

  Same values and gradients as `lax.conv_general_dilated`; on CPU the kernel
  gradient of wide layers is computed as kh*kw matmuls (`kernel_grad_method`),
  which XLA's CPU backend runs 1.2-2x faster than its convolution kernel
  gradient on ResNet-50's 3x3 layers at 512-1024 px.
  """
  return _conv(x, kernel, stride, padding)


def _conv2d_fwd(x, kernel, stride, padding):
  return _conv(x, kernel, stride, padding), (x, kernel)


def _conv2d_bwd(stride, padding, residuals, g):
  x, kernel = residuals
  x_grad = jax.vjp(lambda x_: _conv(x_, kernel, stride, padding), x)[1](g)[0]
  kernel_grad = lax.platform_dependent(
      x,
      kernel,
      g,
      cpu=functools.partial(_kernel_grad_cpu, stride=stride, padding=padding),
      default=functools.partial(
          _kernel_grad_xla, stride=stride, padding=padding
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
