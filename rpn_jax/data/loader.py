"""Batches of letterboxed images and padded boxes, decoded in threads.

The order of an epoch is a function of (seed, epoch) and each image's flip
and scale jitter a function of (seed, epoch, dataset index), so an epoch can
be restarted at any step and yields exactly the batches the uninterrupted
epoch would have.
"""

import collections
import concurrent.futures
import itertools
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from rpn_jax.data import transforms
from rpn_jax.data.dataset import CorruptImageError, Dataset

Batch = dict[str, np.ndarray]


def check_scale_jitter(scale_jitter: Sequence[float]) -> tuple[float, float]:
  """data.scale_jitter as floats (lo, hi); a ValueError naming the key unless
  0 < lo <= hi."""
  values = tuple(float(x) for x in scale_jitter)
  if len(values) != 2 or not 0 < values[0] <= values[1]:
    raise ValueError(
        f"data.scale_jitter must be (lo, hi) with 0 < lo <= hi, "
        f"got {tuple(scale_jitter)}"
    )
  return values


class BatchLoader:
  """Iterates a random-access dataset in batches of the shared format:

    image       uint8   [B, S, S, 3]  RGB, letterboxed top-left, zero padded
    boxes       float32 [B, G, 4]     xyxy canvas pixels, padded rows zero
    box_valid   bool    [B, G]        non-crowd person box
    box_crowd   bool    [B, G]        crowd person region
    image_hw    int32   [B, 2]        (h, w) of the content in the canvas
    scale       float32 [B]           canvas px / original px
    image_id    int64   [B]           COCO image id, -1 for padding entries
    image_valid bool    [B]           False for padding and undecodable images

  S = image_size, G = max_boxes. shuffle=False, drop_last=False is the eval
  mode: dataset order, the last batch padded with entries that have
  image_valid False and image_id -1 (zero image, no boxes, image_hw (0, 0),
  scale 1). An undecodable image logs a warning naming the file, is counted in
  `stats["corrupt_images"]` and comes out the same way but keeps its image_id.
  `num_workers` threads decode (0: in the consumer's thread), at most
  `prefetch_batches` batches ahead of the consumer. `scale_jitter` (lo, hi)
  other than (1, 1) resizes each image by a factor drawn from [lo, hi] after
  the letterbox and cuts a random canvas-sized window (transforms.scale_crop);
  boxes left with under 2 x 2 px in it are dropped.

  On several hosts, `batch_size` is the global batch and process
  `process_index` of `process_count` decodes and yields only its contiguous
  share [batch_size / process_count] of every global batch, so the processes
  together visit each image of the epoch exactly once.
  """

  def __init__(
      self,
      dataset: Dataset,
      *,
      batch_size: int,
      image_size: int,
      max_boxes: int,
      shuffle: bool,
      seed: int,
      hflip: bool = False,
      drop_last: bool,
      num_workers: int,
      prefetch_batches: int = 2,
      process_index: int = 0,
      process_count: int = 1,
      scale_jitter: tuple[float, float] = (1.0, 1.0),
  ):
    if batch_size < 1 or image_size < 1 or max_boxes < 1:
      raise ValueError(
          f"batch_size ({batch_size}), image_size ({image_size}) "
          f"and max_boxes ({max_boxes}) must be positive"
      )
    lo, hi = check_scale_jitter(scale_jitter)
    if batch_size % process_count or not 0 <= process_index < process_count:
      raise ValueError(
          f"batch_size {batch_size} must split evenly over "
          f"{process_count} processes (index {process_index})"
      )
    self.dataset = dataset
    self.batch_size = batch_size
    self.image_size = image_size
    self.max_boxes = max_boxes
    self.shuffle = shuffle
    self.seed = seed
    self.hflip = hflip
    self.scale_jitter = (lo, hi)
    self.drop_last = drop_last
    self.num_workers = num_workers
    self.prefetch_batches = max(1, prefetch_batches)
    self.process_index = process_index
    self.local_batch_size = batch_size // process_count
    self.stats = {
        "corrupt_images": 0,
        "images_with_dropped_boxes": 0,
        "boxes_dropped": 0,
    }
    self._lock = threading.Lock()

  @property
  def steps_per_epoch(self) -> int:
    n = len(self.dataset)
    return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

  def order(self, epoch: int) -> np.ndarray:
    """Dataset indices [len(dataset)] in the order epoch `epoch` visits them."""
    n = len(self.dataset)
    if not self.shuffle:
      return np.arange(n)
    return np.random.default_rng([self.seed, epoch, 0]).permutation(n)

  def flips(self, epoch: int) -> np.ndarray:
    """bool [len(dataset)]: whether epoch `epoch` mirrors each dataset index."""
    n = len(self.dataset)
    if not self.hflip:
      return np.zeros(n, bool)
    return np.random.default_rng([self.seed, epoch, 1]).random(n) < 0.5

  def jitters(self, epoch: int) -> np.ndarray | None:
    """float [len(dataset), 3]: each dataset index's (factor, x offset,
    y offset) for scale_crop in epoch `epoch`; None without scale jitter."""
    if self.scale_jitter == (1.0, 1.0):
      return None
    rng = np.random.default_rng([self.seed, epoch, 2])
    lo, hi = self.scale_jitter
    n = len(self.dataset)
    return np.stack([rng.uniform(lo, hi, n), rng.random(n), rng.random(n)], 1)

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
    """Batches start_step .. steps_per_epoch - 1 of epoch `epoch`."""
    steps = self.steps_per_epoch
    if not 0 <= start_step <= steps:
      raise ValueError(f"start_step {start_step} is outside [0, {steps}]")
    b, local = self.batch_size, self.local_batch_size
    indices = self.order(epoch)[start_step * b : steps * b]
    flips = self.flips(epoch)
    jitters = self.jitters(epoch)
    shares = [
        indices[
            first
            + self.process_index * local : first
            + (self.process_index + 1) * local
        ]
        for first in range(0, len(indices), b)
    ]
    work = [
        (int(i), bool(flips[i]), None if jitters is None else tuple(jitters[i]))
        for share in shares
        for i in share
    ]
    if self.num_workers > 0:
      examples = self._threaded(work)
    else:
      examples = (self._example(*item) for item in work)
    try:
      for share in shares:
        yield self._collate([next(examples) for _ in range(len(share))])
    finally:
      examples.close()

  def _threaded(self, work: list[tuple]) -> Iterator[Batch]:
    """The examples of `work` in order, decoded by a thread pool that stays
    at most `prefetch_batches` batches ahead of the consumer."""
    pool = concurrent.futures.ThreadPoolExecutor(
        self.num_workers, thread_name_prefix="rpn_jax_loader"
    )
    window = self.prefetch_batches * self.local_batch_size
    pending: collections.deque = collections.deque()
    todo = iter(work)
    try:
      for item in itertools.islice(todo, window):
        pending.append(pool.submit(self._example, *item))
      while pending:
        example = pending.popleft().result()
        item = next(todo, None)
        if item is not None:
          pending.append(pool.submit(self._example, *item))
        yield example
    finally:
      pool.shutdown(wait=True, cancel_futures=True)

  def _example(
      self,
      index: int,
      flip: bool,
      jitter: tuple[float, float, float] | None = None,
  ) -> Batch:
    """One letterboxed (or scale-jittered), padded entry of the batch
    (without the B axis)."""
    try:
      image, record = self.dataset.load(index)
    except CorruptImageError as e:
      logging.warning("Skipping an undecodable image: %s", e)
      with self._lock:
        self.stats["corrupt_images"] += 1
      return self._blank(int(self.dataset.image_ids[index]))
    boxes = np.concatenate([record.boxes, record.crowd_boxes]).reshape(-1, 4)
    if flip:
      image, boxes = transforms.hflip(image, boxes, record.width)
    n, m = len(record.boxes), len(record.crowd_boxes)
    if jitter is None:
      canvas, boxes, scale, hw = transforms.letterbox(
          image, boxes, self.image_size
      )
    else:
      canvas, boxes, keep, scale, hw = transforms.scale_crop(
          image, boxes, self.image_size, jitter[0], jitter[1:]
      )
      n, m = int(keep[:n].sum()), int(keep[n:].sum())
      boxes = boxes[keep]
    if n + m > self.max_boxes:
      with self._lock:
        self.stats["images_with_dropped_boxes"] += 1
        self.stats["boxes_dropped"] += n + m - self.max_boxes
    padded, valid, crowd = transforms.pad_boxes(
        boxes[:n], boxes[n:], self.max_boxes
    )
    return {
        "image": canvas,
        "boxes": padded,
        "box_valid": valid,
        "box_crowd": crowd,
        "image_hw": np.asarray(hw, np.int32),
        "scale": np.float32(scale),
        "image_id": np.int64(record.image_id),
        "image_valid": np.bool_(True),
    }

  def _blank(self, image_id: int) -> Batch:
    s, g = self.image_size, self.max_boxes
    return {
        "image": np.zeros((s, s, 3), np.uint8),
        "boxes": np.zeros((g, 4), np.float32),
        "box_valid": np.zeros(g, bool),
        "box_crowd": np.zeros(g, bool),
        "image_hw": np.zeros(2, np.int32),
        "scale": np.float32(1.0),
        "image_id": np.int64(image_id),
        "image_valid": np.bool_(False),
    }

  def _collate(self, examples: list[Batch]) -> Batch:
    examples = examples + [self._blank(-1)] * (
        self.local_batch_size - len(examples)
    )
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def train_loader(
    config: Any,
    dataset: Dataset,
    process_index: int = 0,
    process_count: int = 1,
) -> BatchLoader:
  """The training loader of an rpn_jax config: train.batch_size full
  batches on the data.image_size canvas, shuffled by config.seed, with the
  config's flips and scale jitter; this process's share of each batch."""
  return BatchLoader(
      dataset,
      batch_size=config.train.batch_size,
      image_size=config.data.image_size,
      max_boxes=config.data.max_boxes,
      shuffle=True,
      seed=config.seed,
      hflip=config.data.hflip,
      scale_jitter=tuple(config.data.scale_jitter),
      drop_last=True,
      num_workers=config.data.num_workers,
      process_index=process_index,
      process_count=process_count,
  )


def eval_loader(
    config: Any,
    dataset: Dataset,
    process_index: int = 0,
    process_count: int = 1,
) -> BatchLoader:
  """The evaluation loader of an rpn_jax config: every image once, in
  order, eval.batch_size per batch (the last one padded), no augmentation."""
  return BatchLoader(
      dataset,
      batch_size=config.eval.batch_size,
      image_size=config.data.image_size,
      max_boxes=config.data.max_boxes,
      shuffle=False,
      seed=config.seed,
      hflip=False,
      drop_last=False,
      num_workers=config.data.num_workers,
      process_index=process_index,
      process_count=process_count,
  )
