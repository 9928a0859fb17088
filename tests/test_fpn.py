"""FPN option: the pyramid, its anchors and its per-level proposals against torchvision,
a train step on the tiny recipe, the R50-FPN recipe, and the config checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from configs import coco_person_r50_fpn
from rpn_jax import eval_lib, setup_model, train_lib
from rpn_jax.boxes import box_iou
from rpn_jax.models.fpn import FPN, LEVELS
from rpn_jax.models.rpn import init_module
from rpn_jax.proposals import propose

FPN_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
RATIOS = (0.5, 1.0, 2.0)


def fpn_config(config, image_size):
  """`config` (the tiny recipe) switched to FPN on a square `image_size` canvas."""
  config.model.fpn = True
  config.model.feature = "C5"
  config.model.fpn_channels = 8
  config.model.head_channels = 16
  config.model.anchor_sizes = FPN_SIZES
  config.data.image_size = image_size
  return config


def test_pyramid_matches_torchvision():
  # Odd sizes, as a 200 px canvas gives: the 2x upsampling is cropped by one.
  in_channels = (8, 16, 32, 64)
  sizes = ((25, 25), (13, 13), (7, 7), (4, 4))
  rng = np.random.default_rng(0)
  features = {
      f"C{i + 2}": rng.normal(size=(2, h, w, c)).astype(np.float32)
      for i, ((h, w), c) in enumerate(zip(sizes, in_channels))
  }
  torch.manual_seed(0)
  reference = FeaturePyramidNetwork(
      list(in_channels), 8, extra_blocks=LastLevelMaxPool()
  ).eval()
  with torch.no_grad():
    for p in reference.parameters():
      p.normal_(0.0, 0.2)  # random biases too (torchvision starts them at zero)

  module = FPN(channels=8)
  params = init_module(module, jax.random.key(0), features)["params"]
  converted = {}
  for i in range(4):
    for name, block in (
        (f"lateral{i + 2}", reference.inner_blocks[i][0]),
        (f"output{i + 2}", reference.layer_blocks[i][0]),
    ):
      kernel = block.weight.detach().numpy().transpose(2, 3, 1, 0)
      assert kernel.shape == params[name]["kernel"].shape, name
      converted[name] = {"kernel": kernel, "bias": block.bias.detach().numpy()}
  assert set(converted) == set(params)
  got = jax.jit(module.apply)({"params": converted}, features)

  with torch.no_grad():
    expected = reference(
        {
            k: torch.from_numpy(v.transpose(0, 3, 1, 2))
            for k, v in features.items()
        }
    )
  assert list(got) == list(LEVELS)
  for level, want in zip(LEVELS, expected.values()):
    want = want.numpy().transpose(0, 2, 3, 1)
    assert got[level].shape == want.shape, level
    # float32, values up to ~20: the two differ by ~5e-6 here, in summation order.
    np.testing.assert_allclose(
        np.asarray(got[level]), want, atol=1e-4, rtol=1e-4
    )

  # torchvision's kaiming_uniform_(a=1) init: uniform, variance 1 / fan_in.
  kernel = np.asarray(params["output2"]["kernel"])
  bound = np.sqrt(3.0 / (9 * 8))
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
  assert np.all(np.asarray(params["lateral5"]["bias"]) == 0)


def test_anchors_per_level_match_torchvision(tiny):
  config = fpn_config(tiny, 256)
  config.model.anchor_offset = 0.0  # torchvision's grid
  anchors = setup_model.model_anchors(config)
  hws = [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
  assert setup_model.anchors_per_level(config) == tuple(
      h * w * 3 for h, w in hws
  )
  generator = AnchorGenerator(
      sizes=tuple((s,) for s in FPN_SIZES), aspect_ratios=(RATIOS,) * 5
  )
  images = ImageList(torch.zeros(1, 3, 256, 256), [(256, 256)])
  expected = generator(images, [torch.zeros(1, 8, h, w) for h, w in hws])[
      0
  ].numpy()
  assert anchors.dtype == np.float32 and anchors.shape == expected.shape
  # torchvision rounds its base anchors to whole pixels.
  np.testing.assert_allclose(anchors, expected, atol=0.5)


def test_anchor_scales_multiply_every_level_like_torchvision(tiny):
  config = fpn_config(tiny, 128)
  config.model.anchor_offset = 0.0
  scales = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
  config.model.anchor_scales = scales
  hws = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
  assert setup_model.anchors_per_level(config) == tuple(
      h * w * 9 for h, w in hws
  )
  sizes = tuple(tuple(s * k for k in scales) for s in FPN_SIZES)
  generator = AnchorGenerator(sizes=sizes, aspect_ratios=(RATIOS,) * 5)
  images = ImageList(torch.zeros(1, 3, 128, 128), [(128, 128)])
  expected = generator(images, [torch.zeros(1, 8, h, w) for h, w in hws])[
      0
  ].numpy()
  np.testing.assert_allclose(
      setup_model.model_anchors(config), expected, atol=0.5
  )
  model = setup_model.build_model(config.model)
  variables = setup_model.init_variables(config, model, jax.random.key(0))
  outputs = model.apply(variables, np.zeros((1, 128, 128, 3), np.float32))
  assert outputs["objectness"].shape == (1, len(expected))
  config.model.anchor_scales = ()
  with pytest.raises(ValueError, match="model.anchor_scales must be positive"):
    setup_model.model_anchors(config)


SETTINGS = dict(
    pre_nms_top_k=150, nms_threshold=0.7, post_nms_top_k=100, min_size=1.0
)


def _batched_nms_reference(anchors, logits, deltas, image_hw, level_sizes):
  """torchvision's RegionProposalNetwork.filter_proposals on one image."""
  logits = torch.from_numpy(logits)
  top_idx, levels, start = [], [], 0
  for level, size in enumerate(level_sizes):
    idx = (
        logits[start : start + size].topk(min(SETTINGS["pre_nms_top_k"], size))[
            1
        ]
        + start
    )
    top_idx.append(idx)
    levels.append(torch.full_like(idx, level))
    start += size
  top_idx, levels = torch.cat(top_idx), torch.cat(levels)
  boxes = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)).decode_single(
      torch.from_numpy(deltas)[top_idx], torch.from_numpy(anchors)[top_idx]
  )
  boxes = torchvision.ops.clip_boxes_to_image(boxes, tuple(image_hw))
  scores = torch.sigmoid(logits[top_idx])
  keep = torchvision.ops.remove_small_boxes(boxes, SETTINGS["min_size"])
  boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
  keep = torchvision.ops.batched_nms(
      boxes, scores, levels, SETTINGS["nms_threshold"]
  )
  keep = keep[: SETTINGS["post_nms_top_k"]]
  return boxes[keep].numpy(), scores[keep].numpy(), levels[keep].numpy()


