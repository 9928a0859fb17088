"""The synthetic COCO-layout generator: determinism, tight boxes, variety."""

import contextlib
import io
import json
import os

import ml_collections
import numpy as np
import pytest
from pycocotools.coco import COCO

from rpn_jax.data import open_dataset, synthetic
from rpn_jax.data.coco_dir import CocoDirDataset

SMALL = dict(num_train=12, num_val=4, seed=3, min_size=64, max_size=128)


def _files(root):
  out = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def _coco(path):
  with contextlib.redirect_stdout(io.StringIO()):
    return COCO(path)


def test_same_seed_same_bytes(tmp_path):
  a = synthetic.ensure_synthetic_dataset(str(tmp_path / "a"), **SMALL)
  b = synthetic.ensure_synthetic_dataset(str(tmp_path / "b"), **SMALL)
  files_a, files_b = _files(a), _files(b)
  assert len([f for f in files_a if f.endswith(".jpg")]) == 16
  assert files_a == files_b
  c = synthetic.ensure_synthetic_dataset(
      str(tmp_path / "c"), **dict(SMALL, seed=4)
  )
  assert (
      _files(c)["annotations/instances_train.json"]
      != files_a["annotations/instances_train.json"]
  )


def test_worker_processes_draw_the_same_images(tmp_path):
  params = dict(num_train=70, num_val=0, seed=1, min_size=32, max_size=48)
  serial = synthetic.ensure_synthetic_dataset(
      str(tmp_path / "s"), **params, workers=1
  )
  parallel = synthetic.ensure_synthetic_dataset(
      str(tmp_path / "p"), **params, workers=2
  )
  assert _files(serial) == _files(parallel)
  assert not [f for f in os.listdir(parallel) if f.startswith("_")]


def test_existing_dataset_is_reused_not_redrawn(tmp_path):
  root = synthetic.ensure_synthetic_dataset(str(tmp_path / "d"), **SMALL)
  marker = os.path.join(root, "annotations", "instances_val.json")
  before = os.stat(marker).st_mtime_ns
  assert synthetic.ensure_synthetic_dataset(root, **SMALL) == root
  assert os.stat(marker).st_mtime_ns == before
  with pytest.raises(FileExistsError, match=root):
    synthetic.ensure_synthetic_dataset(root, **dict(SMALL, seed=9))


def test_annotations_are_coco_and_boxes_inside_images(tmp_path):
  root = synthetic.ensure_synthetic_dataset(str(tmp_path / "d"), **SMALL)
  for split, count in (("train", 12), ("val", 4)):
    path = os.path.join(root, "annotations", f"instances_{split}.json")
    coco = _coco(path)
    with open(path) as f:
      raw = json.load(f)
    assert {"info", "licenses", "images", "annotations", "categories"} <= set(
        raw
    )
    ids = [c["id"] for c in raw["categories"]]
    assert 1 in ids and ids != list(range(1, len(ids) + 1))  # gaps
    assert coco.loadCats(1)[0]["name"] == "person"
    assert len(coco.getImgIds()) == count
    ann_ids = [a["id"] for a in raw["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    for ann in raw["annotations"]:
      image = coco.imgs[ann["image_id"]]
      x, y, w, h = ann["bbox"]
      assert w >= 1 and h >= 1 and x >= 0 and y >= 0
      assert x + w <= image["width"] and y + h <= image["height"]
      assert 0 < ann["area"] <= w * h
      assert ann["iscrowd"] in (0, 1)
    for image in raw["images"]:
      assert 64 <= image["height"] <= 128 and 64 <= image["width"] <= 128
      assert os.path.isfile(os.path.join(root, split, image["file_name"]))
  # Splits do not share image ids.
  train = _coco(os.path.join(root, "annotations", "instances_train.json"))
  val = _coco(os.path.join(root, "annotations", "instances_val.json"))
  assert not set(train.getImgIds()) & set(val.getImgIds())


def test_boxes_are_tight_around_visible_pixels():
  for index in range(20):
    picture, owner, objects = synthetic.render_image(5, "train", index, 64, 160)
    height, width = picture.shape[:2]
    for obj in objects:
      x1, y1, x2, y2 = (int(v) for v in obj["box"])
      assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
      ys, xs = np.nonzero(owner == obj["owner"])
      assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (
          x1,
          y1,
          x2,
          y2,
      )
      assert obj["area"] == len(ys)


def test_written_annotations_match_the_renderer(tmp_path):
  root = synthetic.ensure_synthetic_dataset(str(tmp_path / "d"), **SMALL)
  coco = _coco(os.path.join(root, "annotations", "instances_train.json"))
  for index in range(12):
    picture, _, objects = synthetic.render_image(
        SMALL["seed"], "train", index, SMALL["min_size"], SMALL["max_size"]
    )
    image_id = synthetic.image_id_of("train", index)
    info = coco.imgs[image_id]
    assert (info["height"], info["width"]) == picture.shape[:2]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    written = sorted(
        (a["category_id"], a["iscrowd"], tuple(a["bbox"])) for a in anns
    )
    drawn = sorted(
        (
            o["category_id"],
            o["iscrowd"],
            (
                o["box"][0],
                o["box"][1],
                o["box"][2] - o["box"][0],
                o["box"][3] - o["box"][1],
            ),
        )
        for o in objects
    )
    assert written == drawn


def test_variety_of_the_set():
  """Over 60 images: both orientations, people from tiny to most of the
  image, cut by the border, crowds, other categories, person-free images."""
  heights, cut, crowd, others, empty, portrait, landscape = (
      [],
      0,
      0,
      0,
      0,
      0,
      0,
  )
  for index in range(60):
    picture, _, objects = synthetic.render_image(0, "train", index, 192, 320)
    h, w = picture.shape[:2]
    portrait += h > w
    landscape += w > h
    people = [o for o in objects if o["category_id"] == 1]
    empty += not people
    crowd += any(o["iscrowd"] for o in people)
    others += any(o["category_id"] != 1 for o in objects)
    for o in people:
      if not o["iscrowd"]:
        x1, y1, x2, y2 = o["box"]
        heights.append(max(x2 - x1, y2 - y1) / max(h, w))
        cut += x1 == 0 or y1 == 0 or x2 == w or y2 == h
  assert portrait and landscape and crowd and others and empty
  assert cut >= 5
  assert min(heights) < 0.1 and max(heights) > 0.6


def test_open_dataset_generates_into_the_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("RPN_JAX_CACHE", str(tmp_path / "cache"))
  cfg = ml_collections.ConfigDict(
      {
          "source": "synthetic",
          "coco_dir": "",
          "person_images_only": True,
          "tfds_data_dir": "",
          "synthetic": dict(
              num_train=10, num_val=3, seed=0, min_size=48, max_size=64
          ),
      }
  )
  ds = open_dataset(cfg, "train")
  assert isinstance(ds, CocoDirDataset)
  expected = tmp_path / "cache" / synthetic.dataset_name(10, 3, 0, 48, 64)
  assert ds.annotation_file == str(
      expected / "annotations" / "instances_train.json"
  )
  assert f"v{synthetic.GENERATOR_VERSION}" in expected.name
  assert 0 < len(ds) <= 10
  image, record = ds.load(0)
  assert image.shape == (record.height, record.width, 3)
  val = open_dataset(cfg, "val")
  assert 0 < len(val) <= 3
  cfg.coco_dir = str(expected)
  assert open_dataset(cfg, "train").image_ids == ds.image_ids
