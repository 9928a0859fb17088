"""A trained detector as one file: inference variables and config, no pickle.

  python -m rpn_jax.export --ckpt DIR [--step N] --out FILE [--config.a.b=v]

(`rpn-export` in an installed copy; rpn_jax/commands/export.py) writes FILE,
a numpy .npz archive holding
  format            "rpn_jax.detector/1"
  config_json       the run's config (config.json, overrides applied) as JSON
  variables/<path>  each array of {"params", "batch_stats"}, its path in the
                    variables tree joined with "/"
and nothing of the optimizer. `rpn_jax.load_detector(FILE)` reads it back
into a `rpn_jax.predictor.Detector` without importing the training code; any
other program can read it with `np.load(FILE)`.
"""

import json
import os
from typing import Any

import ml_collections
import numpy as np
from flax import traverse_util

from rpn_jax import defaults

FORMAT = "rpn_jax.detector/1"
_VARIABLES = "variables/"


def write_detector_file(
    path: str, config: ml_collections.ConfigDict, variables: dict[str, Any]
) -> None:
  """Writes `variables` ({"params", "batch_stats"} trees of arrays) and
  `config` to `path` (the module docstring's layout), atomically."""
  flat = traverse_util.flatten_dict(variables, sep="/")
  arrays = {_VARIABLES + k: np.asarray(v) for k, v in flat.items()}
  odd = sorted(k for k, v in arrays.items() if v.dtype.kind not in "fiub")
  if odd:  # bfloat16 and friends would need pickle to read back
    raise ValueError(f"cannot export {odd[0]} of dtype {arrays[odd[0]].dtype}")
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  # A file object, not a name: np.savez would append ".npz" to the name.
  partial = path + ".partial"
  with open(partial, "wb") as f:
    np.savez(
        f,
        format=np.asarray(FORMAT),
        config_json=np.asarray(config.to_json()),
        **arrays,
    )
  os.replace(partial, path)


def read_detector_file(
    path: str,
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """(config, variables) of a file written by `write_detector_file`.

  Keys added to the config since the file was written take their
  base_config() defaults. FileNotFoundError or ValueError naming `path` when
  it is missing or not such a file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no exported detector at {path}")
  try:
    data = np.load(path, allow_pickle=False)
  except (OSError, EOFError, ValueError) as e:  # not numpy, or pickled
    raise ValueError(f"cannot read {path} as an exported detector: {e}") from e
  if not isinstance(data, np.lib.npyio.NpzFile):  # a lone .npy array
    raise ValueError(f"{path} is not a detector written by rpn_jax.export")
  with data:
    fmt = str(data["format"]) if "format" in data.files else None
    if fmt != FORMAT:
      raise ValueError(
          f"{path} is not a detector written by rpn_jax.export "
          f"(format {fmt!r}, expected {FORMAT!r})"
      )
    config = defaults.from_saved(json.loads(str(data["config_json"])))
    flat = {
        k[len(_VARIABLES) :]: data[k]
        for k in data.files
        if k.startswith(_VARIABLES)
    }
  return config, traverse_util.unflatten_dict(flat, sep="/")


if __name__ == "__main__":
  from rpn_jax.commands import export as export_command

  export_command.run()
