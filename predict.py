"""Runs a trained detector on your own images from a clone: `python
predict.py --help` (the `rpn-predict` command of an installed copy)."""

from rpn_jax.commands import predict

if __name__ == "__main__":
  predict.run()
