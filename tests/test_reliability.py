"""Faults a long run meets: signals, damaged checkpoints, non-finite steps,
mismatched configs, empty evaluations; and run-to-run determinism."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpn_jax import checkpoint as checkpoint_lib
from rpn_jax import defaults
from rpn_jax import eval_lib
from rpn_jax import setup_model
from rpn_jax import train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["total"] for line in f]


def test_same_seed_same_losses_other_seed_other_losses(tiny, tmp_path):
  tiny.train.max_steps = 20
  tiny.train.epochs = 10
  tiny.train.log_every_steps = 1
  runs = []
  for name, seed in (("a", 0), ("b", 0), ("c", 1)):
    tiny.seed = seed
    train_lib.train_and_evaluate(tiny, str(tmp_path / name))
    runs.append(_losses(str(tmp_path / name)))
  assert len(runs[0]) == 20
  assert runs[0] == runs[1]
  assert runs[0] != runs[2]


def _tiny_state(tiny):
  model = setup_model.build_model(tiny.model)
  variables = setup_model.init_variables(tiny, model, jax.random.key(0))
  tx = train_lib.make_optimizer(tiny, variables)
  state = train_lib.create_train_state(tiny, model, tx, variables)
  return model, tx, state


def _batch(tiny, box):
  b, s, g = tiny.train.batch_size, tiny.data.image_size, tiny.data.max_boxes
  boxes = np.zeros((b, g, 4), np.float32)
  boxes[:, 0] = box
  valid = np.zeros((b, g), bool)
  valid[:, 0] = True
  return dict(
      image=np.full((b, s, s, 3), 100, np.uint8),
      boxes=boxes,
      box_valid=valid,
      box_crowd=np.zeros((b, g), bool),
      image_hw=np.full((b, 2), s, np.int32),
      scale=np.ones(b, np.float32),
      image_id=np.arange(b),
      image_valid=np.ones(b, bool),
  )


def test_non_finite_step_is_not_applied(tiny):
  model, tx, state = _tiny_state(tiny)
  step = jax.jit(
      train_lib.make_train_step(
          tiny, model, tx, setup_model.model_anchors(tiny)
      )
  )
  batch = _batch(tiny, [10, 10, 60, 90])
  good, metrics = step(state, batch)
  assert int(metrics["finite"]) == 1
  # A weight gone bad (as after an overflow) makes the loss NaN.
  bias = good.params["head"]["cls_logits"]["bias"]
  poisoned = good.replace(
      params=jax.tree_util.tree_map(lambda x: x, good.params)
  )
  poisoned.params["head"]["cls_logits"]["bias"] = bias.at[0].set(jnp.nan)
  after, metrics = step(poisoned, batch)
  assert int(metrics["finite"]) == 0
  assert int(after.step) == 2
  for x, y in zip(
      jax.tree_util.tree_leaves((poisoned.params, poisoned.opt_state)),
      jax.tree_util.tree_leaves((after.params, after.opt_state)),
  ):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_run_stops_after_consecutive_non_finite_steps(tiny, tmp_path):
  tiny.train.learning_rate = 1e38  # the first update overflows the weights
  tiny.train.max_nonfinite_steps = 3
  with pytest.raises(train_lib.NonFiniteError, match="3 consecutive"):
    train_lib.train_and_evaluate(tiny, str(tmp_path))


def test_damaged_newest_checkpoint_falls_back_to_older(tmp_path, caplog):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"))
  state = {"w": jnp.arange(4.0), "step": jnp.int32(0)}
  ckpt.save(1, state)
  ckpt.save(2, {"w": jnp.arange(4.0) * 2, "step": jnp.int32(2)})
  ckpt.close()
  for folder, _, files in os.walk(tmp_path / "ckpt" / "2"):
    for name in files:  # a run killed while writing step 2
      with open(os.path.join(folder, name), "r+b") as f:
        f.truncate(0)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"))
  restored = ckpt.restore_latest(state)
  np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(4.0))
  assert "step 2" in caplog.text and "unreadable" in caplog.text


def test_resume_under_another_model_config_names_the_keys(tiny, tmp_path):
  checkpoint_lib.check_or_write_config(str(tmp_path), tiny)
  tiny.train.epochs = 99  # not a model setting: fine
  checkpoint_lib.check_or_write_config(str(tmp_path), tiny)
  tiny.data.image_size = 160  # shapes no parameter: fine
  checkpoint_lib.check_or_write_config(str(tmp_path), tiny)
  tiny.model.width = 16
  tiny.model.head_channels = 16
  with pytest.raises(ValueError, match="model.head_channels.*model.width"):
    checkpoint_lib.check_or_write_config(str(tmp_path), tiny)
  with pytest.raises(
      ValueError, match="other model settings: model.head_channels, model.width"
  ):
    checkpoint_lib.restore_variables(tiny, str(tmp_path))


def test_eval_canvas_is_eval_image_size_or_the_training_one(tiny):
  assert eval_lib.with_eval_canvas(tiny).data.image_size == tiny.data.image_size
  tiny.eval.image_size = 160
  assert eval_lib.with_eval_canvas(tiny).data.image_size == 160
  assert tiny.data.image_size == 128
  tiny.eval.image_size = -1
  with pytest.raises(ValueError, match="eval.image_size must be >= 0"):
    eval_lib.with_eval_canvas(tiny)


_KEYS_ADDED_LATER = (
    ("model", "fpn"),
    ("model", "fpn_channels"),
    ("train", "optimizer"),
)


def _write_old_config(tiny, workdir):
  """config.json as a run saved it before the keys in _KEYS_ADDED_LATER existed.

  Such a run behaved as those keys' defaults, so `tiny` is set to them first.
  """
  base = defaults.base_config()
  for group, key in _KEYS_ADDED_LATER:
    tiny[group][key] = base[group][key]
  saved = tiny.to_dict()
  for group, key in _KEYS_ADDED_LATER:
    del saved[group][key]
  with open(os.path.join(workdir, checkpoint_lib.CONFIG_FILE), "w") as f:
    json.dump(saved, f)
  return saved


def test_keys_missing_from_an_old_config_count_as_their_defaults(
    tiny, tmp_path
):
  saved = _write_old_config(tiny, str(tmp_path))
  assert checkpoint_lib.config_mismatch(saved, tiny) == []
  loaded = checkpoint_lib.load_config(str(tmp_path))
  assert (
      loaded.model.fpn,
      loaded.model.fpn_channels,
      loaded.train.optimizer,
  ) == (False, 256, "sgd")
  checkpoint_lib.check_or_write_config(str(tmp_path), tiny)
  _write_old_config(tiny, str(tmp_path))
  tiny.model.fpn = True  # a real difference from the default the old run had
  with pytest.raises(ValueError, match="model.fpn: saved False vs True"):
    checkpoint_lib.check_or_write_config(str(tmp_path), tiny)


def test_old_config_restores_for_evaluation(tiny, tmp_path):
  """evaluate.py's path: load_config of an old config.json, then
  checkpoint.restore_variables."""
  _, _, state = _tiny_state(tiny)
  state = state.replace(
      step=jnp.asarray(3, state.step.dtype),
      params=jax.tree.map(lambda p: p + 1, state.params),
  )
  ckpt = checkpoint_lib.Checkpointer(
      str(tmp_path / checkpoint_lib.CHECKPOINT_DIR)
  )
  ckpt.save(3, state, force=True)
  ckpt.close()
  _write_old_config(tiny, str(tmp_path))
  variables, step = checkpoint_lib.restore_variables(
      checkpoint_lib.load_config(str(tmp_path)), str(tmp_path)
  )
  assert step == 3
  assert jax.tree.all(
      jax.tree.map(np.array_equal, variables["params"], state.params)
  )


def test_sigterm_writes_a_checkpoint_and_the_rerun_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  args = [
      sys.executable,
      "train.py",
      "--config=tests/tiny_config.py",
      f"--workdir={workdir}",
      "--config.train.epochs=500",
      "--config.train.log_every_steps=1",
  ]
  proc = subprocess.Popen(
      args,
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=dict(os.environ),
  )
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 600
  while not (os.path.isfile(metrics) and len(_losses(workdir)) >= 3):
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() < deadline
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "SIGTERM received: saved step" in err
  steps = checkpoint_lib.Checkpointer(
      os.path.join(workdir, "checkpoints")
  ).all_steps()
  assert steps and steps[-1] >= 3

  resumed = subprocess.run(
      args[:-1] + ["--config.train.max_steps=" + str(steps[-1] + 2)],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
      env=dict(os.environ),
  )
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"steps {steps[-1]}..{steps[-1] + 2}" in resumed.stdout


def test_no_detections_gives_zeros_not_a_crash(tiny, tmp_path, caplog):
  tiny.train.max_steps = 2
  train_lib.train_and_evaluate(tiny, str(tmp_path / "run"))
  tiny.eval.score_threshold = 1.01  # nothing passes
  metrics = eval_lib.run_evaluation(
      tiny, str(tmp_path / "run"), str(tmp_path / "eval")
  )
  assert metrics["AP"] == 0.0 and metrics["AR100"] == 0.0
  assert "No detections" in caplog.text
  with open(tmp_path / "eval" / "detections.json") as f:
    assert json.load(f) == []
