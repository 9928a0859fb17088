"""configs/coco_folder.py on a small folder in COCO's own layout."""

import os

import pytest

from rpn_jax import eval_lib
from rpn_jax import train_lib
from rpn_jax.configs import coco_folder
from rpn_jax.data import synthetic


@pytest.fixture(name="coco_2017_dir", scope="module")
def fixture_coco_2017_dir(tmp_path_factory):
  """A few synthetic persons with COCO's split names: annotations/
  instances_{train,val}2017.json beside train2017/ and val2017/."""
  root = str(tmp_path_factory.mktemp("photos") / "coco")
  synthetic.ensure_synthetic_dataset(
      root, num_train=8, num_val=4, seed=3, min_size=96, max_size=128, workers=1
  )
  for split in ("train", "val"):
    os.rename(os.path.join(root, split), os.path.join(root, f"{split}2017"))
    annotations = os.path.join(root, "annotations")
    os.rename(
        os.path.join(annotations, f"instances_{split}.json"),
        os.path.join(annotations, f"instances_{split}2017.json"),
    )
  return root


def test_recipe_trains_and_evaluates_on_a_coco_folder(
    coco_2017_dir, tmp_path, capsys
):
  config = coco_folder.get_config()
  assert (
      config.data.source,
      config.data.train_split,
      config.data.val_split,
  ) == ("coco_dir", "train2017", "val2017")
  config.data.coco_dir = coco_2017_dir
  # Shrunk for a CPU test; the recipe's own schedule (epochs, fractions).
  config.data.image_size = 128
  config.data.max_boxes = 16
  config.data.num_workers = 2
  config.model.width = 8
  config.model.fpn_channels = 16
  config.model.head_channels = 16
  config.proposals.pre_nms_top_k = 300
  config.proposals.post_nms_top_k = 50
  config.train.batch_size = 2
  config.train.max_steps = 2
  config.eval.batch_size = 4
  workdir = str(tmp_path / "run")
  train_lib.train_and_evaluate(config, workdir)
  # 24 epochs of the folder's 2-image batches, cut at 2 steps: the fractions
  # are of the cut run, the quarter-epoch cadence of the folder's epochs.
  schedule = [
      l
      for l in capsys.readouterr().out.splitlines()
      if l.startswith("Schedule:")
  ]
  assert len(schedule) == 1 and "2 steps" in schedule[0], schedule
  metrics = eval_lib.run_evaluation(
      config, workdir, str(tmp_path / "eval"), num_images_to_draw=0
  )
  assert metrics["step"] == 2
  assert 0.0 <= metrics["AP"] <= 1.0
  assert os.path.basename(metrics["annotation_file"]) == (
      "instances_val2017.json"
  )
