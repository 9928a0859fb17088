"""Training: the state, the jitted step, and the loop around it.

The step (normalise -> backbone -> head -> anchor targets -> losses -> SGD) is
one `jax.jit` over a global batch sharded along a `data` mesh axis, so the same
code runs on one CPU, one GPU, or every local device of a TPU host.
"""

import functools
import logging
import os
import signal
import time
from typing import Any
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from rpn_jax import checkpoint as checkpoint_lib
from rpn_jax import coco_eval
from rpn_jax import eval_lib
from rpn_jax import losses as losses_lib
from rpn_jax import metric_writer
from rpn_jax import optimizer as optimizer_lib
from rpn_jax import parallel
from rpn_jax import proposals as proposals_lib
from rpn_jax import schedules
from rpn_jax import setup_model
from rpn_jax import targets as targets_lib
from rpn_jax.data import loader as loader_lib
from rpn_jax.data import open_dataset
from rpn_jax.data import transforms

Batch = dict[str, Any]

# The clock of train.checkpoint_every_minutes: monotonic, so that a clock
# adjustment on the host neither skips nor doubles a save; a module global so
# that a test can drive it.
_clock = time.monotonic


class TrainState(flax.struct.PyTreeNode):
  """Everything a resumed run needs; `step` counts applied and skipped steps."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


# How the summed losses are normalised: by batch_size * num_samples (the
# seed), or by the number of positive anchors in the batch (RetinaNet).
NORMALIZERS = ("samples", "positives")


class NonFiniteError(RuntimeError):
  """Raised after `train.max_nonfinite_steps` consecutive non-finite steps."""


def create_train_state(
    config: ml_collections.ConfigDict,
    model: Any,
    tx: optax.GradientTransformation,
    variables: dict[str, Any],
) -> TrainState:
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
  )


def make_optimizer(
    config: ml_collections.ConfigDict, variables: dict[str, Any]
) -> optax.GradientTransformation:
  return optimizer_lib.make_optimizer(
      config.train,
      variables["params"],
      tuple(config.model.freeze),
      batch_stats=variables.get("batch_stats"),
  )


def _check_labelling(config: ml_collections.ConfigDict) -> None:
  """targets.label_on known, and "proposals" only with the IoU assigner."""
  t = config.targets
  if t.label_on not in targets_lib.LABEL_ON:
    raise ValueError(
        f"targets.label_on must be one of {targets_lib.LABEL_ON}, "
        f"got {t.label_on!r}"
    )
  if t.label_on == "proposals" and t.assigner != "iou":
    raise ValueError(
        "targets.label_on='proposals' matches by IoU: it needs "
        f"targets.assigner='iou', got {t.assigner!r}"
    )


def _check_targets(config: ml_collections.ConfigDict) -> None:
  """The labelling settings, and a loss normaliser that exists."""
  _check_labelling(config)
  t = config.targets
  if t.normalizer not in NORMALIZERS:
    raise ValueError(
        f"targets.normalizer must be one of {NORMALIZERS}, "
        f"got {t.normalizer!r}"
    )
  if t.normalizer == "samples" and t.num_samples <= 0:
    raise ValueError(
        "targets.num_samples=0 (every anchor) needs "
        "targets.normalizer='positives'"
    )


def check_config(config: ml_collections.ConfigDict) -> None:
  """The training settings that cannot work together, as one-line
  ValueErrors naming a key, before any data or weights are read.

  Checked: model.dtype and model.head_norm, targets.label_on (and
  "proposals" only with targets.assigner "iou"), targets.normalizer (and
  "samples" only with targets.num_samples > 0: there is no sample size to
  divide by otherwise), data.scale_jitter.
  A focal or quality focal objectness with num_samples > 0 is allowed: the
  loss is then summed over the sampled anchors only, well defined if not
  what RetinaNet, ATSS or GFL do (they take every anchor, num_samples 0).
  """
  setup_model.check_model_config(config.model)
  _check_targets(config)
  loader_lib.check_scale_jitter(config.data.scale_jitter)


def batch_targets(
    config: ml_collections.ConfigDict,
    anchors: jax.Array,
    batch: Batch,
    key: jax.Array,
    outputs: dict[str, jax.Array] | None = None,
) -> dict[str, jax.Array]:
  """Anchor labels, sampled masks and regression targets for a batch.

  targets.label_on="anchors" labels every anchor (`targets.rpn_targets`);
  "proposals" (the seed) only the anchors behind each image's post-NMS
  proposals (`targets.proposal_targets`), which it computes as evaluation does
  (config.proposals, batch["image_hw"]) from `outputs`, the same forward
  pass's objectness [B, N] and deltas [B, N, 4], gradients stopped; `outputs`
  is required then and unused otherwise.

  Returns pos_mask / neg_mask [B, N] bool and target_deltas [B, N, 4]; images
  whose `image_valid` is False (padding, undecodable files) contribute nothing.
  """
  _check_labelling(config)
  t = config.targets
  keys = jax.random.split(key, batch["boxes"].shape[0])
  # The labelling settings both ways of labelling share.
  shared = dict(
      high=t.high_threshold,
      low=t.low_threshold,
      crowd_ioa=t.crowd_ioa,
      num_samples=t.num_samples,
      positive_fraction=t.positive_fraction,
      weights=tuple(t.box_weights),
      clamp=tuple(t.box_clamp),
  )
  if t.label_on == "proposals":
    if outputs is None:
      raise ValueError(
          "targets.label_on='proposals' needs the model outputs: "
          "batch_targets(..., outputs=...)"
      )
    # Labels only: no gradient flows through the proposal selection.
    logits = jax.lax.stop_gradient(outputs["objectness"]).astype(jnp.float32)
    deltas = jax.lax.stop_gradient(outputs["deltas"]).astype(jnp.float32)
    boxes, _, valid, anchor_index = proposals_lib.propose_batch_indexed(
        anchors,
        logits,
        deltas,
        batch["image_hw"],
        **setup_model.proposal_settings(config),
    )
    per_image = functools.partial(targets_lib.proposal_targets, **shared)
    out = jax.vmap(per_image, in_axes=(0, None, 0, 0, 0, 0, 0, 0))(
        keys,
        anchors,
        boxes,
        anchor_index,
        valid,
        batch["boxes"],
        batch["box_valid"],
        batch["box_crowd"],
    )
  else:
    per_image = functools.partial(
        targets_lib.rpn_targets,
        **shared,
        assigner=t.assigner,
        level_sizes=setup_model.anchors_per_level(config),
        atss_top_k=t.atss_top_k,
        anchors_per_cell=setup_model.anchors_per_cell(config.model),
    )
    out = jax.vmap(per_image, in_axes=(0, None, 0, 0, 0))(
        keys, anchors, batch["boxes"], batch["box_valid"], batch["box_crowd"]
    )
  image_valid = batch["image_valid"][:, None]
  out["pos_mask"] = out["pos_mask"] & image_valid
  out["neg_mask"] = out["neg_mask"] & image_valid
  return out


def make_loss_fn(
    config: ml_collections.ConfigDict, model: Any, anchors: np.ndarray
) -> Callable[..., Any]:
  """The pure loss `(params, batch_stats, batch, key) -> (total, (stats, aux))`.

  `batch` holds uint8 images [B, S, S, 3] and padded xyxy canvas boxes;
  `key` draws the anchor sampling (`batch_targets`). `stats` are the
  BatchNorm statistics after the forward pass (unchanged unless model.norm is
  "bn"); `aux` holds the losses (`losses.rpn_losses`) and the number of
  sampled positives and negatives. The train step differentiates it; tests
  compare it with torchvision's RPN.
  """
  anchors = jnp.asarray(anchors)
  mean, std = transforms.pixel_norm_stats(config.data)
  _check_targets(config)
  by_positives = config.targets.normalizer == "positives"
  normalizer = float(config.train.batch_size * config.targets.num_samples)
  train_bn = config.model.norm == "bn"
  box_coder = dict(
      weights=tuple(config.targets.box_weights),
      clamp=tuple(config.targets.box_clamp),
  )

  def loss_fn(params, batch_stats, batch, key):
    images = transforms.normalize_images(batch["image"], mean, std)
    variables = {"params": params, "batch_stats": batch_stats}
    if train_bn:
      outputs, updates = model.apply(
          variables, images, train=True, mutable=["batch_stats"]
      )
      new_stats = updates["batch_stats"]
    else:
      outputs = model.apply(variables, images, train=True)
      new_stats = batch_stats
    tgt = batch_targets(config, anchors, batch, key, outputs)
    norm = (
        jnp.maximum(jnp.sum(tgt["pos_mask"], dtype=jnp.float32), 1.0)
        if by_positives
        else normalizer
    )
    losses = losses_lib.rpn_losses(
        outputs["objectness"],
        outputs["deltas"],
        tgt["target_deltas"],
        tgt["pos_mask"],
        tgt["neg_mask"],
        normalizer=norm,
        beta=config.targets.smooth_l1_beta,
        box_weight=config.targets.box_loss_weight,
        box_loss=config.targets.box_loss,
        anchors=anchors,
        box_coder=box_coder,
        objectness_loss=config.targets.objectness_loss,
        focal_alpha=config.targets.focal_alpha,
        focal_gamma=config.targets.focal_gamma,
    )
    aux = dict(
        losses, num_pos=tgt["pos_mask"].sum(), num_neg=tgt["neg_mask"].sum()
    )
    return losses["total"], (new_stats, aux)

  return loss_fn


def make_train_step(
    config: ml_collections.ConfigDict,
    model: Any,
    tx: optax.GradientTransformation,
    anchors: np.ndarray,
) -> Callable[[TrainState, Batch], Any]:
  """The pure train step `(state, batch) -> (state, metrics)` (not yet jitted).

  The sampling key of step `n` is `fold_in(key(config.seed), n)`. A step
  whose loss or gradient norm is not finite (a NaN or inf in any gradient,
  or a norm beyond float32's range) is not applied (params, statistics and
  optimizer state stay as they were) and reports `metrics["finite"] = 0`.
  """
  loss_fn = make_loss_fn(config, model, anchors)
  base_key = jax.random.key(config.seed)

  def train_step(state: TrainState, batch: Batch):
    key = jax.random.fold_in(base_key, state.step)
    grads, (new_stats, aux) = jax.grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch, key
    )
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    # A NaN or inf anywhere in the gradients makes their norm non-finite;
    # one reduction where a check per leaf took two (and no other pass).
    finite = jnp.isfinite(aux["total"]) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jnp.where(finite, new, old)
    new_state = TrainState(
        step=state.step + 1,
        params=jax.tree_util.tree_map(keep, new_params, state.params),
        batch_stats=jax.tree_util.tree_map(keep, new_stats, state.batch_stats),
        opt_state=jax.tree_util.tree_map(keep, new_opt, state.opt_state),
    )
    metrics = dict(aux, finite=finite.astype(jnp.int32), grad_norm=grad_norm)
    return new_state, metrics

  return train_step


class _StopRequest:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps, so the
  run can write a checkpoint of the current step before it exits."""

  def __init__(self):
    self.signal_name = ""
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _host_metrics(metrics: dict[str, jax.Array]) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


