"""The torchvision side of bench.learning_parity at a tiny size: its training
loop steps, its proposals go through rpn_jax's evaluator, its learning rate
follows rpn_jax's schedule, and rpn_jax's predictor reads its weights alike."""

import jax
import numpy as np
import pytest
import torch

from bench import learning_parity
from bench import torch_rpn
from bench import torch_training
from rpn_jax import coco_eval
from rpn_jax import eval_lib
from rpn_jax import optimizer as optimizer_lib
from rpn_jax import schedules
from rpn_jax import setup_model
from rpn_jax.data import loader as loader_lib
from rpn_jax.data import open_dataset

torch.set_num_threads(2)


def _tiny(steps: int = 3):
  """learning_parity.config() shrunk: 96 px canvas (a 3 x 3 C5 map), width
  8, 16 + 8 synthetic images, batch 4."""
  config = learning_parity.config(seed=0, steps=steps)
  config.data.synthetic.num_train = 16
  config.data.synthetic.num_val = 8
  config.data.synthetic.min_size = 64
  config.data.synthetic.max_size = 96
  config.data.image_size = 96
  config.data.max_boxes = 8
  config.data.num_workers = 0
  config.model.width = 8
  config.model.head_channels = 64
  config.model.anchor_sizes = (16.0, 32.0, 64.0)
  config.proposals.post_nms_top_k = 50
  config.train.batch_size = 4
  config.eval.batch_size = 4
  return config


@pytest.fixture(scope="module")
def trained():
  """(config, trunk, rpn, initial trunk weights, loss history) after a few
  steps of torch_training.train."""
  config = _tiny()
  initial, _ = torch_rpn.build(config, seed=0)
  before = {k: v.clone() for k, v in initial.state_dict().items()}
  history = []
  trunk, rpn = torch_training.train(config, 0, 3, log_every=1, history=history)
  return config, trunk, rpn, before, history


def test_train_steps_the_weights(trained):
  config, trunk, _, before, history = trained
  assert [r["step"] for r in history] == [1, 2, 3]
  assert all(np.isfinite(r["total"]) and r["total"] > 0 for r in history)
  # Same seed, same initial weights: train() moved them.
  after = trunk.state_dict()
  assert torch.equal(
      torch_rpn.build(config, seed=0)[0].conv1.weight, before["conv1.weight"]
  )
  assert not torch.equal(after["conv1.weight"], before["conv1.weight"])
  assert all(torch.isfinite(v.float()).all() for v in after.values())
  # The learning rate of each logged step is rpn_jax's at that step (0-based),
  # its durations resolved as train_lib resolves them.
  dataset = open_dataset(config.data, config.data.train_split)
  per_epoch = loader_lib.train_loader(config, dataset).steps_per_epoch
  schedule = optimizer_lib.make_schedule(
      schedules.resolve_steps(config.train, per_epoch)
  )
  for record in history:
    assert record["lr"] == pytest.approx(
        float(schedule(record["step"] - 1)), rel=1e-6
    )


