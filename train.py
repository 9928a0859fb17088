"""Trains a rpn_jax RPN from a clone: `python train.py --help` (the
`rpn-train` command of an installed copy)."""

from rpn_jax.commands import train

if __name__ == "__main__":
  train.run()
