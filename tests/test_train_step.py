"""The train step's loss options: every-anchor (dense) objectness losses
normalised by the number of positives, and their config errors."""

import jax
import numpy as np
import pytest

from rpn_jax import setup_model
from rpn_jax import targets as targets_lib
from rpn_jax import train_lib
from tests.test_reliability import _batch, _tiny_state


def _step_and_batch(tiny):
  model, tx, state = _tiny_state(tiny)
  anchors = setup_model.model_anchors(tiny)
  step = jax.jit(train_lib.make_train_step(tiny, model, tx, anchors))
  batch = _batch(tiny, [10, 12, 40, 90])
  batch["boxes"][:, 1] = [60, 30, 100, 70]
  batch["box_valid"][:, 1] = True
  batch["image"] = np.random.default_rng(0).integers(
      0, 255, batch["image"].shape, dtype=np.uint8
  )
  return step, state, batch, anchors


@pytest.mark.parametrize(
    "objectness_loss,assigner",
    [("focal", "iou"), ("quality_focal", "iou"), ("quality_focal", "atss")],
)
def test_dense_objectness_over_every_anchor_learns(
    tiny, objectness_loss, assigner
):
  tiny.targets.objectness_loss = objectness_loss
  tiny.targets.assigner = assigner
  tiny.targets.num_samples = 0
  tiny.targets.normalizer = "positives"
  tiny.model.objectness_prior = 0.01
  tiny.train.optimizer = "adamw"
  tiny.train.learning_rate = 0.002
  step, state, batch, anchors = _step_and_batch(tiny)
  if assigner == "atss":
    match = lambda g, v: targets_lib.atss_match(
        anchors,
        g,
        v,
        setup_model.anchors_per_level(tiny),
        tiny.targets.atss_top_k,
        setup_model.anchors_per_cell(tiny.model),
    )
  else:
    match = lambda g, v: targets_lib.match_anchors(
        anchors, g, v, tiny.targets.high_threshold, tiny.targets.low_threshold
    )
  _, labels = jax.vmap(match)(batch["boxes"], batch["box_valid"])
  labels = np.asarray(labels)
  totals = []
  for _ in range(30):
    state, metrics = step(state, batch)
    assert int(metrics["finite"]) == 1
    totals.append(float(metrics["total"]))
  # Every labelled anchor is in the loss, not a sample of 256 per image.
  assert int(metrics["num_pos"]) == (labels == 1).sum()
  assert (
      int(metrics["num_neg"])
      == (labels == 0).sum()
      > 256 * tiny.train.batch_size
  )
  assert totals[-1] < 0.5 * totals[0]


def test_loss_config_errors_name_the_key(tiny):
  tiny.targets.normalizer = "images"
  with pytest.raises(ValueError, match="targets.normalizer must be one of"):
    _step_and_batch(tiny)
  tiny.targets.normalizer = "samples"
  tiny.targets.num_samples = 0
  with pytest.raises(
      ValueError, match="targets.num_samples=0 .* needs targets.normalizer"
  ):
    _step_and_batch(tiny)
