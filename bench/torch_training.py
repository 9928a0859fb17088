"""torchvision's RPN trained and evaluated the way rpn_jax trains and
evaluates a config: the reference side of `bench.learning_parity`.

`train` walks the very batches `rpn_jax.train_lib.train_and_evaluate` walks
(the same `BatchLoader`: shuffled by config.seed, flipped as config.data.hflip
says, last partial batch dropped) and steps `torch.optim.SGD`
(`torch_rpn.sgd`) with the learning rate of rpn_jax's own schedule function
(`rpn_jax.optimizer.make_schedule`), evaluated at every step. What differs
from rpn_jax is only the model, its losses and its update: torchvision's
ResNet, `RegionProposalNetwork` and autograd (`bench/torch_rpn.py`).

`predict_proposals` returns `rpn_jax.eval_lib.Proposals` (original-image
pixels, padded to proposals.post_nms_top_k with a validity mask), so both
sides are scored by the same `eval_lib.evaluate_proposals` and COCOeval.
"""

from __future__ import annotations

import time
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
import torch

from bench import torch_rpn
from rpn_jax import eval_lib
from rpn_jax import optimizer as optimizer_lib
from rpn_jax import schedules
from rpn_jax.data import loader as loader_lib
from rpn_jax.data import open_dataset


def scheduler(
    config: ml_collections.ConfigDict,
    optimizer: torch.optim.SGD,
    steps_per_epoch: int,
) -> torch.optim.lr_scheduler.LambdaLR:
  """rpn_jax's learning-rate schedule (`optimizer.make_schedule` of the
  durations `schedules.resolve_steps` gives at `steps_per_epoch`, the same
  functions train_lib calls, evaluated to a float at every step) on a torch
  optimizer whose base rate is train.learning_rate.

  Update n (from 0) runs at schedule(n), as optax counts: LambdaLR applies
  factor(0) from construction and factor(n) after n `scheduler.step()`s.
  """
  resolved = schedules.resolve_steps(config.train, steps_per_epoch)
  schedule = optimizer_lib.make_schedule(resolved)
  base = float(config.train.learning_rate)
  return torch.optim.lr_scheduler.LambdaLR(
      optimizer, lambda step: float(schedule(jnp.int32(step))) / base
  )


def train(
    config: ml_collections.ConfigDict,
    seed: int,
    steps: int | None = None,
    *,
    threads: int = 2,
    log_every: int = 50,
    history: list[dict[str, float]] | None = None,
) -> tuple[torch.nn.Module, torch.nn.Module]:
  """Trains torchvision's RPN for `config` (model.norm "bn": train-mode
  BatchNorm) and returns (trunk, rpn) in train mode.

  Weights are drawn from `torch.manual_seed(seed)` (also the seed of
  torchvision's anchor sampling); batches come in config.seed's order.
  `steps` defaults to what rpn_jax would run (`schedules.total_steps`). Every
  `log_every` steps it prints steps/s and the step's losses, and appends
  them to `history` when given.
  """
  torch.set_num_threads(threads)
  dataset = open_dataset(config.data, config.data.train_split)
  # The loader train_lib builds: both sides see the same images, flips and
  # order.
  loader = loader_lib.train_loader(config, dataset)
  per_epoch = loader.steps_per_epoch
  if per_epoch == 0:
    raise ValueError(
        f"train.batch_size={config.train.batch_size} is larger "
        f"than the {len(dataset)} training images"
    )
  if steps is None:
    steps = schedules.total_steps(config.train, per_epoch)
  trunk, rpn = torch_rpn.build(config, seed)
  trunk.train()
  rpn.train()
  optimizer = torch_rpn.sgd(config, trunk, rpn)
  lr_schedule = scheduler(config, optimizer, per_epoch)
  print(
      f"torchvision: training {config.model.backbone} (width "
      f"{config.model.width}) RPN on {len(dataset)} images, {per_epoch} "
      f"steps/epoch, {steps} steps, {threads} threads",
      flush=True,
  )
  step, epoch = 0, 0
  window_start, window_steps = time.perf_counter(), 0
  while step < steps:
    for batch in loader.epoch(epoch):
      losses = torch_rpn.rpn_losses(
          trunk,
          rpn,
          torch_rpn.images_nchw(config, batch),
          torch_rpn.image_sizes(batch),
          torch_rpn.gt_targets(batch),
      )
      total = losses["objectness"] + losses["box"]
      optimizer.zero_grad(set_to_none=True)
      total.backward()
      optimizer.step()
      lr = optimizer.param_groups[0]["lr"]  # this step's
      lr_schedule.step()
      step += 1
      window_steps += 1
      if step % log_every == 0 or step == steps:
        rate = window_steps / (time.perf_counter() - window_start)
        record = {
            "step": step,
            "total": total.item(),
            "objectness": losses["objectness"].item(),
            "box": losses["box"].item(),
            "lr": lr,
            "steps_per_s": rate,
        }
        if history is not None:
          history.append(record)
        print(
            f"step {step}/{steps}: loss {record['total']:.4f} (objectness "
            f"{record['objectness']:.4f}, box {record['box']:.4f}), lr "
            f"{record['lr']:.5f}, {rate:.2f} steps/s",
            flush=True,
        )
        window_start, window_steps = time.perf_counter(), 0
      if step >= steps:
        break
    epoch += 1
  return trunk, rpn


def predict_proposals(
    config: ml_collections.ConfigDict,
    trunk: torch.nn.Module,
    rpn: torch.nn.Module,
    dataset: Any,
) -> eval_lib.Proposals:
  """torchvision's post-NMS proposals of every image of `dataset`, in eval
  mode (BatchNorm running statistics), on the eval.image_size canvas.

  Returns boxes [N, K, 4] xyxy original-image pixels (canvas boxes / the
  letterbox scale), scores [N, K] objectness probabilities (descending among
  valid), valid [N, K]; K = proposals.post_nms_top_k, as rpn_jax's
  `eval_lib.predict_proposals`.
  """
  config = eval_lib.with_eval_canvas(config)
  k = config.proposals.post_nms_top_k
  loader = loader_lib.eval_loader(config, dataset)
  trunk.eval()
  rpn.eval()
  ids, boxes, scores, valid = [], [], [], []
  for batch in loader.epoch(0):
    # Padding entries (image_id -1) are dropped before the forward pass:
    # with running statistics no image affects another's output.
    keep = batch["image_id"] >= 0
    batch = {name: value[keep] for name, value in batch.items()}
    if not len(batch["image_id"]):
      continue
    out_boxes, out_scores = torch_rpn.propose(
        trunk,
        rpn,
        torch_rpn.images_nchw(config, batch),
        torch_rpn.image_sizes(batch),
    )
    n = len(batch["image_id"])
    b = np.zeros((n, k, 4), np.float32)
    s = np.zeros((n, k), np.float32)
    v = np.zeros((n, k), bool)
    for i, (bi, si) in enumerate(zip(out_boxes, out_scores)):
      m = min(len(si), k)
      b[i, :m] = bi[:m].numpy() / batch["scale"][i]
      s[i, :m] = si[:m].numpy()
      v[i, :m] = batch["image_valid"][i]
    ids.append(batch["image_id"])
    boxes.append(b)
    scores.append(s)
    valid.append(v)
  return eval_lib.Proposals(
      np.concatenate(ids),
      np.concatenate(boxes),
      np.concatenate(scores),
      np.concatenate(valid),
  )
