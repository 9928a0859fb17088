"""Durations in steps, epochs or fractions of the run, resolved to steps."""

import re

import ml_collections
import pytest

from rpn_jax import defaults
from rpn_jax import schedules
from rpn_jax.configs import coco_folder
from rpn_jax.configs import coco_person_r50_c5
from rpn_jax.configs import coco_person_r50_c5_exact
from rpn_jax.configs import coco_person_r50_fpn
from rpn_jax.configs import coco_person_r50_fpn_atss
from rpn_jax.configs import default

# The embedded default's training set: 13,349 of its 15,000 drawn images hold a
# person, 1,668 full batches of 8 (configs/default.py; 3,336 steps in 2 epochs).
DEFAULT_STEPS_PER_EPOCH = 13349 // 8
# What configs/default.py set in steps before its durations became fractions.
DEFAULT_STEPS_BEFORE = {
    "warmup_steps": 200,
    "decay_steps": (3250,),
    "checkpoint_every_steps": 250,
    "log_every_steps": 20,
}


def _train(**overrides) -> ml_collections.ConfigDict:
  train = defaults.base_config().train
  train.update(overrides)
  return train


def _resolved_steps(train: ml_collections.ConfigDict) -> dict:
  return {
      k: (tuple(train[k]) if k == "decay_steps" else train[k])
      for k in DEFAULT_STEPS_BEFORE
  }


def test_default_resolves_to_the_steps_it_was_tuned_with():
  train = default.get_config().train
  resolved = schedules.resolve_steps(train, DEFAULT_STEPS_PER_EPOCH)
  assert schedules.total_steps(train, DEFAULT_STEPS_PER_EPOCH) == 3336
  assert _resolved_steps(resolved) == DEFAULT_STEPS_BEFORE
  # Only steps are left, so resolving again changes nothing.
  assert (
      resolved.warmup_percent,
      tuple(resolved.decay_percent),
      resolved.checkpoint_every_epochs,
  ) == (0.0, (), 0.0)
  again = schedules.resolve_steps(resolved, DEFAULT_STEPS_PER_EPOCH)
  assert again.to_dict() == resolved.to_dict()
  # What the user wrote is untouched.
  assert tuple(train.decay_percent) == (0.9743,) and train.decay_steps == ()


@pytest.mark.parametrize("change", ["batch x2", "dataset / 2", "epochs x3"])
def test_default_schedule_keeps_its_place_in_the_run(change):
  config = default.get_config()
  steps_per_epoch = DEFAULT_STEPS_PER_EPOCH
  if change == "batch x2":
    config.train.batch_size *= 2
    steps_per_epoch = 13349 // 16
  elif change == "dataset / 2":
    steps_per_epoch = 13349 // 2 // 8
  else:
    config.train.epochs *= 3
  total = schedules.total_steps(config.train, steps_per_epoch)
  assert total != 3336
  resolved = schedules.resolve_steps(config.train, steps_per_epoch)
  (decay,) = resolved.decay_steps
  # Within a step of the same fraction of the run as 3,250 of 3,336.
  assert abs(decay - 3250 / 3336 * total) <= 1
  assert abs(resolved.warmup_steps - 200 / 3336 * total) <= 1
  # The checkpoint cadence is in epochs: 0.15 of one, whatever its length.
  assert resolved.checkpoint_every_steps == int(0.15 * steps_per_epoch)


