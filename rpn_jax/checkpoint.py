"""Orbax checkpoints of the train state, the config saved beside them, and
the restore of a run's variables for inference.

Layout of a workdir:
  config.json            the resolved config of the run (evaluate.py reads it)
  checkpoints/<step>/    orbax checkpoints of `train_lib.TrainState` (step,
                         params, batch_stats, opt_state), written
                         asynchronously

A config.json written before a key existed (model.fpn, train.optimizer, ...)
reads as if it held that key's `rpn_jax.defaults.base_config()` default: the
behaviour the run had.
"""

import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from rpn_jax import defaults
from rpn_jax import setup_model

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
# Settings that decide the shapes or meaning of the saved parameters: a
# checkpoint is only restored under a config that agrees on all of them.
_MODEL_KEYS = ("model",)
# Settings that only matter when a run starts from scratch.
_INIT_ONLY_KEYS = ("model.pretrained", "model.dtype")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1}; sequences stay leaves."""
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  out = {}
  for k, v in tree.items():
    out.update(_flatten(v, f"{prefix}{k}."))
  return out


def _model_settings(config_dict: dict[str, Any]) -> dict[str, Any]:
  flat = _flatten(json.loads(json.dumps(config_dict)))
  return {
      k: v
      for k, v in flat.items()
      if any(k == p or k.startswith(p + ".") for p in _MODEL_KEYS)
      and k not in _INIT_ONLY_KEYS
  }


def config_mismatch(
    saved: dict[str, Any], config: ml_collections.ConfigDict
) -> list[str]:
  """Keys (dotted) whose model settings differ between `saved` and `config`;
  a key missing from `saved` counts as its base_config() default."""
  a = _model_settings(defaults.with_base_defaults(saved))
  b = _model_settings(config.to_dict())
  return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in `workdir` (error naming the path if absent),
  with keys added since it was saved set to their base_config() defaults."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"no {CONFIG_FILE} in {workdir}: not a rpn_jax "
        "training directory (train.py --workdir ...)"
    )
  with open(path) as f:
    return defaults.from_saved(json.load(f))


def check_or_write_config(
    workdir: str, config: ml_collections.ConfigDict
) -> None:
  """Writes config.json, refusing to mix a workdir's checkpoints with a
  different model."""
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.isfile(path):
    with open(path) as f:
      saved = defaults.with_base_defaults(json.load(f))
    diff = config_mismatch(saved, config)
    if diff:
      details = ", ".join(
          f"{k}: saved {_flatten(saved).get(k)!r} vs {_flatten(config.to_dict()).get(k)!r}"
          for k in diff
      )
      raise ValueError(
          f"{workdir} holds a run of another model config ({details}); "
          "use a new --workdir"
      )
  with open(path, "w") as f:
    f.write(config.to_json(indent=2))


class Checkpointer:
  """Asynchronous orbax checkpoints of a pytree state, keeping the newest few
  and, with `keep_every_steps`, every step that is a multiple of it."""

  def __init__(
      self, directory: str, max_to_keep: int = 3, keep_every_steps: int = 0
  ):
    self.directory = os.path.abspath(directory)
    # keep_period rather than a preservation_policy: the latter is missing
    # from the older orbax releases pyproject allows.
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            keep_period=keep_every_steps or None,
            create=True,
            enable_async_checkpointing=True,
        ),
    )

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, force: bool = False) -> None:
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def restore(self, step: int, target: Any, partial: bool = False) -> Any:
    """Restores `step` into the structure, shapes and shardings of `target`
    (arrays or jax.ShapeDtypeStruct leaves). With `partial`, `target` may
    name only some of the saved subtrees (a dict): only those are read."""
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    if not partial:
      return self._manager.restore(
          step, args=ocp.args.StandardRestore(abstract)
      )
    return self._manager.restore(
        step,
        args=ocp.args.PyTreeRestore(
            item=abstract,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=True,
        ),
    )

  def restore_latest(self, target: Any, partial: bool = False) -> Any | None:
    """The newest complete checkpoint, or None when there is none.

    A newest step that cannot be read (a run killed while writing it) is
    skipped with a warning and the one before it is used.
    """
    for step in reversed(self.all_steps()):
      try:
        return self.restore(step, target, partial)
      except Exception as e:  # orbax raises many kinds for a damaged step
        logging.warning(
            "Checkpoint step %d in %s is unreadable (%s: %s); "
            "trying an older one",
            step,
            self.directory,
            type(e).__name__,
            str(e).splitlines()[0][:200],
        )
    return None

  def close(self) -> None:
    """Waits for pending asynchronous writes, then releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()


def restore_variables(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> tuple[dict[str, Any], int]:
  """{"params", "batch_stats"} of checkpoint `step` (default: the newest
  readable one) of a training workdir, and that step, for inference.

  Only those two subtrees and the step are read from the saved train state,
  into shapes computed from `config` (`setup_model.variable_shapes`): no
  optimizer is built and its state is not loaded. `config` must agree with
  the workdir's config.json on every model setting (else a ValueError names
  the differing keys). Arrays come back on the first local device.
  """
  saved = load_config(workdir)
  diff = config_mismatch(saved.to_dict(), config)
  if diff:
    raise ValueError(
        f"the checkpoint in {workdir} was trained with other "
        f"model settings: {', '.join(diff)}"
    )
  ckpt = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR))
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
    if step is not None and step not in steps:
      raise ValueError(f"--step {step} not in {ckpt.directory} (has {steps})")
    shapes = setup_model.variable_shapes(
        config, setup_model.build_model(config.model)
    )
    # A model without BatchNorm ("gn") has no batch_stats: its train state
    # saved an empty dict, which holds nothing to restore.
    target = {k: shapes[k] for k in ("params", "batch_stats") if shapes.get(k)}
    target["step"] = jax.ShapeDtypeStruct((), jnp.int32)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
        target,
    )
    if step is None:
      restored = ckpt.restore_latest(target, partial=True)
      if restored is None:
        raise ValueError(f"no readable checkpoint in {ckpt.directory}")
    else:
      restored = ckpt.restore(step, target, partial=True)
  finally:
    ckpt.close()
  return (
      {
          "params": restored["params"],
          "batch_stats": restored.get("batch_stats", {}),
      },
      int(restored["step"]),
  )
