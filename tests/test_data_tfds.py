"""TfdsCocoDataset through tfds's own example coding, offline (mock_data).

The mocked `as_data_source` serialises hand-made coco/2017 examples with the
real feature spec and decodes them with tfds's own deserializer and the
decoders our adapter asks for, as the array_record data source does.
"""

import contextlib
import io
import json
import os
from unittest import mock

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

tfds = pytest.importorskip("tensorflow_datasets")

# pylint: disable=g-import-not-at-top
from rpn_jax.data import CorruptImageError
from rpn_jax.data import tfds_coco
from rpn_jax.data.coco_dir import CocoDirDataset


def _jpeg(h, w, seed):
  pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="JPEG")
  return buffer.getvalue()


def _objects(rows):
  """rows: (ann id, area, [ymin, xmin, ymax, xmax], label, is_crowd)."""
  return {
      "id": np.array([r[0] for r in rows], np.int64),
      "area": np.array([r[1] for r in rows], np.int64),
      "bbox": np.array([r[2] for r in rows], np.float32).reshape(-1, 4),
      "label": np.array([r[3] for r in rows], np.int64),
      "is_crowd": np.array([r[4] for r in rows], bool),
  }


# Label 0 is person (COCO's categories sorted by id); 2 is a car.
EXAMPLES = [
    {
        "image": _jpeg(40, 80, 0),
        "image/filename": "000000000009.jpg",
        "image/id": 9,
        "objects": _objects(
            [
                (1, 300, [0.25, 0.125, 0.75, 0.5], 0, False),
                (2, 100, [0.0, 0.5, 0.5, 1.0], 0, True),
                (3, 50, [0.1, 0.1, 0.2, 0.2], 2, False),
                (4, 1, [0.5, 0.5, 0.51, 0.505], 0, False),
            ]
        ),
    },  # 0.4 x 0.4 px
    {
        "image": _jpeg(30, 20, 1),
        "image/filename": "000000000025.jpg",
        "image/id": 25,
        "objects": _objects([(5, 9, [0, 0, 1, 1], 2, False)]),
    },
    {
        "image": _jpeg(20, 30, 2),
        "image/filename": "000000000042.jpg",
        "image/id": 42,
        "objects": _objects([(6, 60, [0.1, 0.2, 0.6, 0.9], 0, False)]),
    },
    {
        "image": b"\xff\xd8 no header",
        "image/filename": "000000000077.jpg",
        "image/id": 77,
        "objects": _objects([]),
    },
    # A readable header, then the data stops: indexed, fails when loaded.
    {
        "image": _jpeg(64, 64, 3)[:2000],
        "image/filename": "000000000088.jpg",
        "image/id": 88,
        "objects": _objects([(7, 60, [0.1, 0.2, 0.6, 0.9], 0, False)]),
    },
]


class _Source:
  """Serialised records decoded on access, like tfds's ArrayRecordDataSource."""

  def __init__(self, info, decoders, reads):
    self.dataset_info = info
    self._decoders = decoders
    self._records = [info.features.serialize_example(e) for e in EXAMPLES]
    self._reads = reads

  def __len__(self):
    return len(self._records)

  def __getitem__(self, index):
    self._reads.append(index)
    return self.dataset_info.features.deserialize_example_np(
        self._records[index], decoders=self._decoders
    )


@contextlib.contextmanager
def mocked_coco(reads, splits):
  def as_data_source(builder, split, decoders=None, **kwargs):
    del kwargs
    splits.append(split)
    return _Source(builder.info, decoders, reads)

  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    yield


@pytest.fixture(name="cache")
def fixture_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("RPN_JAX_CACHE", str(tmp_path / "cache"))
  return tmp_path / "cache"


