"""The seed's recipe and the ATSS recipe shrunk to the embedded default's
scale, for a comparison under one budget (issue 22, item 2).

A config file with one argument, the recipe:

  python train.py --config bench/small_scale.py:seed --workdir runs/small_seed
  python evaluate.py --ckpt runs/small_seed --sweep_score 0.05,0.4 \
    --sweep_nms 0.5,0.6

and the same with `seed_fpn` (configs/coco_person_r50_fpn.py: the seed on a
pyramid), `atss` (configs/coco_person_r50_fpn_atss.py) or `atss_plain_head`
(the same without GroupNorm in the head). Results and what they mean:
docs/experiments.md, "The ATSS recipe against the seed's at small scale".

What is shrunk, the same way for every recipe (`SHRUNK`): the data (the
embedded default's synthetic set, 192 px canvas; COCO and 1024 px cannot run
here), the trunk (ResNet-18 of width 16 from scratch, so BatchNorm in train
mode and nothing frozen: there are no ImageNet weights to freeze), the
channels after it (32, the default's; 256 would cost ~8x the head's time)
and the budget (the default's 2 epochs of batch 8, 3,336 steps). Both
recipes train with the default's AdamW (lr 0.003, 6% warmup, 10x decay at
97.4%): from scratch, the recipes' own SGD learning rates (0.01 and 0.005,
meant for fine-tuning ImageNet weights) learn little in that budget
(docs/experiments.md, "Learning equivalence": lr 0.04 gave AP50 0.024 after
600 steps where 0.3 gave 0.096), and one optimizer for both keeps it out of
the comparison.

What each recipe keeps of its own: its features (the seed's C5 map, the
pyramid P2-P6 of the others), anchors (in pixels on the same strides as at
full scale), head (the seed's one 3x3 conv, at C5's width on C5, at the
pyramid's on it; the ATSS recipe's four 3x3 convs with or without
GroupNorm), assignment, losses and normaliser, objectness prior, box clamp,
multi-scale jitter and proposal and test settings (evaluate.py sweeps both recipes' score and NMS
thresholds in one pass).
"""

from typing import Any

import ml_collections

from rpn_jax.configs import coco_person_r50_c5
from rpn_jax.configs import coco_person_r50_fpn
from rpn_jax.configs import coco_person_r50_fpn_atss
from rpn_jax.configs import default

RECIPES = ("seed", "seed_fpn", "atss", "atss_plain_head")
# The keys every recipe takes from the embedded default: data, trunk,
# widths, optimizer and budget ("section.key").
SHRUNK = (
    "seed",
    "data.source",
    "data.coco_dir",
    "data.train_split",
    "data.val_split",
    "data.person_images_only",
    "data.image_size",
    "data.max_boxes",
    "data.num_workers",
    "data.synthetic",
    "model.backbone",
    "model.width",
    "model.norm",
    "model.freeze",
    "model.pretrained",
    "model.dtype",
    "model.fpn_channels",
    "train.optimizer",
    "train.batch_size",
    "train.learning_rate",
    "train.momentum",
    "train.weight_decay",
    "train.epochs",
    "train.max_steps",
    "train.schedule",
    "train.warmup_factor",
    "train.warmup_percent",
    "train.decay_percent",
    "train.decay_factor",
    "train.checkpoint_every_epochs",
    "train.checkpoint_every_minutes",
    "train.keep_every_epochs",
    "train.eval_every_epochs",
    "eval.batch_size",
)


def value(config: ml_collections.ConfigDict, key: str) -> Any:
  """`config`'s value at "section.key" (or a top-level "key"); a section
  as a new ConfigDict, so that a copy shares nothing with `config`."""
  section, _, name = key.rpartition(".")
  found = (config[section] if section else config)[name]
  if isinstance(found, ml_collections.ConfigDict):
    return ml_collections.ConfigDict(found.to_dict())
  return found


def _take(config: ml_collections.ConfigDict, source, key: str) -> None:
  section, _, name = key.rpartition(".")
  (config[section] if section else config)[name] = value(source, key)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg` one of RECIPES: that recipe at the default's scale."""
  if arg not in RECIPES:
    raise ValueError(
        f"bench/small_scale.py takes one of {RECIPES} "
        f"(--config bench/small_scale.py:seed), got {arg!r}"
    )
  small = default.get_config()
  if arg == "seed":
    config = coco_person_r50_c5.get_config()
    config.model.head_channels = 128  # C5's width, as torchvision's head
  elif arg == "seed_fpn":
    config = coco_person_r50_fpn.get_config()
    config.model.head_channels = small.model.head_channels
  else:
    config = coco_person_r50_fpn_atss.get_config()
    config.model.head_channels = small.model.head_channels
    if arg == "atss_plain_head":
      config.model.head_norm = "none"
  for key in SHRUNK:
    _take(config, small, key)
  config.data.hflip = True
  # No test-time augmentation for either: the recipes' own test settings.
  config.eval.tta_scales = (1.0,)
  config.eval.hflip_tta = False
  config.eval.image_size = 0
  return config
