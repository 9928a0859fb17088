"""Accelerator benchmark: R50 train-step and proposal throughput, float32 vs bfloat16.

  python -m bench.gpu [--peak_tflops T] [--out FILE]     (one GPU or TPU chip, < 5 min)
  python -m bench.gpu --recipe atss --batch 16          (the ATSS recipe's step)
  python -m bench.gpu --tiny [--recipe atss]            (CPU smoke run, seconds)

`--recipe seed` (default): the seed's R50-C5 (bench.jax_rpn.r50_c5_config);
`--recipe atss`: configs/coco_person_r50_fpn_atss.py's R50-FPN with its
GroupNorm head and dense losses (bench.jax_rpn.atss_config).

For each of float32 and bfloat16 (config model.dtype; params stay float32):
the jitted train step at 1024 px, batch 8 (images/s, model FLOPs per step from
XLA's cost analysis of the compiled step, achieved TFLOP/s and utilisation
of the chip's peak), then forward + proposals (12,000 / 0.7 / 1,000) at the
same size (images/s, proposals/s). Both dtypes start from the same weights
and batch, so their first-step losses must agree to bfloat16 precision.
Needs no torch. JSON section "gpu" of bench/results/<machine>.json, or --out.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax

from bench import common, inputs, jax_rpn

COLUMNS = (
    "dtype",
    "train_img_s",
    "step_tflops",
    "achieved_tflops",
    "utilisation",
    "predict_img_s",
    "proposals_s",
    "first_loss",
)
# Dense bfloat16 peak TFLOP/s by device kind (vendor data sheets).
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L4": 121.0,
    "A10G": 70.0,
    "T4": 65.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
}
LOSS_KEYS = ("total", "objectness", "box", "grad_norm")


def peak_tflops(device_kind: str) -> float | None:
  """The bfloat16 peak of a known device kind, else None."""
  for name, peak in PEAK_BF16_TFLOPS.items():
    if name.lower() in device_kind.lower():
      return peak
  return None


def _losses(metrics: dict[str, Any]) -> dict[str, float]:
  return {k: float(metrics[k]) for k in LOSS_KEYS}


def train_throughput(
    config, variables, steps: int, compile_options=None
) -> dict[str, Any]:
  """Compiles the train step, reads its FLOPs, times `steps` steps after 2 warm-up steps."""
  step, state = jax_rpn.train_step(config, variables)
  batch = jax.device_put(
      inputs.train_batch(
          config.train.batch_size, config.data.image_size, config.data.max_boxes
      )
  )
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile(compiler_options=compile_options)
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  runner = jax_rpn.StepRunner(compiled, state, batch)
  runner()
  first = _losses(runner.metrics)
  times = common.time_calls(runner, steps, warmup=1)
  seconds = common.summary(times)["median_s"]
  return {
      "train_step_s": seconds,
      "train_img_s": config.train.batch_size / seconds,
      "step_tflops": flops / 1e12,
      "achieved_tflops": flops / seconds / 1e12,
      "compile_s": compile_s,
      "first_losses": first,
      "first_loss": first["total"],
      "last_losses": _losses(runner.metrics),
      "train_times_s": times,
  }


def predict_throughput(
    config, variables, repeats: int, compile_options=None
) -> dict[str, Any]:
  """Forward + proposals on one batch: images/s and valid proposals/s."""
  batch = jax.device_put(
      inputs.train_batch(
          config.eval.batch_size, config.data.image_size, config.data.max_boxes
      )
  )
  variables = jax.device_put(variables)
  predict = (
      jax_rpn.predictor(config)
      .lower(variables, batch)
      .compile(compiler_options=compile_options)
  )
  out = jax.block_until_ready(predict(variables, batch))
  times = common.time_calls(
      lambda: jax.block_until_ready(predict(variables, batch)), repeats
  )
  seconds = common.summary(times)["median_s"]
  proposals = int(out["valid"].sum())
  return {
      "predict_batch_s": seconds,
      "predict_img_s": config.eval.batch_size / seconds,
      "proposals_s": proposals / seconds,
      "proposals_per_batch": proposals,
  }


def run(
    image_size: int,
    batch_size: int,
    steps: int,
    peak: float | None,
    backbone: str = "resnet50",
    width: int = 64,
    compile_options=None,
    recipe: str = "seed",
) -> list[dict[str, Any]]:
  """One row per dtype, from the same weights and batch; bfloat16's row also has
  its first-step loss errors relative to float32."""
  rows = []
  variables = None
  for dtype in ("float32", "bfloat16"):
    config = jax_rpn.RECIPES[recipe](
        image_size, batch_size, dtype, backbone, width
    )
    variables = variables or jax_rpn.variables(config)
    row = {
        "dtype": dtype,
        **train_throughput(config, variables, steps, compile_options),
        **predict_throughput(config, variables, steps, compile_options),
    }
    if peak:
      row["utilisation"] = row["achieved_tflops"] / peak
    rows.append(row)
    print(common.markdown_table(rows[-1:], COLUMNS), flush=True)
  reference = rows[0]["first_losses"]
  rows[1]["relative_loss_error"] = {
      k: abs(rows[1]["first_losses"][k] - v) / max(abs(v), 1e-12)
      for k, v in reference.items()
  }
  return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--recipe", default="seed", choices=list(jax_rpn.RECIPES))
  parser.add_argument("--size", type=int, default=1024)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument(
      "--steps", type=int, default=10, help="timed steps and predict calls"
  )
  parser.add_argument(
      "--peak_tflops",
      type=float,
      default=None,
      help="the chip's dense bfloat16 peak (default: known device kinds)",
  )
  parser.add_argument(
      "--tiny",
      action="store_true",
      help="ResNet-18 of width 8 at 64 px, batch 2, 2 steps, unoptimised "
      "compiles: a CPU smoke run",
  )
  parser.add_argument(
      "--out",
      default=None,
      help="results JSON (default bench/results/<machine>.json; --tiny: none)",
  )
  args = parser.parse_args(argv)
  device = jax.devices()[0]
  peak = args.peak_tflops or peak_tflops(device.device_kind)
  if args.tiny:
    # Unoptimised compiles: a smoke run checks the code path, not the speed.
    rows = run(
        64,
        2,
        2,
        peak,
        backbone="resnet18",
        width=8,
        compile_options={"xla_backend_optimization_level": 0},
        recipe=args.recipe,
    )
  else:
    rows = run(args.size, args.batch, args.steps, peak, recipe=args.recipe)
  settings = {
      "device": device.device_kind,
      "device_count": jax.device_count(),
      "peak_bf16_tflops": peak,
      "image_size": 64 if args.tiny else args.size,
      "batch": 2 if args.tiny else args.batch,
      "tiny": args.tiny,
      "recipe": args.recipe,
      "model": {
          "seed": "R50-C5, frozen BN, stem+layer1 frozen, 15 anchors",
          "atss": "R50-FPN, frozen BN, stem+layer1 frozen, ATSS, quality "
          "focal + GIoU over every anchor, 4 GroupNorm head convs",
      }[args.recipe],
      "flops": "XLA cost analysis of the compiled train step (forward, backward, SGD)",
  }
  print(common.markdown_table(rows, COLUMNS))
  print(
      f"bfloat16 vs float32 first-step loss, relative error: {rows[1]['relative_loss_error']}"
  )
  if args.out or not args.tiny:
    print(f"wrote {common.record('gpu', rows, settings, args.out)}")
  return rows


if __name__ == "__main__":
  main()
