"""Trains a rpn_jax RPN.

  rpn-train (or python train.py in a clone) [--config NAME|FILE]
      [--config.a.b=v ...] [--workdir DIR]

--config takes a recipe file (configs/X.py) or the name of a packaged one
(default, coco_person_r50_c5, ...). With no flags: the embedded default
(synthetic data, small ResNet, CPU minutes) into runs/default. Rerunning with
the same workdir resumes.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from rpn_jax import cli

_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-host run: call jax.distributed.initialize() "
    "(each host then reads its own share of every batch).",
)
_CONFIG = cli.define_config_flag(
    config_flags.DEFINE_config_file,
    "config",
    cli.packaged_config("default"),
    "Training recipe: a configs/*.py file or a packaged recipe's name; "
    "override keys with --config.a.b=v.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Where checkpoints, config.json and metrics.jsonl go "
    "(default: runs/<config file name>).",
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.setup(_DISTRIBUTED.value)
  config_path = flags.FLAGS["config"].config_filename
  workdir = _WORKDIR.value or os.path.join(
      "runs", os.path.splitext(os.path.basename(config_path))[0]
  )
  with cli.one_line_errors():
    from rpn_jax import train_lib

    train_lib.train_and_evaluate(_CONFIG.value, workdir)


def run() -> None:
  sys.argv = cli.with_packaged_config_paths(sys.argv)
  cli.check_recipe_argument(sys.argv)
  app.run(main)
