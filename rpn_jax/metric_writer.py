"""Training metrics to JSON lines and TensorBoard event files at once.

Each record becomes one line of `<workdir>/metrics.jsonl` (what scripts and
the loss plot read) and one TensorBoard scalar per number under
`<workdir>/tensorboard`, tagged `<split>/<key>` (`train/total`, `val/AP`;
`@`, which tags may not hold, spelt `_at_`: `val/proposal_AR_at_1000`). Event files are
written with tensorboardX, so TensorFlow is never needed.
"""

import json
import numbers
import os
from typing import Any

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# Record keys that are an axis or a label, not a metric to plot.
_NOT_SCALARS = ("step", "split", "epoch", "epochs")


def tensorboard_tag(split: str, key: str) -> str:
  """The TensorBoard tag of record key `key`: `proposal_AR@1000` of split
  `val` -> `val/proposal_AR_at_1000` (tensorboardX would make `@` a bare `_`,
  and AR_1000 reads like AR100)."""
  return f"{split}/{key.replace('@', '_at_')}"


class MetricWriter:
  """Appends records to `<workdir>/metrics.jsonl` and writes their numbers as
  TensorBoard scalars to `<workdir>/tensorboard`.

  With `enabled=False` (every process but 0 of a multi-host run) it writes
  nothing and creates no file. `resume_step`, the step a resumed run starts
  from, makes TensorBoard drop the scalars an interrupted run had logged past
  its last checkpoint instead of drawing the repeated steps twice.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0):
    self.jsonl_path = os.path.join(workdir, JSONL_NAME)
    self.tensorboard_dir = os.path.join(workdir, TENSORBOARD_DIR)
    self.enabled = enabled
    self._summary = None
    if enabled:
      # Imported here: tensorboardX imports torch when it is installed, a
      # second's start-up that processes which never log should not pay.
      from tensorboardX import SummaryWriter

      self._summary = SummaryWriter(
          self.tensorboard_dir,
          flush_secs=30,
          purge_step=resume_step if resume_step > 0 else None,
      )

  def write(
      self, step: int, record: dict[str, Any], split: str = "train"
  ) -> None:
    """Writes `record` (metric name -> value) as of training step `step`.

    The JSON line is `record` with "step" and "split" added; every real
    number in it (bools excepted) also goes to TensorBoard, tagged
    `tensorboard_tag(split, key)`.
    """
    if not self.enabled:
      return
    line = dict(record, step=step, split=split)
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps(line) + "\n")
    for key, value in record.items():
      if key in _NOT_SCALARS or isinstance(value, bool):
        continue
      if isinstance(value, numbers.Real):
        self._summary.add_scalar(
            tensorboard_tag(split, key), float(value), step
        )

  def flush(self) -> None:
    if self._summary is not None:
      self._summary.flush()

  def close(self) -> None:
    if self._summary is not None:
      self._summary.close()
      self._summary = None
