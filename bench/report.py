"""BENCHMARKS.md's tables, rendered from a results file.

  python -m bench.report [--results bench/results/<machine>.json] [--write BENCHMARKS.md]

For each section of the results file: its machine, versions, date, settings
and table; then the targets of issues 5 and 23 (speedup = torchvision's time
/ rpn_jax's, same run) and whether each is met. With --write the text replaces what lies
between the two marker lines of that markdown file, and the prose around the
tables stays as written.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

from bench import (
    common,
    eval_bench,
    gpu,
    inference_bench,
    input_bench,
    nms_bench,
    scratch_step_bench,
    train_step_bench,
)

BEGIN = "<!-- tables: python -m bench.report --write BENCHMARKS.md -->"
END = "<!-- end of tables -->"
COLUMNS = {
    "nms": nms_bench.COLUMNS,
    "train_step": train_step_bench.COLUMNS,
    "scratch_step": scratch_step_bench.COLUMNS,
    "inference": inference_bench.COLUMNS,
    "eval": eval_bench.COLUMNS,
    "gpu": gpu.COLUMNS,
    "input": input_bench.COLUMNS,
}
# The targets on the CPU (issue 5; scratch_step: issue 23): section -> (least
# speedup, the row's name or None where the row is not a target).
TARGETS: dict[str, tuple[float, Callable[[dict[str, Any]], str | None]]] = {
    "nms": (
        10.0,
        lambda r: f"NMS {r['boxes']:,} -> 1,000 boxes"
        if r["boxes"] == 12000
        else None,
    ),
    "inference": (
        1.2,
        lambda r: f"inference {r['image_size']} px, batch {r['batch']}"
        if r["image_size"] == 1024
        else None,
    ),
    "train_step": (
        1.0,
        lambda r: f"train step {r['image_size']} px, batch {r['batch']}",
    ),
    # Issue 23: the from-scratch step (train-mode BatchNorm, nothing frozen).
    "scratch_step": (
        1.0,
        lambda r: f"from-scratch step {r['setting']}, {r['image_size']} px, "
        f"batch {r['batch']}",
    ),
}


def environment_line(env: dict[str, Any]) -> str:
  """Machine, cores, device, date and library versions of one section."""
  versions = ", ".join(
      f"{name} {env[name]}"
      for name in ("python", "jax", "flax", "numpy", "torch", "torchvision")
      if name in env
  )
  threads = (
      f", torch threads {env['torch_threads']}"
      if "torch_threads" in env
      else ""
  )
  return (
      f"{env['machine']} ({env['cpu']}, {env['cores']} cores, device {env['device']}), "
      f"{env['date']}; {versions}{threads}; XLA_FLAGS={env['xla_flags'] or '(none)'}"
  )


def targets_table(data: dict[str, Any]) -> str:
  """One markdown row per targeted measurement: its speedup, the target, met or not."""
  rows = []
  for name, (least, label) in TARGETS.items():
    for row in data["sections"].get(name, {}).get("rows", []):
      if label(row) is not None:
        rows.append(
            {
                "target": label(row),
                "speedup": f"{row['speedup']:.2f}x",
                "at_least": f"{least:.1f}x",
                "met": "yes" if row["speedup"] >= least else "no",
            }
        )
  return common.markdown_table(rows, ("target", "speedup", "at_least", "met"))


def render(path: str, sections: Sequence[str] | None = None) -> str:
  """Markdown of every section of the results file at `path` (or those named),
  then the targets table when all sections are rendered."""
  with open(path) as f:
    data = json.load(f)
  parts = []
  for name, section in data["sections"].items():
    if sections and name not in sections:
      continue
    settings = "; ".join(f"{k}: {v}" for k, v in section["settings"].items())
    parts.append(
        f"### {name}\n\n{environment_line(section['environment'])}\n\n"
        f"Settings: {settings}\n\n"
        f"{common.markdown_table(section['rows'], COLUMNS[name])}\n"
    )
  if not sections:
    parts.append(f"### targets\n\n{targets_table(data)}\n")
  return "\n".join(parts)


def write(markdown_path: str, text: str) -> None:
  """Replaces the lines between BEGIN and END in `markdown_path` with `text`."""
  with open(markdown_path) as f:
    content = f.read()
  if content.count(BEGIN) != 1 or content.count(END) != 1:
    raise ValueError(
        f"{markdown_path}: needs one line {BEGIN!r} and one {END!r}"
    )
  head, rest = content.split(BEGIN)
  tail = rest.split(END)[1]
  with open(markdown_path, "w") as f:
    f.write(f"{head}{BEGIN}\n\n{text}\n{END}{tail}")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--results",
      default=None,
      help="results JSON (default bench/results/<this machine>.json)",
  )
  parser.add_argument(
      "--write",
      default=None,
      metavar="MARKDOWN",
      help="put the tables between the markers of this file instead of printing",
  )
  args = parser.parse_args(argv)
  text = render(args.results or common.results_path())
  if args.write:
    write(args.write, text)
    print(
        f"wrote the tables of {args.results or common.results_path()} into {args.write}"
    )
  else:
    print(text)


if __name__ == "__main__":
  main()
