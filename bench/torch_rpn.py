"""torchvision's side of the benchmarks and parity tests: an rpn_jax config's
C5 RPN built from torchvision's parts.

A torchvision ResNet trunk (`FrozenBatchNorm2d` or train-mode `BatchNorm2d`,
the config's frozen layers without gradients; narrower than torchvision's 64
channels when model.width says so) feeds `RegionProposalNetwork` with
`RPNHead` (its 3x3 conv narrowed to trunk -> model.head_channels, the seed's
head) and `AnchorGenerator` (model.anchor_sizes x model.anchor_ratios on the
stride-32 C5 map), matching at targets.high_threshold / low_threshold,
targets.num_samples sampled anchors with targets.positive_fraction
positives, proposals by config.proposals (pre-NMS top-k, NMS, post-NMS
top-k). torchvision fixes what no config key changes: smooth-L1 beta 1/9,
no clamp on encoded targets, dw and dh clamped at log(1000/16) in decoding.

`to_flax` maps torch tensors (weights or gradients) onto rpn_jax's variable
tree by name, so both sides can start from the same weights and their
gradients can be compared leaf by leaf.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np
import torch
import torchvision
from flax import traverse_util
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import (
    RegionProposalNetwork,
    RPNHead,
    concat_box_prediction_layers,
)

from rpn_jax import weights as weights_lib
from rpn_jax.data import transforms

_STAGES = (
    "conv1",
    "bn1",
    "relu",
    "maxpool",
    "layer1",
    "layer2",
    "layer3",
    "layer4",
)
# Flax module path of the head -> torchvision module name.
_HEAD_NAMES = {
    "conv": "conv.0.0",
    "cls_logits": "cls_logits",
    "bbox_pred": "bbox_pred",
}


class C5Trunk(torch.nn.Module):
  """A torchvision ResNet without its classifier: NCHW images -> C5.

  Its modules keep torchvision's names (`conv1`, `layer1.0.bn1`, ...), so
  its state_dict converts with `rpn_jax.weights.convert_torchvision_resnet`.
  """

  def __init__(self, resnet: torchvision.models.ResNet):
    super().__init__()
    for name in _STAGES:
      setattr(self, name, getattr(resnet, name))

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = images
    for name in _STAGES:
      x = getattr(self, name)(x)
    return x


def narrow(
    resnet: torchvision.models.ResNet,
    width: int,
    norm_layer: Callable[[int], torch.nn.Module],
) -> None:
  """Rebuilds `resnet`'s stem and stages at `width` stem channels (stage i:
  width * 2**i planes), with torchvision's own layer builder and init."""
  block = type(resnet.layer1[0])
  resnet.inplanes = width
  resnet.conv1 = torch.nn.Conv2d(3, width, 7, 2, 3, bias=False)
  resnet.bn1 = norm_layer(width)
  for stage in range(4):
    layer = getattr(resnet, f"layer{stage + 1}")
    setattr(
        resnet,
        f"layer{stage + 1}",
        resnet._make_layer(
            block, width * 2**stage, len(layer), stride=1 if stage == 0 else 2
        ),
    )
  for module in resnet.modules():
    if isinstance(module, torch.nn.Conv2d):
      torch.nn.init.kaiming_normal_(
          module.weight, mode="fan_out", nonlinearity="relu"
      )
  resnet.fc = torch.nn.Linear(width * 8 * block.expansion, 1)


def _frozen_prefixes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """model.freeze ("backbone/layer1", ...) as torch name prefixes ("layer1.")."""
  prefixes = []
  for pattern in config.model.freeze:
    parts = pattern.strip("/").split("/")
    if parts[0] != "backbone" or len(parts) < 2:
      raise ValueError(
          f"the torchvision reference freezes backbone modules only, "
          f"not model.freeze entry {pattern!r}"
      )
    prefixes.append(".".join(parts[1:]) + ".")
  return tuple(prefixes)


