"""Detections on a user's image files, written as COCO results and pictures.

`predict_images` (the work of predict.py) writes into its output folder:
  detections.json      COCO results: [{"image_id", "file_name",
                       "category_id": 1, "bbox": [x, y, w, h] original
                       pixels, "score"}, ...]
  images.json          per file, in the order read: image_id, file_name,
                       path, height, width, detections; or error, for a file
                       that could not be read
  pictures/<name>.jpg  each image with its detections drawn
"""

import collections
import concurrent.futures
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from tqdm import tqdm

from rpn_jax import visualize
from rpn_jax.data import CorruptImageError
from rpn_jax.data import image_files
from rpn_jax.predictor import Detector, Letterboxed

# COCO's category id of person.
PERSON = 1
# A read image: its index in the file list, uint8 [H, W, 3] RGB, on the canvas.
_Loaded = tuple[int, np.ndarray, Letterboxed]


def display_names(paths: list[str]) -> list[str]:
  """Each path relative to the folder holding all of them (file_name in the
  outputs): the base name when they share one folder."""
  folders = [os.path.dirname(os.path.abspath(p)) for p in paths]
  root = os.path.commonpath(folders)
  return [os.path.relpath(os.path.abspath(p), root) for p in paths]


def picture_names(names: list[str]) -> list[str]:
  """`<stem>.jpg` for each display name (subfolders joined with "__"), or
  `<stem>.<ext>.jpg` where two names share a stem (a.jpg and a.png)."""
  stems = [os.path.splitext(n)[0].replace(os.sep, "__") for n in names]
  counts = collections.Counter(stems)
  return [
      f"{stem}.jpg"
      if counts[stem] == 1
      else f"{stem}{os.path.splitext(n)[1]}.jpg"
      for stem, n in zip(stems, names)
  ]


def _in_order(
    pool: concurrent.futures.Executor, fn: Any, items: list[Any], ahead: int
) -> Iterator[tuple[Any, concurrent.futures.Future]]:
  """(item, future of fn(item)) in the order of `items`, with at most `ahead`
  submitted ahead of the consumer (bounds the decoded images held)."""
  pending = collections.deque()
  todo = iter(items)
  for item in todo:
    pending.append((item, pool.submit(fn, item)))
    if len(pending) >= ahead:
      break
  while pending:
    done = pending.popleft()
    item = next(todo, None)
    if item is not None:
      pending.append((item, pool.submit(fn, item)))
    yield done


def predict_images(
    detector: Detector,
    paths: list[str],
    output_dir: str,
    draw: bool = True,
    num_workers: int = 4,
) -> dict[str, Any]:
  """Detects persons in the image files `paths` with `detector`
  (`rpn_jax.predictor.Detector`), decoding and drawing on `num_workers`
  threads, and writes detections.json, images.json and (`draw`) pictures into
  `output_dir` (module docstring). Unreadable files are warned about (one
  line naming each) and skipped. Returns {"images", "detections", "skipped"
  (display names), "seconds"}."""
  names = display_names(paths)
  pictures = [
      os.path.join(output_dir, "pictures", p) for p in picture_names(names)
  ]
  clash = set(map(os.path.realpath, paths)) & set(
      map(os.path.realpath, pictures)
  )
  if draw and clash:
    raise ValueError(
        f"a picture would overwrite the input {clash.pop()}: "
        "choose another --output_dir"
    )
  os.makedirs(
      os.path.join(output_dir, "pictures") if draw else output_dir,
      exist_ok=True,
  )

  def load(index: int) -> _Loaded:
    image = image_files.read_image(paths[index])
    return index, image, detector.letterbox(image)

  def save_picture(
      index: int, image: np.ndarray, found: dict[str, np.ndarray]
  ) -> None:
    visualize.draw_detections(image, found["boxes"], found["scores"]).save(
        pictures[index], quality=90
    )

  images = [
      {"image_id": i + 1, "file_name": n, "path": os.path.abspath(p)}
      for i, (n, p) in enumerate(zip(names, paths))
  ]
  detections, skipped, drawing = [], [], collections.deque()
  t0 = time.perf_counter()
  batch_size = detector.batch_size
  with (
      concurrent.futures.ThreadPoolExecutor(
          max(1, num_workers), thread_name_prefix="rpn_jax_predict"
      ) as pool,
      tqdm(
          total=len(paths),
          unit="img",
          desc="predict",
          dynamic_ncols=True,
          mininterval=1.0,
      ) as bar,
  ):

    def flush(batch: list[_Loaded]) -> None:
      found = detector.detect_letterboxed([b[2] for b in batch])
      for (index, image, _), dets in zip(batch, found):
        record = images[index]
        record.update(
            height=int(image.shape[0]),
            width=int(image.shape[1]),
            detections=len(dets["scores"]),
        )
        for box, score in zip(dets["boxes"].tolist(), dets["scores"].tolist()):
          xywh = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
          detections.append(
              {
                  "image_id": record["image_id"],
                  "file_name": record["file_name"],
                  "category_id": PERSON,
                  "bbox": [round(v, 2) for v in xywh],
                  "score": round(score, 5),
              }
          )
        if draw:
          drawing.append(pool.submit(save_picture, index, image, dets))
      # Pictures hold full-size images: at most two batches of them wait.
      while len(drawing) > 2 * batch_size:
        drawing.popleft().result()
      bar.update(len(batch))

    batch = []
    for index, future in _in_order(
        pool, load, list(range(len(paths))), ahead=2 * batch_size
    ):
      try:
        batch.append(future.result())
      except CorruptImageError as e:
        reason = str(e.__cause__ or e).splitlines()[0]
        images[index]["error"] = reason
        skipped.append(names[index])
        tqdm.write(
            f"warning: skipped {names[index]}: {reason}", file=sys.stderr
        )
        bar.update(1)
        continue
      if len(batch) == batch_size:
        flush(batch)
        batch = []
    if batch:
      flush(batch)
    for future in drawing:
      future.result()
  seconds = time.perf_counter() - t0
  with open(os.path.join(output_dir, "detections.json"), "w") as f:
    json.dump(detections, f)
  with open(os.path.join(output_dir, "images.json"), "w") as f:
    json.dump(images, f, indent=1)
  return {
      "images": len(paths) - len(skipped),
      "detections": len(detections),
      "skipped": skipped,
      "seconds": seconds,
  }
