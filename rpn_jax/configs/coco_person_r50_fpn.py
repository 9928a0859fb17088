"""The seed's recipe (configs/coco_person_r50_c5.py) with an FPN: R50-FPN person RPN.

Same data, 1024 px canvas, schedule and backbone as the seed; the head runs on
P2..P6 (strides 4..64, 256 channels) of torchvision's / detectron2's FPN, one
anchor size per level (32, 64, 128, 256, 512 px) with ratios 0.5, 1, 2.

Proposals take torchvision's fasterrcnn_resnet50_fpn RPN *test* settings: the
1000 best anchors of each level, NMS at 0.7 per level, the best 1000 over all
levels. Its train-time settings (2000 per level, 2000 kept) only pick the
boxes a second stage trains on; an RPN's own losses are computed on every
anchor, so here proposals are made only for evaluation, and the test settings
are the ones that apply.

  python train.py --config configs/coco_person_r50_fpn.py \
    --config.data.coco_dir=/data/coco --config.model.pretrained=r50.npz
"""

import ml_collections

from rpn_jax.configs import coco_person_r50_c5


def get_config() -> ml_collections.ConfigDict:
  config = coco_person_r50_c5.get_config()
  config.model.fpn = True
  config.model.fpn_channels = 256
  config.model.feature = "C5"  # the pyramid reads C2..C5
  config.model.anchor_sizes = (32.0, 64.0, 128.0, 256.0, 512.0)
  config.model.anchor_ratios = (0.5, 1.0, 2.0)
  config.proposals.pre_nms_top_k = 1000  # per level
  config.proposals.nms_threshold = 0.7
  config.proposals.post_nms_top_k = 1000
  return config
