"""Anchor grids against torchvision's AnchorGenerator and hand-computed values."""

import math

import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from rpn_jax.anchors import generate_anchors

SIZES = (32, 64, 128, 256, 512)
RATIOS = (0.5, 1.0, 2.0)


@pytest.mark.parametrize("feature_hw,stride", [((7, 9), 32), ((5, 4), 16)])
def test_matches_torchvision_grid(feature_hw, stride):
  h, w = feature_hw
  generator = AnchorGenerator(sizes=(SIZES,), aspect_ratios=(RATIOS,))
  images = ImageList(
      torch.zeros(1, 3, h * stride, w * stride), [(h * stride, w * stride)]
  )
  expected = generator(images, [torch.zeros(1, 8, h, w)])[0].numpy()
  anchors = generate_anchors(feature_hw, stride, SIZES, RATIOS, offset=0.0)
  assert anchors.dtype == np.float32 and anchors.shape == expected.shape == (
      h * w * 15,
      4,
  )
  # torchvision rounds its base anchors to whole pixels.
  np.testing.assert_allclose(anchors, expected, atol=0.5)


def test_centred_layout_and_order():
  anchors = generate_anchors((2, 3), 32, SIZES, RATIOS).reshape(2, 3, 15, 4)
  widths = anchors[..., 2] - anchors[..., 0]
  heights = anchors[..., 3] - anchors[..., 1]
  centres_x = (anchors[..., 0] + anchors[..., 2]) / 2
  centres_y = (anchors[..., 1] + anchors[..., 3]) / 2
  np.testing.assert_allclose(centres_x[1, 2], np.full(15, 2.5 * 32))
  np.testing.assert_allclose(centres_y[1, 2], np.full(15, 1.5 * 32))
  for r, ratio in enumerate(RATIOS):
    for s, size in enumerate(SIZES):
      a = r * len(SIZES) + s
      np.testing.assert_allclose(
          widths[0, 0, a] * heights[0, 0, a], size**2, rtol=1e-5
      )
      np.testing.assert_allclose(
          heights[0, 0, a] / widths[0, 0, a], ratio, rtol=1e-5
      )
  np.testing.assert_allclose(
      anchors[0, 0, 0],
      [
          16 - 32 * math.sqrt(2) / 2,
          16 - 16 * math.sqrt(0.5),
          16 + 32 * math.sqrt(2) / 2,
          16 + 16 * math.sqrt(0.5),
      ],
      rtol=1e-6,
  )


def test_bad_arguments():
  with pytest.raises(ValueError):
    generate_anchors((2, 2), 0, SIZES, RATIOS)
  with pytest.raises(ValueError):
    generate_anchors((2, 2), 16, [], RATIOS)
  with pytest.raises(ValueError):
    generate_anchors((2, 2), 16, SIZES, (0.0, 1.0))
  assert generate_anchors((0, 3), 16, SIZES, RATIOS).shape == (0, 4)
