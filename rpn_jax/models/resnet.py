"""ResNet backbone in torchvision's layout (v1.5), NHWC, returning C2..C5.

Module and parameter names follow torchvision (`conv1`, `bn1`, `layer1`..`layer4`,
blocks `"0"`, `"1"`, ..., `downsample/"0"` conv and `downsample/"1"` norm) so that
`rpn_jax.weights` maps a torchvision state_dict key onto a Flax path by splitting
on dots. Parameters are float32; computation runs in `dtype` (e.g. bfloat16).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from rpn_jax.models.layers import Conv, max_pool_3x3_s2

STAGE_BLOCKS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}
# torchvision's architecture names (`model.backbone`, `python -m rpn_jax.weights --arch`).
ARCH_DEPTHS = {f"resnet{depth}": depth for depth in STAGE_BLOCKS}
NORMS = ("frozen_bn", "bn", "gn")
# torchvision's BatchNorm2d / FrozenBatchNorm2d epsilon.
BN_EPSILON = 1e-5


class FrozenBatchNorm(nn.Module):
  """torchvision's FrozenBatchNorm2d: y = (x - mean) / sqrt(var + eps) * scale + bias.

  All four vectors live in the "batch_stats" collection, so an optimizer over
  "params" never sees them and nothing updates them.
  """

  epsilon: float = BN_EPSILON
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    shape = (x.shape[-1],)
    scale = self.variable(
        "batch_stats", "scale", jnp.ones, shape, jnp.float32
    ).value
    bias = self.variable(
        "batch_stats", "bias", jnp.zeros, shape, jnp.float32
    ).value
    mean = self.variable(
        "batch_stats", "mean", jnp.zeros, shape, jnp.float32
    ).value
    var = self.variable(
        "batch_stats", "var", jnp.ones, shape, jnp.float32
    ).value
    # Fold into one multiply-add, in float32, before casting to the compute dtype.
    mult = scale * lax.rsqrt(var + self.epsilon)
    shift = bias - mean * mult
    return x.astype(self.dtype) * mult.astype(self.dtype) + shift.astype(
        self.dtype
    )


class BatchNorm(nn.Module):
  """torch.nn.BatchNorm2d (momentum 0.1) over NHWC: batch statistics in training.

  Normalises with the biased variance of the batch, as torch and Flax do,
  but keeps the unbiased one (n / (n - 1), n = B*H*W) in the running
  average, as torch does and Flax's `nn.BatchNorm` does not, so running
  statistics stay those a torchvision model would have after the same steps.
  Parameter and statistic names are Flax's ("scale", "bias"; "mean", "var").
  Statistics are computed in float32 whatever the compute dtype.
  """

  use_running_average: bool
  momentum: float = 0.1
  epsilon: float = BN_EPSILON
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    shape = (x.shape[-1],)
    scale = self.param("scale", nn.initializers.ones, shape, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, shape, jnp.float32)
    running_mean = self.variable(
        "batch_stats", "mean", jnp.zeros, shape, jnp.float32
    )
    running_var = self.variable(
        "batch_stats", "var", jnp.ones, shape, jnp.float32
    )
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      x32 = x.astype(jnp.float32)
      mean = jnp.mean(x32, axes)
      # E[x^2] - E[x]^2 (one pass, as Flax's fast variance), never negative.
      var = jnp.maximum(jnp.mean(jnp.square(x32), axes) - jnp.square(mean), 0.0)
      if not self.is_initializing():
        n = x.size // x.shape[-1]
        unbiased = var * (n / max(n - 1, 1))
        m = self.momentum
        running_mean.value = (1 - m) * running_mean.value + m * mean
        running_var.value = (1 - m) * running_var.value + m * unbiased
    mult = scale * lax.rsqrt(var + self.epsilon)
    shift = bias - mean * mult
    return x.astype(self.dtype) * mult.astype(self.dtype) + shift.astype(
        self.dtype
    )


def group_count(channels: int, max_groups: int = 32) -> int:
  """Largest number of groups <= max_groups that divides `channels`."""
  return max(
      g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0
  )


def make_norm(
    norm: str, channels: int, train: bool, dtype: Any, name: str
) -> nn.Module:
  """Normalisation layer for `norm` ("frozen_bn" | "bn" | "gn").

  "bn" is `BatchNorm`: batch statistics when `train`, running statistics
  updated as torch's BatchNorm2d updates them.
  """
  if norm == "frozen_bn":
    return FrozenBatchNorm(dtype=dtype, name=name)
  if norm == "bn":
    return BatchNorm(use_running_average=not train, dtype=dtype, name=name)
  if norm == "gn":
    return nn.GroupNorm(
        num_groups=group_count(channels),
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )
  raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


class Downsample(nn.Module):
  """Projection shortcut: 1x1 conv (named "0") then norm (named "1"), as torchvision."""

  features: int
  stride: int
  norm: str
  dtype: Any

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    x = Conv(self.features, 1, self.stride, dtype=self.dtype, name="0")(x)
    return make_norm(self.norm, self.features, train, self.dtype, "1")(x)


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34). Output channels = planes."""

  planes: int
  stride: int
  norm: str
  dtype: Any

  expansion = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    out_channels = self.planes * self.expansion
    y = Conv(self.planes, 3, self.stride, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(make_norm(self.norm, self.planes, train, self.dtype, "bn1")(y))
    y = Conv(self.planes, 3, 1, dtype=self.dtype, name="conv2")(y)
    y = make_norm(self.norm, self.planes, train, self.dtype, "bn2")(y)
    if self.stride != 1 or x.shape[-1] != out_channels:
      x = Downsample(
          out_channels, self.stride, self.norm, self.dtype, name="downsample"
      )(x, train)
    return nn.relu(y + x)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (carries the stride: v1.5) -> 1x1 expanding 4x (ResNet-50/101)."""

  planes: int
  stride: int
  norm: str
  dtype: Any

  expansion = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    out_channels = self.planes * self.expansion
    y = Conv(self.planes, 1, 1, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(make_norm(self.norm, self.planes, train, self.dtype, "bn1")(y))
    y = Conv(self.planes, 3, self.stride, dtype=self.dtype, name="conv2")(y)
    y = nn.relu(make_norm(self.norm, self.planes, train, self.dtype, "bn2")(y))
    y = Conv(out_channels, 1, 1, dtype=self.dtype, name="conv3")(y)
    y = make_norm(self.norm, out_channels, train, self.dtype, "bn3")(y)
    if self.stride != 1 or x.shape[-1] != out_channels:
      x = Downsample(
          out_channels, self.stride, self.norm, self.dtype, name="downsample"
      )(x, train)
    return nn.relu(y + x)


class ResLayer(nn.Module):
  """One stage (torchvision's `layerN`): blocks named "0", "1", ...; the first one strides."""

  block_cls: type
  num_blocks: int
  planes: int
  stride: int
  norm: str
  dtype: Any

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    for index in range(self.num_blocks):
      stride = self.stride if index == 0 else 1
      x = self.block_cls(
          self.planes, stride, self.norm, self.dtype, name=str(index)
      )(x, train)
    return x


class ResNet(nn.Module):
  """ResNet trunk returning feature maps C2..C{num_stages+1}.

  Attributes:
    depth: 18 | 34 | 50 | 101.
    width: stem channels; stage i has width * 2**i planes (64 = torchvision).
    norm: "frozen_bn" | "bn" | "gn" (see `make_norm`).
    frozen_stages: 0 none, 1 stem (conv1 + bn1), k >= 2 stem + layer1..layer{k-1}.
      `lax.stop_gradient` on that stage's output, so XLA computes no gradient
      convolutions below it (those params get exactly zero gradient).
    num_stages: how many of layer1..layer4 to build (4 = all; 3 stops at C4 and
      creates no layer4 params).
    dtype: computation dtype; params stay float32.

  `__call__(images [B, H, W, 3] float, train=False)` returns
  {"C2": [B, H/4, W/4, c], "C3": [B, H/8, ...], "C4": [B, H/16, ...], "C5": [B, H/32, ...]}
  in `dtype`, where c = width * expansion * 2**(stage index).
  """

  depth: int = 50
  width: int = 64
  norm: str = "frozen_bn"
  frozen_stages: int = 0
  num_stages: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, images: jnp.ndarray, train: bool = False
  ) -> dict[str, jnp.ndarray]:
    if self.depth not in STAGE_BLOCKS:
      raise ValueError(
          f"unsupported ResNet depth {self.depth}; expected one of {sorted(STAGE_BLOCKS)}"
      )
    if not 1 <= self.num_stages <= 4:
      raise ValueError(f"num_stages must be in 1..4, got {self.num_stages}")
    if not 0 <= self.frozen_stages <= self.num_stages + 1:
      raise ValueError(
          f"frozen_stages must be in 0..{self.num_stages + 1}, got {self.frozen_stages}"
      )
    block_cls = BasicBlock if self.depth < 50 else Bottleneck

    x = Conv(self.width, 7, 2, dtype=self.dtype, name="conv1")(
        images.astype(self.dtype)
    )
    x = nn.relu(make_norm(self.norm, self.width, train, self.dtype, "bn1")(x))
    x = max_pool_3x3_s2(x)
    if self.frozen_stages >= 1:
      x = lax.stop_gradient(x)

    features = {}
    for stage, num_blocks in enumerate(
        STAGE_BLOCKS[self.depth][: self.num_stages]
    ):
      x = ResLayer(
          block_cls,
          num_blocks,
          self.width * 2**stage,
          1 if stage == 0 else 2,
          self.norm,
          self.dtype,
          name=f"layer{stage + 1}",
      )(x, train)
      if self.frozen_stages >= stage + 2:
        x = lax.stop_gradient(x)
      features[f"C{stage + 2}"] = x
    return features
