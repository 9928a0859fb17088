"""Every config key the package reads exists in defaults.base_config().

A static walk over rpn_jax/ with `ast`: each attribute chain on the config
(`config.train.epochs`), on a section under its conventional parameter name
(`data_cfg.image_size`) or on a local alias of a section
(`t = config.targets; t.box_weights`) must name a key that base_config() holds,
so that a recipe, a restored config.json or a user's override always has it.
"""

import ast
import pathlib
from collections.abc import Iterator

import ml_collections

from rpn_jax import defaults

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "rpn_jax"
# Names that hold the whole config.
ROOT_NAMES = ("config",)
# Parameters that hold one section, by name (annotated or not).
SECTION_NAMES = {
    "data_cfg": ("data",),
    "model_cfg": ("model",),
    "train_cfg": ("train",),
}
# Other parameters annotated ml_collections.ConfigDict: the section each is.
ANNOTATED_SECTIONS = {
    "ev": ("eval",),  # rpn_jax/tta.py
    "resolved": ("train",),  # rpn_jax/schedules.py, after resolve_steps
}
# ConfigDict's own methods and properties, not keys.
METHODS = frozenset(
    name for name in dir(ml_collections.ConfigDict) if not name.startswith("__")
)


def _chain(node: ast.Attribute) -> tuple[str, list[str]] | None:
  """`a.b.c` -> ("a", ["b", "c"]); None unless it starts at a plain name."""
  attrs = []
  while isinstance(node, ast.Attribute):
    attrs.append(node.attr)
    node = node.value
  if not isinstance(node, ast.Name):
    return None
  return node.id, attrs[::-1]


def _is_config_dict(annotation: ast.expr | None) -> bool:
  return annotation is not None and "ConfigDict" in ast.unparse(annotation)


class _Reads(ast.NodeVisitor):
  """Collects (line, dotted key path) of every config access in one file, and
  the ConfigDict-annotated parameters it cannot place in a section."""

  def __init__(self):
    self.scopes = [dict(SECTION_NAMES, **{n: () for n in ROOT_NAMES})]
    self.reads: list[tuple[int, tuple[str, ...]]] = []
    self.unknown: list[tuple[int, str]] = []

  def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
    scope = dict(self.scopes[-1])
    args = node.args
    for arg in args.posonlyargs + args.args + args.kwonlyargs:
      if arg.arg in ROOT_NAMES or arg.arg in SECTION_NAMES:
        scope[arg.arg] = () if arg.arg in ROOT_NAMES else SECTION_NAMES[arg.arg]
      elif _is_config_dict(arg.annotation):
        if arg.arg in ANNOTATED_SECTIONS:
          scope[arg.arg] = ANNOTATED_SECTIONS[arg.arg]
        else:
          self.unknown.append((node.lineno, arg.arg))
      else:  # a parameter shadows an alias of the enclosing scope
        scope.pop(arg.arg, None)
    # Aliases assigned anywhere in the body (`t = config.targets`).
    for child in ast.walk(node):
      if (
          isinstance(child, ast.Assign)
          and len(child.targets) == 1
          and isinstance(child.targets[0], ast.Name)
          and isinstance(child.value, ast.Attribute)
      ):
        chain = _chain(child.value)
        if chain and chain[0] in scope:
          scope[child.targets[0].id] = scope[chain[0]] + tuple(chain[1])
    self.scopes.append(scope)
    self.generic_visit(node)
    self.scopes.pop()

  visit_FunctionDef = visit_AsyncFunctionDef = _function

  def visit_Attribute(self, node: ast.Attribute) -> None:
    chain = _chain(node)
    if chain and chain[0] in self.scopes[-1]:
      self.reads.append(
          (node.lineno, self.scopes[-1][chain[0]] + tuple(chain[1]))
      )
      return  # the inner attributes are prefixes of this chain
    self.generic_visit(node)


def _missing(
    config: ml_collections.ConfigDict, path: tuple[str, ...]
) -> str | None:
  """The first key of `path` absent from `config` (as a dotted prefix), None
  when the path reads existing keys (down to a value, or a method)."""
  node = config
  for i, key in enumerate(path):
    if not isinstance(node, ml_collections.ConfigDict) or key in METHODS:
      return None
    if key not in node:
      return ".".join(path[: i + 1])
    node = node[key]
  return None


def config_reads(
    source: str,
) -> tuple[list[tuple[int, tuple[str, ...]]], list[tuple[int, str]]]:
  visitor = _Reads()
  visitor.visit(ast.parse(source))
  return visitor.reads, visitor.unknown


def _package_files() -> Iterator[pathlib.Path]:
  return sorted(PACKAGE.rglob("*.py"))


def test_every_config_key_read_in_the_package_is_a_default():
  base = defaults.base_config()
  missing, unknown, count = [], [], 0
  for path in _package_files():
    reads, strays = config_reads(path.read_text())
    name = path.relative_to(PACKAGE.parent)
    count += len(reads)
    missing += [
        f"{name}:{line}: {key}"
        for line, p in reads
        if (key := _missing(base, p))
    ]
    unknown += [f"{name}:{line}: {arg}" for line, arg in strays]
  assert not missing, "keys not in defaults.base_config():\n" + "\n".join(
      missing
  )
  assert not unknown, (
      "ConfigDict parameters of an unknown section (add them "
      "to ANNOTATED_SECTIONS):\n" + "\n".join(unknown)
  )
  assert count > 200  # the walk sees the package's reads


def test_the_walk_finds_a_missing_key_through_each_kind_of_name():
  source = """
def f(config, data_cfg, ev: ml_collections.ConfigDict):
  t = config.targets
  return (config.train.epochs, config.train.no_such_key, data_cfg.synthetic.nope,
          t.box_weights, t.nope, ev.tta_scales, ev.nope, config.model.to_dict(),
          config.nope.deeper, config.eval.tta_scales.index)

def g(t):  # a parameter, not f's alias
  return t.anything
"""
  reads, unknown = config_reads(source)
  base = defaults.base_config()
  assert [key for _, p in reads if (key := _missing(base, p))] == [
      "train.no_such_key",
      "data.synthetic.nope",
      "targets.nope",
      "eval.nope",
      "nope",
  ]
  assert not unknown
  _, unknown = config_reads("def h(cfg: ml_collections.ConfigDict): pass")
  assert unknown == [(1, "cfg")]