class _Validator:
  """Evaluation of the current params on data.val_split during training
  (train.eval_every_epochs): eval_lib's prediction and COCO evaluation, with
  the split and its ground truth loaded once."""

  def __init__(self, config: ml_collections.ConfigDict):
    self._config = config
    self.dataset = open_dataset(config.data, config.data.val_split)
    self._ground_truth = None

  def __call__(self, state: TrainState) -> dict[str, float] | None:
    """AP, AP50, AR100 and the proposals' recall proposal_AR@1000
    (proposal_AR@300 or @100 with fewer proposals per image, as evaluate.py)
    on process 0, None on the others (which still predict their share)."""
    props = eval_lib.predict_proposals(
        self._config,
        {"params": state.params, "batch_stats": state.batch_stats},
        self.dataset,
    )
    if jax.process_index() != 0:
      return None
    if self._ground_truth is None:
      self._ground_truth = eval_lib.ground_truth(self.dataset)
    coco, category_id = self._ground_truth
    # One limit, one COCOeval: the three of evaluate.py cost too much to
    # repeat every few epochs.
    limits = [n for n in (100, 300, 1000) if n <= props.boxes.shape[1]]
    scores = eval_lib.score_proposals(
        self._config, props, coco, category_id, recall_limits=tuple(limits[-1:])
    )
    return dict(
        {k: scores.metrics[k] for k in ("AP", "AP50", "AR100")}, **scores.recall
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> TrainState:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Writes `config.json`, `checkpoints/` (orbax), `metrics.jsonl` and
  TensorBoard event files (`tensorboard/`, `rpn_jax.metric_writer`) into
  `workdir`; with train.eval_every_epochs, validation records too. Returns the
  final state.
  """
  check_config(config)
  os.makedirs(workdir, exist_ok=True)
  checkpoint_lib.check_or_write_config(workdir, config)
  dataset = open_dataset(config.data, config.data.train_split)
  loader = loader_lib.train_loader(
      config, dataset, jax.process_index(), jax.process_count()
  )
  steps_per_epoch = loader.steps_per_epoch
  if steps_per_epoch == 0:
    raise ValueError(
        f"train.batch_size={config.train.batch_size} is larger than the "
        f"{len(dataset)} training images"
    )
  total_steps = schedules.total_steps(config.train, steps_per_epoch)
  # Warmup, decay and cadences in steps from here on; config.json keeps what
  # the recipe wrote (epochs or fractions of the run).
  config = config.copy_and_resolve_references()
  config.train = schedules.resolve_steps(config.train, steps_per_epoch)

  model = setup_model.build_model(config.model)
  anchors = setup_model.model_anchors(config)
  variables = setup_model.init_variables(
      config, model, jax.random.key(config.seed)
  )
  tx = make_optimizer(config, variables)
  # The schedule `tx` follows, evaluated on the host for the logs.
  schedule = optimizer_lib.make_schedule(config.train)
  state = create_train_state(config, model, tx, variables)

  mesh = parallel.data_mesh()
  for key in ("checkpoint_every_minutes", "keep_every_epochs"):
    if config.train[key] < 0:
      raise ValueError(
          f"train.{key}={config.train[key]:g} is negative (0: off)"
      )
  ckpt = checkpoint_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"),
      max_to_keep=config.train.keep_checkpoints,
      keep_every_steps=config.train.keep_every_epochs * steps_per_epoch,
  )
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state = restored
    logging.info("Resumed from step %d in %s", int(state.step), ckpt.directory)
  state = parallel.replicate(state, mesh)
  step_fn = parallel.jit_data_parallel(
      make_train_step(config, model, tx, anchors), mesh
  )

  start = int(state.step)
  print(
      f"Training {config.model.backbone} RPN on {len(dataset)} images "
      f"({config.data.source}), {steps_per_epoch} steps/epoch, "
      f"steps {start}..{total_steps}, {jax.device_count()} device(s): "
      f"{jax.devices()[0].device_kind}",
      flush=True,
  )
  print(schedules.describe(config.train, steps_per_epoch), flush=True)
  lead = jax.process_index() == 0  # only process 0 logs
  writer = metric_writer.MetricWriter(workdir, enabled=lead, resume_step=start)
  eval_every = config.train.eval_every_epochs
  if eval_every < 0:
    raise ValueError(
        "train.eval_every_epochs must be >= 0 (0: off), got " f"{eval_every}"
    )
  validate = _Validator(config) if eval_every else None
  progress = tqdm(
      total=total_steps,
      initial=start,
      unit="step",
      dynamic_ncols=True,
      mininterval=1.0,
      disable=not lead,
  )
  nonfinite_streak = 0
  pending = None  # (step, image_ids, metrics, images) of the step in flight
  window_start, window_images = time.perf_counter(), 0

  def settle(pending) -> None:
    nonlocal nonfinite_streak, window_start, window_images
    step, image_ids, metrics, images = pending
    m = _host_metrics(metrics)
    window_images += images
    if m["finite"]:
      nonfinite_streak = 0
    else:
      nonfinite_streak += 1
      logging.warning(
          "Step %d: non-finite loss or gradient, step skipped; " "image ids %s",
          step,
          image_ids,
      )
      if nonfinite_streak >= config.train.max_nonfinite_steps:
        raise NonFiniteError(
            f"{nonfinite_streak} consecutive non-finite steps (last {step}); "
            f"stopping, the last good checkpoint is in {ckpt.directory}"
        )
    log_every = config.train.log_every_steps or steps_per_epoch
    if step % log_every == 0 or step == total_steps:
      elapsed = time.perf_counter() - window_start
      rate = window_images / max(elapsed, 1e-9)
      window_start, window_images = time.perf_counter(), 0
      progress.set_postfix(
          loss=f"{m['total']:.4f}",
          obj=f"{m['objectness']:.4f}",
          box=f"{m['box']:.4f}",
          img_s=f"{rate:.1f}",
      )
      # Step `step` applied the update of optimizer count step - 1.
      writer.write(
          step,
          dict(
              m,
              images_per_sec=rate,
              learning_rate=float(schedule(step - 1)),
              epoch=(step - 1) // steps_per_epoch,
          ),
      )

  def run_validation(step: int) -> None:
    nonlocal window_start
    t0 = time.perf_counter()
    val = validate(state)
    window_start += time.perf_counter() - t0  # not training time
    if val is None:
      return
    epochs = round(step / steps_per_epoch, 3)
    writer.write(step, dict(val, epochs=epochs), split="val")
    writer.flush()
    progress.write(
        f"Validation at step {step} (epoch {epochs:g}), "
        f"{len(validate.dataset)} {config.data.val_split} images: "
        + ", ".join(f"{k} {coco_eval.format_metric(v)}" for k, v in val.items())
        + f" ({time.perf_counter() - t0:.1f} s)"
    )

  save_seconds = 60 * config.train.checkpoint_every_minutes
  last_save = _clock()
  # Even when a step raises (NonFiniteError, a crash), finish the checkpoint
  # writes in flight, so the newest complete step is on disk.
  try:
    with _StopRequest() as stop:
      epoch = start // steps_per_epoch
      while int(start) < total_steps and not stop.signal_name:
        for batch in loader.epoch(epoch, start_step=start % steps_per_epoch):
          image_ids = batch["image_id"][batch["image_valid"]].tolist()
          state, metrics = step_fn(state, parallel.shard_batch(batch, mesh))
          start += 1
          if pending is not None:
            settle(pending)
          pending = (start, image_ids, metrics, int(batch["image_valid"].sum()))
          progress.update(1)
          end_of_epoch = start % steps_per_epoch == 0
          every = config.train.checkpoint_every_steps
          if (
              (every and start % every == 0)
              or end_of_epoch
              or start == total_steps
              or (save_seconds and _clock() - last_save >= save_seconds)
          ):
            ckpt.save(start, state)
            last_save = _clock()
          if (
              validate
              and not stop.signal_name
              and (
                  start == total_steps
                  or (
                      end_of_epoch
                      and (start // steps_per_epoch) % eval_every == 0
                  )
              )
          ):
            settle(pending)  # the step's training record before validation's
            pending = None
            run_validation(start)
          if start >= total_steps or stop.signal_name:
            break
        epoch += 1
      if pending is not None:
        settle(pending)
      if stop.signal_name:
        ckpt.save(start, state, force=True)
        logging.warning(
            "%s received: saved step %d, rerun to resume",
            stop.signal_name,
            start,
        )
  finally:
    ckpt.close()
    writer.close()
    progress.close()
  summary = {k: v for k, v in loader.stats.items() if v}
  if summary:
    print(f"Data issues during training: {summary}")
  print(
      f"Wrote checkpoints to {ckpt.directory}, metrics to "
      f"{writer.jsonl_path}, TensorBoard events to {writer.tensorboard_dir}, "
      f"config to {os.path.join(workdir, 'config.json')}",
      flush=True,
  )
  return state
