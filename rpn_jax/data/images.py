"""Image decoding with one failure mode: CorruptImageError naming the file."""

import io

import numpy as np
from PIL import Image

from rpn_jax.data.dataset import CorruptImageError


def decode_image(
    data: bytes | str, source: str, expected_hw: tuple[int, int] | None = None
) -> np.ndarray:
  """Decodes `data` (encoded bytes or a file path) to uint8 [H, W, 3] RGB.

  Grayscale, palette and CMYK images are converted to RGB. EXIF orientation is
  ignored on purpose: COCO boxes refer to the stored pixel grid. When
  `expected_hw` = (height, width) from the annotations disagrees with the
  decoded size, the boxes would be wrong, so that is treated as corrupt too.
  """
  try:
    stream = io.BytesIO(data) if isinstance(data, bytes) else open(data, "rb")
    with stream, Image.open(stream) as image:
      image.load()
      array = np.asarray(image.convert("RGB"))
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise CorruptImageError(f"cannot decode image {source}: {e}") from e
  if expected_hw is not None and array.shape[:2] != tuple(expected_hw):
    raise CorruptImageError(
        f"image {source} is {array.shape[0]}x{array.shape[1]} but its "
        f"annotation says {expected_hw[0]}x{expected_hw[1]}"
    )
  return array


def image_size(data: bytes | str, source: str) -> tuple[int, int]:
  """(height, width) from the image header only, without decoding pixels."""
  try:
    stream = io.BytesIO(data) if isinstance(data, bytes) else open(data, "rb")
    with stream, Image.open(stream) as image:
      width, height = image.size
  except (OSError, SyntaxError, ValueError) as e:
    raise CorruptImageError(f"cannot read image header {source}: {e}") from e
  return height, width
