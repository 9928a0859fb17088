"""tensorflow-datasets `coco/2017` as a random-access person dataset.

Random access comes from `tfds.data_source`, which needs the dataset prepared
in the array_record format, through the Python API (the `tfds build` CLI needs
apache_beam for this):

    tfds.builder('coco/2017', data_dir=DIR, file_format='array_record').download_and_prepare()

TensorFlow is imported only when this source is used (it is an optional
extra: `pip install -e '.[tfds]'`), with GPUs hidden from it so it leaves the
accelerator to JAX. Images are decoded by PIL, like the other sources.

tfds stores boxes as normalised [ymin, xmin, ymax, xmax] and labels as indices
into the 80 COCO category names (person is index 0: the categories sorted by
id); the first scan of a split converts them to pixels with the image size
read from each JPEG header and caches that index, plus a COCO ground-truth
json of the split's person boxes for COCOeval, under the cache root.
"""

import hashlib
import logging
import os

import numpy as np

from rpn_jax.data import annotations
from rpn_jax.data.cache import cache_root
from rpn_jax.data.dataset import CorruptImageError, ImageRecord
from rpn_jax.data.images import decode_image, image_size

# The seed's COCO folder split names, accepted as aliases of tfds's.
SPLIT_ALIASES = {
    "train2017": "train",
    "val2017": "validation",
    "test2017": "test",
}
_INDEX_VERSION = 1


