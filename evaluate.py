"""Evaluates a checkpoint from a clone: `python evaluate.py --help` (the
`rpn-evaluate` command of an installed copy)."""

from rpn_jax.commands import evaluate

if __name__ == "__main__":
  evaluate.run()
