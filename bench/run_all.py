"""Every CPU benchmark, one after the other, each in its own process.

  python -m bench.run_all [--only nms,train_step,scratch_step,
                          inference,eval,input]
                          [--report_only] [--write BENCHMARKS.md]

Each benchmark adds its section to bench/results/<machine>.json (a fresh
process per benchmark keeps one's memory and compiled programs from slowing
the next). At the end bench.report prints the tables of the sections run
(of all: with the speedup targets), or with --write puts every table of the
file into that markdown file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from bench import (
    common,
    eval_bench,
    inference_bench,
    input_bench,
    nms_bench,
    report,
    scratch_step_bench,
    train_step_bench,
)

BENCHMARKS = {
    "nms": nms_bench,
    "train_step": train_step_bench,
    "scratch_step": scratch_step_bench,
    "inference": inference_bench,
    "eval": eval_bench,
    "input": input_bench,
}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--only",
      default=",".join(BENCHMARKS),
      help="comma-separated subset of " + ", ".join(BENCHMARKS),
  )
  parser.add_argument(
      "--report_only",
      action="store_true",
      help="print the tables of the results file without running anything",
  )
  parser.add_argument(
      "--write",
      default=None,
      metavar="MARKDOWN",
      help="at the end, put the tables between the markers of this file "
      "(BENCHMARKS.md) instead of printing them",
  )
  args = parser.parse_args(argv)
  names = args.only.split(",")
  unknown = set(names) - set(BENCHMARKS)
  if unknown:
    raise ValueError(
        f"--only: unknown benchmarks {sorted(unknown)}; expected {list(BENCHMARKS)}"
    )
  if not args.report_only:
    for name in names:
      print(f"== {name}", flush=True)
      subprocess.run(
          [sys.executable, "-m", BENCHMARKS[name].__name__], check=True
      )
  path = common.results_path()
  if args.write:
    report.write(args.write, report.render(path))
    print(f"wrote the tables of {path} into {args.write}")
  else:
    print(
        report.render(
            path,
            None
            if args.report_only or set(names) == set(BENCHMARKS)
            else names,
        )
    )


if __name__ == "__main__":
  main()
