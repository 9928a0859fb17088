"""SGD with PyTorch semantics (or AdamW), learning-rate schedules and frozen parameters.

`make_optimizer` reproduces torch.optim.SGD(lr, momentum, weight_decay): the decay
term is added to the gradient before the momentum buffer, buf = m * buf + g,
p -= lr * buf. `train.optimizer="adamw"` is torch.optim.AdamW instead (decoupled
decay), for short from-scratch recipes. Frozen parameters go through
`optax.set_to_zero` inside `optax.multi_transform`, so they get no update and
carry no optimizer state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

SCHEDULES = ("constant", "warmup_step")
OPTIMIZERS = ("sgd", "adamw")


def _matches(path: str, pattern: str) -> bool:
  pattern = pattern.strip("/")
  return path == pattern or path.startswith(pattern + "/")


def freeze_mask(
    params: Any, patterns: Sequence[str], *, batch_stats: Any = None
) -> Any:
  """Pytree of bool like `params`: True where the leaf's '/'-joined path starts with a pattern.

  A pattern matches whole path components ("backbone/layer1" matches
  "backbone/layer1/0/conv1/kernel", not "backbone/layer10/..."). A pattern that
  matches no leaf raises ValueError naming it, so a typo cannot silently train
  everything. Pass the model's `batch_stats` so that a pattern naming a layer with
  statistics only (frozen BN's "backbone/bn1") counts as known; it freezes nothing.
  """
  flat = traverse_util.flatten_dict(params, sep="/")
  known = [*flat, *traverse_util.flatten_dict(batch_stats or {}, sep="/")]
  for pattern in patterns:
    if not any(_matches(path, pattern) for path in known):
      raise ValueError(f"freeze pattern {pattern!r} matches no parameter")
  mask = {path: any(_matches(path, p) for p in patterns) for path in flat}
  return traverse_util.unflatten_dict(mask, sep="/")


def make_schedule(train_cfg: ml_collections.ConfigDict) -> optax.Schedule:
  """Learning rate as a function of the step.

  "constant": `learning_rate`.
  "warmup_step": linear warmup from `learning_rate * warmup_factor` (0.001 in
  base_config(), detectron2's) to `learning_rate` over `warmup_steps`, times `decay_factor` for
  every boundary in `decay_steps` that the step has reached.
  Only the `*_steps` keys are read: a config that gives warmup or decay in
  epochs or percent goes through `rpn_jax.schedules.resolve_steps` first
  (`train_lib.train_and_evaluate` does, once the dataset size is known).
  """
  lr = train_cfg.learning_rate
  if train_cfg.schedule == "constant":
    return optax.constant_schedule(lr)
  if train_cfg.schedule != "warmup_step":
    raise ValueError(
        f"unknown schedule {train_cfg.schedule!r}; expected one of {SCHEDULES}"
    )
  warmup_steps = int(train_cfg.warmup_steps)
  warmup_factor = float(train_cfg.warmup_factor)
  boundaries = jnp.asarray(sorted(train_cfg.decay_steps), jnp.int32)
  decay_factor = float(train_cfg.decay_factor)

  def schedule(step: jnp.ndarray) -> jnp.ndarray:
    alpha = jnp.clip(step / warmup_steps, 0.0, 1.0) if warmup_steps else 1.0
    warmup = warmup_factor + (1.0 - warmup_factor) * alpha
    decays = jnp.sum(step >= boundaries) if boundaries.size else 0
    return lr * warmup * decay_factor**decays

  return schedule


def make_optimizer(
    train_cfg: ml_collections.ConfigDict,
    params: Any,
    freeze_patterns: Sequence[str],
    *,
    batch_stats: Any = None,
) -> optax.GradientTransformation:
  """The configured optimizer on the unfrozen params.

  train_cfg.optimizer "sgd": SGD + momentum + L2 weight decay (torch.optim.SGD
  semantics); "adamw": Adam (betas 0.9, 0.999, eps 1e-8) with decoupled weight
  decay lr * weight_decay * p (torch.optim.AdamW semantics); `momentum` is then
  unused. Both use train_cfg.learning_rate / weight_decay / schedule (see
  `make_schedule`). Leaves matched by `freeze_patterns` (see `freeze_mask`, which
  also explains `batch_stats`) get zero updates and no optimizer state.
  """
  labels = jax.tree.map(
      lambda frozen: "frozen" if frozen else "trainable",
      freeze_mask(params, freeze_patterns, batch_stats=batch_stats),
  )
  schedule = make_schedule(train_cfg)
  if train_cfg.optimizer == "sgd":
    trainable = optax.chain(
        optax.add_decayed_weights(train_cfg.weight_decay),
        optax.sgd(schedule, momentum=train_cfg.momentum),
    )
  elif train_cfg.optimizer == "adamw":
    trainable = optax.adamw(
        schedule,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=train_cfg.weight_decay,
    )
  else:
    raise ValueError(
        f"train.optimizer={train_cfg.optimizer!r} is not one of {', '.join(OPTIMIZERS)}"
    )
  return optax.multi_transform(
      {"trainable": trainable, "frozen": optax.set_to_zero()}, labels
  )