def test_records_boxes_and_ground_truth(cache):
  reads, splits = [], []
  with mocked_coco(reads, splits):
    ds = tfds_coco.TfdsCocoDataset("val2017", data_dir="/nowhere")
    assert splits == ["validation"]
    assert ds.image_ids == [9, 42, 88]
    assert ds.stats["unreadable_images"] == 1
    assert ds.stats["images_without_person"] == 1
    assert ds.stats["degenerate_boxes_dropped"] == 1
    assert ds.stats["person_boxes"] == 3 and ds.stats["crowd_boxes"] == 1

    image, record = ds.load(0)
    assert (record.image_id, record.height, record.width) == (9, 40, 80)
    np.testing.assert_allclose(record.boxes, [[10, 10, 40, 30]], atol=1e-4)
    np.testing.assert_allclose(record.crowd_boxes, [[40, 0, 80, 20]], atol=1e-4)
    expected = np.asarray(Image.open(io.BytesIO(EXAMPLES[0]["image"])))
    np.testing.assert_array_equal(image, expected)
    _, record = ds.load(1)
    np.testing.assert_allclose(record.boxes, [[6, 2, 27, 12]], atol=1e-4)

  assert ds.annotation_file.startswith(str(cache))
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(ds.annotation_file)
  assert gt.loadCats(1)[0]["name"] == "person"
  assert sorted(gt.getImgIds()) == [9, 42, 88]
  anns = {a["id"]: a for a in gt.dataset["annotations"]}
  assert sorted(anns) == [1, 2, 4, 6, 7]  # person objects only
  assert anns[1]["bbox"] == [10.0, 10.0, 30.0, 20.0]
  assert anns[1]["area"] == 300 and anns[2]["iscrowd"] == 1
  assert all(a["category_id"] == 1 for a in anns.values())


def test_all_images_and_cached_index(cache):
  reads, splits = [], []
  with mocked_coco(reads, splits):
    tfds_coco.TfdsCocoDataset("validation", data_dir="/nowhere")
    scanned = len(reads)
    assert scanned == len(EXAMPLES)
    ds = tfds_coco.TfdsCocoDataset(
        "validation", data_dir="/nowhere", person_images_only=False
    )
    assert len(reads) == scanned  # the index came from the cache
    assert ds.image_ids == [9, 25, 42, 88]
    _, record = ds.load(1)
    assert record.boxes.shape == (0, 4) and record.image_id == 25
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(ds.annotation_file)
  assert sorted(gt.getImgIds()) == [9, 25, 42, 88]


def test_corrupt_record_names_the_file(cache):
  with mocked_coco([], []):
    ds = tfds_coco.TfdsCocoDataset("validation", data_dir="/nowhere")
    with pytest.raises(CorruptImageError, match="000000000088.jpg"):
      ds.load(2)


def test_missing_random_access_copy_is_a_clear_error(cache):
  def no_array_record(builder, split, **kwargs):
    raise NotImplementedError(
        "Random access data source for file format "
        "FileFormat.TFRECORD is not supported."
    )

  advice = (
      "tfds.builder('coco/2017', data_dir='/data/tfds',"
      " file_format='array_record').download_and_prepare()"
  )
  with tfds.testing.mock_data(as_data_source_fn=no_array_record):
    with pytest.raises(
        FileNotFoundError, match="array_record.*/data/tfds"
    ) as err:
      tfds_coco.TfdsCocoDataset("train", data_dir="/data/tfds")
  assert str(err.value).endswith(advice)
  with tfds.testing.mock_data(as_data_source_fn=no_array_record):
    with pytest.raises(FileNotFoundError, match="default tfds data_dir") as err:
      tfds_coco.TfdsCocoDataset("train")
  assert str(err.value).endswith(advice.replace(" data_dir='/data/tfds',", ""))


def test_gpu_is_hidden_from_tensorflow(monkeypatch):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  calls = []
  monkeypatch.setattr(
      tf.config,
      "set_visible_devices",
      lambda devices, kind: calls.append((devices, kind)),
  )
  tfds_coco.import_tfds()
  assert calls == [([], "GPU")]


