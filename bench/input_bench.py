"""Input pipeline: BatchLoader images/s at 1024 px, per decode thread.

  python -m bench.input_bench [--images 200] [--passes 3] [--workers 1,2]

Writes `--images` COCO-like JPEGs (640 x 480, smooth noise and shapes, JPEG
quality 90, about 120 KB, 1-4 person boxes each) into a temporary COCO-layout
folder, opens it the way training does (`open_dataset` with
data.source="coco_dir") and times the training loader: decode, letterbox to
1024 px, pad boxes, batches of 8, shuffled, drop_last. Each number of decode
threads runs `--passes` whole epochs, interleaved pass by pass; the median
pass gives images/s. The cores needed to feed a target rate are
ceil(target / images/s per thread), which assumes that threads scale
linearly; the 1 -> 2 thread rows test that. JSON section "input".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from typing import Any

import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from bench import common
from rpn_jax.data import loader as loader_lib
from rpn_jax.data import open_dataset

COLUMNS = (
    "workers",
    "images_per_s",
    "images_per_s_per_worker",
    "scaling_vs_1",
    "cpu_ms_per_image",
    "cores_for_200",
    "cores_for_400",
    "background_cores",
)
SPLIT = "train2017"
TARGETS = (200, 400)


def make_coco_folder(
    root: str, n: int, height: int = 480, width: int = 640, seed: int = 0
) -> str:
  """`n` JPEGs of natural-ish content and their person boxes in COCO layout
  under `root` (split SPLIT); returns `root`."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
  os.makedirs(os.path.join(root, SPLIT), exist_ok=True)
  images, anns = [], []
  for image_id in range(1, n + 1):
    # Smooth noise upsampled from a coarse grid: JPEG compresses it like a
    # photo (uniform noise would decode slower than any real image).
    coarse = rng.integers(0, 256, (12, 16, 3), np.uint8)
    picture = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(picture)
    for _ in range(6):
      x, y = rng.uniform(0, width), rng.uniform(0, height)
      w, h = rng.uniform(width / 64, width / 3), rng.uniform(
          height / 48, height / 3
      )
      colour = tuple(int(c) for c in rng.integers(0, 256, 3))
      shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
      shape((x, y, x + w, y + h), fill=colour)
    # Fine-grained texture on top so the 8x8 blocks carry detail.
    pixels = np.asarray(picture).astype(np.int16)
    pixels += rng.integers(-20, 21, pixels.shape, np.int16)
    file_name = f"{image_id:012d}.jpg"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        os.path.join(root, SPLIT, file_name), quality=90
    )
    images.append(
        {
            "id": image_id,
            "file_name": file_name,
            "height": height,
            "width": width,
        }
    )
    for _ in range(int(rng.integers(1, 5))):
      w = rng.uniform(width / 32, width / 3)
      h = rng.uniform(height / 12, height / 2)
      x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
      anns.append(
          {
              "id": len(anns) + 1,
              "image_id": image_id,
              "category_id": 1,
              "bbox": [x, y, w, h],
              "area": w * h,
              "iscrowd": 0,
          }
      )
  data = {
      "images": images,
      "annotations": anns,
      "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
  }
  path = os.path.join(root, "annotations", f"instances_{SPLIT}.json")
  with open(path, "w") as f:
    json.dump(data, f)
  return root


def data_config(coco_dir: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      {
          "source": "coco_dir",
          "coco_dir": coco_dir,
          "train_split": SPLIT,
          "val_split": SPLIT,
          "person_images_only": True,
          "tfds_data_dir": "",
      }
  )


def measure(
    coco_dir: str,
    workers: list[int],
    passes: int,
    image_size: int = 1024,
    batch_size: int = 8,
    max_boxes: int = 128,
    warmup: int = 1,
) -> list[dict[str, Any]]:
  """One row per number of decode threads: median images/s over `passes`
  epochs and the cores needed for each of TARGETS at its per-thread rate."""
  dataset = open_dataset(data_config(coco_dir), SPLIT)
  loaders = {
      w: loader_lib.BatchLoader(
          dataset,
          batch_size=batch_size,
          image_size=image_size,
          max_boxes=max_boxes,
          shuffle=True,
          seed=0,
          drop_last=True,
          num_workers=w,
      )
      for w in workers
  }
  cpu_s = {w: [] for w in workers}

  def run_epoch(w: int) -> None:
    loader = loaders[w]
    epoch = len(cpu_s[w])
    start = os.times()
    for batch in loader.epoch(epoch):
      assert batch["image"].shape == (batch_size, image_size, image_size, 3)
    end = os.times()
    cpu_s[w].append(end.user + end.system - start.user - start.system)

  times, background = common.time_alternating(
      {str(w): (lambda w=w: run_epoch(w)) for w in workers}, passes, warmup
  )
  rows = []
  for w in workers:
    images = loaders[w].steps_per_epoch * batch_size
    rate = images / common.summary(times[str(w)])["median_s"]
    # The untimed warm-up passes come first in cpu_s.
    cpu = float(np.median(cpu_s[w][warmup:]))
    rows.append(
        {
            "workers": w,
            "images_per_pass": images,
            "images_per_s": rate,
            "images_per_s_per_worker": rate / w,
            "cpu_ms_per_image": cpu / images * 1e3,
            **{f"cores_for_{t}": math.ceil(t / (rate / w)) for t in TARGETS},
            "background_cores": background,
        }
    )
  base = rows[0]["images_per_s"] if rows[0]["workers"] == 1 else None
  for row in rows:
    row["scaling_vs_1"] = row["images_per_s"] / base if base else float("nan")
  return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=200)
  parser.add_argument("--passes", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--workers", default="1,2")
  parser.add_argument("--image_size", type=int, default=1024)
  parser.add_argument("--height", type=int, default=480)
  parser.add_argument("--width", type=int, default=640)
  parser.add_argument(
      "--out",
      default=None,
      help="results JSON (default bench/results/<this machine>.json)",
  )
  args = parser.parse_args(argv)
  workers = [int(w) for w in args.workers.split(",")]
  with tempfile.TemporaryDirectory(prefix="rpn_jax_input_bench_") as root:
    make_coco_folder(root, args.images, args.height, args.width)
    folder = os.path.join(root, SPLIT)
    # COCO's own 640 px JPEGs average about 160 KB; more bytes decode slower.
    jpeg_kb = np.mean(
        [os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)]
    )
    rows = measure(
        root, workers, args.passes, args.image_size, warmup=args.warmup
    )
  settings = {
      "images": args.images,
      "image_hw": f"{args.height}x{args.width} JPEG q90",
      "jpeg_kb_mean": round(float(jpeg_kb) / 1e3, 1),
      "image_size": args.image_size,
      "batch": 8,
      "max_boxes": 128,
      "shuffle": True,
      "drop_last": True,
      "passes": args.passes,
      "warmup": args.warmup,
      "statistic": "median pass",
      "cores_for": "ceil(target / images_per_s_per_worker), assuming linear "
      "scaling in threads; cpu_ms_per_image is this process's CPU time "
      "(decode threads + the consumer's collate)",
  }
  path = common.record("input", rows, settings, args.out)
  print(common.markdown_table(rows, COLUMNS))
  print(f"wrote {path}")
  return rows


if __name__ == "__main__":
  main()
