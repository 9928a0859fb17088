"""torchvision's side of the benchmarks: the same R50-C5 RPN from torchvision's parts.

A torchvision resnet50 trunk (FrozenBatchNorm2d, stem and layer1 without
gradients) feeds `RegionProposalNetwork` with `RPNHead` (its 3x3 conv narrowed
to 2048 -> 256, the seed's head) and `AnchorGenerator`:
15 anchors (sizes 32..512, ratios 0.5, 1, 2) on the stride-32 C5 map, matching
at IoU 0.7 / 0.3, 256 sampled anchors with half positives, proposals by
pre-NMS top 12,000, NMS 0.7, post-NMS top 1,000 -- the settings of
configs/coco_person_r50_c5.py.
"""

from __future__ import annotations

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

_FROZEN_PREFIXES = ("conv1.", "bn1.", "layer1.")


def build(config: ml_collections.ConfigDict) -> tuple[torch.nn.Module, RegionProposalNetwork]:
    """(trunk: NCHW float images -> C5, RPN) as configured by an rpn_jax config.

    Uses config.model (backbone, anchors, head channels), config.targets
    (thresholds, sampling) and config.proposals (top-k, NMS). Only C5 and
    `frozen_bn` are built, the seed's recipe.
    """
    if config.model.feature != "C5" or config.model.norm != "frozen_bn":
        raise ValueError("the torchvision reference is built for model.feature='C5', "
                         "model.norm='frozen_bn'")
    t = config.targets
    if (tuple(config.model.anchor_scales) != (1.0,) or config.model.head_convs != 1
            or t.assigner != "iou"
            or t.objectness_loss != "bce" or t.box_loss != "smooth_l1"
            or t.num_samples <= 0 or t.normalizer != "samples"):
        raise ValueError("the torchvision reference has the seed's anchors and losses only: "
                         "model.anchor_scales=(1,), model.head_convs=1, "
                         "targets.assigner='iou', targets.objectness_loss='bce', "
                         "targets.box_loss='smooth_l1', sampled anchors, normalizer='samples'")
    torch.manual_seed(0)
    resnet = torchvision.models.get_model(
        config.model.backbone, weights=None, norm_layer=torchvision.ops.FrozenBatchNorm2d)
    with torch.no_grad():
        # The statistics of rpn_jax's side (bench.jax_rpn.pretrained_like).
        for module in resnet.modules():
            if isinstance(module, torchvision.ops.FrozenBatchNorm2d):
                module.weight.uniform_(0.2, 0.6)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    for name, param in resnet.named_parameters():
        if name.startswith(_FROZEN_PREFIXES):
            param.requires_grad_(False)
    trunk = torch.nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
                                resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)
    sizes = tuple(config.model.anchor_sizes)
    ratios = tuple(config.model.anchor_ratios)
    head = RPNHead(config.model.head_channels, len(sizes) * len(ratios))
    # torchvision's head keeps the trunk's width in its 3x3 conv (2048 -> 2048);
    # the seed's head narrows it (2048 -> head_channels), so its first conv is
    # replaced by one of that shape, initialised as torchvision initialises it.
    head.conv[0][0] = torch.nn.Conv2d(resnet.fc.in_features, config.model.head_channels, 3,
                                      padding=1)
    torch.nn.init.normal_(head.conv[0][0].weight, std=0.01)
    torch.nn.init.zeros_(head.conv[0][0].bias)
    p = config.proposals
    rpn = RegionProposalNetwork(
        AnchorGenerator((sizes,), (ratios,)),
        head,
        fg_iou_thresh=t.high_threshold,
        bg_iou_thresh=t.low_threshold,
        batch_size_per_image=t.num_samples,
        positive_fraction=t.positive_fraction,
        pre_nms_top_n={"training": p.pre_nms_top_k, "testing": p.pre_nms_top_k},
        post_nms_top_n={"training": p.post_nms_top_k, "testing": p.post_nms_top_k},
        nms_thresh=p.nms_threshold,
    )
    return trunk, rpn


def _images(config: ml_collections.ConfigDict, batch: dict[str, np.ndarray]) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> normalised float32 [B, 3, S, S], as rpn_jax does on device."""
    images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).float()
    mean = torch.tensor(config.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.data.std).view(1, 3, 1, 1)
    return ((images - mean) / std).contiguous()


def train_step(config: ml_collections.ConfigDict, batch: dict[str, np.ndarray]
               ) -> Callable[[], dict[str, float]]:
    """One SGD step (forward, RPN losses, backward, update) on `batch`, as a closure.

    `RegionProposalNetwork.forward` in train mode also decodes and NMSes
    proposals for a second stage; an RPN-only step needs none, and rpn_jax's
    step computes none, so this calls the same modules' loss path without
    `filter_proposals`. SGD: config.train learning rate, momentum and weight
    decay, as rpn_jax's optimizer.
    """
    trunk, rpn = build(config)
    trunk.train()
    rpn.train()
    params = [p for p in list(trunk.parameters()) + list(rpn.parameters()) if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.train.learning_rate,
                                momentum=config.train.momentum,
                                weight_decay=config.train.weight_decay)
    images = _images(config, batch)
    sizes = [tuple(int(v) for v in hw) for hw in batch["image_hw"]]
    targets = [{"boxes": torch.from_numpy(b[v])} for b, v in zip(batch["boxes"], batch["box_valid"])]

    def step() -> dict[str, float]:
        features = [trunk(images)]
        objectness, deltas = rpn.head(features)
        anchors = rpn.anchor_generator(ImageList(images, sizes), features)
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
        regression_targets = rpn.box_coder.encode(matched, anchors)
        loss_objectness, loss_box = rpn.compute_loss(objectness, deltas, labels,
                                                     regression_targets)
        loss = loss_objectness + loss_box
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"objectness": loss_objectness.item(), "box": loss_box.item()}

    return step


def predictor(config: ml_collections.ConfigDict, batch: dict[str, np.ndarray]
              ) -> Callable[[], list[torch.Tensor]]:
    """Forward and proposals in eval mode on `batch`, as a closure returning boxes [K_i, 4]."""
    trunk, rpn = build(config)
    trunk.eval()
    rpn.eval()
    images = _images(config, batch)
    sizes = [tuple(int(v) for v in hw) for hw in batch["image_hw"]]

    def predict() -> list[torch.Tensor]:
        with torch.inference_mode():
            features = {"0": trunk(images)}
            boxes, _ = rpn(ImageList(images, sizes), features)
        return boxes

    return predict
