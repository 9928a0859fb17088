"""What the command-line programs share: logging set-up, one-line errors,
config flags."""

import contextlib
import importlib.util
import inspect
import logging
import os
import re
import sys
from typing import Any
from collections.abc import Callable, Iterator

import ml_collections
from absl import logging as absl_logging

# Errors a user causes with a path, a key or a file's content: shown as one
# line naming it, not as a traceback.
USER_ERRORS = (FileNotFoundError, ValueError, KeyError)


def enable_compilation_cache() -> None:
  """Keeps compiled XLA programs on disk ($RPN_JAX_CACHE/jax, else
  ~/.cache/rpn_jax/jax), so a resumed run or a second evaluation skips the
  minute of compiling on a small CPU."""
  import jax
  from rpn_jax.data.cache import cache_root

  jax.config.update(
      "jax_compilation_cache_dir", os.path.join(cache_root(), "jax")
  )
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def setup(distributed: bool = False) -> None:
  """Process-wide set-up of the command-line programs; `distributed` joins a
  multi-host job (TPU slice, SLURM or other cluster JAX detects)."""
  if distributed:
    import jax

    jax.distributed.initialize()
  enable_compilation_cache()
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger().setLevel(logging.WARNING)
  # TensorFlow (tfds path) must not grab an accelerator JAX needs.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def one_line_errors():
  """Turns USER_ERRORS into `error: <message>` on stderr and exit status 2.

  Set RPN_JAX_TRACEBACK=1 to see the full traceback instead.
  """
  try:
    yield
  except USER_ERRORS as e:
    if os.environ.get("RPN_JAX_TRACEBACK"):
      raise
    message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    print(
        f"error: {message.splitlines()[0] if message else type(e).__name__}",
        file=sys.stderr,
    )
    sys.exit(2)


def packaged_config(name: str) -> str:
  """Path of the packaged recipe `rpn_jax/configs/<name>.py`."""
  from rpn_jax import configs

  return os.path.join(os.path.dirname(configs.__file__), f"{name}.py")


def _config_values(argv: list[str]) -> Iterator[tuple[int, str, str]]:
  """(index in argv, prefix of that argument, value) of each `--config=V` or
  `--config V`."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      yield i, "--config=", arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      yield i + 1, "", argv[i + 1]


def with_packaged_config_paths(argv: list[str]) -> list[str]:
  """`argv` with `--config NAME` (a packaged recipe's name, not a file) made
  the recipe's path, so an installed copy runs `rpn-train --config default`;
  `NAME:ARG` keeps its argument for the recipe's get_config(ARG)."""
  out = list(argv)
  for i, prefix, value in _config_values(argv):
    name, colon, recipe_arg = value.partition(":")
    if (
        name
        and os.sep not in name
        and not name.endswith(".py")
        and not os.path.exists(value)
        and os.path.exists(packaged_config(name))
    ):
      out[i] = prefix + packaged_config(name) + colon + recipe_arg
  return out


def check_recipe_argument(argv: list[str]) -> None:
  """A one-line error (exit status 2) when `--config FILE.py:ARG` names an
  argument FILE's get_config refuses, before absl would print the recipe's
  traceback inside its flag error."""
  for _, _, value in _config_values(argv):
    path, colon, recipe_arg = value.rpartition(":")
    if not colon or not path.endswith(".py") or not os.path.isfile(path):
      continue
    spec = importlib.util.spec_from_file_location("_recipe", path)
    module = importlib.util.module_from_spec(spec)
    with one_line_errors():
      spec.loader.exec_module(module)
      if not inspect.signature(module.get_config).parameters:
        raise ValueError(f"{path} takes no argument, got {recipe_arg!r}")
      module.get_config(recipe_arg)


def saved_config(argv: list[str]) -> ml_collections.ConfigDict:
  """The ml_collections config saved in the `--ckpt DIR` workdir that `argv`
  names (base_config() when it names none), read before flags are parsed so
  that `--config.a.b=v` overrides apply to it with their key and type checks.
  A workdir without config.json is a one-line error."""
  ckpt = None
  for i, arg in enumerate(argv):
    if arg.startswith("--ckpt="):
      ckpt = arg.split("=", 1)[1]
    elif arg == "--ckpt" and i + 1 < len(argv):
      ckpt = argv[i + 1]
  if ckpt is None:
    from rpn_jax import defaults

    return defaults.base_config()
  from rpn_jax import checkpoint as checkpoint_lib

  with one_line_errors():
    return checkpoint_lib.load_config(ckpt)


def define_config_flag(define: Callable[..., Any], *args, **kwargs) -> Any:
  """Calls a `config_flags.DEFINE_config_*`, which applies `--config.a.b=v`
  overrides at once, turning an override of a missing key into one line."""
  try:
    return define(*args, **kwargs)
  except (KeyError, AttributeError) as e:
    quoted = re.findall(r"'([A-Za-z_][A-Za-z0-9_]*)'", str(e).replace("\\", ""))
    key = quoted[0] if quoted else str(e)
    flags = [
        a.split("=")[0]
        for a in sys.argv[1:]
        if a.startswith("--config.") and key in a.split("=")[0].split(".")
    ]
    where = flags[0] if flags else "--config"
    print(f"error: {where}: the config has no key {key!r}", file=sys.stderr)
    sys.exit(2)


def define_checkpoint_flags(config_help: str) -> tuple[Any, Any, Any]:
  """--ckpt, --step and --config (the workdir's saved config, with
  `--config.a.b=v` overrides on top) of the programs that read a trained
  workdir; returns their flag holders in that order."""
  from absl import flags
  from ml_collections import config_flags

  ckpt = flags.DEFINE_string(
      "ckpt", None, "Training workdir (train.py --workdir)."
  )
  step = flags.DEFINE_integer(
      "step", None, "Checkpoint step (default: newest)."
  )
  config = define_config_flag(
      config_flags.DEFINE_config_dict,
      "config",
      saved_config(sys.argv),
      config_help,
      lock_config=True,
  )
  return ckpt, step, config
