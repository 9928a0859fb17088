"""Host-side data: sources (synthetic, COCO folder, tfds), transforms, loader.

`open_dataset(data_cfg, split)` returns a random-access dataset (see
`dataset.Dataset`); `loader.BatchLoader` turns it into batches.
"""

from rpn_jax.data.dataset import CorruptImageError, Dataset, ImageRecord
from rpn_jax.data.sources import open_dataset

__all__ = ["CorruptImageError", "Dataset", "ImageRecord", "open_dataset"]
