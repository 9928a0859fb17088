"""From a config to a model, its anchors and its initial variables.

Shared by training, evaluation and the benchmarks so that all three build the
very same network and anchor grid from the same keys.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rpn_jax import anchors as anchors_lib
from rpn_jax import weights as weights_lib
from rpn_jax.models import rpn as rpn_lib

_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def backbone_depth(name: str) -> int:
  if name not in _DEPTHS:
    raise ValueError(
        f"model.backbone={name!r} is not one of {sorted(_DEPTHS)}")
  return _DEPTHS[name]


def build_model(model_cfg: ml_collections.ConfigDict) -> rpn_lib.RPN:
  """The RPN module the config describes (backbone + head)."""
  if model_cfg.dtype not in _DTYPES:
    raise ValueError(
        f"model.dtype={model_cfg.dtype!r} is not one of {sorted(_DTYPES)}")
  frozen = set(model_cfg.freeze)
  # Stop gradients at the end of a frozen prefix of the network, so XLA never
  # builds the gradient convolutions of layers that receive no update anyway.
  frozen_stages = 0
  if {"backbone/conv1", "backbone/bn1"} <= frozen:
    frozen_stages = 2 if "backbone/layer1" in frozen else 1
  return rpn_lib.RPN(
      depth=backbone_depth(model_cfg.backbone),
      width=model_cfg.width,
      norm=model_cfg.norm,
      frozen_stages=frozen_stages,
      feature=model_cfg.feature,
      num_anchors=len(model_cfg.anchor_sizes) * len(model_cfg.anchor_ratios),
      head_channels=model_cfg.head_channels,
      dtype=_DTYPES[model_cfg.dtype],
  )


def feature_hw(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(H, W) of the feature map the head runs on, for a square input canvas."""
  stride = rpn_lib.feature_stride(config.model.feature)
  # Every stride-2 layer of the ResNet rounds up (padding 1 or 3).
  size = config.data.image_size
  while stride > 1:
    size = math.ceil(size / 2)
    stride //= 2
  return size, size


def model_anchors(config: ml_collections.ConfigDict) -> np.ndarray:
  """Anchors [H*W*A, 4] xyxy canvas pixels, in the head's output order."""
  return anchors_lib.generate_anchors(
      feature_hw(config),
      rpn_lib.feature_stride(config.model.feature),
      tuple(config.model.anchor_sizes),
      tuple(config.model.anchor_ratios),
      offset=config.model.anchor_offset,
  )


def init_variables(config: ml_collections.ConfigDict, model: rpn_lib.RPN,
                   key: jax.Array) -> dict[str, Any]:
  """Random initial variables, with converted backbone weights grafted in when
  `model.pretrained` names a file."""
  variables = dict(rpn_lib.init_rpn(model, key, config.data.image_size))
  if config.model.pretrained:
    backbone = weights_lib.load_variables(config.model.pretrained)
    variables = weights_lib.graft_backbone(variables, backbone)
  return variables
