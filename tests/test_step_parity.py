"""A whole seed-recipe training step and inference pass, rpn_jax against
torchvision's `RegionProposalNetwork` (built by bench/torch_rpn.py).

Both sides start from the same weights (torchvision's, converted with
rpn_jax.weights), see the same batch (several persons, a crowd region, padded
rows, letterboxed images of two shapes) and the same anchors, and
torchvision's sampler is handed the anchors rpn_jax sampled. Then the
losses, every trainable gradient, the BatchNorm statistics, two SGD updates
and the proposals must agree. The recipe is configs/coco_person_r50_c5 at a
192 px canvas, with what torchvision fixes and no config key changes:
smooth-L1 beta 1/9, its box clamp.

torchvision runs in float64: its float32 CPU gradients of the R50's layer2
deviate from the float64 ones by up to 1.5e-3 of a leaf's norm, where
rpn_jax's float32 ones stay within 3e-5 (measured 2026-12-06), so the
float64 run is the oracle both are held to.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import traverse_util

from bench import torch_rpn
from configs import coco_person_r50_c5
from rpn_jax import defaults, eval_lib, setup_model, train_lib
from rpn_jax import targets as targets_lib
from rpn_jax import weights as weights_lib

CANVAS = 192
# (case id, backbone, norm, freeze): the seed's frozen-BN R50 with stem and
# layer1 frozen; a from-scratch ResNet-18 with train-mode BN, all trained.
CASES = [
    (
        "r50_frozen_bn",
        "resnet50",
        "frozen_bn",
        defaults.base_config().model.freeze,
    ),
    ("r18_bn", "resnet18", "bn", ()),
]


def _config(backbone, norm, freeze):
  config = coco_person_r50_c5.get_config()
  config.data.image_size = CANVAS
  config.data.max_boxes = 8
  config.model.backbone = backbone
  config.model.norm = norm
  config.model.freeze = freeze
  config.targets.smooth_l1_beta = 1.0 / 9.0
  config.targets.box_clamp = defaults.TORCHVISION_BOX_CLAMP
  config.train.batch_size = 2
  config.train.learning_rate = 0.02
  return config


def _batch(config):
  """Two letterboxed images (content 192x144 and 128x192, zero padding beyond),
  persons from 10 to 130 px, a crowd region in the first, padded rows.

  Two persons of the second image are placed so that the test notices a
  change of 0.01 in either IoU threshold or the seed's box clamp: some anchor
  that is no person's best match has IoU 0.697 (ignored, positive at 0.69),
  others 0.292-0.2995 and 0.302 (negative / ignored at 0.3, flipped at 0.29 or
  0.31); the 10x30 px person's best anchor needs dw = log(10 / 22.6), beyond
  the seed's log(0.5) clamp.
  """
  rng = np.random.default_rng(0)
  b, s, g = 2, CANVAS, config.data.max_boxes
  image = rng.integers(0, 256, (b, s, s, 3)).astype(np.uint8)
  image_hw = np.array([[192, 144], [128, 192]], np.int32)
  for i, (h, w) in enumerate(image_hw):
    image[i, h:] = 0
    image[i, :, w:] = 0
  persons = [
      [[10, 20, 60, 150], [70, 30, 130, 140], [20, 150, 60, 190]],
      [
          [5, 5, 100, 120],
          [120, 40, 150, 110],
          [150, 10, 168, 58],
          [135.8, 20.6, 192.0, 96.5],
          [170, 70, 180, 100],
      ],
  ]
  boxes = np.zeros((b, g, 4), np.float32)
  valid = np.zeros((b, g), bool)
  crowd = np.zeros((b, g), bool)
  for i, rows in enumerate(persons):
    boxes[i, : len(rows)] = rows
    valid[i, : len(rows)] = True
  boxes[0, 3] = [80, 0, 140, 60]
  crowd[0, 3] = True
  return dict(
      image=image,
      boxes=boxes,
      box_valid=valid,
      box_crowd=crowd,
      image_hw=image_hw,
      scale=np.ones(b, np.float32),
      image_id=np.arange(b),
      image_valid=np.ones(b, bool),
  )


def _keep_relu_inputs_off_zero(trunk):
  """Train-mode BatchNorm scales in [0.2, 0.4] and biases of +-1: a ReLU input
  then lies within float32 rounding of 0 only where a normalised value is
  ~3 standard deviations out, about 200x more rarely than with torch's
  scale 1 and bias 0.

  At torch's initialisation some of the ~3 million ReLU inputs of this step
  fall within ~1e-7 of 0, and float32 rounding (rpn_jax's or torch's, each
  host's differently) flips a few of them against the float64 reference: a
  whole element's gradient in or out, up to 1e-2 of a BatchNorm bias
  gradient's norm. Measured on an AMD EPYC with AVX-512: of 8 image seeds,
  7 flipped at least one in rpn_jax's or torch's own float32 step. The
  first BatchNorm of every block and the stem's take a random sign; the
  second of every block and the shortcut's take +1, so that a block's sum
  with its shortcut (at least 0) stays off 0 too."""
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, module in trunk.named_modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        n = module.weight.numel()
        module.weight.copy_(0.2 + 0.2 * torch.rand(n, generator=generator))
        if name.endswith("bn2") or name.endswith("downsample.1"):
          sign = torch.ones(n)
        else:
          sign = torch.randint(0, 2, (n,), generator=generator) * 2.0 - 1.0
        module.bias.copy_(
            sign * (0.8 + 0.4 * torch.rand(n, generator=generator))
        )


def _sides(config):
  """(torch trunk, torch rpn, rpn_jax model, anchors, rpn_jax variables):
  the same weights, the torch ones converted."""
  trunk, rpn = torch_rpn.build(config, seed=0)
  if config.model.norm == "bn":
    _keep_relu_inputs_off_zero(trunk)
  with torch.no_grad():
    # Spread the objectness logits and deltas well beyond torchvision's
    # std-0.01 initialisation, so proposal ranking and NMS are not decided
    # by float noise between near-equal scores.
    rpn.head.cls_logits.weight.mul_(30.0)
    rpn.head.bbox_pred.weight.mul_(5.0)
  model = setup_model.build_model(config.model)
  anchors = setup_model.model_anchors(config)
  like = setup_model.init_variables(config, model, jax.random.key(0))
  backbone = weights_lib.convert_torchvision_resnet(
      {k: v.numpy() for k, v in trunk.state_dict().items()},
      config.model.backbone,
      config.model.norm,
      config.model.width,
  )
  variables = weights_lib.graft_backbone(like, backbone)
  tensors = torch_rpn.named_tensors(trunk, rpn)
  variables["params"] = {
      **variables["params"],
      "head": torch_rpn.to_flax(tensors, {"head": like["params"]["head"]})[
          "head"
      ],
  }
  return trunk.double(), rpn.double(), model, anchors, variables


def _assert_close_per_leaf(jax_tree, torch_tree, rtol, what):
  """max |a - b| <= rtol * ||b|| for every leaf (b: torchvision's)."""
  flat_j = traverse_util.flatten_dict(jax.device_get(jax_tree))
  flat_t = traverse_util.flatten_dict(torch_tree)
  assert flat_j.keys() == flat_t.keys()
  for path, a in flat_j.items():
    a, b = np.asarray(a, np.float64), np.asarray(flat_t[path], np.float64)
    scale = max(np.linalg.norm(b), 1e-12)
    err = np.abs(a - b).max() / scale
    assert (
        err <= rtol
    ), f"{what} {'/'.join(path)}: max error {err:.2e} of its norm"


def _is_frozen(config, path):
  name = "/".join(path)
  return any(name == p or name.startswith(p + "/") for p in config.model.freeze)


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def case(request):
  _, backbone, norm, freeze = request.param
  config = _config(backbone, norm, freeze)
  return config, _batch(config), *_sides(config)


def test_train_step_equals_torchvision(case):
  config, batch, trunk, rpn, model, anchors, variables = case
  key = jax.random.key(3)
  params, stats = variables["params"], variables["batch_stats"]

  # rpn_jax: sampled anchors, losses, gradients, statistics.
  sampled = jax.jit(
      lambda b, k: train_lib.batch_targets(config, jnp.asarray(anchors), b, k)
  )(batch, key)
  pos = np.asarray(sampled["pos_mask"])
  neg = np.asarray(sampled["neg_mask"])
  assert (pos | neg).sum(1).tolist() == [config.targets.num_samples] * 2
  loss_fn = train_lib.make_loss_fn(config, model, anchors)
  grads, (new_stats, aux) = jax.jit(jax.grad(loss_fn, has_aux=True))(
      params, stats, batch, key
  )

  # torchvision: same anchors, and its sampler returns rpn_jax's samples.
  rpn.fg_bg_sampler = lambda labels: (
      [torch.from_numpy(m.astype(np.uint8)) for m in pos],
      [torch.from_numpy(m.astype(np.uint8)) for m in neg],
  )
  trunk.train()
  rpn.train()
  images = torch_rpn.images_nchw(config, batch, torch.float64)
  targets = torch_rpn.gt_targets(batch, torch.float64)
  anchor_list = [torch.from_numpy(anchors).double()] * 2
  torch_labels, _ = rpn.assign_targets_to_anchors(anchor_list, targets)
  losses = torch_rpn.rpn_losses(
      trunk, rpn, images, torch_rpn.image_sizes(batch), targets, anchor_list
  )
  total = losses["objectness"] + losses["box"]
  total.backward()

  # Matching: rpn_jax's positives are torchvision's; its sampled negatives
  # are negatives there too (crowd regions only turn negatives to ignored).
  for i in range(2):
    _, labels = targets_lib.match_anchors(
        jnp.asarray(anchors),
        batch["boxes"][i],
        batch["box_valid"][i] & ~batch["box_crowd"][i],
    )
    np.testing.assert_array_equal(
        np.asarray(labels) == 1, torch_labels[i].numpy() == 1
    )
    assert np.all(torch_labels[i].numpy()[neg[i]] == 0)
  assert pos.sum() > 0

  for name, value in (
      ("objectness", losses["objectness"]),
      ("box", losses["box"]),
      ("total", total),
  ):
    np.testing.assert_allclose(
        float(aux[name]), value.item(), rtol=1e-5, err_msg=name
    )

  torch_grads = torch_rpn.to_flax(
      torch_rpn.named_tensors(trunk, rpn, grads=True), grads
  )
  _assert_close_per_leaf(grads, torch_grads, 1e-4, "gradient of")
  frozen = [
      p for p in traverse_util.flatten_dict(grads) if _is_frozen(config, p)
  ]
  assert bool(frozen) == bool(config.model.freeze)
  for path in frozen:
    assert not np.any(np.asarray(traverse_util.flatten_dict(grads)[path]))
  frozen_torch = [n for n, p in trunk.named_parameters() if not p.requires_grad]
  assert len(frozen_torch) == len(frozen)

  # BatchNorm statistics after the step's forward pass.
  torch_stats = torch_rpn.to_flax(
      torch_rpn.named_tensors(trunk, rpn), new_stats
  )
  _assert_close_per_leaf(new_stats, torch_stats, 1e-5, "statistic")

  # Two SGD updates (momentum and weight decay at work in the second) of
  # torchvision's gradients, by rpn_jax's optimizer and by torch.optim.SGD.
  tx = train_lib.make_optimizer(config, variables)
  opt_state = tx.init(params)
  new_params = params
  moved_jax = jax.tree.map(np.zeros_like, params)
  sgd = torch_rpn.sgd(config, trunk, rpn)
  before = torch_rpn.named_tensors(trunk, rpn)
  for _ in range(2):
    updates, opt_state = tx.update(torch_grads, opt_state, new_params)
    new_params = optax.apply_updates(new_params, updates)
    # Summed updates, not new - old params: float32 cancellation would cost
    # rpn_jax ~1e-4 of an update's norm.
    moved_jax = jax.tree.map(
        lambda m, u: m + np.asarray(u, np.float64), moved_jax, updates
    )
    sgd.step()
  after = torch_rpn.named_tensors(trunk, rpn)
  moved_torch = torch_rpn.to_flax(
      {k: after[k] - before[k] for k in after}, params
  )
  _assert_close_per_leaf(moved_jax, moved_torch, 1e-5, "SGD update of")
  for path in frozen:
    assert not np.any(traverse_util.flatten_dict(moved_jax)[path])
    assert not np.any(traverse_util.flatten_dict(moved_torch)[path])


def test_proposals_equal_torchvision(case):
  config, batch, trunk, rpn, model, anchors, variables = case
  assert (
      config.proposals.pre_nms_top_k,
      config.proposals.nms_threshold,
      config.proposals.post_nms_top_k,
  ) == (12000, 0.7, 1000)
  out = jax.jit(eval_lib.make_predict_fn(config, model, anchors))(
      variables, batch
  )
  trunk.eval()
  rpn.eval()
  boxes, scores = torch_rpn.propose(
      trunk,
      rpn,
      torch_rpn.images_nchw(config, batch, torch.float64),
      torch_rpn.image_sizes(batch),
      [torch.from_numpy(anchors).double()] * 2,
  )
  for i in range(2):
    valid = np.asarray(out["valid"][i])
    k = int(valid.sum())
    assert k == len(boxes[i]) > 20
    assert valid[:k].all()
    np.testing.assert_allclose(
        np.asarray(out["scores"][i][:k]),
        scores[i].numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    # Within 0.01 px: float32 decoding of deltas of several units (exp(dw))
    # leaves up to 3e-3 px between float32 rpn_jax and float64 torchvision.
    np.testing.assert_allclose(
        np.asarray(out["boxes"][i][:k]), boxes[i].numpy(), rtol=1e-5, atol=1e-2
    )
