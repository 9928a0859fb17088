"""NMS: rpn_jax's jitted `nms_padded` vs `torchvision.ops.nms` on proposal-like boxes.

  python -m bench.nms_bench [--sizes 1000,2000,12000] [--repeats 20]

The boxes are what an R50-C5 RPN hands to NMS on a 1024 x 1024 image: its
top-N decoded anchors, clustered around objects (bench.inputs.proposal_boxes).
IoU threshold 0.7; rpn_jax keeps at most 1,000 (and stops there), torchvision
returns every survivor and is truncated to 1,000 afterwards. Both kept lists
must be identical. JSON section "nms".
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import numpy as np
import torch
import torchvision

from bench import common, inputs
from rpn_jax.nms import nms_padded

COLUMNS = (
    "boxes",
    "kept",
    "rpn_jax_ms",
    "torchvision_ms",
    "speedup",
    "background_cores",
)


def measure(
    n: int,
    repeats: int,
    iou_threshold: float = 0.7,
    max_output: int = 1000,
    image_size: int = 1024,
) -> dict[str, Any]:
  """One row: median milliseconds of both, kept count, speedup = torchvision / rpn_jax.

  Raises RuntimeError when the kept boxes differ.
  """
  boxes, scores = inputs.proposal_boxes(n, image_size)
  ours_fn = jax.jit(lambda b, s: nms_padded(b, s, iou_threshold, max_output))
  device_boxes, device_scores = jax.device_put((boxes, scores))
  torch_boxes, torch_scores = torch.from_numpy(boxes), torch.from_numpy(scores)

  def ours():
    return jax.block_until_ready(ours_fn(device_boxes, device_scores))

  def theirs():
    return torchvision.ops.nms(torch_boxes, torch_scores, iou_threshold)

  indices, valid = ours()
  ours_kept = np.asarray(indices)[np.asarray(valid)]
  theirs_kept = theirs().numpy()[:max_output]
  if not np.array_equal(ours_kept, theirs_kept):
    raise RuntimeError(
        f"N={n}: rpn_jax kept {len(ours_kept)} boxes, torchvision "
        f"{len(theirs_kept)}, or in another order"
    )
  times, background = common.time_alternating(
      {"rpn_jax": ours, "torchvision": theirs}, repeats
  )
  ours_ms = common.summary(times["rpn_jax"])["median_s"] * 1e3
  theirs_ms = common.summary(times["torchvision"])["median_s"] * 1e3
  return {
      "boxes": n,
      "kept": int(len(ours_kept)),
      "torchvision_survivors": int(len(theirs().numpy())),
      "rpn_jax_ms": ours_ms,
      "torchvision_ms": theirs_ms,
      "speedup": theirs_ms / ours_ms,
      "background_cores": background,
  }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="1000,2000,12000")
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args(argv)
  torch.set_num_threads(common.TORCH_THREADS)
  rows = [measure(int(n), args.repeats) for n in args.sizes.split(",")]
  settings = {
      "image_size": 1024,
      "iou_threshold": 0.7,
      "max_output": 1000,
      "repeats": args.repeats,
      "warmup": 1,
      "statistic": "median",
      "boxes": "top-N of the 15,360 R50-C5 anchors at 1024 px, moved by N(0, 0.1) "
      "deltas, scored by IoU with 12 objects + noise (bench.inputs)",
  }
  path = common.record("nms", rows, settings)
  print(common.markdown_table(rows, COLUMNS))
  print(f"wrote {path}")
  return rows


if __name__ == "__main__":
  main()
