"""python -m rpn_jax.export and rpn_jax.load_detector: the file, the same
detections as evaluate.py, no training code loaded."""

import collections
import json
import os

import jax
import numpy as np
import pytest

import rpn_jax
from rpn_jax import checkpoint as checkpoint_lib
from rpn_jax import eval_lib
from rpn_jax import export
from rpn_jax import postprocess
from rpn_jax.data import open_dataset
from tests.test_cli import run


@pytest.fixture(scope="module")
def exported(tiny_workdir, tmp_path_factory):
  """The tiny checkpoint exported by the CLI, with an eval override."""
  path = str(tmp_path_factory.mktemp("export") / "detector.npz")
  proc = run(
      "-m",
      "rpn_jax.export",
      f"--ckpt={tiny_workdir}",
      f"--out={path}",
      "--config.eval.score_threshold=0.0",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"to {path}" in proc.stdout and "load_detector" in proc.stdout
  return path


def test_export_holds_inference_variables_and_config(tiny_workdir, exported):
  config = checkpoint_lib.load_config(tiny_workdir)
  variables, _ = checkpoint_lib.restore_variables(config, tiny_workdir)
  with np.load(exported, allow_pickle=False) as data:  # no pickle inside
    names = set(data.files)
    saved = json.loads(str(data["config_json"]))
  assert {n.split("/")[1] for n in names if n.startswith("variables/")} == {
      "params",
      "batch_stats",
  }  # no optimizer state
  assert saved["eval"]["score_threshold"] == 0.0  # the override
  assert saved["model"] == json.loads(config.to_json())["model"]

  read_config, read = export.read_detector_file(exported)
  assert read_config.model == config.model
  flat = jax.tree_util.tree_leaves_with_path(variables)
  assert len(flat) == len(jax.tree_util.tree_leaves(read))
  for (path, leaf), other in zip(flat, jax.tree_util.tree_leaves(read)):
    np.testing.assert_array_equal(np.asarray(leaf), other, err_msg=str(path))


def test_not_a_detector_file_is_named(tmp_path):
  bad = tmp_path / "weights.npz"
  np.savez(bad, x=np.zeros(3))
  with pytest.raises(ValueError, match="weights.npz"):
    rpn_jax.load_detector(str(bad))
  (tmp_path / "junk.npz").write_bytes(b"junk")
  with pytest.raises(ValueError, match="junk.npz"):
    rpn_jax.load_detector(str(tmp_path / "junk.npz"))
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    rpn_jax.load_detector(str(tmp_path / "missing.npz"))


def test_detector_equals_evaluate(tiny_workdir, tmp_path):
  config = checkpoint_lib.load_config(tiny_workdir)
  variables, _ = checkpoint_lib.restore_variables(config, tiny_workdir)
  val = open_dataset(config.data, config.data.val_split)
  props = eval_lib.predict_proposals(config, variables, val)
  # A threshold that keeps about half of the proposals: both sides of it used.
  config.eval.score_threshold = float(np.median(props.scores[props.valid]))
  path = str(tmp_path / "detector.npz")
  export.write_detector_file(path, config, variables)

  out = str(tmp_path / "eval")
  eval_lib.run_evaluation(config, tiny_workdir, out)
  with open(os.path.join(out, "detections.json")) as f:
    from_json = collections.defaultdict(list)
    for d in json.load(f):
      from_json[d["image_id"]].append(d)
  boxes, scores, valid = postprocess.select_detections(
      props,
      config.eval.score_threshold,
      config.eval.nms_threshold,
      config.eval.max_detections,
  )

  detector = rpn_jax.load_detector(path)
  images = [val.load(i)[0] for i in range(len(val))]  # the decode of evaluate
  found = detector(images)
  assert len(found) == len(val.image_ids)
  row_of = {int(i): row for row, i in enumerate(props.image_ids)}
  total = 0
  for image_id, image, dets in zip(val.image_ids, images, found):
    # The detector clips to the image; evaluate's boxes may pass its border by
    # under 0.5 / scale px (the letterboxed size is rounded).
    height, width = image.shape[:2]
    limit = [width, height, width, height]
    row = row_of[image_id]
    expected = np.clip(boxes[row][valid[row]], 0, limit)
    np.testing.assert_allclose(dets["boxes"], expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(
        dets["scores"], scores[row][valid[row]], rtol=0, atol=1e-6
    )
    # evaluate.py's file: the same detections, to its rounding (2 decimals for
    # x, y, w, h; 5 for the score).
    written = from_json[image_id]
    assert len(written) == len(dets["scores"])
    for d, box, score in zip(written, dets["boxes"], dets["scores"]):
      x, y, w, h = d["bbox"]
      np.testing.assert_allclose(
          np.clip([x, y, x + w, y + h], 0, limit), box, rtol=0, atol=0.011
      )
      assert abs(d["score"] - score) <= 5e-6
    total += len(written)
  kept = int(props.valid.sum())
  assert 0 < total < kept  # the threshold and NMS removed some, not all


def test_load_detector_imports_no_training_code(exported, tmp_path):
  code = f"""
import sys
import numpy as np
import rpn_jax
detector = rpn_jax.load_detector({exported!r})
one = detector(np.full((90, 70, 3), 127, np.uint8))
many = detector([np.zeros((30, 200, 3), np.uint8),
                 np.full((300, 40, 3), 200, np.uint8)])
assert set(one) == {{"boxes", "scores"}} and one["boxes"].shape[1] == 4
assert len(many) == 2 and len(one["boxes"]) == len(one["scores"]) > 0
print("loaded:", sorted(m for m in ("rpn_jax.train_lib", "optax", "orbax",
      "rpn_jax.checkpoint", "rpn_jax.eval_lib") if m in sys.modules))
"""
  proc = run("-c", code)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "loaded: []" in proc.stdout
