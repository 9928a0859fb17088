"""The random-access dataset protocol every data source implements.

Random access (instead of a stream) is what makes shuffling deterministic and a
run resumable mid-epoch: the loader only needs `len(ds)` and `ds.load(i)`.
"""

import dataclasses
from typing import Protocol

import numpy as np


class CorruptImageError(Exception):
  """An image that cannot be decoded (truncated, not an image, wrong size).

  The message names the file (or the record) so the bad input can be found.
  """


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """Ground truth of one image, in original image pixels.

  boxes:       float32 [n, 4] xyxy person boxes, non-crowd, clipped to the
               image, each at least 1 px wide and high.
  crowd_boxes: float32 [m, 4] xyxy person regions marked iscrowd.
  source:      file path (or record name) of the image, for messages.
  """

  image_id: int
  height: int
  width: int
  boxes: np.ndarray
  crowd_boxes: np.ndarray
  source: str


class Dataset(Protocol):
  """What `open_dataset` returns and `loader.BatchLoader` consumes.

  image_ids:       COCO image ids, in index order.
  annotation_file: COCO-format ground-truth json holding the person
                   category (id 1) and the person boxes of (at least) these
                   images; restrict COCOeval to `image_ids`.
  stats:           counts gathered while indexing, e.g.
                   degenerate_boxes_dropped.
  """

  image_ids: list[int]
  annotation_file: str
  stats: dict[str, int]

  def __len__(self) -> int:
    ...

  def load(self, index: int) -> tuple[np.ndarray, ImageRecord]:
    """Image uint8 [H, W, 3] RGB and its record; raises CorruptImageError."""
    ...
