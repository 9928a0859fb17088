"""What every benchmark shares: timing, the machine's description, JSON results, tables.

Each benchmark module measures one thing for rpn_jax and for torchvision in the
same process on the same input, then `record`s a section into
`bench/results/<machine>.json` (sections of other benchmarks are kept).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

RESULTS_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results"
)
# XLA's CPU client runs on every core; torch is given the same number of threads.
TORCH_THREADS = os.cpu_count() or 1
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = [0]
_listening = [False]


def cpu_model() -> str:
  """The CPU's model name (the key rpn_jax keeps its timed choices under)."""
  from rpn_jax.models import kernel_grads

  return kernel_grads.processor_name()


def machine_name() -> str:
  """A file-name-safe label: the accelerator's kind, else `cpu<cores>-<model>`."""
  import jax

  device = jax.devices()[0]
  if device.platform != "cpu":
    label = f"{device.platform}-{device.device_kind}"
  else:
    label = f"cpu{os.cpu_count()}-{cpu_model()}"
  return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def environment() -> dict[str, Any]:
  """Machine, library versions and date, stored next to every result."""
  import flax
  import jax
  import numpy as np

  info = {
      "machine": machine_name(),
      "cpu": cpu_model(),
      "cores": os.cpu_count(),
      "device": jax.devices()[0].device_kind,
      "python": platform.python_version(),
      "jax": jax.__version__,
      "flax": flax.__version__,
      "numpy": np.__version__,
      "date": datetime.date.today().isoformat(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  try:
    import torch
    import torchvision

    info.update(
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        torch_threads=torch.get_num_threads(),
    )
  except ImportError:
    pass
  return info


def time_calls(
    fn: Callable[[], Any], repeats: int, warmup: int = 1
) -> list[float]:
  """Wall seconds of `repeats` calls of `fn` after `warmup` untimed ones.

  `fn` must wait for its own result (e.g. `jax.block_until_ready`).
  """
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def time_alternating(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> tuple[dict[str, list[float]], float]:
  """`time_calls` for several functions, interleaved call by call.

  On a shared machine the background load then falls on all contenders alike,
  which keeps their ratio honest even when the absolute times drift (up to
  a point: torch's worker threads wait for each other, so it loses more to
  competition for the cores than XLA does).
  Returns ({name: seconds per call}, cores other processes kept busy
  meanwhile (`background_load`)).
  """
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times = {name: [] for name in fns}
  before = cpu_counters()
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times, background_load(before, cpu_counters())


def compile_count() -> int:
  """XLA compilations in this process since the first call (a recompile counter).

  Read it before and after timed calls: a difference means a shape or a
  static argument changed between steps, and the timings include compiling.
  """
  if not _listening[0]:
    from jax import monitoring

    def listen(event: str, duration: float, **kwargs: Any) -> None:
      if event == _COMPILE_EVENT:
        _compiles[0] += 1

    monitoring.register_event_duration_secs_listener(listen)
    _listening[0] = True
  return _compiles[0]


def versus(
    ours: Callable[[], Any],
    reference: Callable[[], Any],
    batch_size: int,
    repeats: int,
    warmup: int = 1,
) -> dict[str, Any]:
  """rpn_jax's call against torchvision's, alternating (`time_alternating`),
  with no recompile allowed while timed: the columns every side-by-side
  table shares (median seconds, images/s, speedup = torchvision's time /
  rpn_jax's, background cores and the raw times)."""
  compiles = compile_count()
  times, background = time_alternating(
      {"rpn_jax": ours, "torchvision": reference}, repeats, warmup
  )
  if compile_count() != compiles:
    raise RuntimeError("rpn_jax's function recompiled between calls")
  ours_s = summary(times["rpn_jax"])["median_s"]
  theirs_s = summary(times["torchvision"])["median_s"]
  return {
      "rpn_jax_s": ours_s,
      "torchvision_s": theirs_s,
      "rpn_jax_img_s": batch_size / ours_s,
      "torchvision_img_s": batch_size / theirs_s,
      "speedup": theirs_s / ours_s,
      "background_cores": background,
      "rpn_jax_times_s": times["rpn_jax"],
      "torchvision_times_s": times["torchvision"],
  }


def cpu_counters() -> tuple[float, float, float]:
  """(wall seconds, CPU seconds busy on the whole machine, CPU seconds of this process)."""
  with open("/proc/stat") as f:
    fields = [float(v) for v in f.readline().split()[1:]]
  idle = fields[3] + fields[4]  # idle + iowait
  ticks = os.sysconf("SC_CLK_TCK")
  own = os.times()
  return time.time(), (sum(fields[:8]) - idle) / ticks, own.user + own.system


def background_load(
    before: tuple[float, float, float], after: tuple[float, float, float]
) -> float:
  """Cores kept busy by other processes between two `cpu_counters` snapshots.

  A benchmark that shares the machine is slowed by this much competition;
  results store it so that a reader can tell a quiet run from a busy one.
  """
  wall = max(after[0] - before[0], 1e-9)
  others = (after[1] - before[1]) - (after[2] - before[2])
  return max(others, 0.0) / wall


def summary(times: Sequence[float]) -> dict[str, float]:
  """Median and minimum seconds, and the number of timed runs."""
  return {
      "median_s": statistics.median(times),
      "min_s": min(times),
      "runs": len(times),
  }


def results_path(machine: str | None = None) -> str:
  return os.path.join(RESULTS_DIR, f"{machine or machine_name()}.json")


def record(
    section: str,
    rows: list[dict[str, Any]],
    settings: dict[str, Any],
    path: str | None = None,
) -> str:
  """Stores `rows` as `section` of the machine's results file; returns the path.

  The file holds {"environment": ..., "sections": {name: {"settings", "rows",
  "environment"}}}; a section is replaced as a whole, the others are kept.
  """
  path = path or results_path()
  data: dict[str, Any] = {"sections": {}}
  if os.path.exists(path):
    with open(path) as f:
      data = json.load(f)
  env = environment()
  data["environment"] = env
  data["sections"][section] = {
      "settings": settings,
      "rows": rows,
      "environment": env,
  }
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(data, f, indent=1)
    f.write("\n")
  return path


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
  """Rows as a markdown table over `columns`; floats to 3 significant digits."""

  def cell(value: Any) -> str:
    if isinstance(value, float):
      return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else "<0.001"
    return str(value)

  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for row in rows:
    lines.append(
        "| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |"
    )
  return "\n".join(lines)
