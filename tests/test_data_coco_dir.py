"""CocoDirDataset on a small folder shaped like the official COCO release."""

import contextlib
import io
import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rpn_jax.data import CorruptImageError, open_dataset
from rpn_jax.data.coco_dir import CocoDirDataset

# The 80 category ids of COCO 2017 (1..90 with gaps).
COCO_IDS = [
    i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
]
SPLIT = "val2017"


def _category(i, person_id):
  name = "person" if i == person_id else f"thing{i}"
  return {"supercategory": "x", "id": i, "name": name}


def _image_entry(image_id, h, w):
  return {
      "license": 3,
      "file_name": f"{image_id:012d}.jpg",
      "coco_url": f"http://images.cocodataset.org/val2017/{image_id}",
      "height": h,
      "width": w,
      "date_captured": "2013-11-14 17:02:52",
      "flickr_url": "http://farm7.staticflickr.com/x.jpg",
      "id": image_id,
  }


def _ann(ann_id, image_id, bbox, cat=1, crowd=0):
  x, y, w, h = bbox
  if crowd:  # uncompressed RLE, as the official files store crowd regions
    segmentation = {"counts": [0, 4, 6], "size": [10, 10]}
  else:
    segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
  return {
      "segmentation": segmentation,
      "area": float(w * h),
      "iscrowd": crowd,
      "image_id": image_id,
      "bbox": list(bbox),
      "category_id": cat,
      "id": ann_id,
  }


def make_coco_dir(root, person_id=1):
  """Images (id: h x w):
  139: 40x60, two persons (one partly outside, clipped), a dog, a crowd
       person region, a degenerate person (w 0.5) and one outside the image
  285: 50x30 grayscale JPEG, one person
  632: 30x30, no annotations at all
  724: 30x40, only a non-person object
  776: 20x20, only a crowd person region
  """
  os.makedirs(os.path.join(root, "annotations"))
  os.makedirs(os.path.join(root, SPLIT))
  sizes = {
      139: (40, 60),
      285: (50, 30),
      632: (30, 30),
      724: (30, 40),
      776: (20, 20),
  }
  rng = np.random.default_rng(0)
  for image_id, (h, w) in sizes.items():
    pixels = rng.integers(0, 256, (h, w, 3), np.uint8)
    picture = Image.fromarray(pixels)
    if image_id == 285:
      picture = picture.convert("L")
    picture.save(os.path.join(root, SPLIT, f"{image_id:012d}.jpg"))
  p = person_id
  anns = [
      _ann(11, 139, (5.5, 4.0, 10.0, 20.0), p),
      _ann(12, 139, (50.0, 30.0, 20.0, 20.0), p),  # clipped to 60 x 40
      _ann(13, 139, (1.0, 1.0, 8.0, 8.0), 18),  # a dog
      _ann(14, 139, (20.0, 2.0, 30.0, 10.0), p, 1),  # crowd
      _ann(15, 139, (3.0, 3.0, 0.5, 9.0), p),  # degenerate: w < 1
      _ann(16, 139, (70.0, 10.0, 5.0, 5.0), p),  # outside the image
      _ann(21, 285, (2.0, 3.0, 20.0, 40.0), p),
      _ann(31, 724, (0.0, 0.0, 5.0, 5.0), 3),
      _ann(41, 776, (0.0, 0.0, 20.0, 20.0), p, 1),
  ]
  data = {
      "info": {"description": "COCO 2017 Dataset", "year": 2017},
      "licenses": [{"url": "http://x", "id": 3, "name": "CC"}],
      "images": [_image_entry(i, *hw) for i, hw in sizes.items()],
      "annotations": anns,
      "categories": [_category(i, p) for i in COCO_IDS],
  }
  with open(
      os.path.join(root, "annotations", f"instances_{SPLIT}.json"), "w"
  ) as f:
    json.dump(data, f)
  return root


@pytest.fixture(name="coco_root")
def fixture_coco_root(tmp_path):
  return make_coco_dir(str(tmp_path / "coco"))


def test_person_images_only_records_and_stats(coco_root):
  ds = CocoDirDataset(coco_root, SPLIT, person_images_only=True)
  # Images with a person annotation (crowd regions count, as in pycocotools'
  # getImgIds(catIds=[person])), in id order.
  assert ds.image_ids == [139, 285, 776]
  assert len(ds) == 3
  _, r = ds.load(0)
  assert (r.image_id, r.height, r.width) == (139, 40, 60)
  np.testing.assert_allclose(r.boxes, [[5.5, 4, 15.5, 24], [50, 30, 60, 40]])
  np.testing.assert_allclose(r.crowd_boxes, [[20, 2, 50, 12]])
  assert r.boxes.dtype == np.float32 and r.crowd_boxes.dtype == np.float32
  _, crowd_only = ds.load(2)
  assert crowd_only.boxes.shape == (0, 4) and len(crowd_only.crowd_boxes) == 1
  assert ds.stats["degenerate_boxes_dropped"] == 2
  assert ds.stats["person_boxes"] == 3 and ds.stats["crowd_boxes"] == 2
  assert ds.stats["images_in_file"] == 5
  assert ds.stats["images_without_person"] == 2
  assert ds.stats["images"] == 3


def test_all_images(coco_root):
  ds = CocoDirDataset(coco_root, SPLIT, person_images_only=False)
  assert ds.image_ids == [139, 285, 632, 724, 776]
  image, r = ds.load(2)
  assert image.shape == (30, 30, 3)
  assert r.boxes.shape == (0, 4) and r.crowd_boxes.shape == (0, 4)


