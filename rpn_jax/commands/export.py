"""Exports a trained detector to one file for `rpn_jax.load_detector`.

  rpn-export (or python -m rpn_jax.export) --ckpt DIR --out FILE [--step N]
      [--config.eval.a=v ...]

Restores the config saved with the checkpoint (`--config.*` overrides apply on
top of it: eval.score_threshold, eval.image_size, eval.tta_scales, ... become
the detector's settings) and writes its params and batch statistics, without
optimizer state, with that config into FILE (rpn_jax/export.py has the
layout).
"""

import numpy as np
from absl import app
from absl import flags

from rpn_jax import cli

_CKPT, _STEP, _CONFIG = cli.define_checkpoint_flags(
    "Overrides of the checkpoint's config (the detector's settings)."
)
_OUT = flags.DEFINE_string("out", None, "File to write (an .npz archive).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _CKPT.value or not _OUT.value:
    raise app.UsageError("--ckpt DIR and --out FILE are required")
  cli.setup()
  with cli.one_line_errors():
    import jax
    from rpn_jax import checkpoint
    from rpn_jax import export

    variables, step = checkpoint.restore_variables(
        _CONFIG.value, _CKPT.value, _STEP.value
    )
    export.write_detector_file(_OUT.value, _CONFIG.value, variables)
  count = sum(
      np.size(v) for v in jax.tree_util.tree_leaves(variables["params"])
  )
  print(
      f"Wrote the detector of {_CKPT.value} (step {step}, {count:,} "
      f"parameters) to {_OUT.value}\nLoad it with: import rpn_jax; "
      f"detector = rpn_jax.load_detector({_OUT.value!r})"
  )


def run() -> None:
  app.run(main)
