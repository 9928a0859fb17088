"""TensorBoard events, validation during training, and evaluation's pictures.

One tiny run (3 epochs, validating after the second and at the end) and one
evaluation of it serve every test here.
"""

import contextlib
import glob
import io
import json
import math
import os
import struct

import pytest
from PIL import Image
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from rpn_jax import eval_lib
from rpn_jax import train_lib
from rpn_jax.data import open_dataset
from tests.tiny_config import get_config as tiny_config

BATCH_SIZE = 16
EPOCHS = 3
WARMUP_STEPS = 3


def read_scalars(logdir: str) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of every scalar in `logdir`'s event files.

  Parses the TFRecord framing (length, masked CRC32C of the length, the
  Event proto, its masked CRC32C) itself, checking both CRCs, so neither
  TensorFlow nor the tensorboard package is needed."""
  scalars = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      header = data[offset : offset + 8]
      (length,) = struct.unpack("<Q", header)
      (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
      assert header_crc == masked_crc32c(header)
      body = data[offset + 12 : offset + 12 + length]
      (body_crc,) = struct.unpack(
          "<I", data[offset + 12 + length : offset + 16 + length]
      )
      assert body_crc == masked_crc32c(body)
      offset += 16 + length
      event = event_pb2.Event.FromString(body)
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """Trains the tiny recipe with validation every 2 epochs and a warmup, then
  evaluates it with evaluate.py's defaults; returns paths and printouts."""
  config = tiny_config()
  config.train.batch_size = BATCH_SIZE
  config.train.epochs = EPOCHS
  config.train.log_every_steps = 1
  config.train.eval_every_epochs = 2
  config.train.schedule = "warmup_step"
  config.train.warmup_steps = WARMUP_STEPS
  config.eval.batch_size = 16
  # Six steps leave every objectness below the tiny recipe's 0.05: with no
  # threshold the precision-recall curve has detections to show.
  config.eval.score_threshold = 0.0
  steps_per_epoch = len(open_dataset(config.data, "train")) // BATCH_SIZE
  root = tmp_path_factory.mktemp("logging")
  workdir, out = str(root / "run"), str(root / "eval")
  train_out, eval_out = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(train_out):
    train_lib.train_and_evaluate(config, workdir)
  with contextlib.redirect_stdout(eval_out):
    metrics = eval_lib.run_evaluation(config, workdir, out)
  return dict(
      config=config,
      workdir=workdir,
      out=out,
      metrics=metrics,
      steps_per_epoch=steps_per_epoch,
      train_out=train_out.getvalue(),
      eval_out=eval_out.getvalue(),
  )


def test_tensorboard_has_losses_learning_rate_and_validation(run):
  logdir = os.path.join(run["workdir"], "tensorboard")
  assert logdir in run["train_out"]  # the closing line names it
  scalars = read_scalars(logdir)
  last = EPOCHS * run["steps_per_epoch"]
  steps = list(range(1, last + 1))
  for tag in (
      "train/total",
      "train/objectness",
      "train/box",
      "train/grad_norm",
      "train/images_per_sec",
      "train/num_pos",
      "train/num_neg",
      "train/learning_rate",
  ):
    assert sorted(scalars[tag]) == steps, tag
  # Linear warmup from lr x 0.001 (detectron2's factor), by the optimizer
  # count that made each step: step s applied count s - 1.
  lr = run["config"].train.learning_rate
  for step, value in scalars["train/learning_rate"].items():
    expected = lr * (0.001 + 0.999 * min((step - 1) / WARMUP_STEPS, 1.0))
    assert math.isclose(value, expected, rel_tol=1e-6), (step, value)
  # Validation after epoch 2 and at the end of the run (epoch 3).
  val_steps = [2 * run["steps_per_epoch"], last]
  for tag in ("val/AP", "val/AP50", "val/AR100", "val/proposal_AR_at_100"):
    assert sorted(scalars[tag]) == val_steps, tag
    assert all(0.0 <= v <= 1.0 for v in scalars[tag].values())
  assert run["train_out"].count("Validation at step") == 2


def test_jsonl_holds_the_same_records(run):
  with open(os.path.join(run["workdir"], "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  train = [r for r in records if r["split"] == "train"]
  val = [r for r in records if r["split"] == "val"]
  last = EPOCHS * run["steps_per_epoch"]
  assert [r["step"] for r in train] == list(range(1, last + 1))
  assert [r["step"] for r in val] == [2 * run["steps_per_epoch"], last]
  scalars = read_scalars(os.path.join(run["workdir"], "tensorboard"))
  for r in val:
    assert math.isclose(r["AP"], scalars["val/AP"][r["step"]], rel_tol=1e-6)
  # A validation record follows its step's training record.
  first = records.index(train[2 * run["steps_per_epoch"] - 1])
  assert records[first + 1] == val[0]
  # The last validation is of the final params: evaluate.py agrees.
  for key in ("AP", "AP50", "AR100", "proposal_AR@100"):
    assert math.isclose(val[-1][key], run["metrics"][key], abs_tol=1e-12), key


def _png(path: str) -> Image.Image:
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  image = Image.open(path)
  image.load()
  assert image.format == "PNG"
  assert image.width >= 300 and image.height >= 200
  # More than a blank canvas: curves, axes and labels in several colours.
  assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or ()) > 8
  return image


def test_evaluation_writes_plots_and_pictures(run):
  out = run["out"]
  _png(os.path.join(out, "pr_curve.png"))
  _png(os.path.join(out, "loss_curve.png"))
  pictures = sorted(os.listdir(os.path.join(out, "pictures")))
  assert len(pictures) == 8  # the default, of 13 val images
  for name in pictures:
    Image.open(os.path.join(out, "pictures", name)).verify()
  printed = run["eval_out"]
  assert (
      f"Wrote metrics.json, detections.json, pr_curve.png, "
      f"loss_curve.png to {out}"
  ) in printed
  assert "Wrote 8 proposal pictures" in printed


def test_loss_curve_without_metrics_is_skipped_with_a_note(tmp_path, capsys):
  from rpn_jax import plots

  missing = str(tmp_path / "metrics.jsonl")
  assert plots.plot_loss_curve(missing, str(tmp_path / "loss.png")) is None
  assert not os.path.exists(tmp_path / "loss.png")
  printed = capsys.readouterr().out.strip().splitlines()
  assert len(printed) == 1 and missing in printed[0]