def test_per_level_proposals_match_batched_nms(tiny):
  config = fpn_config(tiny, 128)
  anchors = setup_model.model_anchors(config)
  level_sizes = setup_model.anchors_per_level(config)  # 3072, 768, 192, 48, 12
  # 150 + 150 + 150 + 48 + 12 candidates: few enough that torchvision's batched_nms
  # takes its coordinate-offset path, the one propose reproduces bit for bit.
  run = jax.jit(functools.partial(propose, **SETTINGS, level_sizes=level_sizes))
  rng = np.random.default_rng(0)
  image_hw = (128, 100)
  logits = rng.normal(0, 2, len(anchors)).astype(np.float32)
  deltas = rng.normal(0, 0.5, (len(anchors), 4)).astype(np.float32)
  boxes, scores, valid = map(
      np.asarray, run(anchors, logits, deltas, np.array(image_hw))
  )
  want_boxes, want_scores, want_levels = _batched_nms_reference(
      anchors, logits, deltas, image_hw, level_sizes
  )
  assert valid.sum() == len(want_boxes) == SETTINGS["post_nms_top_k"]
  np.testing.assert_allclose(boxes[valid], want_boxes, atol=1e-3)
  np.testing.assert_allclose(scores[valid], want_scores, rtol=1e-6)
  # The case tells per-level NMS apart from one NMS: kept boxes of different
  # levels overlap above the threshold.
  ious = np.asarray(box_iou(want_boxes, want_boxes))
  other_level = want_levels[:, None] != want_levels[None, :]
  assert np.any((ious > SETTINGS["nms_threshold"]) & other_level)


