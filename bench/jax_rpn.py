"""rpn_jax's side of the benchmarks: the seed's R50-C5 RPN, built as train.py builds it.

The model, anchors, optimizer and step come from the project's own config and
functions (setup_model, train_lib, eval_lib), so the benchmark times exactly
the code a training or evaluation run executes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from configs import coco_person_r50_c5
from rpn_jax import eval_lib, setup_model, train_lib

Batch = dict[str, np.ndarray]


def r50_c5_config(image_size: int, batch_size: int, dtype: str = "float32",
                  backbone: str = "resnet50", width: int = 64) -> ml_collections.ConfigDict:
    """configs/coco_person_r50_c5 with frozen BatchNorm (converted ImageNet weights).

    15 anchors on C5, stem + layer1 frozen, 256 sampled anchors per image. The
    backbone and width are only changed for smoke tests.
    """
    config = coco_person_r50_c5.get_config()
    config.model.norm = "frozen_bn"
    config.model.dtype = dtype
    config.model.backbone = backbone
    config.model.width = width
    config.data.image_size = image_size
    config.train.batch_size = batch_size
    config.eval.batch_size = batch_size
    return config


def train_step(config: ml_collections.ConfigDict, seed: int = 0
               ) -> tuple[Callable[[Any, Batch], Any], Any]:
    """(jitted step `(state, batch) -> (state, metrics)` with the state donated, first state)."""
    model = setup_model.build_model(config.model)
    variables = setup_model.init_variables(config, model, jax.random.key(seed))
    tx = train_lib.make_optimizer(config, variables)
    state = train_lib.create_train_state(config, model, tx, variables)
    step = train_lib.make_train_step(config, model, tx, setup_model.model_anchors(config))
    return jax.jit(step, donate_argnums=0), state


def predictor(config: ml_collections.ConfigDict, seed: int = 0
              ) -> tuple[Callable[[Any, Batch], Any], Any]:
    """(jitted `(variables, batch) -> {boxes [B,K,4], scores [B,K], valid [B,K]}`, variables).

    Forward pass and fixed-size proposals (config.proposals: pre-NMS top-k,
    NMS threshold, post-NMS top-k), as evaluate.py runs them.
    """
    model = setup_model.build_model(config.model)
    variables = setup_model.init_variables(config, model, jax.random.key(seed))
    predict = eval_lib.make_predict_fn(config, model, setup_model.model_anchors(config))
    return jax.jit(predict), variables


class StepRunner:
    """Calls a donated-state step repeatedly on one batch, waiting for each result.

    `runner()` runs one step; `runner.metrics` holds the last step's metrics.
    """

    def __init__(self, step: Callable[[Any, Batch], Any], state: Any, batch: Batch):
        self.step = step
        self.state = state
        self.batch = jax.device_put(batch)
        self.metrics: dict[str, Any] = {}

    def __call__(self) -> None:
        self.state, self.metrics = self.step(self.state, self.batch)
        jax.block_until_ready(self.state)
