"""Inference: forward pass + proposals per image, rpn_jax vs torchvision in eval mode.

  python -m bench.inference_bench [--size 1024] [--batch 1] [--repeats 5]

R50-C5 with frozen BN; proposals by pre-NMS top 12,000, NMS 0.7, post-NMS
top 1,000 on both sides (rpn_jax as evaluate.py runs it, torchvision's
`RegionProposalNetwork` in eval mode under `torch.inference_mode`). Calls
alternate after one warm-up each. JSON section "inference".
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
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
  """One row: median seconds per batch of both, images/s, speedup = torchvision / rpn_jax."""
  config = jax_rpn.r50_c5_config(
      image_size, batch_size, backbone=backbone, width=width
  )
  batch = inputs.train_batch(batch_size, image_size, config.data.max_boxes)
  predict = jax_rpn.predictor(config)
  variables = jax_rpn.variables(config)
  device_batch = jax.device_put(batch)

  def ours():
    return jax.block_until_ready(predict(variables, device_batch))

  start = time.perf_counter()
  out = ours()
  first_call_s = time.perf_counter() - start
  reference = torch_rpn.predictor(config, batch)
  return {
      "image_size": image_size,
      "batch": batch_size,
      **common.versus(ours, reference, batch_size, repeats, warmup),
      "rpn_jax_first_call_s": first_call_s,
      "rpn_jax_proposals": int(out["valid"].sum()),
      "torchvision_proposals": int(sum(len(b) for b in reference())),
  }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=1024)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  torch.set_num_threads(common.TORCH_THREADS)
  rows = [measure(args.size, args.batch, args.repeats)]
  settings = {
      "model": "R50-C5, frozen BN, 15 anchors",
      "proposals": "pre-NMS top 12000, NMS 0.7, post-NMS top 1000",
      "repeats": args.repeats,
      "warmup": 1,
      "statistic": "median",
  }
  path = common.record("inference", rows, settings)
  print(common.markdown_table(rows, COLUMNS))
  print(f"wrote {path}")
  return rows


if __name__ == "__main__":
  main()
