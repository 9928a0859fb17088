"""torchvision -> Flax weight conversion: layout, strictness, npz round trip, grafting, CLI."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from rpn_jax import setup_model
from rpn_jax.models.rpn import RPN
from rpn_jax.weights import (
    convert_torchvision_resnet,
    graft_backbone,
    graft_pretrained,
    load_variables,
    main,
    save_variables,
)


@pytest.fixture(scope="module")
def r18_state():
  torch.manual_seed(0)
  return {
      k: v.numpy()
      for k, v in torchvision.models.resnet18(weights=None).state_dict().items()
  }


def rpn_shapes(**kwargs):
  model = RPN(depth=18, num_anchors=3, head_channels=16, **kwargs)
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  )


def test_layout_frozen_bn(r18_state):
  variables = convert_torchvision_resnet(r18_state, "resnet18")
  np.testing.assert_array_equal(
      variables["params"]["layer2"]["0"]["downsample"]["0"]["kernel"],
      r18_state["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0),
  )
  bn = variables["batch_stats"]["layer3"]["1"]["bn2"]
  for flax_name, torch_name in (
      ("scale", "weight"),
      ("bias", "bias"),
      ("mean", "running_mean"),
      ("var", "running_var"),
  ):
    np.testing.assert_array_equal(
        bn[flax_name], r18_state[f"layer3.1.bn2.{torch_name}"]
    )
  assert "bn1" not in variables["params"]


def test_layout_bn(r18_state):
  variables = convert_torchvision_resnet(r18_state, "resnet18", norm="bn")
  assert set(variables["params"]["bn1"]) == {"scale", "bias"}
  assert set(variables["batch_stats"]["bn1"]) == {"mean", "var"}
  np.testing.assert_array_equal(
      variables["params"]["bn1"]["scale"], r18_state["bn1.weight"]
  )


def damaged(state, name, value=None, rename=None):
  state = dict(state)
  tensor = state.pop(name)
  if rename is not None:
    state[rename] = tensor
  if value is not None:
    state[name] = value
  return state


@pytest.mark.parametrize(
    "change,named",
    [
        (dict(name="layer2.0.bn1.running_var"), "layer2.0.bn1.running_var"),
        (
            dict(name="layer3.1.conv2.weight", rename="layer3.1.conv_2.weight"),
            "layer3.1.conv_2.weight",
        ),
        (
            dict(
                name="layer3.1.conv2.weight",
                value=np.zeros((256, 256, 1, 3), np.float32),
            ),
            "layer3.1.conv2.weight",
        ),
        (dict(name="bn1.bias", value=np.zeros((65,), np.float32)), "bn1.bias"),
    ],
)
def test_strict_loading_names_the_key(r18_state, change, named):
  with pytest.raises(ValueError, match=named.replace(".", r"\.")):
    convert_torchvision_resnet(damaged(r18_state, **change), "resnet18")


def test_extra_key_and_wrong_arch_fail(r18_state):
  with pytest.raises(
      ValueError, match=r"unexpected key 'layer5\.0\.conv1\.weight'"
  ):
    convert_torchvision_resnet(
        {**r18_state, "layer5.0.conv1.weight": np.zeros(1)}, "resnet18"
    )
  with pytest.raises(ValueError, match="resnet34"):
    convert_torchvision_resnet(r18_state, "resnet34")
  with pytest.raises(ValueError, match="resnet19"):
    convert_torchvision_resnet(r18_state, "resnet19")


def test_ignores_classifier_and_counters(r18_state):
  assert "fc.weight" in r18_state and "bn1.num_batches_tracked" in r18_state
  trimmed = {
      k: v
      for k, v in r18_state.items()
      if not k.startswith("fc.") and "num_batches" not in k
  }
  a = convert_torchvision_resnet(r18_state, "resnet18")
  b = convert_torchvision_resnet(trimmed, "resnet18")
  assert jax.tree.all(jax.tree.map(np.array_equal, a, b))


def test_save_load_round_trip(r18_state, tmp_path):
  variables = convert_torchvision_resnet(r18_state, "resnet18")
  path = tmp_path / "r18.npz"
  save_variables(path, variables)
  loaded = load_variables(path)
  assert jax.tree.structure(loaded) == jax.tree.structure(variables)
  assert jax.tree.all(jax.tree.map(np.array_equal, loaded, variables))
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    load_variables(tmp_path / "missing.npz")


def test_graft_backbone(r18_state):
  backbone = convert_torchvision_resnet(r18_state, "resnet18")
  target = rpn_shapes()
  grafted = graft_backbone(target, backbone)
  assert grafted["params"]["head"] is target["params"]["head"]
  np.testing.assert_array_equal(
      grafted["params"]["backbone"]["layer4"]["1"]["conv2"]["kernel"],
      backbone["params"]["layer4"]["1"]["conv2"]["kernel"],
  )
  np.testing.assert_array_equal(
      grafted["batch_stats"]["backbone"]["bn1"]["var"],
      backbone["batch_stats"]["bn1"]["var"],
  )
  c4 = graft_backbone(rpn_shapes(feature="C4"), backbone)
  assert "layer4" not in c4["params"]["backbone"]


def test_graft_mismatch_names_the_key(r18_state):
  backbone = convert_torchvision_resnet(r18_state, "resnet18")
  with pytest.raises(
      ValueError, match=r"backbone/(conv1/kernel|bn1/\w+) has shape"
  ):
    graft_backbone(rpn_shapes(width=32), backbone)
  with pytest.raises(ValueError, match="params/backbone/bn1/(scale|bias)"):
    graft_backbone(rpn_shapes(norm="bn"), backbone)
  with pytest.raises(ValueError, match="batch_stats"):
    graft_backbone(rpn_shapes(norm="gn"), backbone)
  extra = jax.tree.map(lambda x: x, backbone)
  extra["params"]["layer1"]["0"]["conv9"] = {"kernel": np.zeros((1, 1, 1, 1))}
  with pytest.raises(ValueError, match="params/layer1/0/conv9/kernel"):
    graft_backbone(rpn_shapes(), extra)


@pytest.mark.parametrize(
    "converted, model_norm", [("frozen_bn", "bn"), ("bn", "frozen_bn")]
)
def test_graft_pretrained_norm_mismatch_names_file_and_flag(
    r18_state, tmp_path, converted, model_norm
):
  """Weights converted for the other norm: one line naming the npz and the --norm to use."""
  path = tmp_path / "r18.npz"
  save_variables(
      path, convert_torchvision_resnet(r18_state, "resnet18", norm=converted)
  )
  with pytest.raises(
      ValueError, match=rf"^{re.escape(str(path))} .*--norm {model_norm}`$"
  ):
    graft_pretrained(rpn_shapes(norm=model_norm), path, model_norm)
  with pytest.raises(ValueError, match=r"model\.norm='gn'"):
    graft_pretrained(rpn_shapes(norm="gn"), path, "gn")
  grafted = graft_pretrained(rpn_shapes(norm=converted), path, converted)
  np.testing.assert_array_equal(
      grafted["batch_stats"]["backbone"]["bn1"]["mean"],
      r18_state["bn1.running_mean"],
  )


def test_init_variables_with_weights_for_the_other_norm(
    r18_state, tmp_path, tiny
):
  """The README slip: a model.norm="bn" recipe given an npz converted without --norm bn."""
  path = tmp_path / "r18.npz"
  save_variables(path, convert_torchvision_resnet(r18_state, "resnet18"))
  tiny.model.pretrained = str(path)
  model = setup_model.build_model(tiny.model)
  with pytest.raises(
      ValueError, match=rf"^{re.escape(str(path))} .*--norm bn`$"
  ):
    setup_model.init_variables(tiny, model, jax.random.key(0))


def test_cli_from_pth(r18_state, tmp_path):
  pth = tmp_path / "r18.pth"
  torch.save({k: torch.from_numpy(v) for k, v in r18_state.items()}, pth)
  out = tmp_path / "r18.npz"
  main(["--arch", "resnet18", "--out", str(out), "--from-pth", str(pth)])
  loaded = load_variables(out)
  assert jax.tree.all(
      jax.tree.map(
          np.array_equal,
          loaded,
          convert_torchvision_resnet(r18_state, "resnet18"),
      )
  )
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    main(
        [
            "--arch",
            "resnet18",
            "--out",
            str(out),
            "--from-pth",
            str(tmp_path / "nope.pth"),
        ]
    )
