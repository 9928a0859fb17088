"""torchvision ResNet state_dict -> Flax variables for `rpn_jax.models.resnet.ResNet`.

Names map one to one: torchvision key `layer1.0.downsample.0.weight` is Flax path
`layer1/0/downsample/0/kernel`. Conv weights go from torch's OIHW to Flax's HWIO.
BatchNorm `weight`, `bias`, `running_mean`, `running_var` become `scale`, `bias`,
`mean`, `var`: all four in "batch_stats" for norm="frozen_bn"; scale and bias in
"params" for norm="bn".

CLI (torch and torchvision are needed only here, imported lazily):
  python -m rpn_jax.weights --arch resnet50 --out PATH [--from-pth FILE] [--norm bn]
Without --from-pth it downloads torchvision's IMAGENET1K_V1 weights (needs internet).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from rpn_jax.models.resnet import ARCH_DEPTHS, ResNet

NORMS = ("frozen_bn", "bn")  # the ResNet norms torchvision weights convert to
# Flax leaf name -> torchvision tensor name.
_TORCH_LEAF = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}


def _ignored(name: str) -> bool:
  """Keys with no counterpart in the trunk: the classifier and BN's step counter."""
  return name.startswith("fc.") or name.endswith("num_batches_tracked")


def torch_name(path: Sequence[str]) -> str:
  """torchvision name of the ResNet variable at Flax `path` (collection dropped):
  ("layer1", "0", "bn1", "scale") -> "layer1.0.bn1.weight"."""
  return ".".join([*path[:-1], _TORCH_LEAF[path[-1]]])


def _torch_shape(
    path: Sequence[str], flax_shape: tuple[int, ...]
) -> tuple[int, ...]:
  if path[-1] == "kernel":
    height, width, fan_in, fan_out = flax_shape
    return (fan_out, fan_in, height, width)
  return tuple(flax_shape)


def _listed(kind: str, names: Sequence[str], limit: int = 5) -> list[str]:
  """'missing key 'a'', ... for the first `limit` names, then a count of the rest."""
  shown = [f"{kind} key {name!r}" for name in names[:limit]]
  if len(names) > limit:
    shown.append(f"{len(names) - limit} more {kind} keys")
  return shown


def convert_torchvision_resnet(
    state_dict: Mapping[str, Any],
    arch: str,
    norm: str = "frozen_bn",
    width: int = 64,
) -> dict[str, Any]:
  """Converts a torchvision ResNet state_dict (name -> array) to Flax variables.

  Returns {"params": ..., "batch_stats": ...} (float32 numpy arrays) that
  `ResNet(depth, width, norm=norm).apply` takes directly (torchvision's
  ResNets have width 64; narrower ones come from the benchmarks). Strict: a missing,
  unexpected or mis-shaped key raises ValueError naming it; `fc.*` and
  `*.num_batches_tracked` are ignored.
  """
  if arch not in ARCH_DEPTHS:
    raise ValueError(
        f"unknown arch {arch!r}; expected one of {sorted(ARCH_DEPTHS)}"
    )
  if norm not in NORMS:
    raise ValueError(
        f"norm {norm!r} has no torchvision weights; use 'frozen_bn' or 'bn'"
    )
  model = ResNet(depth=ARCH_DEPTHS[arch], width=width, norm=norm)
  expected = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  )

  converted = {}
  missing = []
  for key, leaf in traverse_util.flatten_dict(expected).items():
    path = key[1:]  # drop the collection name
    name = torch_name(path)
    if name not in state_dict:
      missing.append(name)
      continue
    value = np.asarray(state_dict[name], dtype=np.float32)
    want = _torch_shape(path, leaf.shape)
    if value.shape != want:
      raise ValueError(
          f"state_dict key {name!r} has shape {value.shape}, {arch} expects {want}"
      )
    converted[key] = (
        value.transpose(2, 3, 1, 0) if path[-1] == "kernel" else value
    )
  used = {torch_name(key[1:]) for key in converted}
  unexpected = sorted(
      name for name in state_dict if name not in used and not _ignored(name)
  )
  if missing or unexpected:
    problems = _listed("missing", missing) + _listed(
        "unexpected", sorted(unexpected)
    )
    raise ValueError(
        f"state_dict does not match {arch}: " + "; ".join(problems)
    )
  return traverse_util.unflatten_dict(converted)