def import_tfds():
  """tensorflow_datasets, with TensorFlow kept off the GPUs."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "data.source='tfds' needs tensorflow and "
        "tensorflow-datasets: pip install -e '.[tfds]'"
    ) from e
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    logging.warning(
        "TensorFlow was initialised before rpn_jax could hide "
        "the GPUs from it; it may reserve accelerator memory"
    )
  return tfds


def _person_label(info) -> int:
  names = list(info.features["objects"]["label"].names)
  return names.index("person") if "person" in names else 0


def _scan(source, person_label: int, description: str) -> dict[str, np.ndarray]:
  """Reads every record once: ids, sizes and person boxes in pixels."""
  image_ids, heights, widths, files, starts = [], [], [], [], [0]
  boxes, crowd, area, ann_ids = [], [], [], []
  logging.info("Indexing %s (%d records, once)", description, len(source))
  for index in range(len(source)):
    example = source[index]
    file_name = example["image/filename"]
    if isinstance(file_name, bytes):
      file_name = file_name.decode()
    try:
      height, width = image_size(
          example["image"], f"{description} record {index} ({file_name})"
      )
    except CorruptImageError as e:
      logging.warning("%s; the image is left out", e)
      height, width = 0, 0
    objects = example["objects"]
    person = np.asarray(objects["label"]).reshape(-1) == person_label
    norm = np.asarray(objects["bbox"], np.float64).reshape(-1, 4)[person]
    scale = np.array([height, width, height, width], np.float64)
    boxes.append((norm * scale)[:, [1, 0, 3, 2]].astype(np.float32))
    crowd.append(np.asarray(objects["is_crowd"], bool).reshape(-1)[person])
    area.append(np.asarray(objects["area"], np.int64).reshape(-1)[person])
    ann_ids.append(np.asarray(objects["id"], np.int64).reshape(-1)[person])
    image_ids.append(int(example["image/id"]))
    heights.append(height)
    widths.append(width)
    files.append(file_name)
    starts.append(starts[-1] + int(person.sum()))
  return {
      "image_id": np.asarray(image_ids, np.int64),
      "height": np.asarray(heights, np.int64),
      "width": np.asarray(widths, np.int64),
      "file_name": np.asarray(files, str),
      "start": np.asarray(starts, np.int64),
      "boxes": np.concatenate(boxes or [np.zeros((0, 4), np.float32)]),
      "crowd": np.concatenate(crowd or [np.zeros(0, bool)]),
      "area": np.concatenate(area or [np.zeros(0, np.int64)]),
      "ann_id": np.concatenate(ann_ids or [np.zeros(0, np.int64)]),
  }


class TfdsCocoDataset:
  """Random-access person dataset over tfds `coco/2017` (array_record).

  split: tfds split name ('train', 'validation') or the COCO folder name
  ('train2017', 'val2017'). person_images_only and the record layout are as
  in coco_dir.CocoDirDataset; index i is the i-th kept record in tfds order.
  """

  def __init__(
      self,
      split: str,
      data_dir: str | None = None,
      person_images_only: bool = True,
      name: str = "coco/2017",
  ):
    tfds = import_tfds()
    self.split = SPLIT_ALIASES.get(split, split)
    self.name = name
    where = data_dir or "the default tfds data_dir"
    try:
      self._source = tfds.data_source(
          name,
          split=self.split,
          data_dir=data_dir or None,
          download=False,
          decoders={"image": tfds.decode.SkipDecoding()},
      )
    except NotImplementedError:
      raise FileNotFoundError(
          f"tfds {name} has no random-access (array_record) copy in {where};"
          f" build one: tfds.builder({name!r}"
          f"{f', data_dir={data_dir!r}' if data_dir else ''},"
          f" file_format='array_record').download_and_prepare()"
      ) from None
    info = self._source.dataset_info
    description = f"tfds {name} {self.split}"
    # Keyed by where the prepared data really is (tfds resolves the default).
    key = hashlib.sha1(str(info.data_dir).encode()).hexdigest()[:12]
    self._cache = os.path.join(
        cache_root(),
        "tfds",
        f"{name.replace('/', '_')}_{info.version}_" f"{self.split}_{key}",
    )
    index = self._load_index(_person_label(info), description)
    self._build_records(index, person_images_only, description)
    suffix = "person_images" if person_images_only else "all_images"
    self.annotation_file = os.path.join(self._cache, f"instances_{suffix}.json")
    if not os.path.isfile(self.annotation_file):
      self._write_ground_truth(index)

  def _load_index(
      self, person_label: int, description: str
  ) -> dict[str, np.ndarray]:
    """The cached index, else a new scan (dropping ground-truth files made
    from an older one)."""
    path = os.path.join(self._cache, f"index_v{_INDEX_VERSION}.npz")
    if os.path.isfile(path):
      with np.load(path) as f:
        index = dict(f)
      if len(index["image_id"]) == len(self._source):
        return index
    index = _scan(self._source, person_label, description)
    os.makedirs(self._cache, exist_ok=True)
    for stale in os.listdir(self._cache):
      if stale.endswith(".json"):
        os.remove(os.path.join(self._cache, stale))
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, **index)
    os.replace(tmp, path)
    return index

  def _build_records(
      self, index, person_images_only: bool, description: str
  ) -> None:
    self.stats = {
        "images_in_split": len(index["image_id"]),
        "unreadable_images": 0,
        "images_without_person": 0,
        "person_boxes": 0,
        "crowd_boxes": 0,
        "degenerate_boxes_dropped": 0,
        "degenerate_crowd_boxes_dropped": 0,
    }
    self._records: list[tuple[int, ImageRecord]] = []
    start = index["start"]
    for i, image_id in enumerate(index["image_id"]):
      lo, hi = start[i], start[i + 1]
      if index["height"][i] == 0:
        self.stats["unreadable_images"] += 1
        continue
      if lo == hi:
        self.stats["images_without_person"] += 1
        if person_images_only:
          continue
      height, width = int(index["height"][i]), int(index["width"][i])
      crowd = index["crowd"][lo:hi]
      boxes, dropped = annotations.clean_boxes(
          index["boxes"][lo:hi][~crowd], height, width
      )
      crowd_boxes, crowd_dropped = annotations.clean_boxes(
          index["boxes"][lo:hi][crowd], height, width
      )
      self.stats["person_boxes"] += len(boxes)
      self.stats["crowd_boxes"] += len(crowd_boxes)
      self.stats["degenerate_boxes_dropped"] += dropped
      self.stats["degenerate_crowd_boxes_dropped"] += crowd_dropped
      source = f"{description} record {i} ({index['file_name'][i]})"
      self._records.append(
          (
              i,
              ImageRecord(
                  int(image_id), height, width, boxes, crowd_boxes, source
              ),
          )
      )
    self.image_ids = [r.image_id for _, r in self._records]
    self.stats["images"] = len(self._records)

  def _write_ground_truth(self, index) -> None:
    images, anns = [], []
    for i, record in self._records:
      images.append(
          {
              "id": record.image_id,
              "width": record.width,
              "height": record.height,
              "file_name": str(index["file_name"][i]),
          }
      )
      for j in range(index["start"][i], index["start"][i + 1]):
        x1, y1, x2, y2 = index["boxes"][j].tolist()
        anns.append(
            {
                "id": int(index["ann_id"][j]),
                "image_id": record.image_id,
                "bbox": [
                    round(x1, 2),
                    round(y1, 2),
                    round(x2 - x1, 2),
                    round(y2 - y1, 2),
                ],
                "area": float(index["area"][j]),
                "iscrowd": int(index["crowd"][j]),
            }
        )
    annotations.write_person_ground_truth(self.annotation_file, images, anns)

  def __len__(self) -> int:
    return len(self._records)

  def load(self, index: int) -> tuple[np.ndarray, ImageRecord]:
    """uint8 [H, W, 3] RGB image and record; CorruptImageError names the
    record and its file name."""
    position, record = self._records[index]
    example = self._source[position]
    image = decode_image(
        example["image"], record.source, (record.height, record.width)
    )
    return image, record
