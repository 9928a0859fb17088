"""A COCO-layout folder as a random-access person dataset.

Layout (the seed's): `<coco_dir>/annotations/instances_<split>.json` and the
images in `<coco_dir>/<split>/<file_name>`. The json is read as it comes from
cocodataset.org (80 categories with id gaps, crowd regions in RLE, images
without annotations, extra fields); only the category named 'person' is used.
"""

import contextlib
import hashlib
import io
import json
import os

import numpy as np
from pycocotools.coco import COCO

from rpn_jax import coco_eval
from rpn_jax.data import annotations
from rpn_jax.data.cache import cache_root
from rpn_jax.data.dataset import ImageRecord
from rpn_jax.data.images import decode_image


def load_coco(path: str) -> COCO:
  """pycocotools' COCO index of `path`, without its progress prints.

  Raises ValueError naming the file when it is not COCO-format json.
  """
  try:
    with open(path) as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a COCO annotation file ({e})") from None
  if not (
      isinstance(data, dict)
      and all(
          isinstance(data.get(k), list)
          for k in ("images", "annotations", "categories")
      )
  ):
    raise ValueError(
        f"{path}: not a COCO annotation file (needs 'images', "
        "'annotations' and 'categories' lists)"
    )
  coco = COCO()
  coco.dataset = data
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      coco.createIndex()
  except (KeyError, TypeError) as e:
    raise ValueError(f"{path}: malformed COCO entry (missing {e})") from None
  return coco


def available_splits(coco_dir: str) -> list[str]:
  """Splits of a COCO folder: each <split> with both
  annotations/instances_<split>.json and a <split>/ image folder, sorted."""
  ann_dir = os.path.join(coco_dir, "annotations")
  if not os.path.isdir(ann_dir):
    return []
  names = [
      f[len("instances_") : -len(".json")]
      for f in os.listdir(ann_dir)
      if f.startswith("instances_") and f.endswith(".json")
  ]
  return sorted(n for n in names if os.path.isdir(os.path.join(coco_dir, n)))


def _found_splits(coco_dir: str) -> str:
  found = available_splits(coco_dir)
  return (
      f"found splits: {', '.join(found)}"
      if found
      else (
          "found no split (annotations/instances_<split>.json with a <split>/ "
          "image folder)"
      )
  )


class CocoDirDataset:
  """Random-access person dataset over a COCO folder (see module docstring).

  person_images_only=True keeps the images with at least one person
  annotation, crowd regions included: pycocotools'
  `getImgIds(catIds=[person])`, the seed's 64,115 train2017 / 2,693 val2017
  images. False keeps every image of the split.
  Records hold non-crowd person boxes in `boxes` and iscrowd person regions in
  `crowd_boxes`, both clipped to the image; boxes under 1 px after clipping
  are dropped and counted in `stats`.
  """

  def __init__(
      self, coco_dir: str, split: str, person_images_only: bool = True
  ):
    root = os.path.abspath(coco_dir)
    if not os.path.isdir(root):
      raise FileNotFoundError(f"COCO directory not found: {root}")
    ann_path = os.path.join(root, "annotations", f"instances_{split}.json")
    if not os.path.isfile(ann_path):
      raise FileNotFoundError(
          f"no annotations/instances_{split}.json in {root}; "
          f"{_found_splits(root)}"
      )
    self.image_dir = os.path.join(root, split)
    if not os.path.isdir(self.image_dir):
      raise FileNotFoundError(
          f"COCO image folder not found: {self.image_dir} (split {split!r}); "
          f"{_found_splits(root)}"
      )
    self.split = split
    coco = load_coco(ann_path)
    person_id = coco_eval.person_category_id(coco, ann_path)
    self.stats = {
        "images_in_file": len(coco.imgs),
        "images_without_person": 0,
        "person_boxes": 0,
        "crowd_boxes": 0,
        "degenerate_boxes_dropped": 0,
        "degenerate_crowd_boxes_dropped": 0,
    }
    self._records: list[ImageRecord] = []
    try:
      for image_id in sorted(coco.imgs):
        record = self._index_image(coco, image_id, person_id)
        if record is None and not person_images_only:
          record = self._empty_record(coco, image_id)
        if record is not None:
          self._records.append(record)
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{ann_path}: malformed COCO entry ({e!r})") from None
    self.image_ids = [r.image_id for r in self._records]
    self.stats["images"] = len(self._records)
    self.annotation_file = ann_path
    if person_id != 1:
      self.annotation_file = self._remapped_ground_truth(
          coco, ann_path, person_id
      )

  def _index_image(
      self, coco: COCO, image_id: int, person_id: int
  ) -> ImageRecord | None:
    """The image's record, or None when it has no person annotation."""
    anns = [
        a
        for a in coco.imgToAnns.get(image_id, [])
        if a["category_id"] == person_id
    ]
    if not anns:
      self.stats["images_without_person"] += 1
      return None
    info = coco.imgs[image_id]
    height, width = int(info["height"]), int(info["width"])
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
    xyxy = annotations.xywh_to_xyxy([a["bbox"] for a in anns])
    boxes, dropped = annotations.clean_boxes(xyxy[~crowd], height, width)
    crowd_boxes, crowd_dropped = annotations.clean_boxes(
        xyxy[crowd], height, width
    )
    self.stats["person_boxes"] += len(boxes)
    self.stats["crowd_boxes"] += len(crowd_boxes)
    self.stats["degenerate_boxes_dropped"] += dropped
    self.stats["degenerate_crowd_boxes_dropped"] += crowd_dropped
    return ImageRecord(
        int(image_id),
        height,
        width,
        boxes,
        crowd_boxes,
        os.path.join(self.image_dir, info["file_name"]),
    )

  def _empty_record(self, coco: COCO, image_id: int) -> ImageRecord:
    info = coco.imgs[image_id]
    empty = np.zeros((0, 4), np.float32)
    return ImageRecord(
        int(image_id),
        int(info["height"]),
        int(info["width"]),
        empty,
        empty,
        os.path.join(self.image_dir, info["file_name"]),
    )

  def _remapped_ground_truth(
      self, coco: COCO, ann_path: str, person_id: int
  ) -> str:
    """A person-only copy of the ground truth with person as category 1
    (what the evaluator expects), cached by the source file's identity."""
    st = os.stat(ann_path)
    key = hashlib.sha1(
        f"{ann_path}:{st.st_size}:{st.st_mtime_ns}".encode()
    ).hexdigest()[:16]
    path = os.path.join(
        cache_root(), "coco_gt", key, f"instances_person_{self.split}.json"
    )
    if not os.path.isfile(path):
      keep = set(self.image_ids)
      images = [coco.imgs[i] for i in self.image_ids]
      anns = [
          a
          for a in coco.dataset["annotations"]
          if a["category_id"] == person_id and a["image_id"] in keep
      ]
      annotations.write_person_ground_truth(path, images, anns)
    return path

  def __len__(self) -> int:
    return len(self._records)

  def load(self, index: int) -> tuple[np.ndarray, ImageRecord]:
    """uint8 [H, W, 3] RGB image and its record; a CorruptImageError
    names the file."""
    record = self._records[index]
    image = decode_image(
        record.source, record.source, (record.height, record.width)
    )
    return image, record
