"""Checkpoint cadence for long runs on preemptible machines: saves by wall
time (train.checkpoint_every_minutes) and epoch ends kept past
train.keep_checkpoints (train.keep_every_epochs)."""

import os

import pytest

from rpn_jax import checkpoint as checkpoint_lib
from rpn_jax import parallel
from rpn_jax import train_lib


class _Died(RuntimeError):
  """The process dying mid-run, past the SIGTERM path that would save."""


def _checkpoint_steps(workdir: str) -> list[int]:
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    return ckpt.all_steps()
  finally:
    ckpt.close()


def test_killed_run_resumes_from_a_checkpoint_younger_than_the_cadence(
    tiny, tmp_path, monkeypatch, capsys
):
  # The tiny set in batches of 2: about 20 steps to the epoch's end, whose
  # checkpoint is past the kill; no step cadence, so only wall time saves
  # before it.
  tiny.train.batch_size = 2
  tiny.train.epochs = 1
  tiny.train.checkpoint_every_epochs = 0.0
  tiny.train.checkpoint_every_minutes = 1.0
  tiny.train.eval_every_epochs = 0
  seconds_per_step = 0.4 * 60  # the cadence every 3 steps
  died_after = 10
  dying = [True]
  now = [0.0]
  monkeypatch.setattr(train_lib, "_clock", lambda: now[0])

  calls = [0]
  jit_data_parallel = parallel.jit_data_parallel

  def dying_jit(fn, mesh):
    step = jit_data_parallel(fn, mesh)

    def step_fn(state, batch):
      if dying[0] and calls[0] == died_after:
        raise _Died(f"killed after {died_after} steps")
      calls[0] += 1
      now[0] += seconds_per_step
      return step(state, batch)

    return step_fn

  monkeypatch.setattr(parallel, "jit_data_parallel", dying_jit)
  workdir = str(tmp_path / "run")
  # train_and_evaluate finishes the writes under way before the error
  # propagates; one cut short by a real kill is skipped at restore
  # (tests/test_reliability.py).
  with pytest.raises(_Died):
    train_lib.train_and_evaluate(tiny, workdir)

  steps = _checkpoint_steps(workdir)
  assert steps == [3, 6, 9], steps  # 72 s >= 60 s since the last save
  cadence_steps = 60 / seconds_per_step
  assert 0 < died_after - steps[-1] <= cadence_steps

  capsys.readouterr()
  dying[0] = False
  tiny.train.max_steps = steps[-1] + 2
  state = train_lib.train_and_evaluate(tiny, workdir)
  assert f"steps {steps[-1]}..{steps[-1] + 2}," in capsys.readouterr().out
  assert int(state.step) == steps[-1] + 2
  assert calls[0] == died_after + 2  # the rerun made only the two steps


def test_epoch_ends_outlive_keep_checkpoints(tiny, tmp_path):
  # A checkpoint every 2 steps, of which only the newest outlives the next.
  tiny.train.epochs = 3
  tiny.train.checkpoint_every_epochs = 0.0
  tiny.train.checkpoint_every_steps = 2
  tiny.train.keep_checkpoints = 1
  tiny.train.keep_every_epochs = 1
  tiny.train.eval_every_epochs = 0
  workdir = str(tmp_path / "run")
  steps_per_epoch = int(train_lib.train_and_evaluate(tiny, workdir).step) // 3
  assert steps_per_epoch > 2  # else every checkpoint is at an epoch's end
  assert _checkpoint_steps(workdir) == [steps_per_epoch * e for e in (1, 2, 3)]


@pytest.mark.parametrize(
    "key", ["checkpoint_every_minutes", "keep_every_epochs"]
)
def test_negative_cadence_is_a_one_line_error_naming_the_key(
    tiny, tmp_path, key
):
  tiny.train[key] = -1
  with pytest.raises(ValueError, match=f"train.{key}=-1 is negative") as e:
    train_lib.train_and_evaluate(tiny, str(tmp_path / "run"))
  assert "\n" not in str(e.value)
