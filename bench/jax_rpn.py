"""rpn_jax's side of the benchmarks: the seed's R50-C5 RPN, built as train.py builds it.

The model, anchors, optimizer and step come from the project's own config and
functions (setup_model, train_lib, eval_lib), so the benchmark times exactly
the code a training or evaluation run executes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bench import common
from configs import coco_person_r50_c5
from configs import coco_person_r50_fpn_atss
from rpn_jax import eval_lib, setup_model, train_lib

Batch = dict[str, np.ndarray]


def _sized(
    config: ml_collections.ConfigDict,
    image_size: int,
    batch_size: int,
    dtype: str,
    backbone: str,
    width: int,
) -> ml_collections.ConfigDict:
  config.model.dtype = dtype
  config.model.backbone = backbone
  config.model.width = width
  config.data.image_size = image_size
  config.train.batch_size = batch_size
  config.eval.batch_size = batch_size
  return config


def r50_c5_config(
    image_size: int,
    batch_size: int,
    dtype: str = "float32",
    backbone: str = "resnet50",
    width: int = 64,
) -> ml_collections.ConfigDict:
  """configs/coco_person_r50_c5 with frozen BatchNorm (converted ImageNet weights).

  15 anchors on C5, stem + layer1 frozen, 256 sampled anchors per image. The
  backbone and width are only changed for smoke tests.
  """
  config = coco_person_r50_c5.get_config()
  config.model.norm = "frozen_bn"
  return _sized(config, image_size, batch_size, dtype, backbone, width)


def atss_config(
    image_size: int,
    batch_size: int,
    dtype: str = "float32",
    backbone: str = "resnet50",
    width: int = 64,
) -> ml_collections.ConfigDict:
  """configs/coco_person_r50_fpn_atss (frozen BN, P2-P6, ATSS, quality focal
  loss, GIoU, four GroupNorm head convs) at one canvas, batch and dtype. The
  backbone and width are only changed for smoke tests."""
  return _sized(
      coco_person_r50_fpn_atss.get_config(),
      image_size,
      batch_size,
      dtype,
      backbone,
      width,
  )


RECIPES = {"seed": r50_c5_config, "atss": atss_config}


def pretrained_like(variables: dict[str, Any], seed: int = 0) -> dict[str, Any]:
  """`variables` with frozen-BN statistics drawn like a trained network's.

  Fresh frozen BN is the identity, and a random ResNet-50 then grows its
  activations block by block to inf at 1024 px; gammas in [0.2, 0.6] (running
  means ~N(0, 0.1), variances in [0.5, 1.5], betas ~N(0, 0.1)) keep them O(1),
  as converted ImageNet weights do, so losses and gradients stay finite.
  """
  rng = np.random.default_rng(seed)
  draws = {
      "scale": lambda shape: rng.uniform(0.2, 0.6, shape),
      "bias": lambda shape: rng.normal(0.0, 0.1, shape),
      "mean": lambda shape: rng.normal(0.0, 0.1, shape),
      "var": lambda shape: rng.uniform(0.5, 1.5, shape),
  }
  stats = jax.tree_util.tree_map_with_path(
      lambda path, x: np.asarray(draws[path[-1].key](x.shape), np.float32),
      variables["batch_stats"],
  )
  return {**variables, "batch_stats": stats}


def variables(
    config: ml_collections.ConfigDict, seed: int = 0
) -> dict[str, Any]:
  """Random variables of the configured RPN with `pretrained_like` frozen-BN statistics.

  They do not depend on model.dtype (params are float32 either way).
  """
  model = setup_model.build_model(config.model)
  return pretrained_like(
      setup_model.init_variables(config, model, jax.random.key(seed)), seed
  )


def train_step(
    config: ml_collections.ConfigDict, variables: dict[str, Any]
) -> tuple[Callable[[Any, Batch], Any], Any]:
  """(jitted step `(state, batch) -> (state, metrics)` with the state donated, first state).

  The state holds copies of `variables`, so donating it leaves them intact.
  """
  variables = jax.tree_util.tree_map(jnp.array, variables)
  model = setup_model.build_model(config.model)
  tx = train_lib.make_optimizer(config, variables)
  state = train_lib.create_train_state(config, model, tx, variables)
  step = train_lib.make_train_step(
      config, model, tx, setup_model.model_anchors(config)
  )
  return jax.jit(step, donate_argnums=0), state


def predictor(config: ml_collections.ConfigDict) -> Callable[[Any, Batch], Any]:
  """jitted `(variables, batch) -> {boxes [B,K,4], scores [B,K], valid [B,K]}`.

  Forward pass and fixed-size proposals (config.proposals: pre-NMS top-k,
  NMS threshold, post-NMS top-k), as evaluate.py runs them.
  """
  model = setup_model.build_model(config.model)
  return jax.jit(
      eval_lib.make_predict_fn(config, model, setup_model.model_anchors(config))
  )


class StepRunner:
  """Calls a donated-state step repeatedly on one batch, waiting for each result.

  `runner()` runs one step; `runner.metrics` holds the last step's metrics.
  """

  def __init__(
      self, step: Callable[[Any, Batch], Any], state: Any, batch: Batch
  ):
    self.step = step
    self.state = state
    self.batch = jax.device_put(batch)
    self.metrics: dict[str, Any] = {}

  def __call__(self) -> None:
    self.state, self.metrics = self.step(self.state, self.batch)
    jax.block_until_ready(self.state)


def step_versus(
    ours: StepRunner,
    make_reference: Callable[[], Callable[[], Any]],
    batch_size: int,
    repeats: int,
    warmup: int,
) -> dict[str, Any]:
  """`common.versus` of a train step against torchvision's, plus rpn_jax's
  first call (compiling included, before torchvision's side is built) and
  its loss after the timed calls."""
  start = time.perf_counter()
  ours()
  first_call_s = time.perf_counter() - start
  reference = make_reference()
  return {
      **common.versus(ours, reference, batch_size, repeats, warmup),
      "rpn_jax_first_call_s": first_call_s,
      "rpn_jax_loss": float(ours.metrics["total"]),
  }