def test_proposals_score_through_rpn_jax_evaluator(trained):
  config, trunk, rpn, _, _ = trained
  dataset = open_dataset(config.data, config.data.val_split)
  props = torch_training.predict_proposals(config, trunk, rpn, dataset)
  n, k = len(dataset), config.proposals.post_nms_top_k
  assert props.boxes.shape == (n, k, 4) and props.scores.shape == (n, k)
  assert props.valid.shape == (n, k) and props.valid.any(axis=1).all()
  np.testing.assert_array_equal(props.image_ids, dataset.image_ids)
  coco = coco_eval.load_ground_truth(dataset.annotation_file)
  for i, image_id in enumerate(props.image_ids):
    info = coco.loadImgs([int(image_id)])[0]
    boxes = props.boxes[i][props.valid[i]]
    scores = props.scores[i][props.valid[i]]
    # Original-image pixels: clipped to the image's letterboxed content
    # (its sides rounded to whole canvas pixels: up to half a canvas pixel
    # past the image's edge), not to the canvas.
    slack = 0.5 * max(info["width"], info["height"]) / config.data.image_size
    assert boxes.min() >= 0
    assert (boxes[:, 2] <= info["width"] + slack + 1e-3).all()
    assert (boxes[:, 3] <= info["height"] + slack + 1e-3).all()
    assert (boxes[:, 2:] >= boxes[:, :2]).all()
    assert ((scores >= 0) & (scores <= 1)).all()
    assert (np.diff(scores) <= 0).all()
    assert not props.valid[i][len(scores) :].any()
  metrics, results = eval_lib.evaluate_proposals(
      props,
      coco,
      [int(i) for i in props.image_ids],
      coco_eval.person_category_id(coco, dataset.annotation_file),
      config.eval.score_threshold,
      config.eval.nms_threshold,
      config.eval.max_detections,
  )
  assert results
  assert set(metrics) == set(coco_eval.METRIC_KEYS)
  # COCOeval's -1: no ground truth in that area range (few tiny images).
  assert all(0.0 <= v <= 1.0 or v == -1 for v in metrics.values()), metrics
  assert all(0.0 <= metrics[k] <= 1.0 for k in ("AP", "AP50", "AR100"))


def test_rpn_jax_predictor_reads_torch_weights_alike(trained):
  """The torch weights converted (torch_rpn.to_flax) and run by rpn_jax's
  predictor give each image the same best proposal: forward pass, running
  statistics, anchor grid, decoding and clipping agree, so scores of the two
  sides are comparable. Boxes agree to a pixel, not exactly: torchvision
  rounds its anchors' corners to integers, rpn_jax does not (up to 0.5 px
  here, scaled by exp(dw) when decoded)."""
  config, trunk, rpn, _, _ = trained
  dataset = open_dataset(config.data, config.data.val_split)
  ours = torch_training.predict_proposals(config, trunk, rpn, dataset)
  like = setup_model.init_variables(
      config, setup_model.build_model(config.model), jax.random.key(0)
  )
  tensors = torch_rpn.named_tensors(trunk, rpn)
  variables = {
      name: torch_rpn.to_flax(tensors, tree) for name, tree in like.items()
  }
  theirs = eval_lib.predict_proposals(config, variables, dataset)
  np.testing.assert_array_equal(theirs.image_ids, ours.image_ids)
  np.testing.assert_allclose(
      theirs.scores[:, 0], ours.scores[:, 0], rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(theirs.boxes[:, 0], ours.boxes[:, 0], atol=1.0)


@pytest.mark.parametrize("warmup,decays", [(10, (20, 30)), (0, (5,))])
def test_torch_schedule_is_rpn_jax_schedule(warmup, decays):
  config = _tiny()
  config.train.learning_rate = 0.1
  config.train.warmup_percent = 0.0
  config.train.decay_percent = ()
  config.train.warmup_steps = warmup
  config.train.decay_steps = decays
  config.train.max_steps = 0  # the step boundaries lie past the tiny run
  param = torch.nn.Parameter(torch.zeros(1))
  optimizer = torch.optim.SGD(
      [param], lr=config.train.learning_rate, momentum=0.9
  )
  # 100 steps per epoch: the step durations resolve to themselves.
  lr_schedule = torch_training.scheduler(config, optimizer, 100)
  schedule = optimizer_lib.make_schedule(config.train)
  seen = []
  for _ in range(41):
    seen.append(optimizer.param_groups[0]["lr"])
    optimizer.step()
    lr_schedule.step()
  expected = [float(schedule(step)) for step in range(41)]
  np.testing.assert_allclose(seen, expected, rtol=1e-6)
  # Spot values, by hand: warmup from lr / 1000, then 10x per boundary.
  if warmup:
    assert seen[0] == pytest.approx(1e-4, rel=1e-5)
    assert seen[5] == pytest.approx(0.1 * (0.001 + 0.999 * 0.5), rel=1e-5)
    assert seen[19] == pytest.approx(0.1, rel=1e-6)
  assert seen[decays[0]] == pytest.approx(0.01, rel=1e-5)
  assert seen[40] == pytest.approx(0.1 * 0.1 ** len(decays), rel=1e-5)