def graft_backbone(
    rpn_variables: Mapping[str, Any], backbone_variables: Mapping[str, Any]
) -> dict[str, Any]:
  """Returns `rpn_variables` with its "backbone" subtrees replaced by `backbone_variables`.

  `backbone_variables` are ResNet variables ({"params", "batch_stats"}, e.g. from
  `convert_torchvision_resnet` or `load_variables`). Every backbone leaf of the RPN
  must be present with the same shape (ValueError naming the key otherwise).
  Modules the RPN does not build (layer4 of a C4 model) are skipped; any other
  extra key is an error, since it signals a norm or depth mismatch.
  """
  targets = {
      col: traverse_util.flatten_dict(tree["backbone"])
      for col, tree in rpn_variables.items()
      if "backbone" in tree
  }
  if set(targets) != set(backbone_variables):
    raise ValueError(
        f"backbone variables have collections {sorted(backbone_variables)}, "
        f"the RPN backbone has {sorted(targets)}"
    )
  sources = {
      col: traverse_util.flatten_dict(tree)
      for col, tree in backbone_variables.items()
  }
  for col, target in targets.items():
    for path, leaf in target.items():
      name = "/".join((col, "backbone", *path))
      if path not in sources[col]:
        raise ValueError(f"backbone variables are missing {name}")
      if tuple(sources[col][path].shape) != tuple(leaf.shape):
        raise ValueError(
            f"{name} has shape {tuple(sources[col][path].shape)} in the backbone "
            f"variables, the RPN expects {tuple(leaf.shape)}"
        )
  target_modules = {path[0] for target in targets.values() for path in target}
  for col, source in sources.items():
    for path in source:
      if path not in targets[col] and path[0] in target_modules:
        raise ValueError(
            f"backbone variables have unexpected key {'/'.join((col, *path))}"
        )
  result = dict(rpn_variables)
  for col, target in targets.items():
    grafted = {
        path: jnp.asarray(sources[col][path], dtype=leaf.dtype)
        for path, leaf in target.items()
    }
    result[col] = {
        **rpn_variables[col],
        "backbone": traverse_util.unflatten_dict(grafted),
    }
  return result


def save_variables(
    path: str | os.PathLike, variables: Mapping[str, Any]
) -> None:
  """Writes a nested dict of arrays to `path` as .npz with '/'-joined keys."""
  flat = traverse_util.flatten_dict(variables, sep="/")
  with open(path, "wb") as f:
    np.savez(f, **{key: np.asarray(value) for key, value in flat.items()})


def load_variables(path: str | os.PathLike) -> dict[str, Any]:
  """Reads variables written by `save_variables` (numpy arrays, nested dicts)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"no variables file at {path}")
  with np.load(path) as data:
    return traverse_util.unflatten_dict(
        {key: data[key] for key in data.files}, sep="/"
    )


def graft_pretrained(
    rpn_variables: Mapping[str, Any], path: str | os.PathLike, norm: str
) -> dict[str, Any]:
  """`graft_backbone` with the variables in the .npz at `path`, for a model with `norm`.

  A file converted for the other norm (the stem's BatchNorm `bn1` has params for
  "bn", only batch_stats for "frozen_bn") is a ValueError naming the file and the
  `--norm` to convert it with, before grafting would fail on a missing key.
  """
  if norm not in NORMS:
    raise ValueError(
        f"{path}: model.norm={norm!r} has no torchvision weights; use one of {NORMS}"
    )
  backbone = load_variables(path)
  converted = "bn" if "bn1" in backbone.get("params", {}) else "frozen_bn"
  if converted != norm:
    raise ValueError(
        f"{path} holds norm={converted!r} weights but model.norm={norm!r}; convert them "
        f"with `python -m rpn_jax.weights --norm {norm}`"
    )
  return graft_backbone(rpn_variables, backbone)


def _torch_state_dict(arch: str, pth: str | None) -> dict[str, np.ndarray]:
  """State dict from a .pth file, or torchvision's IMAGENET1K_V1 download."""
  import torch  # noqa: PLC0415  (optional dependency: CLI only)
  import torchvision  # noqa: PLC0415

  if pth is None:
    state = torchvision.models.get_model(
        arch, weights="IMAGENET1K_V1"
    ).state_dict()
  else:
    if not os.path.exists(pth):
      raise FileNotFoundError(f"no checkpoint at {pth}")
    state = torch.load(pth, map_location="cpu", weights_only=True)
  return {name: tensor.detach().cpu().numpy() for name, tensor in state.items()}


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m rpn_jax.weights",
      description="Convert torchvision ResNet weights to an .npz of Flax variables.",
  )
  parser.add_argument("--arch", required=True, choices=sorted(ARCH_DEPTHS))
  parser.add_argument("--out", required=True, help="output .npz path")
  parser.add_argument(
      "--from-pth",
      default=None,
      help="torchvision state_dict file; default: download",
  )
  parser.add_argument("--norm", default="frozen_bn", choices=NORMS)
  args = parser.parse_args(argv)
  variables = convert_torchvision_resnet(
      _torch_state_dict(args.arch, args.from_pth), args.arch, args.norm
  )
  save_variables(args.out, variables)
  print(f"wrote {args.arch} ({args.norm}) variables to {args.out}")


if __name__ == "__main__":
  main()
