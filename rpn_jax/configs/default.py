"""The embedded default: the whole pipeline on a laptop CPU in minutes.

Synthetic COCO-layout person data (generated on first use), 192 px canvas, a
narrow ResNet-18 (width 16) trained from scratch, so BatchNorm runs in train
mode and nothing is frozen (frozen BN is for converted ImageNet weights).
What differs from the seed's recipe (PROTOCOL.md), and why:
- the synthetic images are drawn at 144-192 px, the canvas size, so nothing
  is shrunk and the smallest persons keep their 12 px;
- an FPN (P2-P6, 32 channels, one anchor size per level, 16-256 px) instead
  of the single C5 map, whose 32 px cells would give a 6x6 grid here;
- ATSS assigns the anchors (Zhang et al. 2020: per level the 9 anchors
  nearest a person's centre are candidates, those above the mean + std of
  their IoUs and centred inside are positive; no ignore band), where the
  seed's IoU >= 0.7 rule leaves about one positive per person and even 0.5
  gives a 6x14 px person 3 positives to ATSS's 6 (two seeds: AP 0.263 vs
  0.247, AP50 0.648 vs 0.600);
- AdamW instead of SGD (AP 0.010 -> 0.058 at 666 steps on this set);
- the objectness loss runs over every labelled anchor, not 256 sampled per
  image, as quality focal loss (GFL): a positive's target is the IoU of its
  decoded box with its person, so scores rank boxes by fit; both losses are
  divided by the number of positives, and the objectness bias starts at a
  prior of 0.01 (RetinaNet). With it, 1 - GIoU (weight 2) as the box loss;
- 32 channels in the FPN and head: cheap enough in the CPU budget (32 for
  13 epochs beat 64 for 9: AP 0.194 vs 0.167), and two 3x3 convs in the
  head instead of one (11 epochs with two beat 13 with one: AP 0.261 vs
  0.256, AP50 0.637 vs 0.606);
- batch 8 (batch 16 at 0.002 before): the same images/s on this CPU and
  twice the updates (AP 0.256 vs 0.238 at 13 epochs), at lr 0.003 with the
  10x drop at 97.43% of the run (step 3,250 of 3,336);
- 15,000 synthetic images drawn (13,349 with a person), each seen twice,
  instead of 2,000 seen 11 times: the model had AP 0.34 on its own training
  images against 0.24 on val, and new pictures close part of that gap (AP
  0.300 vs 0.269 with 12,000 images at the same 2,453 steps); drawing
  them, imports and setup take ~28 s of a cold run here. 3,336 steps (two
  epochs) instead of 2,222 (two epochs of 10,000 drawn) took AP from 0.358
  to 0.413 on the Intel host (seed 0, scales 1, 4/3, 2.5; seed 1: 0.386);
- detections down to score 0.05 (the seed's 0.4 suits sampled BCE scores;
  quality focal scores are lower, and cutting at 0.4 costs AP);
- test-time augmentation (rpn_jax/tta.py): the val canvases are also
  predicted at 4/3, 5/3, 2 and 2.5 times their size and mirrored, 300
  proposals per pass, and each proposal is fused with its best match of
  every other pass (mean score, score-weighted box) before the NMS: small
  persons are found better on the enlarged canvases, and the mean score
  sinks what a single pass finds. An enlarged pass proposes and votes only
  below 90 px of its canvas (SNIP): persons it makes larger than that it
  finds worse than the plain pass (two seeds: AP 0.283 without TTA, 0.356
  with scales 1, 4/3, 5/3 and no size limit, 0.376 with 1, 4/3, 2.5 and the
  limit; on the 3,336-step models 0.400 with those and 0.416 with these).
Each change and its measured effect: README.md, "What the default run gives".
"""

import ml_collections

from rpn_jax import defaults


def get_config() -> ml_collections.ConfigDict:
  config = defaults.base_config()
  config.data.source = "synthetic"
  config.data.image_size = 192
  config.data.max_boxes = 32
  config.data.hflip = True
  config.data.num_workers = 2
  config.data.synthetic.num_train = 15000
  config.data.synthetic.min_size = 144
  config.data.synthetic.max_size = 192
  config.model.backbone = "resnet18"
  config.model.width = 16
  config.model.norm = "bn"
  config.model.feature = "C5"
  config.model.fpn = True
  config.model.fpn_channels = 32
  config.model.head_channels = 32
  config.model.head_convs = 2
  config.model.freeze = ()
  config.model.anchor_sizes = (16.0, 32.0, 64.0, 128.0, 256.0)
  # Half-cell centres: for this FPN + ATSS recipe the switch to torchvision's
  # grid (offset 0) moved synthetic val AP by under 0.01 (0.440 vs 0.447); the
  # IoU-matched C5 recipes take offset 0, where it matters.
  config.model.anchor_offset = 0.5
  config.targets.assigner = "atss"
  config.targets.num_samples = 0
  config.targets.normalizer = "positives"
  config.targets.objectness_loss = "quality_focal"
  config.targets.box_loss = "giou"
  config.targets.box_loss_weight = 2.0
  config.model.objectness_prior = 0.01
  config.proposals.pre_nms_top_k = 2000
  config.proposals.post_nms_top_k = 300
  config.train.optimizer = "adamw"
  config.train.epochs = 2
  config.train.batch_size = 8
  config.train.learning_rate = 0.003
  config.train.schedule = "warmup_step"
  # Fractions of the run: on its 15,000 drawn images (1,668 steps per epoch
  # at batch 8, 3,336 in all) warmup 200 steps, the 10x drop at step 3,250
  # and a checkpoint every 250 steps, the step counts it was tuned with;
  # another set, batch or epoch count keeps them where they are in the run.
  config.train.warmup_percent = 0.06
  config.train.decay_percent = (0.9743,)
  config.train.checkpoint_every_epochs = 0.15
  config.eval.batch_size = 16
  config.eval.score_threshold = 0.05
  config.eval.tta_scales = (1.0, 4 / 3, 5 / 3, 2.0, 2.5)
  config.eval.hflip_tta = True
  config.eval.tta_upscaled_max_size = 90.0
  return config