def test_images_decode_to_rgb(coco_root):
  ds = CocoDirDataset(coco_root, SPLIT)
  image, r = ds.load(1)  # stored as grayscale
  assert image.shape == (50, 30, 3) and image.dtype == np.uint8
  np.testing.assert_array_equal(image[..., 0], image[..., 2])
  expected = np.asarray(Image.open(r.source).convert("RGB"))
  np.testing.assert_array_equal(image, expected)


def test_annotation_file_evaluates_perfect_detections(coco_root):
  """COCOeval on ds.annotation_file and ds.image_ids: the ground truth
  itself, submitted as detections, scores AP 1."""
  ds = CocoDirDataset(coco_root, SPLIT)
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(ds.annotation_file)
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": 1,
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in gt.loadAnns(gt.getAnnIds(catIds=[1], iscrowd=False))
    ]
    ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
    ev.params.catIds = [1]
    ev.params.imgIds = ds.image_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  assert ev.stats[0] == pytest.approx(1.0)


def test_person_category_other_than_1_is_remapped(tmp_path, monkeypatch):
  monkeypatch.setenv("RPN_JAX_CACHE", str(tmp_path / "cache"))
  root = make_coco_dir(str(tmp_path / "coco"), person_id=7)
  ds = CocoDirDataset(root, SPLIT)
  assert ds.image_ids == [139, 285, 776]
  assert ds.annotation_file.startswith(str(tmp_path / "cache"))
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(ds.annotation_file)
  assert [c["id"] for c in gt.dataset["categories"]] == [1]
  assert gt.loadCats(1)[0]["name"] == "person"
  assert sorted(a["id"] for a in gt.dataset["annotations"]) == [
      11,
      12,
      14,
      15,
      16,
      21,
      41,
  ]
  assert sorted(gt.getImgIds()) == [139, 285, 776]


def test_corrupt_and_mismatched_images(coco_root):
  ds = CocoDirDataset(coco_root, SPLIT)
  path = os.path.join(coco_root, SPLIT, "000000000139.jpg")
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(CorruptImageError, match="000000000139.jpg"):
    ds.load(0)
  Image.new("RGB", (7, 5)).save(path)
  with pytest.raises(CorruptImageError, match="000000000139.jpg.*annotation"):
    ds.load(0)


def test_missing_paths_are_named(tmp_path, coco_root):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    CocoDirDataset(missing, SPLIT)
  with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
    CocoDirDataset(coco_root, "train2017")
  os.rename(os.path.join(coco_root, SPLIT), os.path.join(coco_root, "moved"))
  with pytest.raises(FileNotFoundError, match=os.path.join(coco_root, SPLIT)):
    CocoDirDataset(coco_root, SPLIT)


@pytest.mark.parametrize(
    "content",
    [
        "not json at all",
        json.dumps([1, 2, 3]),
        json.dumps({"images": [], "annotations": []}),
        json.dumps(
            {
                "images": [{"id": 1}],
                "annotations": [{"id": 1}],
                "categories": [{"id": 1, "name": "person"}],
            }
        ),
    ],
)
def test_not_coco_json_is_a_value_error_naming_the_file(coco_root, content):
  path = os.path.join(coco_root, "annotations", f"instances_{SPLIT}.json")
  with open(path, "w") as f:
    f.write(content)
  with pytest.raises(ValueError, match=f"instances_{SPLIT}.json"):
    CocoDirDataset(coco_root, SPLIT)


def test_no_person_category(coco_root):
  path = os.path.join(coco_root, "annotations", f"instances_{SPLIT}.json")
  with open(path) as f:
    data = json.load(f)
  data["categories"] = [c for c in data["categories"] if c["name"] != "person"]
  with open(path, "w") as f:
    json.dump(data, f)
  with pytest.raises(ValueError, match="person"):
    CocoDirDataset(coco_root, SPLIT)


def _data_cfg(**overrides):
  cfg = ml_collections.ConfigDict(
      {
          "source": "coco_dir",
          "coco_dir": "",
          "train_split": "train2017",
          "val_split": SPLIT,
          "person_images_only": True,
          "tfds_data_dir": "",
      }
  )
  cfg.update(overrides)
  return cfg


def test_open_dataset_dispatch_and_errors(coco_root):
  ds = open_dataset(_data_cfg(coco_dir=coco_root), SPLIT)
  assert isinstance(ds, CocoDirDataset) and len(ds) == 3
  ds = open_dataset(
      _data_cfg(coco_dir=coco_root, person_images_only=False), SPLIT
  )
  assert len(ds) == 5
  with pytest.raises(ValueError, match="data.source"):
    open_dataset(_data_cfg(source="imagenet"), SPLIT)
  with pytest.raises(ValueError, match="data.coco_dir"):
    open_dataset(_data_cfg(), SPLIT)
  with pytest.raises(FileNotFoundError, match="elsewhere"):
    open_dataset(_data_cfg(coco_dir=coco_root + "/elsewhere"), SPLIT)


def test_missing_split_names_the_found_splits_and_the_key(coco_root):
  # The base config's split names on a folder with COCO's own.
  cfg = _data_cfg(coco_dir=coco_root, train_split="train", val_split="val")
  with pytest.raises(FileNotFoundError) as raised:
    open_dataset(cfg, "train")
  assert str(raised.value) == (
      f"no annotations/instances_train.json in {coco_root}; found splits: "
      f"{SPLIT}; set --config.data.train_split"
  )
  os.makedirs(os.path.join(coco_root, "train2017"))  # images, no annotations
  with pytest.raises(
      FileNotFoundError,
      match=f"found splits: {SPLIT}; set " "--config.data.val_split",
  ):
    open_dataset(cfg, "val")