def _write_coco_release(root):
  """The three coco/2017 splits as the official zips unpack, tiny: person
  boxes, an RLE crowd region, a car, an image without annotations."""
  ids = [
      i
      for i in range(1, 91)
      if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
  ]
  categories = [
      {
          "id": i,
          "name": "person" if i == 1 else f"thing{i}",
          "supercategory": "x",
      }
      for i in ids
  ]
  os.makedirs(os.path.join(root, "annotations"))
  for split, count in (("train2017", 2), ("val2017", 4), ("test2017", 1)):
    os.makedirs(os.path.join(root, split))
    images, anns = [], []
    for i in range(count):
      image_id = 11 * (i + 1) + len(anns)
      h, w = 30 + 10 * i, 50 - 5 * i
      Image.fromarray(
          np.random.default_rng(i).integers(0, 256, (h, w, 3), np.uint8)
      ).save(os.path.join(root, split, f"{image_id:012d}.jpg"))
      images.append(
          {
              "id": image_id,
              "file_name": f"{image_id:012d}.jpg",
              "height": h,
              "width": w,
              "license": 1,
          }
      )
      boxes = {
          0: [
              (1, 0, [2.5, 3.0, 20.0, 15.25]),
              (1, 1, [0, 0, 10, 8]),
              (3, 0, [1, 1, 5, 5]),
          ],
          1: [(3, 0, [4, 4, 9, 9])],
          2: [(1, 0, [0, 0, w, h]), (1, 0, [7, 9, 3.5, 4])],
      }.get(i, [])
      for category, crowd, bbox in boxes:
        segmentation = (
            {"counts": [0, 5, 3], "size": [h, w]}
            if crowd
            else [
                [
                    bbox[0],
                    bbox[1],
                    bbox[0] + 1,
                    bbox[1] + 1,
                    bbox[0],
                    bbox[1] + 2,
                ]
            ]
        )
        anns.append(
            {
                "id": 100 * image_id + len(anns),
                "image_id": image_id,
                "category_id": category,
                "iscrowd": crowd,
                "bbox": bbox,
                "area": bbox[2] * bbox[3],
                "segmentation": segmentation,
            }
        )
    data = {"info": {}, "images": images, "categories": categories}
    name = f"instances_{split}.json"
    if split == "test2017":
      name = "image_info_test2017.json"
    else:
      data["annotations"] = anns
    with open(os.path.join(root, "annotations", name), "w") as f:
      json.dump(data, f)


def test_real_array_record_dataset_matches_the_coco_folder(tmp_path, cache):
  """tfds's own coco builder prepares array_record files from a fake release;
  read through tfds.data_source, the dataset equals the COCO folder's."""
  pytest.importorskip("importlib_resources")  # tfds builders need it
  release = str(tmp_path / "release")
  _write_coco_release(release)
  data_dir = str(tmp_path / "tfds")
  with mock.patch.object(
      tfds.download.DownloadManager,
      "download_and_extract",
      lambda self, urls: {k: release for k in urls},
  ):
    tfds.builder("coco/2017", data_dir=data_dir).download_and_prepare(
        file_format="array_record"
    )
  folder = CocoDirDataset(release, "val2017", person_images_only=False)
  for person_images_only in (True, False):
    ds = tfds_coco.TfdsCocoDataset(
        "val2017", data_dir=data_dir, person_images_only=person_images_only
    )
    expected = CocoDirDataset(release, "val2017", person_images_only).image_ids
    assert sorted(ds.image_ids) == expected
    for index, image_id in enumerate(ds.image_ids):
      image, record = ds.load(index)
      want_image, want = folder.load(folder.image_ids.index(image_id))
      np.testing.assert_array_equal(image, want_image)
      assert (record.height, record.width) == (want.height, want.width)
      np.testing.assert_allclose(record.boxes, want.boxes, atol=1e-3)
      np.testing.assert_allclose(
          record.crowd_boxes, want.crowd_boxes, atol=1e-3
      )
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(ds.annotation_file)
    truth = COCO(os.path.join(release, "annotations", "instances_val2017.json"))
  persons = truth.loadAnns(truth.getAnnIds(catIds=[1]))
  assert sorted(a["id"] for a in gt.dataset["annotations"]) == sorted(
      a["id"] for a in persons
  )
  for a in persons:
    np.testing.assert_allclose(gt.anns[a["id"]]["bbox"], a["bbox"], atol=0.01)
    assert gt.anns[a["id"]]["iscrowd"] == a["iscrowd"]
