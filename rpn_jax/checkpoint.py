"""Orbax checkpoints of the train state, and the config saved beside them.

Layout of a workdir:
  config.json            the resolved config of the run (evaluate.py reads it)
  checkpoints/<step>/    orbax checkpoints, written asynchronously

A config.json written before a key existed (model.fpn, train.optimizer, ...)
reads as if it held that key's `rpn_jax.defaults.base_config()` default: the
behaviour the run had.
"""

import json
import logging
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from rpn_jax import defaults

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
  return {k: v for k, v in flat.items()
          if any(k == p or k.startswith(p + ".") for p in _MODEL_KEYS)
          and k not in _INIT_ONLY_KEYS}


def config_mismatch(saved: dict[str, Any], config: ml_collections.ConfigDict
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
    raise FileNotFoundError(f"no {CONFIG_FILE} in {workdir}: not a rpn_jax "
                            "training directory (train.py --workdir ...)")
  with open(path) as f:
    return defaults.from_saved(json.load(f))


def check_or_write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
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
          for k in diff)
      raise ValueError(f"{workdir} holds a run of another model config ({details}); "
                       "use a new --workdir")
  with open(path, "w") as f:
    f.write(config.to_json(indent=2))


class Checkpointer:
  """Asynchronous orbax checkpoints of a pytree state, keeping the newest few."""

  def __init__(self, directory: str, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=True),
    )

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, force: bool = False) -> None:
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def restore(self, step: int, target: Any) -> Any:
    """Restores `step` into the structure, shapes and shardings of `target`."""
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def restore_latest(self, target: Any) -> Any | None:
    """The newest complete checkpoint, or None when there is none.

    A newest step that cannot be read (a run killed while writing it) is
    skipped with a warning and the one before it is used.
    """
    for step in reversed(self.all_steps()):
      try:
        return self.restore(step, target)
      except Exception as e:  # orbax raises many kinds for a damaged step
        logging.warning("Checkpoint step %d in %s is unreadable (%s: %s); "
                        "trying an older one", step, self.directory,
                        type(e).__name__, str(e).splitlines()[0][:200])
    return None

  def close(self) -> None:
    """Waits for pending asynchronous writes, then releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()
