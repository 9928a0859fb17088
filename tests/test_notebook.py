"""The Colab notebook cannot rot: its code cells run in order, in one namespace,
with the smoke flag (tiny synthetic set, two steps, a local temporary folder),
and must leave the evaluation outputs the notebook then shows."""

import itertools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from rpn_jax import coco_eval

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "reproduce_week7.ipynb"
CELL_TYPES = {"markdown", "code", "raw"}


def load_notebook() -> dict[str, Any]:
  with open(NOTEBOOK, encoding="utf-8") as f:
    return json.load(f)


def cell_source(cell: dict[str, Any]) -> str:
  source = cell["source"]
  return source if isinstance(source, str) else "".join(source)


def test_notebook_is_nbformat_4() -> None:
  """The structure nbformat 4 requires, so Colab and Jupyter open it."""
  notebook = load_notebook()
  assert notebook["nbformat"] == 4
  assert isinstance(notebook["nbformat_minor"], int)
  assert isinstance(notebook["metadata"], dict)
  assert notebook["metadata"]["kernelspec"]["language"] == "python"
  cells = notebook["cells"]
  assert cells and all(isinstance(cell, dict) for cell in cells)
  ids = [cell.get("id") for cell in cells]
  if notebook["nbformat_minor"] >= 5:  # ids are required from 4.5 on
    assert all(isinstance(i, str) and i for i in ids) and len(set(ids)) == len(
        ids
    )
  for cell in cells:
    assert cell["cell_type"] in CELL_TYPES
    assert isinstance(cell["metadata"], dict)
    source = cell["source"]
    assert isinstance(source, str) or all(
        isinstance(line, str) for line in source
    )
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [], "commit the notebook without outputs"
      assert cell["execution_count"] is None
      # Plain Python only: no !shell or %magic lines, so exec() can run it.
      assert not any(
          line.lstrip().startswith(("!", "%"))
          for line in cell_source(cell).splitlines()
      )
  kinds = [cell["cell_type"] for cell in cells]
  assert "markdown" in kinds and "code" in kinds


def test_notebook_smoke_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
  """Every code cell, in order, with RPN_JAX_NOTEBOOK_SMOKE=1 from the repo root."""
  monkeypatch.setenv("RPN_JAX_NOTEBOOK_SMOKE", "1")
  monkeypatch.chdir(ROOT)
  # The smoke run's tempfile.mkdtemp() workdir lands under tmp_path.
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  namespace: dict[str, Any] = {"__name__": "__main__"}
  cells = [c for c in load_notebook()["cells"] if c["cell_type"] == "code"]
  for index, cell in enumerate(cells):
    exec(
        compile(cell_source(cell), f"<notebook code cell {index}>", "exec"),
        namespace,
    )

  eval_dir = Path(namespace["EVAL_DIR"])
  assert tmp_path in eval_dir.parents, "smoke run left the temporary folder"
  assert namespace["WEIGHTS"] == "" and namespace["DATA_FLAGS"] == []

  metrics = json.loads((eval_dir / "metrics.json").read_text())
  assert set(coco_eval.METRIC_KEYS) <= set(metrics)
  assert len(coco_eval.METRIC_KEYS) == 12
  for key in coco_eval.METRIC_KEYS:
    assert -1.0 <= metrics[key] <= 1.0, key  # COCOeval: -1 = nothing to score
  assert metrics["step"] == 2  # the smoke run's max_steps reached train.py
  assert metrics["image_ids"]  # the tiny val split's person images

  rows = json.loads((eval_dir / "sweep.json").read_text())
  pairs = [(row["score_threshold"], row["nms_threshold"]) for row in rows]
  expected = list(
      itertools.product(namespace["SWEEP_SCORES"], namespace["SWEEP_NMS"])
  )
  assert len(rows) == len(expected) == 15
  assert sorted(pairs) == sorted(expected)
  assert all(set(coco_eval.METRIC_KEYS) <= set(row) for row in rows)

  pictures = sorted((eval_dir / "pictures").glob("*.jpg"))
  assert pictures and len(pictures) <= namespace["NUM_PICTURES"]
  assert all(os.path.getsize(p) > 0 for p in pictures)


def _cell_containing(text: str) -> str:
  cells = [
      cell_source(c)
      for c in load_notebook()["cells"]
      if c["cell_type"] == "code"
  ]
  (match,) = (c for c in cells if text in c)
  return match


def test_notebook_stops_before_cloning_the_placeholder() -> None:
  """On Colab, the install cell refuses REPO_URL's placeholder before any
  git clone, naming the parameter to edit."""
  namespace: dict[str, Any] = {"__name__": "__main__"}
  exec("import os, sys", namespace)  # the parameters cell's imports
  exec(_cell_containing("def sh("), namespace)
  calls = []
  namespace.update(
      IN_COLAB=True,
      SMOKE=False,
      DATA="coco_dir",
      REPO_DIR="/nonexistent/rpn_jax",
      REPO_URL="https://github.com/YOUR_NAME/rpn_jax.git",
      sh=lambda *args: calls.append(args),
  )
  with pytest.raises(SystemExit, match="Edit REPO_URL"):
    exec(_cell_containing('git", "clone"'), namespace)
  assert calls == []


def test_notebook_checks_disk_before_downloading(tmp_path: Path) -> None:
  namespace: dict[str, Any] = {"__name__": "__main__"}
  exec("import os, sys", namespace)  # the parameters cell's imports
  exec(_cell_containing("def sh("), namespace)
  calls = []
  namespace.update(
      DATA="coco_dir",
      COCO_DIR=str(tmp_path),
      COCO_URL="http://example.invalid",
      sh=lambda *args: calls.append(args),
  )
  # The disk check of a download that needs 10^6 GB fails before any curl.
  source = _cell_containing("def require_free(")
  source = source.replace(
      '"zips/train2017.zip", 40)', '"zips/train2017.zip", 10**6)'
  )
  (tmp_path / "annotations").mkdir()
  (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
  (tmp_path / "val2017").mkdir()
  with pytest.raises(SystemExit, match="downloading train2017.zip needs about"):
    exec(source, namespace)
  assert calls == []
