"""train.py and evaluate.py as a user runs them: outputs, and one-line errors."""

import json
import os
import subprocess
import sys


from rpn_jax.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "tiny_config.py")


def run(*args, cwd=ROOT):
  return subprocess.run(
      [sys.executable, *args],
      cwd=cwd,
      capture_output=True,
      text=True,
      timeout=900,
      env=dict(os.environ),
  )


def assert_one_line_error(proc, *words):
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  for word in words:
    assert word in lines[0]


def test_unknown_config_key_names_it():
  assert_one_line_error(
      run("train.py", "--config.train.batch_sise=4"),
      "--config.train.batch_sise",
      "batch_sise",
  )


def test_missing_coco_dir_names_the_path(tmp_path):
  missing = str(tmp_path / "no_such_coco")
  assert_one_line_error(
      run(
          "train.py",
          f"--config={TINY}",
          "--config.data.source=coco_dir",
          f"--config.data.coco_dir={missing}",
          f"--workdir={tmp_path / 'w'}",
      ),
      missing,
  )


def test_coco_folder_recipe_names_the_splits_a_folder_has(tmp_path):
  """configs/coco_folder.py wants train2017/val2017; a folder with other
  split names gets them listed, and the key to set."""
  from tests.tiny_config import get_config

  config = get_config()
  coco_dir = sources.synthetic_root(config.data)  # splits "train" and "val"
  sources.open_dataset(config.data, "train")
  assert_one_line_error(
      run(
          "train.py",
          "--config=configs/coco_folder.py",
          f"--config.data.coco_dir={coco_dir}",
          f"--workdir={tmp_path / 'w'}",
      ),
      f"no annotations/instances_train2017.json in {coco_dir}",
      "found splits: train, val",
      "--config.data.train_split",
  )


def test_evaluate_without_a_checkpoint_names_the_path(tmp_path):
  assert_one_line_error(run("evaluate.py", f"--ckpt={tmp_path}"), str(tmp_path))


def test_cli_train_then_evaluate_on_a_coco_folder(tmp_path):
  """The README flow on a COCO-layout folder given as data.coco_dir."""
  from tests.tiny_config import get_config

  config = get_config()
  # Generates the tiny synthetic set (COCO layout) and uses it as a plain folder.
  coco_dir = sources.synthetic_root(config.data)
  sources.open_dataset(config.data, "train")
  workdir = str(tmp_path / "run")
  proc = run(
      "train.py",
      f"--config={TINY}",
      f"--workdir={workdir}",
      "--config.data.source=coco_dir",
      f"--config.data.coco_dir={coco_dir}",
      "--config.train.max_steps=3",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"Wrote checkpoints to {workdir}" in proc.stdout

  out = str(tmp_path / "eval")
  proc = run(
      "evaluate.py",
      f"--ckpt={workdir}",
      f"--output_dir={out}",
      "--config.eval.score_threshold=0.0",
      "--num_images_to_draw=2",
      "--config.eval.tta_scales=(1.0,1.25)",
      "--sweep_score=0.0,0.5",
      "--sweep_nms=0.5",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| 종류 |" in proc.stdout and "maxDets" in proc.stdout
  assert (
      proc.stdout.count("|  AP  |") == 6 and proc.stdout.count("|  AR  |") == 6
  )
  with open(os.path.join(out, "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics["score_threshold"] == 0.0  # the overrides reached the eval,
  assert metrics["tta_scales"] == [1.0, 1.25]  # a tuple one included
  assert metrics["step"] == 3
  assert os.path.isfile(os.path.join(out, "pictures", "test1.jpg"))
  with open(os.path.join(out, "sweep.json")) as f:
    assert len(json.load(f)) == 2


def test_wrongly_typed_value_names_the_key():
  proc = run("train.py", "--config.train.batch_size=eight")
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr
  assert "--config.train.batch_size=eight" in proc.stderr
