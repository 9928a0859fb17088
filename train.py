"""Trains a rpn_jax RPN.

  python train.py [--config configs/X.py] [--config.a.b=v ...] [--workdir DIR]

With no flags: the embedded default (synthetic data, small ResNet, CPU
minutes) into runs/default. Rerunning with the same workdir resumes.
"""

import os

from absl import app
from absl import flags
from ml_collections import config_flags

from rpn_jax import cli

_HERE = os.path.dirname(os.path.abspath(__file__))
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-host run: call jax.distributed.initialize() "
    "(each host then reads its own share of every batch).")
_CONFIG = cli.define_config_flag(
    config_flags.DEFINE_config_file, "config", os.path.join(_HERE, "configs", "default.py"),
    "Training recipe (a configs/*.py file); override keys with --config.a.b=v.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, config.json and metrics.jsonl go "
    "(default: runs/<config file name>).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.setup(_DISTRIBUTED.value)
  config_path = flags.FLAGS["config"].config_filename
  workdir = _WORKDIR.value or os.path.join(
      "runs", os.path.splitext(os.path.basename(config_path))[0])
  with cli.one_line_errors():
    from rpn_jax import train_lib
    train_lib.train_and_evaluate(_CONFIG.value, workdir)


if __name__ == "__main__":
  app.run(main)
