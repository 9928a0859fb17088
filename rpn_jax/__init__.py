"""rpn_jax: a JAX/Flax Region Proposal Network person detector.

`rpn_jax.load_detector(FILE)` runs a detector exported with
`python -m rpn_jax.export`; importing the package alone loads nothing else.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from rpn_jax.predictor import Detector


def load_detector(path: str) -> "Detector":
  """The detector exported to `path`: `detector(image)` with a uint8 [H, W, 3]
  RGB array (any size) returns {"boxes": [n, 4] xyxy original pixels,
  "scores": [n]}, a list of images a list of those (`predictor.Detector`).
  Imports JAX and the model, not the training code."""
  from rpn_jax import predictor

  return predictor.load_detector(path)