def test_train_step_on_tiny_fpn(tiny):
  config = fpn_config(tiny, 64)
  config.train.batch_size = 2
  model = setup_model.build_model(config.model)
  anchors = setup_model.model_anchors(config)
  variables = setup_model.init_variables(config, model, jax.random.key(0))
  assert set(variables["params"]) == {"backbone", "fpn", "head"}
  tx = train_lib.make_optimizer(config, variables)
  state = train_lib.create_train_state(config, model, tx, variables)

  b, s, g = 2, config.data.image_size, config.data.max_boxes
  rng = np.random.default_rng(0)
  boxes = np.zeros((b, g, 4), np.float32)
  boxes[:, :2] = [[4, 6, 20, 40], [30, 10, 62, 60]]
  box_valid = np.zeros((b, g), bool)
  box_valid[:, :2] = True
  batch = dict(
      image=rng.integers(0, 255, (b, s, s, 3), np.uint8),
      boxes=boxes,
      box_valid=box_valid,
      box_crowd=np.zeros((b, g), bool),
      image_hw=np.full((b, 2), s, np.int32),
      image_valid=np.ones(b, bool),
  )
  # The step runs once: skipping XLA's backend optimisations halves its compile on CPU.
  options = (
      {"xla_backend_optimization_level": 0}
      if jax.default_backend() == "cpu"
      else None
  )
  step = jax.jit(train_lib.make_train_step(config, model, tx, anchors))
  new_state, metrics = step.lower(state, batch).compile(
      compiler_options=options
  )(state, batch)
  metrics = jax.device_get(metrics)
  assert metrics["finite"] == 1 and metrics["num_pos"] > 0
  for name in ("total", "objectness", "box"):
    assert np.isfinite(metrics[name]), name
  old = jax.tree_util.tree_flatten_with_path(state.params)[0]
  new = jax.tree_util.tree_leaves(new_state.params)
  for (path, before), after in zip(old, new):
    name = "/".join(p.key for p in path)
    assert not np.array_equal(np.asarray(before), np.asarray(after)), name


def test_r50_fpn_config_builds():
  config = coco_person_r50_fpn.get_config()
  assert config.model.fpn and config.proposals.pre_nms_top_k == 1000
  model = setup_model.build_model(config.model)
  size = config.data.image_size
  out, variables = jax.eval_shape(
      lambda: model.init_with_output(
          jax.random.key(0), jnp.zeros((1, size, size, 3))
      )
  )
  per_level = setup_model.anchors_per_level(config)
  assert per_level == tuple(3 * (1024 // s) ** 2 for s in (4, 8, 16, 32, 64))
  assert out["objectness"].shape == (1, sum(per_level))
  assert out["deltas"].shape == (1, sum(per_level), 4)
  assert setup_model.model_anchors(config).shape == (sum(per_level), 4)
  # Evaluation (and bench/jax_rpn's predictor) proposes per level from these outputs.
  predict = eval_lib.make_predict_fn(
      config, model, setup_model.model_anchors(config)
  )
  batch = dict(
      image=jnp.zeros((1, size, size, 3), jnp.uint8),
      image_hw=jnp.full((1, 2), size),
      image_valid=jnp.ones((1,), bool),
  )
  proposals = jax.eval_shape(predict, variables, batch)
  assert proposals["boxes"].shape == (1, config.proposals.post_nms_top_k, 4)
  params = variables["params"]
  assert params["fpn"]["lateral2"]["kernel"].shape == (1, 1, 256, 256)
  assert params["fpn"]["lateral5"]["kernel"].shape == (1, 1, 2048, 256)
  assert params["fpn"]["output3"]["kernel"].shape == (3, 3, 256, 256)
  assert params["head"]["conv"]["kernel"].shape == (3, 3, 256, 256)
  assert params["head"]["cls_logits"]["kernel"].shape == (1, 1, 256, 3)
  assert params["head"]["bbox_pred"]["kernel"].shape == (1, 1, 256, 12)


def test_head_convs_reach_the_model(tiny):
  """model.head_convs=2 gives the shared head a second 3x3 conv ("conv1")."""
  config = fpn_config(tiny, 64)
  config.model.head_convs = 2
  model = setup_model.build_model(config.model)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  )
  head = variables["params"]["head"]
  channels = config.model.head_channels
  assert sorted(head) == ["bbox_pred", "cls_logits", "conv", "conv1"]
  assert head["conv1"]["kernel"].shape == (3, 3, channels, channels)


def test_without_fpn_one_level(tiny):
  assert not tiny.model.fpn
  model = setup_model.build_model(tiny.model)
  assert not model.fpn
  assert setup_model.anchors_per_level(tiny) == (
      len(setup_model.model_anchors(tiny)),
  )


@pytest.mark.parametrize(
    "key,value", [("feature", "C4"), ("anchor_sizes", (32.0, 64.0))]
)
def test_bad_fpn_config_names_the_key(tiny, key, value):
  config = fpn_config(tiny, 64)
  config.model[key] = value
  for call in (
      lambda: setup_model.build_model(config.model),
      lambda: setup_model.model_anchors(config),
  ):
    with pytest.raises(ValueError, match=f"model.{key}") as error:
      call()
    assert "\n" not in str(error.value)
