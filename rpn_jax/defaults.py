"""Every key every recipe has, with the seed protocol's values where it fixes one.

Recipes in `configs/` start from `base_config()` and override what differs, so
a key that exists in one config exists in all of them (and an override of a key
that does not exist is an error naming it). It lives in the package, not in
`configs/`, because restoring a checkpoint fills keys that an older run's saved
config lacks from these defaults.
"""

import math
from typing import Any

import ml_collections

# (xy_limit, wh_min, wh_max) on the (dx, dy) and (dw, dh) deltas
# (`targets.box_clamp`, passed to rpn_jax.boxes.encode / decode).
SEED_BOX_CLAMP = (0.5, math.log(0.5), math.log(2.0))
# torchvision's BoxCoder: dw, dh capped at log(1000/16) when decoding.
TORCHVISION_BOX_CLAMP = (math.inf, -math.inf, math.log(1000.0 / 16))


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = data = ml_collections.ConfigDict()
  data.source = "synthetic"  # synthetic | coco_dir | tfds
  data.coco_dir = ""  # empty with source=synthetic: generated into the cache
  data.train_split = "train"
  data.val_split = "val"
  data.image_size = 1024
  data.person_images_only = True
  data.max_boxes = 128
  # RGB order, 0-255 range; the ImageNet statistics torchvision's weights expect.
  data.mean = (123.675, 116.28, 103.53)
  data.std = (58.395, 57.12, 57.375)
  # "mean_std": (x - mean) / std; "mean_only": x - mean, std unused (the seed,
  # whose weights expected std-normalised input: PROTOCOL.md "Input").
  data.pixel_norm = "mean_std"
  data.hflip = False
  # Training only: resize each letterboxed image by a factor from [lo, hi] and
  # cut a random canvas-sized window (large scale jitter); (1, 1): off.
  data.scale_jitter = (1.0, 1.0)
  data.num_workers = 4
  data.tfds_data_dir = ""
  data.synthetic = ml_collections.ConfigDict()
  data.synthetic.num_train = 2000
  data.synthetic.num_val = 200
  data.synthetic.seed = 0
  data.synthetic.min_size = 192
  data.synthetic.max_size = 320

  config.model = model = ml_collections.ConfigDict()
  model.backbone = "resnet50"
  model.width = 64
  model.norm = "frozen_bn"  # frozen_bn | bn | gn
  model.feature = "C5"
  model.freeze = ("backbone/conv1", "backbone/bn1", "backbone/layer1")
  model.head_channels = 256
  # 3x3 conv + ReLU layers before the 1x1 outputs, each initialised at std 0.01
  # (torchvision's head): more than one wants AdamW (under SGD they start too small).
  model.head_convs = 1
  # "gn": GroupNorm between each of them and its ReLU (ATSS's and GFL's heads).
  model.head_norm = "none"
  model.objectness_prior = (
      0.5  # initial objectness probability (0.5: zero bias)
  )
  # P2..P6 on C2..C5 (needs feature C5), one anchor size per level, in order.
  model.fpn = False
  model.fpn_channels = 256
  model.anchor_sizes = (32.0, 64.0, 128.0, 256.0, 512.0)
  model.anchor_ratios = (0.5, 1.0, 2.0)
  # Each size times each scale; RetinaNet's octave scales are (1, 2^(1/3), 2^(2/3)).
  model.anchor_scales = (1.0,)
  # Anchor centres at (cell + offset) * stride. 0: torchvision's and
  # detectron2's grid, where every strided conv (padding k // 2) centres cell
  # i on input pixel stride * i; 0.5 shifts each anchor by half a stride from
  # what its cell sees (docs/experiments.md, "Anchor placement").
  model.anchor_offset = 0.0
  # "centred": as above, area size^2 kept across ratios; "seed": the original's
  # top-left corner at the cell corner, w = size, h = size * ratio (no offset).
  model.anchor_placement = "centred"
  model.pretrained = ""  # npz written by `python -m rpn_jax.weights`
  # Computation dtype (params stay float32): "float32", "bfloat16" or "auto",
  # bfloat16 on a GPU or TPU and float32 on CPU (rpn_jax/setup_model.py).
  model.dtype = "float32"

  config.targets = targets = ml_collections.ConfigDict()
  targets.high_threshold = 0.7
  targets.low_threshold = 0.3
  targets.crowd_ioa = 0.7
  # "iou": high/low thresholds (the seed's); "atss": adaptive (Zhang et al.
  # 2020), atss_top_k nearest anchors per level and gt box as candidates
  targets.assigner = "iou"
  targets.atss_top_k = 9
  # Which anchors get labels: "anchors", every one (the standard); "proposals",
  # only those behind each image's post-NMS proposals (the seed; assigner iou).
  targets.label_on = "anchors"
  targets.num_samples = (
      256  # anchors sampled per image; 0 = every labelled anchor
  )
  targets.positive_fraction = 0.5
  targets.box_weights = (1.0, 1.0, 1.0, 1.0)
  targets.box_clamp = SEED_BOX_CLAMP
  targets.box_loss = "smooth_l1"  # or "giou": 1 - GIoU of the decoded boxes
  targets.smooth_l1_beta = 1.0
  targets.box_loss_weight = 1.0
  # "bce" (the seed), "focal" (focal_alpha, focal_gamma) or "quality_focal"
  # (IoU targets, beta = focal_gamma)
  targets.objectness_loss = "bce"
  targets.focal_alpha = 0.25
  targets.focal_gamma = 2.0
  # Both losses are divided by batch_size * num_samples ("samples", the seed)
  # or by the number of positive anchors in the batch ("positives").
  targets.normalizer = "samples"

  config.proposals = proposals = ml_collections.ConfigDict()
  proposals.pre_nms_top_k = 12000
  proposals.nms_threshold = 0.7
  proposals.post_nms_top_k = 1000
  proposals.min_size = 1e-3

  config.train = train = ml_collections.ConfigDict()
  train.epochs = 24
  train.batch_size = 8
  train.max_steps = 0  # 0 = no cap
  train.optimizer = "sgd"  # sgd | adamw
  train.learning_rate = 0.01
  train.momentum = 0.9
  train.weight_decay = 1e-4
  train.schedule = "constant"  # constant | warmup_step
  # warmup_step starts at learning_rate x this (detectron2's factor).
  train.warmup_factor = 0.001
  # Durations: each in steps, epochs or percent (a fraction of the whole run,
  # in [0, 1]; the run is epochs x steps/epoch, cut at max_steps), at most one
  # of the three set, the others 0 or (); resolved to steps once the dataset
  # size is known (rpn_jax/schedules.py). Recipes give epochs or percent, so
  # that another dataset, batch size or epoch count keeps them in place.
  # warmup_step: linear warmup over this length, then lr x decay_factor at
  # each decay boundary.
  train.warmup_steps = 0
  train.warmup_epochs = 0.0
  train.warmup_percent = 0.0
  train.decay_steps = ()
  train.decay_epochs = ()
  train.decay_percent = ()
  train.decay_factor = 0.1
  # A checkpoint at this cadence, and always at each epoch's end and the
  # run's end (all three 0: only there).
  train.checkpoint_every_steps = 0
  train.checkpoint_every_epochs = 0.0
  train.checkpoint_every_percent = 0.0
  # Also a checkpoint once this many minutes have passed since the last one
  # (0 = off): on a preemptible machine the work lost to a kill is bounded in
  # time, whatever a step costs there.
  train.checkpoint_every_minutes = 0.0
  # The newest keep_checkpoints are kept, older ones deleted ...
  train.keep_checkpoints = 3
  # ... except those at every this many epochs' ends (0 = none), so that
  # after a run each of them can still be evaluated (evaluate.py --step N).
  train.keep_every_epochs = 0
  # A metrics.jsonl line at this cadence and at the run's end (all three 0:
  # at each epoch's end).
  train.log_every_steps = 20
  train.log_every_epochs = 0.0
  train.log_every_percent = 0.0
  # Validate on data.val_split (AP, AP50, AR100 at eval.score_threshold /
  # eval.nms_threshold, proposal AR@1000) every this many epochs and at the
  # end of training, into metrics.jsonl and TensorBoard; 0 = off. A pass over
  # COCO val2017 costs minutes: every few epochs, not every one.
  train.eval_every_epochs = 0
  train.max_nonfinite_steps = 10

  config.eval = ev = ml_collections.ConfigDict()
  ev.batch_size = 8
  # Letterbox canvas of the val images; 0: data.image_size. No parameter
  # depends on the canvas, so a model trained on small canvases (fast) may be
  # evaluated on larger ones (small persons keep more pixels).
  ev.image_size = 0
  ev.score_threshold = 0.4
  ev.nms_threshold = 0.5
  ev.max_detections = 100
  # Test-time augmentation, beyond the seed (off): also predict on canvases
  # rescaled by tta_scales and mirrored, and fuse each proposal with its best
  # match (IoU >= tta_match_iou) of every other pass (rpn_jax/tta.py).
  ev.tta_scales = (1.0,)
  ev.hflip_tta = False
  ev.tta_match_iou = 0.6
  # An enlarged pass proposes and votes only below this box size (sqrt(w h),
  # px of its canvas; SNIP-style, rpn_jax/tta.py); inf: no limit.
  ev.tta_upscaled_max_size = math.inf
  ev.draw_score_threshold = 0.7
  ev.draw_nms_threshold = 0.2
  return config


def _fill_defaults(
    saved: dict[str, Any], defaults: dict[str, Any]
) -> dict[str, Any]:
  """`saved` with each key it lacks (at any depth) taken from `defaults`."""
  out = dict(saved)
  for k, v in defaults.items():
    if k not in out:
      out[k] = v
    elif isinstance(v, dict) and isinstance(out[k], dict):
      out[k] = _fill_defaults(out[k], v)
  return out


def _tuples(tree: Any) -> Any:
  """JSON's lists back to the tuples every config sequence is (so that
  `--config.eval.tta_scales='(1, 2)'` can override a restored config)."""
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(v) for v in tree)
  return tree


def with_base_defaults(saved: dict[str, Any]) -> dict[str, Any]:
  """A saved config dict (a run's config.json, an exported detector's)
  completed with the base_config() defaults of keys added since it was
  written: the behaviour it had before they existed."""
  return _fill_defaults(saved, base_config().to_dict())


def from_saved(saved: dict[str, Any]) -> ml_collections.ConfigDict:
  """A config written as JSON, read back: `with_base_defaults`, its lists
  made tuples again."""
  return ml_collections.ConfigDict(_tuples(with_base_defaults(saved)))
