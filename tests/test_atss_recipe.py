"""configs/coco_person_r50_fpn_atss.py and the options it brought:
model.head_norm, model.dtype="auto", its TTA argument, the training-config
checks; the recipe shrunk to a tiny size, trained, evaluated and exported."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

import rpn_jax
from configs import coco_person_r50_fpn_atss as shim
from rpn_jax import checkpoint as checkpoint_lib
from rpn_jax import cli
from rpn_jax import defaults
from rpn_jax import eval_lib
from rpn_jax import export
from rpn_jax import schedules
from rpn_jax import setup_model
from rpn_jax import train_lib
from rpn_jax import tta
from rpn_jax.configs import coco_person_r50_fpn_atss as recipe
from rpn_jax.configs import default as default_recipe
from rpn_jax.models.rpn import RPNHead, init_module
from tests import tiny_config

RECIPE_FILE = recipe.__file__

# ------------------------------------------------------------------ the recipe


def test_recipe_sets_what_its_docstring_says():
  config = recipe.get_config()
  assert shim.get_config().to_dict() == config.to_dict()
  m, t, tr = config.model, config.targets, config.train
  assert (m.backbone, m.norm, m.fpn, m.dtype) == (
      "resnet50",
      "frozen_bn",
      True,
      "auto",
  )
  assert tuple(m.freeze) == (
      "backbone/conv1",
      "backbone/bn1",
      "backbone/layer1",
  )
  assert (m.head_convs, m.head_channels, m.head_norm) == (4, 256, "gn")
  assert tuple(m.anchor_ratios) == (1.0,)
  assert m.objectness_prior == 0.01
  assert (t.assigner, t.objectness_loss, t.box_loss, t.box_loss_weight) == (
      "atss",
      "quality_focal",
      "giou",
      2.0,
  )
  assert (t.num_samples, t.normalizer) == (0, "positives")
  assert tuple(t.box_clamp) == defaults.TORCHVISION_BOX_CLAMP
  # SGD lr 0.01 at batch 16, linearly scaled to batch 8.
  assert (tr.optimizer, tr.batch_size, tr.learning_rate) == ("sgd", 8, 0.005)
  assert (tr.momentum, tr.weight_decay, tr.epochs) == (0.9, 1e-4, 12)
  # ATSS's and GFL's test settings; the seed's person protocol.
  ev, p = config.eval, config.proposals
  assert (ev.score_threshold, ev.nms_threshold, ev.max_detections) == (
      0.05,
      0.6,
      100,
  )
  assert (p.pre_nms_top_k, p.nms_threshold, p.post_nms_top_k) == (
      1000,
      0.6,
      1000,
  )
  assert config.data.person_images_only
  assert (config.data.train_split, config.data.val_split) == (
      "train2017",
      "val2017",
  )
  assert not tta.is_augmented(ev)
  # Every key it sets exists in the base config (no typo made a new key).
  base = defaults.base_config().to_dict()
  for section, values in config.to_dict().items():
    if isinstance(values, dict):
      assert set(values) <= set(base[section]), section


def test_canvas_puts_a_4_by_3_image_shorter_side_at_640_to_800():
  config = recipe.get_config()
  size, (lo, hi) = config.data.image_size, config.data.scale_jitter
  shorter = lambda longer: longer * 3 / 4
  assert round(shorter(size * lo)) == 640
  assert round(shorter(size * hi)) == 800
  assert config.eval.image_size == 0  # test on the training canvas: 800
  # Every level's grid, P6 (stride 64) included, covers the canvas.
  levels = setup_model.anchor_levels(config)
  assert [stride for _, stride, _ in levels] == [4, 8, 16, 32, 64]
  assert [hw[0] for hw, _, _ in levels] == [267, 134, 67, 34, 17]
  for (h, _), stride, _ in levels:
    assert (h - 1) * stride < size <= h * stride
  assert setup_model.model_anchors(config).shape == (
      sum(h * w for (h, w), _, _ in levels),
      4,
  )


def test_recipe_model_has_the_atss_head():
  config = setup_model.on_canvas(recipe.get_config(), 128)
  model = setup_model.build_model(config.model)
  shapes = setup_model.variable_shapes(config, model)
  head = shapes["params"]["head"]
  convs = ["conv", "conv1", "conv2", "conv3"]
  assert sorted(head) == sorted(
      convs + ["gn", "gn1", "gn2", "gn3", "cls_logits", "bbox_pred"]
  )
  for name in convs:
    assert set(head[name]) == {"kernel"}  # the GroupNorm's bias replaces it
    assert head[name]["kernel"].shape[-1] == 256
  assert head["cls_logits"]["kernel"].shape == (1, 1, 256, 1)
  # Frozen BatchNorm: the backbone's norms live in batch_stats only.
  assert "bn1" in shapes["batch_stats"]["backbone"]
  assert "bn1" not in shapes["params"]["backbone"]


def test_schedule_resolves_to_epochs_8_and_11_of_12():
  train_cfg = recipe.get_config().train
  for steps_per_epoch in (1, 7, 8014):
    resolved = schedules.resolve_steps(train_cfg, steps_per_epoch)
    assert tuple(resolved.decay_steps) == (
        8 * steps_per_epoch,
        11 * steps_per_epoch,
    )
  # train2017's 64,115 person images at batch 8: 8,014 steps per epoch.
  resolved = schedules.resolve_steps(train_cfg, 8014)
  assert resolved.warmup_steps == 961
  assert resolved.schedule == "warmup_step"


# ----------------------------------------------------------------- TTA option


def test_tta_argument_sets_the_tta_keys_only():
  plain, augmented = recipe.get_config(), recipe.get_config("tta")
  assert tta.is_augmented(augmented.eval)
  assert augmented.eval.hflip_tta
  assert tuple(augmented.eval.tta_scales) == (0.8, 1.0, 1.2)
  differ = {k for k in plain.eval if plain.eval[k] != augmented.eval[k]}
  assert differ == {"hflip_tta", "tta_scales"}
  plain.eval = augmented.eval
  assert plain.to_dict() == augmented.to_dict()
  with pytest.raises(ValueError, match="'tta'"):
    recipe.get_config("flip")


def test_config_flag_takes_the_tta_argument():
  # The flag train.py defines, parsed as from `--config PATH:tta`.
  flag_values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file(
      "config", None, "recipe", flag_values=flag_values, lock_config=True
  )
  flag_values(["train.py", f"--config={RECIPE_FILE}:tta"])
  assert holder.value.eval.hflip_tta
  assert tuple(holder.value.eval.tta_scales) == (0.8, 1.0, 1.2)
  # `--config NAME:tta` of an installed copy resolves to the packaged file.
  assert cli.with_packaged_config_paths(
      ["rpn-train", "--config", "coco_person_r50_fpn_atss:tta"]
  ) == ["rpn-train", "--config", f"{RECIPE_FILE}:tta"]
  assert cli.with_packaged_config_paths(
      ["rpn-train", "--config=coco_person_r50_fpn_atss"]
  ) == ["rpn-train", f"--config={RECIPE_FILE}"]


# ----------------------------------------------------------- model.head_norm


def _features(channels: int) -> jnp.ndarray:
  return jnp.asarray(
      np.random.default_rng(0).normal(size=(2, 5, 5, channels)), jnp.float32
  )


def test_head_norm_none_is_the_head_as_it_was():
  features = _features(8)
  default = RPNHead(num_anchors=3, channels=8, num_convs=2)
  explicit = RPNHead(num_anchors=3, channels=8, num_convs=2, norm="none")
  variables = init_module(default, jax.random.key(0), features)
  assert jax.tree_util.tree_structure(
      variables
  ) == jax.tree_util.tree_structure(
      init_module(explicit, jax.random.key(0), features)
  )
  assert sorted(variables["params"]) == [
      "bbox_pred",
      "cls_logits",
      "conv",
      "conv1",
  ]
  assert set(variables["params"]["conv"]) == {"kernel", "bias"}
  for a, b in zip(
      jax.tree_util.tree_leaves(default.apply(variables, features)),
      jax.tree_util.tree_leaves(explicit.apply(variables, features)),
  ):
    np.testing.assert_array_equal(a, b)
  assert defaults.base_config().model.head_norm == "none"
  assert setup_model.build_model(defaults.base_config().model).head_norm == (
      "none"
  )


def test_head_norm_gn_normalises_each_group_before_the_relu():
  # 48 channels: 24 groups of 2 (the most groups <= 32 that divide 48).
  features = _features(48)
  head = RPNHead(num_anchors=3, channels=48, num_convs=2, norm="gn")
  variables = init_module(head, jax.random.key(0), features)
  params = variables["params"]
  assert set(params["conv"]) == {"kernel"}
  assert params["gn1"]["scale"].shape == (48,)
  _, captured = head.apply(variables, features, capture_intermediates=True)
  seen = captured["intermediates"]
  for conv, norm in (("conv", "gn"), ("conv1", "gn1")):
    # By hand: each image's group of 2 channels x 5 x 5 cells to mean 0,
    # variance 1 (epsilon 1e-5, as torch's GroupNorm); scale 1, bias 0.
    x = np.asarray(seen[conv]["__call__"][0], np.float64)
    groups = x.reshape(2, 25, 24, 2)
    mean = groups.mean(axis=(1, 3), keepdims=True)
    var = groups.var(axis=(1, 3), keepdims=True)
    expected = ((groups - mean) / np.sqrt(var + 1e-5)).reshape(x.shape)
    np.testing.assert_allclose(
        seen[norm]["__call__"][0], expected, rtol=1e-4, atol=1e-4
    )


def test_unknown_head_norm_names_the_key():
  model_cfg = defaults.base_config().model
  model_cfg.head_norm = "bn"
  with pytest.raises(ValueError, match="model.head_norm='bn'"):
    setup_model.build_model(model_cfg)
  with pytest.raises(ValueError, match="model.head_norm"):
    init_module(RPNHead(norm="ln"), jax.random.key(0), _features(8))


# --------------------------------------------------------- model.dtype "auto"


def test_dtype_auto_follows_the_backend(monkeypatch):
  model_cfg = defaults.base_config().model
  model_cfg.dtype = "auto"
  for backend, dtype in (
      ("cpu", jnp.float32),
      ("gpu", jnp.bfloat16),
      ("tpu", jnp.bfloat16),
  ):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert setup_model.build_model(model_cfg).dtype == dtype
  assert setup_model.compute_dtype("float32") == jnp.float32
  assert setup_model.compute_dtype("bfloat16") == jnp.bfloat16
  model_cfg.dtype = "float16"
  with pytest.raises(ValueError, match="model.dtype='float16'"):
    setup_model.build_model(model_cfg)


# ------------------------------------------------ training settings checked


def test_inconsistent_training_settings_name_the_key(tmp_path):
  config = recipe.get_config()
  train_lib.check_config(config)
  config.targets.label_on = "proposals"  # with the recipe's ATSS
  with pytest.raises(ValueError, match="targets.assigner='iou'"):
    train_lib.check_config(config)
  config = recipe.get_config()
  config.targets.normalizer = "samples"  # with num_samples 0
  with pytest.raises(ValueError, match="targets.normalizer='positives'"):
    train_lib.check_config(config)
  config = recipe.get_config()
  config.data.scale_jitter = (1.0, 0.8)
  with pytest.raises(ValueError, match="data.scale_jitter"):
    train_lib.check_config(config)
  # Before any data is read or anything is written.
  workdir = str(tmp_path / "run")
  with pytest.raises(ValueError, match="data.scale_jitter"):
    train_lib.train_and_evaluate(config, workdir)
  assert not os.path.exists(workdir)
  for key, value in (("head_norm", "bn"), ("dtype", "float16")):
    config = recipe.get_config()
    config.model[key] = value
    with pytest.raises(ValueError, match=f"model.{key}={value!r}"):
      train_lib.check_config(config)
  # A focal objectness on sampled anchors is well defined: allowed.
  config = recipe.get_config()
  config.targets.objectness_loss = "focal"
  config.targets.num_samples = 256
  train_lib.check_config(config)


# --------------------------------------------------------------- tiny recipe


def test_tiny_recipe_trains_evaluates_and_exports(tmp_path, capsys):
  config = tiny_config.tiny_coco_recipe(recipe.get_config())
  config.model.head_channels = 16
  config.train.eval_every_epochs = 0
  workdir = str(tmp_path / "run")
  train_lib.train_and_evaluate(config, workdir)
  schedule = [
      l
      for l in capsys.readouterr().out.splitlines()
      if l.startswith("Schedule:")
  ]
  # The fractions of the 2-step run: no warmup step, both decays at step 1.
  assert schedule and "lr x0.1 at step 1, 1" in schedule[0], schedule
  saved = checkpoint_lib.load_config(workdir)
  assert (saved.model.dtype, saved.model.head_norm) == ("auto", "gn")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [json.loads(line)["total"] for line in f]
  assert len(losses) == 2 and all(math.isfinite(v) for v in losses)

  metrics = eval_lib.run_evaluation(
      config, workdir, str(tmp_path / "eval"), num_images_to_draw=0
  )
  assert metrics["step"] == 2
  assert 0.0 <= metrics["AP"] <= 1.0

  variables, _ = checkpoint_lib.restore_variables(saved, workdir)
  assert "gn3" in variables["params"]["head"]
  path = str(tmp_path / "detector.npz")
  export.write_detector_file(path, saved, variables)
  detector = rpn_jax.load_detector(path)
  image = np.zeros((96, 128, 3), np.uint8)
  found = detector(image)
  assert found["boxes"].shape[1:] == (4,)
  assert len(found["scores"]) <= config.eval.max_detections


def test_a_refused_recipe_argument_is_one_line(capsys):
  for argv, message in (
      (
          ["train.py", f"--config={RECIPE_FILE}:flip"],
          "coco_person_r50_fpn_atss takes no argument or 'tta', got 'flip'",
      ),
      (
          ["train.py", "--config", f"{default_recipe.__file__}:x"],
          "takes no argument, got 'x'",
      ),
  ):
    with pytest.raises(SystemExit) as exit_info:
      cli.check_recipe_argument(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1
  # Accepted arguments and files without one pass.
  cli.check_recipe_argument(["train.py", f"--config={RECIPE_FILE}:tta"])
  cli.check_recipe_argument(["train.py", f"--config={RECIPE_FILE}"])
