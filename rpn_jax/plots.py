"""Evaluation plots: precision-recall curves and the training loss curve.

Drawn on matplotlib's Agg canvas through its object API rather than pyplot,
so that saving a picture neither needs a display nor switches the backend of
a notebook that imported this module.
"""

import json
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rpn_jax import coco_eval

_LOSS_KEYS = (
    ("total", "total"),
    ("objectness", "objectness"),
    ("box", "box regression"),
)


def _save(figure: Figure, path: str) -> str:
  FigureCanvasAgg(figure)
  figure.savefig(path, dpi=100)
  return path


def plot_precision_recall(
    curve: coco_eval.PrecisionRecall, path: str, title: str = ""
) -> str:
  """Saves precision against recall at IoU 0.50 and 0.75 and averaged over
  IoU 0.50:0.95 (COCOeval's interpolated curves: AP is the mean of each curve's
  101 points) as a PNG at `path`. Returns `path`."""
  precision = np.where(curve.precision < 0, np.nan, curve.precision)
  recall = curve.recall_thresholds
  figure = Figure(figsize=(6, 5))
  ax = figure.add_subplot()
  lines = []
  for iou in (0.5, 0.75):
    t = int(np.argmin(np.abs(curve.iou_thresholds - iou)))
    lines.append((f"IoU {iou:.2f}", precision[t]))
  # Where one IoU threshold's precision is undefined (no ground truth),
  # every one is: the mean is undefined there too, not taken over the rest.
  lines.append(("IoU 0.50:0.95 mean", precision.mean(axis=0)))
  for label, values in lines:
    # No ground truth: COCOeval's AP is -1 (n/a), not 0.
    ap = np.nanmean(values) if np.isfinite(values).any() else -1.0
    ax.plot(recall, values, label=f"{label} (AP {coco_eval.format_metric(ap)})")
  ax.set_xlabel("recall")
  ax.set_ylabel("precision")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(loc="upper right")
  ax.set_title(title or "Person detection: precision-recall (maxDets 100)")
  figure.tight_layout()
  return _save(figure, path)


def read_train_records(metrics_jsonl: str) -> list[dict]:
  """The training records of a workdir's metrics.jsonl (validation records,
  `"split": "val"`, left out)."""
  with open(metrics_jsonl) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if r.get("split", "train") == "train"]


def plot_loss_curve(metrics_jsonl: str, path: str) -> str | None:
  """Saves the training losses (total, objectness, box) against the step on a
  log scale, with the learning rate on a second axis where logged, as a PNG
  at `path`. Returns `path`, or None (with a one-line note) when
  `metrics_jsonl` is missing or holds no training record."""
  if not os.path.isfile(metrics_jsonl):
    print(f"No loss curve: {metrics_jsonl} does not exist")
    return None
  records = sorted(read_train_records(metrics_jsonl), key=lambda r: r["step"])
  if not records:
    print(f"No loss curve: {metrics_jsonl} has no training record")
    return None
  steps = np.array([r["step"] for r in records])
  # Points on short runs, where a line of one or two records shows little.
  marker = "." if len(steps) <= 30 else None
  figure = Figure(figsize=(7, 4.5), layout="constrained")
  ax = figure.add_subplot()
  for key, label in _LOSS_KEYS:
    values = np.array([r.get(key, np.nan) for r in records], np.float64)
    # A log axis cannot show 0 or a skipped (non-finite) step: gaps instead.
    values[~(values > 0)] = np.nan
    ax.plot(steps, values, label=label, marker=marker)
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.grid(alpha=0.3, which="both")
  handles, labels = ax.get_legend_handles_labels()
  if any("learning_rate" in r for r in records):
    lr_ax = ax.twinx()
    lr = [r.get("learning_rate", np.nan) for r in records]
    (line,) = lr_ax.plot(
        steps, lr, color="gray", linestyle="--", label="learning rate"
    )
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_ylim(bottom=0)
    handles.append(line)
    labels.append(line.get_label())
  # Below the axes: no placement inside can avoid the curves of both axes.
  figure.legend(handles, labels, loc="outside lower center", ncols=4)
  ax.set_title("Training loss")
  return _save(figure, path)