def check_mirrorable(config: ml_collections.ConfigDict) -> None:
  """ValueError unless torchvision's RPN can be built as `config` describes."""
  if config.model.feature != "C5" or config.model.fpn:
    raise ValueError(
        "the torchvision reference is built for model.feature='C5' "
        "without FPN"
    )
  if config.model.norm not in ("frozen_bn", "bn"):
    raise ValueError(
        "the torchvision reference has model.norm 'frozen_bn' or 'bn'"
    )
  t = config.targets
  if (
      tuple(config.model.anchor_scales) != (1.0,)
      or config.model.head_convs != 1
      or config.model.head_norm != "none"
      or t.assigner != "iou"
      or t.objectness_loss != "bce"
      or t.box_loss != "smooth_l1"
      or t.num_samples <= 0
      or t.normalizer != "samples"
  ):
    raise ValueError(
        "the torchvision reference has the seed's anchors and losses only: "
        "model.anchor_scales=(1,), model.head_convs=1, model.head_norm='none', "
        "targets.assigner='iou', targets.objectness_loss='bce', "
        "targets.box_loss='smooth_l1', sampled anchors, normalizer='samples'"
    )


def build(
    config: ml_collections.ConfigDict, seed: int = 0
) -> tuple[C5Trunk, RegionProposalNetwork]:
  """(trunk: NCHW float images -> C5, RPN) as configured by an rpn_jax config.

  Weights are torchvision's initialisation drawn from `torch.manual_seed(seed)`;
  with frozen BatchNorm its statistics are drawn like a trained network's
  (those of `bench.jax_rpn.pretrained_like`), since fresh frozen BN is the
  identity and a random ResNet-50's activations then grow to inf.
  """
  check_mirrorable(config)
  torch.manual_seed(seed)
  frozen_bn = config.model.norm == "frozen_bn"
  norm_layer = (
      torchvision.ops.FrozenBatchNorm2d if frozen_bn else torch.nn.BatchNorm2d
  )
  resnet = torchvision.models.get_model(
      config.model.backbone, weights=None, norm_layer=norm_layer
  )
  if config.model.width != 64:
    narrow(resnet, config.model.width, norm_layer)
  if frozen_bn:
    with torch.no_grad():
      for module in resnet.modules():
        if isinstance(module, torchvision.ops.FrozenBatchNorm2d):
          module.weight.uniform_(0.2, 0.6)
          module.bias.normal_(0.0, 0.1)
          module.running_mean.normal_(0.0, 0.1)
          module.running_var.uniform_(0.5, 1.5)
  trunk = C5Trunk(resnet)
  frozen = _frozen_prefixes(config)
  for name, param in trunk.named_parameters():
    if name.startswith(frozen):
      param.requires_grad_(False)
  sizes = tuple(config.model.anchor_sizes)
  ratios = tuple(config.model.anchor_ratios)
  channels = resnet.fc.in_features
  head = RPNHead(config.model.head_channels, len(sizes) * len(ratios))
  # torchvision's head keeps the trunk's width in its 3x3 conv (C -> C); the
  # seed's narrows it (C -> head_channels), so its first conv is replaced by
  # one of that shape, initialised as torchvision initialises it.
  head.conv[0][0] = torch.nn.Conv2d(
      channels, config.model.head_channels, 3, padding=1
  )
  torch.nn.init.normal_(head.conv[0][0].weight, std=0.01)
  torch.nn.init.zeros_(head.conv[0][0].bias)
  t = config.targets
  p = config.proposals
  rpn = RegionProposalNetwork(
      AnchorGenerator((sizes,), (ratios,)),
      head,
      fg_iou_thresh=t.high_threshold,
      bg_iou_thresh=t.low_threshold,
      batch_size_per_image=t.num_samples,
      positive_fraction=t.positive_fraction,
      pre_nms_top_n={"training": p.pre_nms_top_k, "testing": p.pre_nms_top_k},
      post_nms_top_n={
          "training": p.post_nms_top_k,
          "testing": p.post_nms_top_k,
      },
      nms_thresh=p.nms_threshold,
  )
  return trunk, rpn


