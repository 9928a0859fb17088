"""Where rpn_jax's from-scratch train step spends its time on the CPU.

  python -m bench.profile_step [--setting r18_c5|default] [--steps 5] [--top 15]

Traces `--steps` steps of a `bench.scratch_step_bench` setting with
`jax.profiler` and sums the time of each XLA operation's events over every
thread (milliseconds per step). A library kernel (YNNPACK's convolutions)
that hands part of its work to the other core records that part as thread
pool regions, not as the operation's event, so a row is between the
operation's wall time and its CPU time, and the total is no bound on the
step's wall time. Each row names the operation as XLA does
(its fusion or kernel) and, from the compiled program's metadata, the model
code it comes from (the `op_name` of jax's lowering, e.g.
"jvp(RPN)/backbone/layer1_0/conv1/..." or "transpose(jvp(...))" for a
gradient). The trace itself stays in a temporary folder whose path is printed.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import jax
import ml_collections

from bench import inputs, scratch_step_bench

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = ")
_OP_NAME = re.compile(r'op_name="([^"]+)"')
_OPERAND = re.compile(r"%([\w.\-]+)")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_COMPUTATION = re.compile(r"^%?([\w.\-]+) \(.*\{$")


def op_names(hlo_text: str) -> dict[str, str]:
  """Instruction name -> the op_name metadata jax attached to it; for a
  fusion that lost it (XLA's library fusions), the first op_name inside the
  computation it calls, else that of a user that has one (one in the model,
  "...(RPN)...", before the optimizer's)."""
  names, calls, first_in, used_by = {}, {}, {}, {}
  computation = None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      computation = header.group(1)
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    op_name, called = _OP_NAME.search(line), _CALLS.search(line)
    if op_name:
      names[match.group(1)] = op_name.group(1)
      if computation:
        first_in.setdefault(computation, op_name.group(1))
      for operand in _OPERAND.findall(line[match.end() :]):
        users = used_by.setdefault(operand, [])
        users.append(op_name.group(1))
    elif called:
      calls[match.group(1)] = called.group(1)
  for name, called in calls.items():
    if called in first_in:
      names[name] = first_in[called]
    elif name in used_by:
      users = used_by[name]
      names[name] = next((u for u in users if "(RPN)" in u), users[0])
  return names


def thread_ms(trace_dir: str) -> dict[str, float]:
  """Event name -> summed duration (ms) over every thread of the trace."""
  (path,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  totals: dict[str, float] = collections.defaultdict(float)
  for event in events:
    if event.get("ph") == "X" and "dur" in event:
      totals[event["name"]] += event["dur"] / 1000.0
  return totals


def profile(
    setting: str,
    steps: int,
    config: ml_collections.ConfigDict | None = None,
) -> tuple[list[tuple[str, float, str]], str]:
  """([(XLA op, thread-ms per step, model op_name)], trace dir), largest
  first. `config` replaces the setting's own (smaller sizes for tests)."""
  if config is None:
    config = scratch_step_bench.setting_config(setting)
  runner = scratch_step_bench.jax_runner(
      config,
      inputs.train_batch(
          config.train.batch_size,
          config.data.image_size,
          config.data.max_boxes,
      ),
  )
  runner()
  runner()
  compiled = runner.step.lower(runner.state, runner.batch).compile()
  names = op_names(compiled.as_text())
  trace_dir = tempfile.mkdtemp(prefix="rpn_jax_profile_")
  with jax.profiler.trace(trace_dir):
    for _ in range(steps):
      runner()
  totals = thread_ms(trace_dir)
  rows = [
      (name, ms / steps, names.get(name, ""))
      for name, ms in totals.items()
      if name in names
  ]
  rows.sort(key=lambda r: -r[1])
  return rows, trace_dir


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--setting", default="r18_c5", choices=scratch_step_bench.SETTINGS
  )
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--top", type=int, default=15)
  args = parser.parse_args(argv)
  rows, trace_dir = profile(args.setting, args.steps)
  total = sum(ms for _, ms, _ in rows)
  print(f"{args.setting}: {total:.0f} thread-ms per step in XLA operations")
  print("| XLA operation | thread-ms/step | share | model code |")
  print("|---|---|---|---|")
  for name, ms, op_name in rows[: args.top]:
    print(f"| {name} | {ms:.1f} | {ms / total:.0%} | {op_name[:90]} |")
  print(f"trace: {trace_dir}")


if __name__ == "__main__":
  main()
