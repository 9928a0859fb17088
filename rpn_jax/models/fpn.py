"""Feature pyramid P2..P6 on ResNet's C2..C5, in torchvision's / detectron2's layout.

A 1x1 lateral conv brings each of C2..C5 to `channels`; from the top, the
running sum is upsampled 2x (nearest) and added to the next finer lateral; a
3x3 output conv turns each sum into P2..P5; P6 is P5 subsampled with stride 2
(torchvision's LastLevelMaxPool, a kernel-1 max pool, and detectron2's RPN P6).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rpn_jax.models.layers import Conv

LEVELS = ("P2", "P3", "P4", "P5", "P6")
# Input pixels per cell of each level, in the order of LEVELS.
LEVEL_STRIDES = (4, 8, 16, 32, 64)
# torchvision's FPN convs: kaiming_uniform_(a=1), i.e. uniform with variance 1 / fan_in.
_fpn_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def upsample_nearest(x: jnp.ndarray, hw: tuple[int, int]) -> jnp.ndarray:
  """x [B, h, w, C] -> [B, H, W, C] by nearest neighbour, for H in {2h - 1, 2h} (same for W).

  Those are the sizes the ResNet's rounding-up stride-2 layers leave between
  adjacent levels, where torch's `F.interpolate(size=(H, W), mode="nearest")`
  reads source row floor(i * h / H) = i // 2: each row and column doubled, the
  last one cropped when H is odd. A broadcast (not a gather) keeps the gradient
  a plain sum on CPU.
  """
  height, width = hw
  if not (
      2 * x.shape[1] - 1 <= height <= 2 * x.shape[1]
      and 2 * x.shape[2] - 1 <= width <= 2 * x.shape[2]
  ):
    raise ValueError(
        f"upsample_nearest: {x.shape[1:3]} -> {tuple(hw)} is not the 2x step of a "
        "stride-2 pyramid"
    )
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)[:, :height, :width]


class FPN(nn.Module):
  """Top-down pyramid with lateral connections (Lin et al. 2017), no norm, no activation.

  Params: "lateral2".."lateral5" (1x1) and "output2".."output5" (3x3) convs with
  bias, named for the C level they read (detectron2's fpn_lateral / fpn_output).

  `__call__(features)` takes {"C2".."C5": [B, H_i, W_i, C_i]} NHWC (more keys
  are ignored) and returns {"P2".."P6": [B, h_i, w_i, channels]} in `dtype`,
  P2..P5 the size of C2..C5 and P6 of size ceil(h_5 / 2) x ceil(w_5 / 2).
  """

  channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, features: dict[str, jnp.ndarray]
  ) -> dict[str, jnp.ndarray]:
    def conv(kernel: int, name: str) -> Conv:
      return Conv(
          self.channels,
          kernel,
          use_bias=True,
          kernel_init=_fpn_init,
          dtype=self.dtype,
          name=name,
      )

    inner = conv(1, "lateral5")(features["C5"])
    pyramid = {"P5": conv(3, "output5")(inner)}
    for level in (4, 3, 2):
      lateral = conv(1, f"lateral{level}")(features[f"C{level}"])
      inner = lateral + upsample_nearest(inner, lateral.shape[1:3])
      pyramid[f"P{level}"] = conv(3, f"output{level}")(inner)
    pyramid["P6"] = pyramid["P5"][:, ::2, ::2]
    return {name: pyramid[name] for name in LEVELS}
