"""The seed's week-7 recipe with the original's own details: R50-C5 person RPN.

configs/coco_person_r50_c5.py runs the seed's table with the standard parts;
this recipe also switches on the three places where the original implementation
did something non-standard, so the exact original runs beside it
(seed/PROTOCOL.md has every fact quoted here). The seed details it sets:

- Anchors (PROTOCOL.md "Model"): model.anchor_placement = "seed", each
  anchor's top-left corner at its C5 cell's corner, w = size, h = size * ratio
  (no area kept across ratios); sizes 32..512 x ratios 0.5, 1, 2 (k = 15).
  model.anchor_offset does not apply to this placement and is left as is.
- Input ("Input"): data.pixel_norm = "mean_only", the BGR mean (103.530,
  116.280, 123.675) subtracted in 0-255, i.e. data.mean = (123.675, 116.28,
  103.53) in RGB order, and no division by a std (data.std is unused), although
  the ImageNet weights expect std-normalised input: the original's mismatch.
- Labels ("Labels"): targets.label_on = "proposals", only the anchors behind
  each image's 1,000 post-NMS proposals are matched (IoU 0.7 / 0.3 + best
  match, by the proposal boxes) and sampled; regression targets are encoded on
  the anchors (rpn_jax/targets.py, `proposal_targets`).

and, from the base recipe and rpn_jax/defaults.py:

- ResNet-50 on C5 (stride 32), train-mode BatchNorm over the batch of 8
  (model.norm = "bn"), stem (conv1 + bn1) and layer1 frozen.
- Box coding weights (1, 1, 1, 1), deltas clamped to |dx|, |dy| <= 0.5 and dw,
  dh in [log 0.5, log 2] when decoding and encoding (defaults.SEED_BOX_CLAMP).
- 256 anchors sampled per image, at most half positive; BCE and smooth-L1
  (beta 1), both summed and divided by batch_size x 256.
- SGD, momentum 0.9, weight decay 1e-4, lr 0.01 constant, batch 8, 24 epochs.
- Proposals: pre-NMS top 12,000, NMS 0.7, post-NMS top 1,000; evaluation keeps
  those with score >= 0.4, then NMS 0.5.
- COCO 2017, person images only, longer side letterboxed to 1024 px.

Not reproduced: the original clipped proposals to the image after its NMS,
here they are clipped before; its BatchNorm statistics came from each GPU's
share of the batch, here from the whole batch.

  python train.py --config configs/coco_person_r50_c5_exact.py \
    --config.data.coco_dir=/data/coco --config.model.pretrained=r50.npz
"""

import ml_collections

from rpn_jax.configs import coco_person_r50_c5
from rpn_jax import defaults


def get_config() -> ml_collections.ConfigDict:
  config = coco_person_r50_c5.get_config()
  # The three seed details (above).
  config.model.anchor_placement = "seed"
  config.data.pixel_norm = "mean_only"
  config.data.mean = (123.675, 116.28, 103.53)  # the BGR mean, in RGB order
  config.targets.label_on = "proposals"
  config.targets.assigner = "iou"  # proposal labelling matches by IoU

  # What the base recipe and the defaults already set, spelt out so that this
  # file alone reads as the whole recipe.
  config.model.backbone = "resnet50"
  config.model.feature = "C5"
  config.model.norm = "bn"
  config.model.freeze = ("backbone/conv1", "backbone/bn1", "backbone/layer1")
  config.model.anchor_sizes = (32.0, 64.0, 128.0, 256.0, 512.0)
  config.model.anchor_ratios = (0.5, 1.0, 2.0)
  config.model.anchor_scales = (1.0,)
  config.targets.high_threshold = 0.7
  config.targets.low_threshold = 0.3
  config.targets.num_samples = 256
  config.targets.positive_fraction = 0.5
  config.targets.box_weights = (1.0, 1.0, 1.0, 1.0)
  config.targets.box_clamp = defaults.SEED_BOX_CLAMP
  config.targets.normalizer = "samples"
  config.train.optimizer = "sgd"
  config.train.learning_rate = 0.01
  config.train.schedule = "constant"
  config.train.epochs = 24
  config.train.batch_size = 8
  config.train.checkpoint_every_epochs = 0.25
  config.proposals.pre_nms_top_k = 12000
  config.proposals.nms_threshold = 0.7
  config.proposals.post_nms_top_k = 1000
  config.eval.score_threshold = 0.4
  config.eval.nms_threshold = 0.5
  return config
