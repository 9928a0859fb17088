"""Every CPU benchmark, one after the other, each in its own process.

  python -m bench.run_all [--only nms,train_step,inference,eval] [--report_only]

Each benchmark adds its section to bench/results/<machine>.json; at the end
the tables of all sections in that file are printed, as BENCHMARKS.md quotes
them. A fresh process per benchmark keeps one's memory and compiled programs
from slowing the next.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench import common, eval_bench, gpu, inference_bench, nms_bench, train_step_bench

BENCHMARKS = {"nms": nms_bench, "train_step": train_step_bench,
              "inference": inference_bench, "eval": eval_bench}
# Tables `report` knows; the accelerator's section comes from bench.gpu on its machine.
TABLES = {**BENCHMARKS, "gpu": gpu}


def report(path: str, sections=None) -> str:
    """Markdown: the environment of each section (all, or those named) and its table."""
    with open(path) as f:
        data = json.load(f)
    parts = []
    for name, section in data["sections"].items():
        if sections and name not in sections:
            continue
        columns = TABLES[name].COLUMNS
        env = section["environment"]
        parts.append(f"### {name}\n\n{env['machine']}, {env['date']}, jax {env['jax']}"
                     f", torch {env.get('torch', '-')}, torchvision {env.get('torchvision', '-')}"
                     f"\n\n{common.markdown_table(section['rows'], columns)}\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help="comma-separated subset of " + ", ".join(BENCHMARKS))
    parser.add_argument("--report_only", action="store_true",
                        help="print the tables of the results file without running anything")
    args = parser.parse_args(argv)
    if args.report_only:
        print(report(common.results_path()))
        return
    names = args.only.split(",")
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        raise ValueError(f"--only: unknown benchmarks {sorted(unknown)}; expected {list(BENCHMARKS)}")
    for name in names:
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, "-m", BENCHMARKS[name].__name__], check=True)
    print(report(common.results_path(), names))


if __name__ == "__main__":
    main()