@pytest.mark.parametrize(
    "recipe",
    [
        default,
        coco_person_r50_c5,
        coco_person_r50_c5_exact,
        coco_person_r50_fpn,
        coco_person_r50_fpn_atss,
        coco_folder,
    ],
)
def test_recipes_give_durations_in_epochs_or_fractions(recipe):
  train = recipe.get_config().train
  assert (
      train.warmup_steps,
      tuple(train.decay_steps),
      train.checkpoint_every_steps,
  ) == (0, (), 0)
  assert train.checkpoint_every_epochs or train.checkpoint_every_percent
  # COCO train2017's 64,115 person images at batch 8, and a small folder.
  for steps_per_epoch in (64115 // 8, 50):
    resolved = schedules.resolve_steps(train, steps_per_epoch)
    assert resolved.checkpoint_every_steps >= 1


def test_each_unit():
  resolved = schedules.resolve_steps(
      _train(
          epochs=10,
          warmup_epochs=0.5,
          decay_steps=(800, 600),
          checkpoint_every_percent=0.25,
          log_every_steps=0,
          log_every_epochs=1.0,
      ),
      100,
  )
  assert resolved.warmup_steps == 50
  assert tuple(resolved.decay_steps) == (600, 800)  # sorted
  assert resolved.checkpoint_every_steps == 250  # a quarter of 1,000 steps
  assert resolved.log_every_steps == 100
  # 0.29 x 100 is 28.999999999999996 in floating point.
  assert (
      schedules.resolve_steps(
          _train(warmup_percent=0.29, epochs=1), 100
      ).warmup_steps
      == 29
  )


def test_a_cadence_never_resolves_to_zero_steps():
  resolved = schedules.resolve_steps(
      _train(epochs=1, checkpoint_every_epochs=0.001), 10
  )
  assert resolved.checkpoint_every_steps == 1


def test_fractions_are_of_the_run_as_cut_by_max_steps():
  train = _train(
      epochs=10,
      max_steps=200,
      warmup_percent=0.1,
      decay_percent=(0.5,),
      decay_factor=0.1,
  )
  resolved = schedules.resolve_steps(train, 100)
  assert (resolved.warmup_steps, tuple(resolved.decay_steps)) == (20, (100,))
  # A boundary in epochs past the cut but inside train.epochs is not reached.
  resolved = schedules.resolve_steps(
      _train(epochs=10, max_steps=200, decay_epochs=(8.0,)), 100
  )
  assert tuple(resolved.decay_steps) == (800,)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(warmup_steps=200, warmup_percent=0.06),
            "train.warmup_steps=200 and train.warmup_percent=0.06 are both set",
        ),
        (
            dict(
                decay_steps=(3250,), decay_epochs=(1.5,), decay_percent=(0.9,)
            ),
            "train.decay_steps=(3250,) and train.decay_epochs=(1.5,) and "
            "train.decay_percent=(0.9,) are all set",
        ),
        (
            dict(checkpoint_every_steps=500, checkpoint_every_epochs=0.25),
            "train.checkpoint_every_steps=500 and train.checkpoint_every_epochs=0.25 "
            "are both set",
        ),
        (
            dict(epochs=2, decay_epochs=(30,)),
            "train.decay_epochs=(30,) resolves to step 50,040, at or past the last "
            "step 3,336 (2 epochs of 1,668 steps)",
        ),
        (
            dict(epochs=2, warmup_steps=3336),
            "train.warmup_steps=3336 resolves to "
            "step 3,336, at or past the last step 3,336",
        ),
        (
            dict(decay_percent=(1.0,), epochs=2),
            "train.decay_percent=(1,) resolves to step 3,336, at or past the last "
            "step 3,336 (the 3,336-step run)",
        ),
        (dict(warmup_epochs=-1.0), "train.warmup_epochs=-1 is negative"),
        (
            dict(decay_percent=(0.5, 1.5)),
            "train.decay_percent=(0.5, 1.5) is not a fraction of the run in [0, 1]",
        ),
        (
            dict(warmup_steps=0, decay_steps=(10.5,)),
            "not a whole number of steps",
        ),
    ],
)
def test_errors_name_the_key(overrides, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    schedules.resolve_steps(_train(**overrides), DEFAULT_STEPS_PER_EPOCH)


def test_old_style_steps_pass_through():
  train = _train(
      epochs=1000,
      max_steps=400,
      schedule="warmup_step",
      warmup_steps=20,
      decay_steps=(300,),
      checkpoint_every_steps=400,
      log_every_steps=50,
  )
  resolved = schedules.resolve_steps(train, 12)
  assert (
      resolved.warmup_steps,
      tuple(resolved.decay_steps),
      resolved.checkpoint_every_steps,
      resolved.log_every_steps,
  ) == (20, (300,), 400, 50)
  line = schedules.describe(resolved, 12)
  assert line == (
      "Schedule: 400 steps (12/epoch); warmup 20 steps; lr x0.1 "
      "at step 300; checkpoint every 400 steps; log every 50 "
      "steps"
  )
