"""From-scratch train step: train-mode BatchNorm, nothing frozen, rpn_jax vs torchvision.

  python -m bench.scratch_step_bench [--settings r18_c5,default] [--repeats 5]

Two settings, each rpn_jax's jitted step against torchvision's on the same
batch (noise images with four boxes each), calls alternating after one
warm-up (rpn_jax's includes compiling, reported separately); the JSON
section is "scratch_step":

- `r18_c5`: ResNet-18 C5 RPN at 384 px, batch 4, the seed's head, anchors,
  sampling and losses, SGD; torchvision's `RegionProposalNetwork` on the same
  trunk (`bench.torch_rpn`).
- `default`: configs/default.py's own network and step at its canvas and
  batch (width-16 ResNet-18, FPN P2-P6 of 32 channels, two-conv head, ATSS,
  quality focal and GIoU losses over every anchor, AdamW); torchvision's side
  from its parts with the same widths (`bench.torch_fpn_rpn`: FPN, RPNHead of
  two convs, IoU matching, focal and GIoU losses over every anchor, AdamW).
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import torch

from bench import common, inputs, jax_rpn, torch_fpn_rpn, torch_rpn
from rpn_jax.configs import default
from rpn_jax import setup_model

COLUMNS = (
    "setting",
    "image_size",
    "batch",
    "rpn_jax_s",
    "torchvision_s",
    "rpn_jax_img_s",
    "torchvision_img_s",
    "speedup",
    "background_cores",
)
SETTINGS = ("r18_c5", "default")


def r18_c5_config() -> ml_collections.ConfigDict:
  """The seed's C5 RPN on a ResNet-18 trained from scratch: 384 px, batch 4."""
  config = jax_rpn.r50_c5_config(384, 4, backbone="resnet18")
  config.model.norm = "bn"
  config.model.freeze = ()
  return config


def default_config() -> ml_collections.ConfigDict:
  """configs/default.py as it trains (its canvas and batch)."""
  return default.get_config()


def setting_config(setting: str) -> ml_collections.ConfigDict:
  """The config a setting of SETTINGS measures."""
  return r18_c5_config() if setting == "r18_c5" else default_config()


def jax_runner(
    config: ml_collections.ConfigDict, batch: dict[str, Any]
) -> jax_rpn.StepRunner:
  """rpn_jax's jitted step from freshly initialised variables (train-mode
  BatchNorm statistics included) on `batch`, not yet called."""
  variables = setup_model.init_variables(
      config, setup_model.build_model(config.model), jax.random.key(0)
  )
  step, state = jax_rpn.train_step(config, variables)
  return jax_rpn.StepRunner(step, state, batch)


def _torch_step(
    setting: str, config: ml_collections.ConfigDict, batch: Any
) -> Callable[[], Any]:
  if setting == "r18_c5":
    return torch_rpn.train_step(config, batch)
  return torch_fpn_rpn.train_step(config, batch)


def measure(
    setting: str,
    repeats: int,
    warmup: int = 1,
    config: ml_collections.ConfigDict | None = None,
) -> dict[str, Any]:
  """One row: median seconds per step of both, speedup = torchvision / rpn_jax.

  `config` replaces the setting's own (smaller sizes for smoke tests).
  """
  if config is None:
    config = setting_config(setting)
  size, batch_size = config.data.image_size, config.train.batch_size
  batch = inputs.train_batch(batch_size, size, config.data.max_boxes)
  return {
      "setting": setting,
      "image_size": size,
      "batch": batch_size,
      **jax_rpn.step_versus(
          jax_runner(config, batch),
          lambda: _torch_step(setting, config, batch),
          batch_size,
          repeats,
          warmup,
      ),
  }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--settings", default=",".join(SETTINGS))
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  torch.set_num_threads(common.TORCH_THREADS)
  rows = []
  for setting in args.settings.split(","):
    if setting not in SETTINGS:
      raise SystemExit(f"--settings: unknown {setting!r}; known: {SETTINGS}")
    rows.append(measure(setting, args.repeats))
    print(common.markdown_table(rows[-1:], COLUMNS), flush=True)
    gc.collect()
  settings = {
      "r18_c5": "ResNet-18 C5, train-mode BN, nothing frozen, 15 anchors, "
      "256 samples, SGD; torchvision RegionProposalNetwork loss path",
      "default": "configs/default.py (width-16 ResNet-18, FPN 32 ch, "
      "two-conv head, ATSS + quality focal + GIoU, AdamW); torchvision FPN + "
      "RPNHead(conv_depth=2), IoU Matcher + focal + GIoU, AdamW",
      "repeats": args.repeats,
      "warmup": 1,
      "statistic": "median",
  }
  path = common.record("scratch_step", rows, settings)
  print(common.markdown_table(rows, COLUMNS))
  print(f"wrote {path}")
  return rows


if __name__ == "__main__":
  main()
