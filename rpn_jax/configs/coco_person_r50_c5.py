"""The seed's week-7 recipe (seed/PROTOCOL.md): R50-C5 person RPN on COCO 2017.

Table to reproduce on val2017 person images: AP 0.311, AP50 0.657, AR100 0.407.
Run with ImageNet weights converted by `python -m rpn_jax.weights --norm bn`
(the norm must match model.norm below):

  python train.py --config configs/coco_person_r50_c5.py \
    --config.data.coco_dir=/data/coco --config.model.pretrained=r50.npz
"""

import ml_collections

from rpn_jax import defaults


def get_config() -> ml_collections.ConfigDict:
  config = defaults.base_config()
  config.data.source = "coco_dir"  # or tfds on Colab
  config.data.train_split = "train2017"
  config.data.val_split = "val2017"
  config.data.image_size = 1024
  config.data.person_images_only = True
  # The seed subtracted the mean only (no std), with ImageNet weights trained on
  # std-normalised input; we default to what the weights expect.
  # data.pixel_norm="mean_only" is the seed's preprocessing, and
  # configs/coco_person_r50_c5_exact.py sets it with the seed's other details.
  config.model.backbone = "resnet50"
  # The seed ran train-mode BatchNorm over a batch of 8 split across GPUs.
  config.model.norm = "bn"
  config.model.feature = "C5"
  config.train.epochs = 24
  config.train.batch_size = 8
  config.train.learning_rate = 0.01
  # The seed's lr is constant (base: schedule "constant"). A checkpoint every
  # quarter epoch: 2,003 steps of 8,014 on train2017's 64,115 person images.
  config.train.checkpoint_every_epochs = 0.25
  # A preemptible machine may live less than those 2,003 steps: with a save
  # every 10 minutes too, a kill loses little more than 10 minutes of
  # training. Every epoch's end is kept for evaluation afterwards
  # (evaluate.py --step N). A checkpoint holds params and SGD
  # momentum in float32, about 0.23 GB for R50-C5 (0.22 GB with the FPN):
  # the 24 epochs keep about 5.4 GB, the newest keep_checkpoints 0.7 GB more.
  config.train.checkpoint_every_minutes = 10.0
  config.train.keep_every_epochs = 1
  config.eval.score_threshold = 0.4
  config.eval.nms_threshold = 0.5
  return config
