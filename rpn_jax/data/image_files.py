"""A user's own image files: finding them and reading them as RGB arrays.

Unlike the datasets' `images.decode_image`, reading applies the EXIF
orientation: there are no annotations whose pixel grid it could break, and a
phone photo should be detected the way it is shown.
"""

import glob
import os

import numpy as np
from PIL import Image, ImageOps

from rpn_jax.data.dataset import CorruptImageError

# Extensions (lower case) of the files a folder or glob contributes.
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".webp",
    ".gif",
    ".tif",
    ".tiff",
)


def is_image_name(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def find_images(pattern: str) -> list[str]:
  """The image files `pattern` names, sorted: a file (whatever its
  extension), a folder's images (not its subfolders'), or a glob's (`**`
  recursing). FileNotFoundError naming `pattern` when there are none."""
  if os.path.isfile(pattern):
    return [pattern]
  if os.path.isdir(pattern):
    names = [os.path.join(pattern, name) for name in os.listdir(pattern)]
  else:
    names = glob.glob(pattern, recursive=True)
  paths = sorted(p for p in names if os.path.isfile(p) and is_image_name(p))
  if not paths and os.path.isdir(pattern):
    raise FileNotFoundError(
        f"no images in {pattern}: none of its files ends in "
        f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}"
    )
  if not paths:
    raise FileNotFoundError(
        f"no images at {pattern}: no such file or folder, and no image file "
        "matches it as a glob"
    )
  return paths


def read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB of an image file, EXIF orientation applied (H, W as
  shown); grayscale, palette, CMYK and alpha images converted (alpha
  dropped), the first frame of an animation. CorruptImageError naming `path`
  when it cannot be decoded."""
  try:
    with Image.open(path) as image:
      image = ImageOps.exif_transpose(image)
      if "transparency" in image.info:  # palette transparency: via RGBA
        image = image.convert("RGBA")
      return np.asarray(image.convert("RGB"))
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise CorruptImageError(f"{path}: {reason}") from e
