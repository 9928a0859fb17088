"""Durations in steps, epochs or fractions of the run, resolved to steps.

Each duration in `config.train` (the warmup, every learning-rate decay
boundary, the checkpoint and logging cadences) can be given in one of three
units, big_vision's convention:

  <name>_steps     optimizer steps
  <name>_epochs    passes over the training set (fractions allowed)
  <name>_percent   a fraction of the whole run, in [0, 1]

with at most one of the three set (the others 0, or () for the decay
boundaries, which are tuples). The run is train.epochs x steps_per_epoch,
cut at train.max_steps when that is set. A recipe in epochs or percent keeps
its schedule where it was meant to be when the dataset, the batch size or
the number of epochs change; steps are counted only once the dataset size
is known, by `resolve_steps`, which `train_lib.train_and_evaluate` calls
before it builds the optimizer (`optimizer.make_schedule` takes steps).

A warmup or decay boundary in steps or epochs must fall before the last step
of train.epochs (one past a train.max_steps cut is not reached); a fraction
is of the run as cut. The cadences accept any length; all three 0 saves (or
logs) only at the end of each epoch and of the run.
"""

import math
from typing import Any

import ml_collections

UNITS = ("steps", "epochs", "percent")
# Lengths and points in the run: checked against its last step.
SCHEDULE_POINTS = ("warmup", "decay")
# How often something happens.
CADENCES = ("checkpoint_every", "log_every")


def total_steps(
    train_cfg: ml_collections.ConfigDict, steps_per_epoch: int
) -> int:
  """Steps the run makes: train.epochs x steps_per_epoch, cut at
  train.max_steps when set (0: no cut)."""
  steps = int(steps_per_epoch * train_cfg.epochs)
  max_steps = int(train_cfg.get("max_steps", 0) or 0)
  return min(steps, max_steps) if max_steps else steps


def _values(value: Any) -> tuple[float, ...]:
  return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _is_set(value: Any) -> bool:
  """A tuple (decay boundaries) is set when not empty, a number when not 0."""
  return len(value) > 0 if isinstance(value, (tuple, list)) else value != 0


def _show(value: Any) -> str:
  """As a flag would give it: 0.06, (3250,), (0.5, 0.75)."""
  if not isinstance(value, (tuple, list)):
    return f"{value:g}"
  inner = ", ".join(f"{v:g}" for v in value)
  return f"({inner},)" if len(value) == 1 else f"({inner})"


def _floor(x: float) -> int:
  # 0.29 * 100 is 28.999999999999996 in floating point: not step 28.
  return int(math.floor(x + 1e-9))


def _given(
    train_cfg: ml_collections.ConfigDict, name: str
) -> tuple[str, Any] | None:
  """(unit, value) of the one unit set for `name`, None when none is; a
  ValueError naming the keys when more than one is."""
  present = {
      u: train_cfg.get(f"{name}_{u}")
      for u in UNITS
      if f"{name}_{u}" in train_cfg
  }
  chosen = [(u, v) for u, v in present.items() if _is_set(v)]
  if len(chosen) > 1:
    keys = " and ".join(f"train.{name}_{u}={_show(v)}" for u, v in chosen)
    empty = "()" if name == "decay" else "0"
    both = "both" if len(chosen) == 2 else "all"
    raise ValueError(
        f"{keys} are {both} set; give {name} in one unit (set "
        f"the others to {empty})"
    )
  return chosen[0] if chosen else None


def _to_steps(
    key: str, unit: str, value: float, steps_per_epoch: int, run_steps: int
) -> int:
  if value < 0:
    raise ValueError(f"{key} is negative")
  if unit == "steps":
    if value != int(value):
      raise ValueError(f"{key} is not a whole number of steps")
    return int(value)
  if unit == "epochs":
    return _floor(value * steps_per_epoch)
  if value > 1:
    raise ValueError(f"{key} is not a fraction of the run in [0, 1]")
  return _floor(value * run_steps)


def resolve_steps(
    train_cfg: ml_collections.ConfigDict, steps_per_epoch: int
) -> ml_collections.ConfigDict:
  """A copy of `train_cfg` with every duration in `<name>_steps` and its
  `<name>_epochs` / `<name>_percent` cleared (0, or () for decay).

  steps_per_epoch: optimizer steps per pass over the training set (the
  loader's, after drop_last). Errors are one-line ValueErrors naming the
  key: two units set for one duration, a negative value, a fraction above 1,
  a warmup or decay boundary at or past the last step.
  """
  if steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch={steps_per_epoch}: no full batch")
  run_steps = total_steps(train_cfg, steps_per_epoch)
  planned = int(steps_per_epoch * train_cfg.epochs)
  resolved = train_cfg.copy_and_resolve_references()
  for name in SCHEDULE_POINTS + CADENCES:
    given = _given(train_cfg, name)
    if given is None:
      continue
    unit, value = given
    key = f"train.{name}_{unit}={_show(value)}"
    steps = [
        _to_steps(key, unit, v, steps_per_epoch, run_steps)
        for v in _values(value)
    ]
    if name in SCHEDULE_POINTS:
      # A fraction is of the run as cut; steps and epochs of train.epochs.
      last = run_steps if unit == "percent" else planned
      for s in steps:
        if s >= last:
          of = (
              f"the {run_steps:,}-step run"
              if unit == "percent"
              else f"{train_cfg.epochs} epochs of {steps_per_epoch:,} steps"
          )
          raise ValueError(
              f"{key} resolves to step {s:,}, at or past the last "
              f"step {last:,} ({of})"
          )
    else:
      steps = [max(1, s) for s in steps]  # a cadence of 0 steps never fires
    with resolved.unlocked():
      for u in UNITS:
        k = f"{name}_{u}"
        if k in resolved and u != "steps":
          resolved[k] = () if name == "decay" else 0.0
      resolved[f"{name}_steps"] = (
          tuple(sorted(steps)) if name == "decay" else steps[0]
      )
  return resolved


def _cadence(resolved: ml_collections.ConfigDict, name: str) -> str:
  steps = resolved.get(f"{name}_steps", 0)
  return f"every {steps:,} steps" if steps else "at epoch ends"


def describe(resolved: ml_collections.ConfigDict, steps_per_epoch: int) -> str:
  """One line: the resolved warmup, decay and cadences, in steps."""
  run_steps = total_steps(resolved, steps_per_epoch)
  parts = [f"{run_steps:,} steps ({steps_per_epoch:,}/epoch)"]
  if resolved.get("schedule", "constant") != "constant":
    parts.append(f"warmup {resolved.get('warmup_steps', 0):,} steps")
    decay = ", ".join(f"{s:,}" for s in resolved.get("decay_steps", ()))
    factor = resolved.get("decay_factor", 0.1)
    parts.append(f"lr x{factor:g} at step {decay}" if decay else "no decay")
  parts.append(f"checkpoint {_cadence(resolved, 'checkpoint_every')}")
  parts.append(f"log {_cadence(resolved, 'log_every')}")
  return "Schedule: " + "; ".join(parts)
