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
from rpn_jax.models import fpn as fpn_lib
from rpn_jax.models import resnet as resnet_lib
from rpn_jax.models import rpn as rpn_lib

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# model.dtype's values: a dtype, or "auto": bfloat16 on the backends whose
# matrix units run it natively (GPU tensor cores, TPU MXU), else float32.
DTYPES = ("auto", *_DTYPES)
_BFLOAT16_BACKENDS = ("gpu", "tpu")


def check_dtype(name: str) -> None:
  """ValueError naming model.dtype unless `name` is one of DTYPES."""
  if name not in DTYPES:
    raise ValueError(f"model.dtype={name!r} is not one of {DTYPES}")


def compute_dtype(name: str) -> Any:
  """The computation dtype model.dtype names ("auto" resolved on this
  process's default backend); params stay float32 whatever it is."""
  check_dtype(name)
  if name == "auto":
    name = (
        "bfloat16" if jax.default_backend() in _BFLOAT16_BACKENDS else "float32"
    )
  return _DTYPES[name]


def backbone_depth(name: str) -> int:
  if name not in resnet_lib.ARCH_DEPTHS:
    raise ValueError(
        f"model.backbone={name!r} is not one of "
        f"{sorted(resnet_lib.ARCH_DEPTHS)}"
    )
  return resnet_lib.ARCH_DEPTHS[name]


def uses_fpn(model_cfg: ml_collections.ConfigDict) -> bool:
  """`model.fpn`, checked against the keys it constrains (ValueError naming one)."""
  if not model_cfg.fpn:
    return False
  if model_cfg.feature != "C5":
    raise ValueError(
        f"model.feature={model_cfg.feature!r} cannot be used with model.fpn=True: "
        "the pyramid is built on C2..C5, set model.feature='C5'"
    )
  if len(model_cfg.anchor_sizes) != len(fpn_lib.LEVELS):
    raise ValueError(
        f"model.anchor_sizes has {len(model_cfg.anchor_sizes)} sizes; "
        f"model.fpn=True takes one per level P2..P6 ({len(fpn_lib.LEVELS)})"
    )
  return True


def check_model_config(model_cfg: ml_collections.ConfigDict) -> None:
  """A ValueError naming model.dtype or model.head_norm unless each is one of
  its values (DTYPES, rpn.HEAD_NORMS); nothing is built."""
  check_dtype(model_cfg.dtype)
  rpn_lib.check_head_norm(model_cfg.head_norm)


def build_model(model_cfg: ml_collections.ConfigDict) -> rpn_lib.RPN:
  """The RPN module the config describes (backbone [+ FPN] + head)."""
  check_model_config(model_cfg)
  fpn = uses_fpn(model_cfg)
  dtype = compute_dtype(model_cfg.dtype)
  frozen = set(model_cfg.freeze)
  # Stop gradients at the end of a frozen prefix of the network, so XLA never
  # builds the gradient convolutions of layers that receive no update anyway.
  frozen_stages = 0
  if {"backbone/conv1", "backbone/bn1"} <= frozen:
    frozen_stages = 2 if "backbone/layer1" in frozen else 1
  pyramid = dict(fpn=True, fpn_channels=model_cfg.fpn_channels) if fpn else {}
  return rpn_lib.RPN(
      depth=backbone_depth(model_cfg.backbone),
      width=model_cfg.width,
      norm=model_cfg.norm,
      frozen_stages=frozen_stages,
      feature=model_cfg.feature,
      num_anchors=anchors_per_cell(model_cfg),
      head_channels=model_cfg.head_channels,
      head_convs=model_cfg.head_convs,
      head_norm=model_cfg.head_norm,
      objectness_prior=model_cfg.objectness_prior,
      **pyramid,
      dtype=dtype,
  )


def anchors_per_cell(model_cfg: ml_collections.ConfigDict) -> int:
  """Anchors at each cell of a level: its sizes x scales x ratios (with FPN
  a level has one size)."""
  sizes = 1 if uses_fpn(model_cfg) else len(model_cfg.anchor_sizes)
  return sizes * len(_anchor_scales(model_cfg)) * len(model_cfg.anchor_ratios)


