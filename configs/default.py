"""The embedded default: the whole pipeline on a laptop CPU in minutes.

Synthetic COCO-layout person data (generated on first use), 256 px canvas, a
narrow ResNet-18 trained from scratch, so BatchNorm runs in train mode and
nothing is frozen (frozen BN is for converted ImageNet weights). The anchors
sit on the stride-16 C4 map, whose cells suit 256 px images the way C5 suits
1024 px ones. Everything else is the seed's recipe (PROTOCOL.md).
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.base_config()
  config.data.source = "synthetic"
  config.data.image_size = 256
  config.data.max_boxes = 32
  config.data.hflip = True
  config.data.num_workers = 2
  config.model.backbone = "resnet18"
  config.model.width = 32
  config.model.norm = "bn"
  config.model.feature = "C4"
  config.model.freeze = ()
  config.model.anchor_sizes = (16.0, 32.0, 64.0, 128.0, 256.0)
  config.proposals.pre_nms_top_k = 2000
  config.proposals.post_nms_top_k = 1000
  config.train.epochs = 8
  config.train.batch_size = 16
  config.train.learning_rate = 0.02
  config.train.schedule = "warmup_step"
  config.train.warmup_steps = 100
  config.train.decay_steps = (800,)
  config.train.checkpoint_every_steps = 250
  config.eval.batch_size = 16
  return config
