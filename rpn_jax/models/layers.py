"""Convolution and pooling layers whose gradients are fast on XLA's CPU backend.

XLA computes a convolution's kernel gradient and a max pool's gradient
(select-and-scatter) several times slower on CPU than equivalent matmuls and
elementwise maxima; these layers give the same values and gradients through
the fast formulations (on CPU only, for the convolution).
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


def _conv(x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int) -> jnp.ndarray:
    pad = ((padding, padding), (padding, padding))
    return lax.conv_general_dilated(x, kernel, (stride, stride), pad, dimension_numbers=_DIMENSIONS)


def _kernel_grad_xla(
    x: jnp.ndarray, kernel: jnp.ndarray, g: jnp.ndarray, stride: int, padding: int
) -> jnp.ndarray:
    return jax.vjp(lambda k: _conv(x, k, stride, padding), kernel)[1](g)[0]


def _kernel_grad_matmuls(
    x: jnp.ndarray, kernel: jnp.ndarray, g: jnp.ndarray, stride: int, padding: int
) -> jnp.ndarray:
    """dL/dkernel [kh, kw, I, O] as kh*kw matmuls: window (i, j) of the padded input times g."""
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out_h, out_w = g.shape[1:3]
    rows = []
    for i in range(kernel.shape[0]):
        row = []
        for j in range(kernel.shape[1]):
            window = xp[
                :,
                i : i + stride * (out_h - 1) + 1 : stride,
                j : j + stride * (out_w - 1) + 1 : stride,
            ]
            row.append(jnp.einsum("bhwc,bhwd->cd", window, g, preferred_element_type=jnp.float32))
        rows.append(jnp.stack(row))
    return jnp.stack(rows).astype(kernel.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int) -> jnp.ndarray:
    """Convolution x [B, H, W, I] * kernel [kh, kw, I, O], symmetric zero padding -> [B, H', W', O].

    Same values and gradients as `lax.conv_general_dilated`; on CPU the kernel
    gradient is computed as kh*kw matmuls, which XLA's CPU backend runs faster than
    its convolution kernel gradient (5x on ResNet-50's 3x3 stride-1 layers at 512 px,
    3x on the 7x7 stem).
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
        cpu=functools.partial(_kernel_grad_matmuls, stride=stride, padding=padding),
        default=functools.partial(_kernel_grad_xla, stride=stride, padding=padding),
    )
    return x_grad, kernel_grad


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv(nn.Module):
    """Square conv, stride `stride`, torch's symmetric padding kernel_size // 2, NHWC.

    Params: "kernel" [k, k, I, O] (+ "bias" [O]), float32, names and layout as
    `nn.Conv`; computation in `dtype`. A 1x1 kernel runs as a channel matmul on
    x[:, ::stride, ::stride] (same result; its gradient is a plain matmul), larger
    kernels through `conv2d`. Both avoid XLA's slow CPU convolution kernel gradient.
    """

    features: int
    kernel_size: int
    stride: int = 1
    use_bias: bool = False
    kernel_init: Callable = _conv_init
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32).astype(self.dtype)
        x = x.astype(self.dtype)
        if self.kernel_size == 1:
            y = jnp.einsum("bhwc,cd->bhwd", x[:, :: self.stride, :: self.stride], kernel[0, 0])
        else:
            y = conv2d(x, kernel, self.stride, self.kernel_size // 2)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(
                self.dtype
            )
        return y


def max_pool_3x3_s2(x: jnp.ndarray) -> jnp.ndarray:
    """torchvision's stem pool, MaxPool2d(3, stride=2, padding=1), on [B, H, W, C].

    The maximum of nine strided slices of the (-inf padded) input: the same values
    as `nn.max_pool`, and a gradient made of pads instead of XLA's select-and-scatter
    (4x faster on CPU at 128x128x32). Ties (equal maxima) share the gradient, where
    torch gives it to one of them; after the stem's ReLU the tied zeros carry no
    gradient either way.
    """
    b, h, w, c = x.shape
    out_h, out_w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    out = None
    for i in range(3):
        for j in range(3):
            window = lax.slice(xp, (0, i, j, 0), (b, i + 2 * (out_h - 1) + 1, j + 2 * (out_w - 1) + 1, c),
                               (1, 2, 2, 1))
            out = window if out is None else jnp.maximum(out, window)
    return out
