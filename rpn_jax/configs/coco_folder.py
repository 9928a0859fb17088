"""The embedded default's detector on your own COCO-format folder of photos.

  python train.py --config configs/coco_folder.py \
    --config.data.coco_dir=/path/to/coco

(`rpn-train --config coco_folder --config.data.coco_dir=...` when installed.)
The folder holds COCO's layout: annotations/instances_train2017.json and
annotations/instances_val2017.json, the images in train2017/ and val2017/
(other split names: --config.data.train_split / --config.data.val_split).
Only the category named "person" is used; evaluation runs on the val split.

Architecture and losses are the embedded default's (configs/default.py): a
ResNet-18 of width 16 trained from scratch with train-mode BatchNorm, FPN
P2-P6, ATSS, quality focal loss and GIoU, AdamW at lr 0.003, batch 8. What
changes is what ordinary photos need:
- a 640 px canvas, COCO's longer side, so its images are not shrunk;
- one anchor size per level from 32 to 512 px (persons of about 20 to 600
  px), instead of the default's 16-256 on a 192 px canvas;
- room for 128 persons per image (crowded scenes);
- every duration in epochs or fractions of the run, so the folder's size
  sets the step counts: 24 epochs (the seed's), warmup over the first 6%
  and the 10x drop at 97.43% of the run as in the default, a checkpoint
  every quarter epoch;
- no test-time augmentation: the default's scales and size limit were
  tuned on its synthetic 192 px set (try --config.eval.tta_scales).
A wider net (--config.model.width=64, torchvision's ResNet-18) or converted
ImageNet weights (configs/coco_person_r50_c5.py) suit larger folders.
"""

import math

import ml_collections

from rpn_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.source = "coco_dir"
  config.data.coco_dir = ""  # --config.data.coco_dir=/path/to/coco
  config.data.train_split = "train2017"
  config.data.val_split = "val2017"
  config.data.image_size = 640
  config.data.max_boxes = 128
  config.data.num_workers = 4
  config.model.anchor_sizes = (32.0, 64.0, 128.0, 256.0, 512.0)
  config.train.epochs = 24
  config.train.warmup_percent = 0.06
  config.train.decay_percent = (0.9743,)
  config.train.checkpoint_every_epochs = 0.25
  config.eval.image_size = 0  # the training canvas
  config.eval.tta_scales = (1.0,)
  config.eval.hflip_tta = False
  config.eval.tta_upscaled_max_size = math.inf
  return config
