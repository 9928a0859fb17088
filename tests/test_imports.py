"""No import cycle in rpn_jax: every module imports on its own, and the graph
of module-level imports (function-level ones left out) is acyclic."""

import ast
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rpn_jax"

# One interpreter imports each module in turn after forgetting every rpn_jax
# module (and the absl flags the command modules define), so that each import
# starts from nothing of the package, as `python -c "import rpn_jax.X"` would.
_IMPORT_EACH = """
import importlib, json, pkgutil, sys, traceback
from absl import flags
import rpn_jax
names = ["rpn_jax"] + sorted(
    m.name for m in pkgutil.walk_packages(rpn_jax.__path__, "rpn_jax."))
failed = {}
for name in names:
  for module in [m for m in sys.modules if m.split(".")[0] == "rpn_jax"]:
    del sys.modules[module]
  for module, defined in list(flags.FLAGS.flags_by_module_dict().items()):
    if module.split(".")[0] == "rpn_jax":
      for flag in list(defined):
        if flag.name in flags.FLAGS:
          delattr(flags.FLAGS, flag.name)
  try:
    importlib.import_module(name)
  except Exception:
    failed[name] = traceback.format_exc(limit=-3)
print(json.dumps({"imported": names, "failed": failed}))
"""


def test_every_module_imports_alone():
  proc = subprocess.run(
      [sys.executable, "-c", _IMPORT_EACH],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert not out["failed"], "\n".join(
      f"{name}:\n{tb}" for name, tb in out["failed"].items()
  )
  assert set(out["imported"]) == set(_modules())


def _modules() -> dict[str, pathlib.Path]:
  """Dotted name -> file of every module under rpn_jax/ (packages by their
  __init__.py)."""
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def _is_type_checking(node: ast.If) -> bool:
  return "TYPE_CHECKING" in ast.unparse(node.test)


def _module_level_imports(
    tree: ast.Module,
) -> list[ast.Import | ast.ImportFrom]:
  """Import statements that run when the module is imported: at top level,
  in top-level if / try / with blocks and class bodies; not in functions,
  not under `if TYPE_CHECKING:`."""
  found, todo = [], list(tree.body)
  while todo:
    node = todo.pop()
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      found.append(node)
    elif isinstance(node, ast.If):
      todo += (
          node.orelse if _is_type_checking(node) else node.body + node.orelse
      )
    elif isinstance(
        node, (ast.Try, ast.With, ast.ClassDef, ast.For, ast.While)
    ):
      for field in ("body", "orelse", "finalbody", "handlers"):
        todo += getattr(node, field, [])
    elif isinstance(node, ast.ExceptHandler):
      todo += node.body
  return found


def _imported(
    name: str,
    node: ast.Import | ast.ImportFrom,
    modules: dict[str, pathlib.Path],
) -> set[str]:
  """The rpn_jax modules that `node`, in module `name`, runs: each imported
  module, `from P import m` of a submodule m included, and the packages above
  it outside `name`'s own (a package's __init__ runs first; the importer's
  own package is already being imported)."""
  if isinstance(node, ast.Import):
    targets = [alias.name for alias in node.names]
  else:
    base = node.module or ""
    if node.level:  # relative: from the importer's package
      package = (
          name
          if modules[name].name == "__init__.py"
          else name.rpartition(".")[0]
      )
      for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
      base = f"{package}.{base}" if base else package
    targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
  out = set()
  for target in targets:
    parts = target.split(".")
    for i in range(1, len(parts) + 1):
      module = ".".join(parts[:i])
      if module in modules and not (name + ".").startswith(module + "."):
        out.add(module)
  out.discard(name)
  return out


def import_graph() -> dict[str, set[str]]:
  modules = _modules()
  return {
      name: set().union(
          *(
              _imported(name, node, modules)
              for node in _module_level_imports(ast.parse(path.read_text()))
          )
      )
      for name, path in modules.items()
  }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` as [a, b, ..., a], or None."""
  state, stack = {}, []

  def visit(node: str) -> list[str] | None:
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt) :] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_module_level_import_graph_has_no_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [
      "a",
      "b",
      "c",
      "a",
  ]
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
  graph = import_graph()
  # The walk sees the package's imports: the module layers of docs/design.md.
  assert {"rpn_jax.checkpoint", "rpn_jax.coco_eval", "rpn_jax.setup_model"} <= (
      graph["rpn_jax.eval_lib"]
  )
  assert "rpn_jax.data" in graph["rpn_jax.train_lib"]
  assert "rpn_jax.data" not in graph["rpn_jax.data.coco_dir"]
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for nxt in graph[todo.pop()] - seen:
      seen.add(nxt)
      todo.append(nxt)
  return seen


def test_evaluation_and_restore_import_no_training_code():
  """Restoring variables reads the checkpoint without building an optimizer:
  evaluation imports neither the training loop nor the optimizer, while the
  training loop's validation imports evaluation."""
  graph = import_graph()
  training = {"rpn_jax.train_lib", "rpn_jax.optimizer"}
  assert not _reachable(graph, "rpn_jax.eval_lib") & training
  assert not _reachable(graph, "rpn_jax.checkpoint") & training
  assert "rpn_jax.eval_lib" in graph["rpn_jax.train_lib"]
  code = (
      "import sys; import rpn_jax.eval_lib, rpn_jax.commands.predict; "
      "print(sorted(m for m in ('optax', 'rpn_jax.train_lib', "
      "'rpn_jax.optimizer') if m in sys.modules))"
  )
  proc = subprocess.run(
      [sys.executable, "-c", code],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().splitlines()[-1] == "[]"