def _flax_to_torch_name(path: tuple[str, ...]) -> str:
  """Torch name (prefixed "trunk." or "rpn.") of an RPN variable's Flax path
  (collection dropped): ("head", "conv", "kernel") -> "rpn.head.conv.0.0.weight".
  """
  if path[0] == "backbone":
    return "trunk." + weights_lib.torch_name(path[1:])
  if path[0] == "head" and path[1] in _HEAD_NAMES:
    leaf = "weight" if path[-1] == "kernel" else path[-1]
    return f"rpn.head.{_HEAD_NAMES[path[1]]}.{leaf}"
  raise ValueError(f"no torchvision counterpart for {'/'.join(path)}")


def named_tensors(
    trunk: torch.nn.Module, rpn: torch.nn.Module, *, grads: bool = False
) -> dict[str, np.ndarray]:
  """A copy of every parameter and buffer ("trunk.conv1.weight", "rpn.head...")
  as numpy, or with `grads` of every parameter's gradient (zeros where it has
  none)."""
  out = {}
  for prefix, module in (("trunk", trunk), ("rpn", rpn)):
    if grads:
      items = {
          n: (p.grad if p.grad is not None else torch.zeros_like(p))
          for n, p in module.named_parameters()
      }
    else:
      items = module.state_dict()
    out.update(
        {
            f"{prefix}.{n}": v.detach().cpu().numpy().copy()
            for n, v in items.items()
        }
    )
  return out


def to_flax(tensors: Mapping[str, np.ndarray], like: Any) -> Any:
  """A tree shaped like `like` (an RPN collection: params, batch_stats or
  their gradients) filled from `named_tensors`; convolution kernels go from
  OIHW to HWIO. A leaf with no torch tensor raises ValueError naming it."""
  out = {}
  for path, leaf in traverse_util.flatten_dict(like).items():
    name = _flax_to_torch_name(path)
    if name not in tensors:
      raise ValueError(f"{'/'.join(path)}: no torch tensor {name!r}")
    value = np.asarray(tensors[name], np.float32)
    value = value.transpose(2, 3, 1, 0) if path[-1] == "kernel" else value
    if value.shape != tuple(leaf.shape):
      raise ValueError(
          f"{'/'.join(path)}: torch {name} has shape {value.shape}, "
          f"expected {tuple(leaf.shape)}"
      )
    out[path] = value
  return traverse_util.unflatten_dict(out)


def images_nchw(
    config: ml_collections.ConfigDict,
    batch: dict[str, np.ndarray],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
  """uint8 [B, S, S, 3] -> normalised [B, 3, S, S] in `dtype`, as rpn_jax does on device."""
  images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).to(dtype)
  mean, std = transforms.pixel_norm_stats(config.data)
  mean = torch.tensor(mean, dtype=dtype).view(1, 3, 1, 1)
  std = torch.tensor(std, dtype=dtype).view(1, 3, 1, 1)
  return ((images - mean) / std).contiguous()


def image_sizes(batch: dict[str, np.ndarray]) -> list[tuple[int, int]]:
  return [tuple(int(v) for v in hw) for hw in batch["image_hw"]]


def gt_targets(
    batch: dict[str, np.ndarray], dtype: torch.dtype = torch.float32
) -> list[dict[str, torch.Tensor]]:
  """The valid, non-crowd boxes [n_i, 4] of each image, in `dtype`
  (torchvision has no crowd regions)."""
  crowd = batch.get("box_crowd", np.zeros_like(batch["box_valid"]))
  return [
      {"boxes": torch.from_numpy(np.ascontiguousarray(b[v & ~c])).to(dtype)}
      for b, v, c in zip(batch["boxes"], batch["box_valid"], crowd)
  ]


