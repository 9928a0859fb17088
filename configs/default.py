"""The embedded default: the whole pipeline on a laptop CPU in minutes.

Synthetic COCO-layout person data (generated on first use), 192 px canvas, a
narrow ResNet-18 (width 16) trained from scratch, so BatchNorm runs in train
mode and nothing is frozen (frozen BN is for converted ImageNet weights).
Two changes from the seed's recipe (PROTOCOL.md), both for small images: the
anchors sit on the stride-8 C3 map (C5's 32 px cells would give a 6x6 grid),
and anchors with IoU >= 0.5 are positive (at 0.7 the sparse anchors leave
about one positive per person, which a few minutes of training cannot learn).
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.base_config()
  config.data.source = "synthetic"
  config.data.image_size = 192
  config.data.max_boxes = 32
  config.data.hflip = True
  config.data.num_workers = 2
  config.model.backbone = "resnet18"
  config.model.width = 16
  config.model.norm = "bn"
  config.model.feature = "C3"
  config.model.freeze = ()
  config.model.anchor_sizes = (16.0, 32.0, 64.0, 128.0, 256.0)
  config.targets.high_threshold = 0.5
  config.proposals.pre_nms_top_k = 2000
  config.proposals.post_nms_top_k = 1000
  config.train.epochs = 6
  config.train.batch_size = 16
  config.train.learning_rate = 0.02
  config.train.schedule = "warmup_step"
  config.train.warmup_steps = 100
  config.train.decay_steps = (550,)
  config.train.checkpoint_every_steps = 250
  config.eval.batch_size = 16
  return config
