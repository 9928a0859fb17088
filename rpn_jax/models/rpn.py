"""Region Proposal Network: ResNet backbone (+ optional FPN) + RPN head.

Outputs are flattened in (row, column, anchor) order, the order of
`rpn_jax.anchors.generate_anchors(feature_hw, stride, ...)`, so `deltas[b, i]`
and `objectness[b, i]` belong to anchor `i` of that grid. With FPN one head is
shared by the levels P2..P6 and their outputs are laid end to end, level by
level, in the order of `head_strides`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rpn_jax.models import fpn as fpn_lib
from rpn_jax.models.layers import Conv
from rpn_jax.models.resnet import ResNet, make_norm

_FEATURE_STRIDES = {"C2": 4, "C3": 8, "C4": 16, "C5": 32}
# What follows each 3x3 head conv before its ReLU: nothing (torchvision's
# head) or GroupNorm (ATSS's and GFL's heads).
HEAD_NORMS = ("none", "gn")


def check_head_norm(norm: str) -> None:
  """ValueError naming model.head_norm unless `norm` is one of HEAD_NORMS."""
  if norm not in HEAD_NORMS:
    raise ValueError(f"model.head_norm={norm!r} is not one of {HEAD_NORMS}")


def feature_stride(feature: str) -> int:
  """Stride in input pixels of backbone feature map `feature` ("C4" -> 16, "C5" -> 32)."""
  if feature not in _FEATURE_STRIDES:
    raise ValueError(
        f"unknown feature {feature!r}; expected one of {sorted(_FEATURE_STRIDES)}"
    )
  return _FEATURE_STRIDES[feature]


def head_strides(feature: str, fpn: bool) -> tuple[int, ...]:
  """Strides of the maps the head runs on, in its output order.

  P2..P6 (4..64) with FPN, else the one stride of backbone map `feature`.
  """
  if fpn:
    return fpn_lib.LEVEL_STRIDES
  return (feature_stride(feature),)


class RPNHead(nn.Module):
  """3x3 conv + ReLU, then 1x1 convs to A objectness logits and 4A deltas (torchvision's head).

  `num_convs` > 1 stacks more 3x3 conv + ReLU layers ("conv1", "conv2", ...)
  after the first ("conv"), shared by both outputs. The objectness bias starts
  at logit(`objectness_prior`): 0 for torchvision's 0.5; RetinaNet's 0.01 keeps
  a loss over every anchor stable from the start. `norm="gn"` puts a
  GroupNorm ("gn", "gn1", ...; the most groups up to 32 that divide
  `channels`) between each 3x3 conv and its ReLU, as ATSS's and GFL's heads
  do; those convs then have no bias (the norm's own bias replaces it).

  `__call__(features [B, H, W, C])` returns
  {"objectness": [B, H*W*A] float32 logits, "deltas": [B, H*W*A, 4] float32 (dx, dy, dw, dh)}.
  Delta channel a*4 + k of the 1x1 conv is coordinate k of anchor a, as in torchvision.
  """

  num_anchors: int = 15
  channels: int = 256
  objectness_prior: float = 0.5
  num_convs: int = 1
  dtype: Any = jnp.float32
  norm: str = "none"

  @nn.compact
  def __call__(self, features: jnp.ndarray) -> dict[str, jnp.ndarray]:
    def head_conv(
        out: int,
        kernel: int,
        name: str,
        bias: float = 0.0,
        use_bias: bool = True,
    ) -> Conv:
      return Conv(
          out,
          kernel,
          use_bias=use_bias,
          kernel_init=nn.initializers.normal(stddev=0.01),
          bias_init=nn.initializers.constant(bias),
          dtype=self.dtype,
          name=name,
      )

    prior = float(self.objectness_prior)
    if not 0.0 < prior < 1.0:
      raise ValueError(
          f"model.objectness_prior must lie in (0, 1), got {prior}"
      )
    if self.num_convs < 1:
      raise ValueError(
          f"model.head_convs must be at least 1, got {self.num_convs}"
      )
    check_head_norm(self.norm)
    normed = self.norm == "gn"
    x = features
    for k in range(self.num_convs):
      suffix = str(k) if k else ""
      x = head_conv(self.channels, 3, f"conv{suffix}", use_bias=not normed)(x)
      if normed:
        # Per image and group: no batch statistics, train or eval alike.
        x = make_norm("gn", self.channels, False, self.dtype, f"gn{suffix}")(x)
      x = nn.relu(x)
    logits = head_conv(
        self.num_anchors, 1, "cls_logits", math.log(prior / (1.0 - prior))
    )(x)
    deltas = head_conv(4 * self.num_anchors, 1, "bbox_pred")(x)
    batch, height, width = logits.shape[:3]
    num = height * width * self.num_anchors
    return {
        "objectness": logits.reshape(batch, num).astype(jnp.float32),
        "deltas": deltas.reshape(batch, num, 4).astype(jnp.float32),
    }


class RPN(nn.Module):
  """Backbone ("backbone") + RPN head ("head") on one feature map, or on an FPN ("fpn").

  Attributes:
    depth, width, norm, frozen_stages: ResNet settings (see `ResNet`).
    feature: backbone map the head reads, "C2".."C5" (stride 4..32); stages
      above it are not built. Must be "C5" with `fpn`.
    num_anchors: anchors per feature-map cell (A), on every level.
    head_channels: channels of the head's 3x3 convs.
    head_convs: how many 3x3 conv + ReLU layers the head stacks (`RPNHead`).
    head_norm: "none" or "gn", GroupNorm after each of them (`RPNHead`).
    objectness_prior: initial objectness probability (`RPNHead`).
    fpn: build P2..P6 on C2..C5 (`FPN`) and run one shared head on each level.
    fpn_channels: channels of the pyramid levels.
    dtype: computation dtype; params and outputs are float32.

  `__call__(images [B, S, S, 3] float32 normalised, train=False)` returns
  {"objectness": [B, N] logits, "deltas": [B, N, 4]}, N = sum over the head's
  maps (`head_strides`) of H*W*A with H = W = S / stride (each stride-2 layer
  rounds up, as in torchvision).
  """

  depth: int = 50
  width: int = 64
  norm: str = "frozen_bn"
  frozen_stages: int = 0
  feature: str = "C5"
  num_anchors: int = 15
  head_channels: int = 256
  head_convs: int = 1
  head_norm: str = "none"
  objectness_prior: float = 0.5
  fpn: bool = False
  fpn_channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, images: jnp.ndarray, train: bool = False
  ) -> dict[str, jnp.ndarray]:
    feature_stride(self.feature)  # validates the name
    if self.fpn and self.feature != "C5":
      raise ValueError(
          f"FPN reads C2..C5: feature must be 'C5', got {self.feature!r}"
      )
    num_stages = int(self.feature[1:]) - 1  # "C5" is layer4's output
    features = ResNet(
        depth=self.depth,
        width=self.width,
        norm=self.norm,
        frozen_stages=self.frozen_stages,
        num_stages=num_stages,
        dtype=self.dtype,
        name="backbone",
    )(images, train)
    head = RPNHead(
        self.num_anchors,
        self.head_channels,
        self.objectness_prior,
        self.head_convs,
        self.dtype,
        norm=self.head_norm,
        name="head",
    )
    if not self.fpn:
      return head(features[self.feature])
    pyramid = fpn_lib.FPN(self.fpn_channels, self.dtype, name="fpn")(features)
    # One module called on every level: its params are shared, as torchvision's RPNHead.
    outputs = [head(pyramid[level]) for level in fpn_lib.LEVELS]
    return {
        key: jnp.concatenate([o[key] for o in outputs], axis=1)
        for key in outputs[0]
    }


def init_module(
    module: nn.Module, key: jax.Array, *inputs: Any, **kwargs: Any
) -> dict[str, Any]:
  """`module.init(key, *inputs, **kwargs)`, jitted, compiled cheaply on CPU.

  Jitting dead-code eliminates the dummy forward pass. On CPU, XLA's optimisation
  of the unrolled threefry random-number code dominates (tens of seconds for a
  ResNet-50 on 2 cores); it runs once, so it is compiled at optimisation level 0
  (values equal an optimised compile's up to float rounding).
  """
  init = jax.jit(lambda k, *args: module.init(k, *args, **kwargs))
  options = (
      {"xla_backend_optimization_level": 0}
      if jax.default_backend() == "cpu"
      else None
  )
  return init.lower(key, *inputs).compile(compiler_options=options)(
      key, *inputs
  )


def init_rpn(model: RPN, key: jax.Array, image_size: int) -> dict[str, Any]:
  """Variables {"params": {"backbone", "head"}, "batch_stats": {"backbone"}} for `model`.

  "params" also holds "fpn" when `model.fpn`.
  "batch_stats" is present for the BatchNorm norms, absent for "gn".
  """
  return init_module(
      model,
      key,
      jnp.zeros((1, image_size, image_size, 3), jnp.float32),
      train=False,
  )