def rpn_losses(
    trunk: torch.nn.Module,
    rpn: RegionProposalNetwork,
    images: torch.Tensor,
    sizes: list[tuple[int, int]],
    targets: list[dict[str, torch.Tensor]],
    anchors: list[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
  """torchvision's RPN losses {"objectness", "box"} on `images`.

  `RegionProposalNetwork.forward` in train mode also decodes and NMSes
  proposals for a second stage; an RPN-only step needs none, and rpn_jax's
  step computes none, so this calls the same modules' loss path without
  `filter_proposals`. `anchors` (one [N, 4] tensor per image) replace the
  anchor generator's when given.
  """
  features = [trunk(images)]
  objectness, deltas = rpn.head(features)
  if anchors is None:
    anchors = rpn.anchor_generator(ImageList(images, sizes), features)
  objectness, deltas = concat_box_prediction_layers(objectness, deltas)
  labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
  regression_targets = rpn.box_coder.encode(matched, anchors)
  loss_objectness, loss_box = rpn.compute_loss(
      objectness, deltas, labels, regression_targets
  )
  return {"objectness": loss_objectness, "box": loss_box}


def sgd(
    config: ml_collections.ConfigDict,
    trunk: torch.nn.Module,
    rpn: torch.nn.Module,
) -> torch.optim.SGD:
  """torch.optim.SGD over the trainable parameters, with config.train's
  learning rate, momentum and weight decay (rpn_jax's optimizer)."""
  params = [
      p
      for p in list(trunk.parameters()) + list(rpn.parameters())
      if p.requires_grad
  ]
  return torch.optim.SGD(
      params,
      lr=config.train.learning_rate,
      momentum=config.train.momentum,
      weight_decay=config.train.weight_decay,
  )


def train_step(
    config: ml_collections.ConfigDict, batch: dict[str, np.ndarray]
) -> Callable[[], dict[str, float]]:
  """One SGD step (forward, RPN losses, backward, update) on `batch`, as a closure."""
  trunk, rpn = build(config)
  trunk.train()
  rpn.train()
  images = images_nchw(config, batch)
  sizes = image_sizes(batch)
  targets = gt_targets(batch)
  return optimizer_step(
      sgd(config, trunk, rpn),
      lambda: rpn_losses(trunk, rpn, images, sizes, targets),
  )


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    losses: Callable[[], dict[str, torch.Tensor]],
) -> Callable[[], dict[str, float]]:
  """A closure for one step: `losses()` ({"objectness", "box"}), the
  backward pass of their sum and `optimizer`'s update; returns the losses."""

  def step() -> dict[str, float]:
    values = losses()
    optimizer.zero_grad(set_to_none=True)
    (values["objectness"] + values["box"]).backward()
    optimizer.step()
    return {k: v.item() for k, v in values.items()}

  return step


def propose(
    trunk: torch.nn.Module,
    rpn: RegionProposalNetwork,
    images: torch.Tensor,
    sizes: list[tuple[int, int]],
    anchors: list[torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
  """Post-NMS proposals of each image in eval mode: (boxes [K_i, 4] xyxy
  canvas pixels, scores [K_i] objectness probabilities, descending).
  `anchors` as in `rpn_losses`."""
  with torch.inference_mode():
    features = [trunk(images)]
    objectness, deltas = rpn.head(features)
    if anchors is None:
      anchors = rpn.anchor_generator(ImageList(images, sizes), features)
    per_level = [o[0].numel() for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(
        len(anchors), -1, 4
    )
    return rpn.filter_proposals(proposals, objectness, sizes, per_level)


def predictor(
    config: ml_collections.ConfigDict, batch: dict[str, np.ndarray]
) -> Callable[[], list[torch.Tensor]]:
  """Forward and proposals in eval mode on `batch`, as a closure returning boxes [K_i, 4]."""
  trunk, rpn = build(config)
  trunk.eval()
  rpn.eval()
  images = images_nchw(config, batch)
  sizes = image_sizes(batch)

  def predict() -> list[torch.Tensor]:
    with torch.inference_mode():
      boxes, _ = rpn(ImageList(images, sizes), {"0": trunk(images)})
    return boxes

  return predict
