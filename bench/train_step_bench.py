"""Train step: rpn_jax's jitted R50-C5 step vs torchvision's RPN on the same batch.

  python -m bench.train_step_bench [--sizes 512,1024] [--batches 1,2] [--repeats 3]

Forward, RPN losses, backward and SGD update, frozen BatchNorm, stem + layer1
frozen, random weights, a batch of noise images with four boxes each. The two
steps alternate call by call after one warm-up each (rpn_jax's includes
compiling, reported separately); the JSON section is "train_step".
"""

from __future__ import annotations

import argparse
import gc
from typing import Any

import torch

from bench import common, inputs, jax_rpn, torch_rpn

COLUMNS = (
    "image_size",
    "batch",
    "rpn_jax_s",
    "torchvision_s",
    "rpn_jax_img_s",
    "torchvision_img_s",
    "speedup",
    "background_cores",
)


def measure(
    image_size: int,
    batch_size: int,
    repeats: int,
    warmup: int = 1,
    backbone: str = "resnet50",
    width: int = 64,
) -> dict[str, Any]:
  """One row: median seconds per step and images/s of both, speedup = torchvision / rpn_jax."""
  config = jax_rpn.r50_c5_config(
      image_size, batch_size, backbone=backbone, width=width
  )
  batch = inputs.train_batch(batch_size, image_size, config.data.max_boxes)
  step, state = jax_rpn.train_step(config, jax_rpn.variables(config))
  return {
      "image_size": image_size,
      "batch": batch_size,
      **jax_rpn.step_versus(
          jax_rpn.StepRunner(step, state, batch),
          lambda: torch_rpn.train_step(config, batch),
          batch_size,
          repeats,
          warmup,
      ),
  }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="512,1024")
  parser.add_argument("--batches", default="1,2")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  torch.set_num_threads(common.TORCH_THREADS)
  rows = []
  for size in (int(s) for s in args.sizes.split(",")):
    for batch_size in (int(b) for b in args.batches.split(",")):
      rows.append(measure(size, batch_size, args.repeats))
      print(common.markdown_table(rows[-1:], COLUMNS), flush=True)
      gc.collect()
  settings = {
      "model": "R50-C5, frozen BN, stem+layer1 frozen, 15 anchors, 256 samples",
      "repeats": args.repeats,
      "warmup": 1,
      "statistic": "median",
      "reference": "torchvision RegionProposalNetwork loss path (no filter_proposals)",
  }
  path = common.record("train_step", rows, settings)
  print(common.markdown_table(rows, COLUMNS))
  print(f"wrote {path}")
  return rows


if __name__ == "__main__":
  main()
