"""bench/small_scale.py: the seed's and the ATSS recipe shrunk alike, each
keeping its own detection parts (issue 22's small-scale comparison)."""

import pytest

from bench import small_scale
from rpn_jax import setup_model
from rpn_jax.configs import coco_person_r50_c5
from rpn_jax.configs import coco_person_r50_fpn
from rpn_jax.configs import coco_person_r50_fpn_atss
from rpn_jax.configs import default


def _value(config, key):
  found = small_scale.value(config, key)
  return found.to_dict() if hasattr(found, "to_dict") else found


def test_every_recipe_takes_the_shrunk_keys_from_the_default():
  small = default.get_config()
  for recipe in small_scale.RECIPES:
    config = small_scale.get_config(recipe)
    for key in small_scale.SHRUNK:
      assert _value(config, key) == _value(small, key), (recipe, key)
    assert (config.model.norm, tuple(config.model.freeze)) == ("bn", ())
    assert config.eval.tta_scales == (1.0,) and not config.eval.hflip_tta


@pytest.mark.parametrize(
    "recipe, full",
    [
        ("seed", coco_person_r50_c5),
        ("seed_fpn", coco_person_r50_fpn),
        ("atss", coco_person_r50_fpn_atss),
        ("atss_plain_head", coco_person_r50_fpn_atss),
    ],
)
def test_each_recipe_keeps_its_own_detection_parts(recipe, full):
  config, own = small_scale.get_config(recipe), full.get_config()
  for section in ("targets", "proposals"):
    assert config[section].to_dict() == own[section].to_dict(), section
  for key in (
      "fpn",
      "feature",
      "anchor_sizes",
      "anchor_ratios",
      "anchor_offset",
      "head_convs",
      "objectness_prior",
  ):
    assert config.model[key] == own.model[key], key
  assert tuple(config.data.scale_jitter) == tuple(own.data.scale_jitter)
  assert (config.eval.score_threshold, config.eval.nms_threshold) == (
      own.eval.score_threshold,
      own.eval.nms_threshold,
  )
  expected_norm = "none" if recipe == "atss_plain_head" else own.model.head_norm
  assert config.model.head_norm == expected_norm
  # The model and its anchors build at the shrunk size.
  setup_model.build_model(config.model)
  assert setup_model.model_anchors(config).shape[1] == 4


def test_unknown_recipe_names_the_choices():
  with pytest.raises(ValueError, match="'seed', 'seed_fpn', 'atss'"):
    small_scale.get_config("fpn")
  with pytest.raises(ValueError, match="bench/small_scale.py"):
    small_scale.get_config(None)
