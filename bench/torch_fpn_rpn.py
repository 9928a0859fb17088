"""torchvision's side of the from-scratch benchmark for the embedded default's
network: a narrow ResNet with train-mode BatchNorm, torchvision's FPN and a
deeper RPNHead, trained with AdamW.

Same widths as an rpn_jax FPN config (model.width, model.fpn_channels,
model.head_convs; the head keeps the pyramid's channels, as rpn_jax's
default does with head_channels = fpn_channels), the same anchors per level
(one size each, model.anchor_ratios) on P2..P6 (torchvision's
`LastLevelMaxPool`, rpn_jax's P6). torchvision has no ATSS or quality focal
loss; the loss path is built from its nearest parts, with the same amount of
work per anchor: its IoU `Matcher` labels every anchor,
`sigmoid_focal_loss` runs over every labelled one, and
`generalized_box_iou_loss` over the positives' decoded boxes (weight
targets.box_loss_weight), both divided by the number of positives.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import ml_collections
import numpy as np
import torch
import torchvision
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import (
    RegionProposalNetwork,
    RPNHead,
    concat_box_prediction_layers,
)
from torchvision.ops import feature_pyramid_network as fpn_ops

from bench import torch_rpn


class PyramidTrunk(torch.nn.Module):
  """A torchvision ResNet's stem and stages, then its FPN: NCHW images -> P2..P6."""

  def __init__(
      self, resnet: torchvision.models.ResNet, width: int, fpn_channels: int
  ):
    super().__init__()
    self.resnet = resnet
    expansion = type(resnet.layer1[0]).expansion
    self.fpn = fpn_ops.FeaturePyramidNetwork(
        [width * 2**stage * expansion for stage in range(4)],
        fpn_channels,
        extra_blocks=fpn_ops.LastLevelMaxPool(),
    )

  def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
    r = self.resnet
    x = r.maxpool(r.relu(r.bn1(r.conv1(images))))
    features = OrderedDict()
    for stage in range(4):
      x = getattr(r, f"layer{stage + 1}")(x)
      features[str(stage)] = x
    return list(self.fpn(features).values())


def check_mirrorable(config: ml_collections.ConfigDict) -> None:
  """ValueError unless this reference can be built as `config` describes."""
  m = config.model
  if not m.fpn or m.norm != "bn" or m.freeze:
    raise ValueError(
        "the torchvision FPN reference is built for model.fpn=True, "
        "model.norm='bn' and nothing frozen (a from-scratch network)"
    )
  if m.head_channels != m.fpn_channels or tuple(m.anchor_scales) != (1.0,):
    raise ValueError(
        "the torchvision FPN reference's head keeps the pyramid's channels "
        "(model.head_channels == model.fpn_channels) and one anchor scale"
    )


def build(
    config: ml_collections.ConfigDict, seed: int = 0
) -> tuple[PyramidTrunk, RegionProposalNetwork]:
  """(trunk: NCHW images -> [P2..P6], RPN) with torchvision's initialisation."""
  check_mirrorable(config)
  torch.manual_seed(seed)
  m = config.model
  resnet = torchvision.models.get_model(m.backbone, weights=None)
  if m.width != 64:
    torch_rpn.narrow(resnet, m.width, torch.nn.BatchNorm2d)
  trunk = PyramidTrunk(resnet, m.width, m.fpn_channels)
  ratios = tuple(m.anchor_ratios)
  head = RPNHead(m.fpn_channels, len(ratios), conv_depth=m.head_convs)
  t = config.targets
  rpn = RegionProposalNetwork(
      AnchorGenerator(
          tuple((s,) for s in m.anchor_sizes), (ratios,) * len(m.anchor_sizes)
      ),
      head,
      fg_iou_thresh=t.high_threshold,
      bg_iou_thresh=t.low_threshold,
      batch_size_per_image=256,
      positive_fraction=0.5,
      pre_nms_top_n={"training": 1000, "testing": 1000},
      post_nms_top_n={"training": 1000, "testing": 1000},
      nms_thresh=0.7,
  )
  return trunk, rpn


def dense_losses(
    trunk: PyramidTrunk,
    rpn: RegionProposalNetwork,
    images: torch.Tensor,
    sizes: list[tuple[int, int]],
    targets: list[dict[str, torch.Tensor]],
    box_loss_weight: float,
) -> dict[str, torch.Tensor]:
  """{"objectness", "box"}: focal loss over every labelled anchor, GIoU loss
  over the positives, each divided by the number of positives."""
  features = trunk(images)
  objectness, deltas = rpn.head(features)
  anchors = rpn.anchor_generator(ImageList(images, sizes), features)
  objectness, deltas = concat_box_prediction_layers(objectness, deltas)
  labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
  labels = torch.cat(labels)
  matched = torch.cat(matched)
  anchors = torch.cat(anchors)
  labelled = labels >= 0
  positive = labels > 0
  normaliser = positive.sum().clamp(min=1)
  loss_objectness = torchvision.ops.sigmoid_focal_loss(
      objectness.flatten()[labelled], labels[labelled], reduction="sum"
  )
  boxes = rpn.box_coder.decode_single(deltas[positive], anchors[positive])
  loss_box = torchvision.ops.generalized_box_iou_loss(
      boxes, matched[positive], reduction="sum"
  )
  return {
      "objectness": loss_objectness / normaliser,
      "box": box_loss_weight * loss_box / normaliser,
  }


def train_step(
    config: ml_collections.ConfigDict, batch: dict[str, np.ndarray]
) -> Callable[[], dict[str, float]]:
  """One AdamW step (forward, losses, backward, update) on `batch`, as a closure."""
  trunk, rpn = build(config)
  trunk.train()
  rpn.train()
  optimizer = torch.optim.AdamW(
      list(trunk.parameters()) + list(rpn.parameters()),
      lr=config.train.learning_rate,
      weight_decay=config.train.weight_decay,
  )
  images = torch_rpn.images_nchw(config, batch)
  sizes = torch_rpn.image_sizes(batch)
  targets = torch_rpn.gt_targets(batch)
  return torch_rpn.optimizer_step(
      optimizer,
      lambda: dense_losses(
          trunk, rpn, images, sizes, targets, config.targets.box_loss_weight
      ),
  )