def _anchor_scales(model_cfg: ml_collections.ConfigDict) -> tuple[float, ...]:
  scales = tuple(float(k) for k in model_cfg.anchor_scales)
  if not scales or min(scales) <= 0:
    raise ValueError(
        f"model.anchor_scales must be positive numbers, got {scales}"
    )
  return scales


def on_canvas(
    config: ml_collections.ConfigDict, image_size: int
) -> ml_collections.ConfigDict:
  """A copy of `config` with data.image_size = `image_size` (the anchors,
  loader and proposals of another canvas; no parameter depends on it)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.image_size = image_size
  return config


def map_hw(image_size: int, stride: int) -> tuple[int, int]:
  """(H, W) of the stride-`stride` map of a square `image_size` canvas."""
  # Every stride-2 layer of the ResNet (and FPN's P6) rounds up.
  size = image_size
  while stride > 1:
    size = math.ceil(size / 2)
    stride //= 2
  return size, size


def anchor_levels(
    config: ml_collections.ConfigDict,
) -> list[tuple[tuple[int, int], int, tuple[float, ...]]]:
  """((H, W), stride, anchor sizes) of each map the head runs on, in its
  output order: one level on model.feature with every size, or P2..P6 with
  one size each; every size times each of model.anchor_scales."""
  fpn = uses_fpn(config.model)
  scales = _anchor_scales(config.model)
  sizes = tuple(config.model.anchor_sizes)
  per_level = [(s,) for s in sizes] if fpn else [sizes]
  per_level = [
      tuple(s * k for s in level for k in scales) for level in per_level
  ]
  strides = rpn_lib.head_strides(config.model.feature, fpn)
  return [
      (map_hw(config.data.image_size, stride), stride, level_sizes)
      for stride, level_sizes in zip(strides, per_level)
  ]


def model_anchors(config: ml_collections.ConfigDict) -> np.ndarray:
  """Anchors [N, 4] xyxy canvas pixels, in the head's output order: level by
  level (`anchor_levels`), each in (row, column, anchor) order, placed as
  model.anchor_placement says (`anchors.generate_anchors`)."""
  return np.concatenate(
      [
          anchors_lib.generate_anchors(
              hw,
              stride,
              sizes,
              tuple(config.model.anchor_ratios),
              offset=config.model.anchor_offset,
              placement=config.model.anchor_placement,
          )
          for hw, stride, sizes in anchor_levels(config)
      ]
  )


def anchors_per_level(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """How many of `model_anchors` belong to each level, in order (static; the
  `level_sizes` of `rpn_jax.proposals.propose`)."""
  num_ratios = len(config.model.anchor_ratios)
  return tuple(
      h * w * len(sizes) * num_ratios
      for (h, w), _, sizes in anchor_levels(config)
  )


def proposal_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The keyword arguments of `rpn_jax.proposals.propose_batch` that `config`
  sets: proposals.*, the box coding and the level sizes of its canvas."""
  p = config.proposals
  return dict(
      pre_nms_top_k=p.pre_nms_top_k,
      nms_threshold=p.nms_threshold,
      post_nms_top_k=p.post_nms_top_k,
      min_size=p.min_size,
      weights=tuple(config.targets.box_weights),
      clamp=tuple(config.targets.box_clamp),
      level_sizes=anchors_per_level(config),
  )


def init_variables(
    config: ml_collections.ConfigDict, model: rpn_lib.RPN, key: jax.Array
) -> dict[str, Any]:
  """Random initial variables, with converted backbone weights grafted in when
  `model.pretrained` names a file."""
  variables = dict(rpn_lib.init_rpn(model, key, config.data.image_size))
  if config.model.pretrained:
    variables = weights_lib.graft_pretrained(
        variables, config.model.pretrained, config.model.norm
    )
  return variables


def variable_shapes(
    config: ml_collections.ConfigDict, model: rpn_lib.RPN
) -> dict[str, Any]:
  """What `init_variables` returns, as jax.ShapeDtypeStruct leaves, traced
  but not computed (no initialisation, no weights file read): the target a
  checkpoint restores into."""
  size = config.data.image_size
  return jax.eval_shape(
      lambda key: model.init(
          key, jnp.zeros((1, size, size, 3), jnp.float32), train=False
      ),
      jax.random.key(0),
  )
