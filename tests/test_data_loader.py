"""BatchLoader: format, determinism, resumption, eval padding, bad images."""

import logging
import os

import numpy as np
import pytest

from rpn_jax.data import CorruptImageError, ImageRecord, synthetic, transforms
from rpn_jax.data.coco_dir import CocoDirDataset
from rpn_jax.data.loader import BatchLoader

SPEC = {
    "image": np.uint8,
    "boxes": np.float32,
    "box_valid": np.bool_,
    "box_crowd": np.bool_,
    "image_hw": np.int32,
    "scale": np.float32,
    "image_id": np.int64,
    "image_valid": np.bool_,
}


class FakeDataset:
  """In-memory images of varied sizes; index 3 has a crowd box, index 5 has
  more boxes than the loaders below keep, `broken` indices fail to decode."""

  def __init__(self, n=11, broken=()):
    rng = np.random.default_rng(0)
    self.items = []
    for i in range(n):
      h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
      k = 7 if i == 5 else int(rng.integers(0, 3))
      x1, y1 = rng.uniform(0, w / 2, k), rng.uniform(0, h / 2, k)
      boxes = np.stack(
          [
              x1,
              y1,
              x1 + rng.uniform(1, w / 2, k),
              y1 + rng.uniform(1, h / 2, k),
          ],
          1,
      ).astype(np.float32)
      crowd = (
          np.array([[0, 0, w / 2, h / 2]], np.float32)
          if i == 3
          else np.zeros((0, 4), np.float32)
      )
      image = rng.integers(0, 256, (h, w, 3), np.uint8)
      self.items.append(
          (image, ImageRecord(1000 + i, h, w, boxes, crowd, f"fake{i}.jpg"))
      )
    self.image_ids = [r.image_id for _, r in self.items]
    self.broken = set(broken)
    self.annotation_file = ""
    self.stats = {}

  def __len__(self):
    return len(self.items)

  def load(self, index):
    if index in self.broken:
      raise CorruptImageError(f"cannot decode image fake{index}.jpg")
    return self.items[index]


def _loader(ds, **kw):
  args = dict(
      batch_size=4,
      image_size=32,
      max_boxes=6,
      shuffle=True,
      seed=7,
      hflip=True,
      drop_last=True,
      num_workers=2,
  )
  args.update(kw)
  return BatchLoader(ds, **args)


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batch_format():
  loader = _loader(FakeDataset())
  assert loader.steps_per_epoch == 2
  batches = list(loader.epoch(0))
  assert len(batches) == 2
  for batch in batches:
    assert set(batch) == set(SPEC)
    for key, dtype in SPEC.items():
      assert batch[key].dtype == dtype, key
    assert batch["image"].shape == (4, 32, 32, 3)
    assert batch["boxes"].shape == (4, 6, 4)
    assert batch["box_valid"].shape == batch["box_crowd"].shape == (4, 6)
    assert batch["image_hw"].shape == (4, 2)
    assert batch["scale"].shape == batch["image_id"].shape == (4,)
    assert batch["image_valid"].all()
    assert not (batch["box_valid"] & batch["box_crowd"]).any()
    assert not batch["boxes"][~(batch["box_valid"] | batch["box_crowd"])].any()


def test_entries_are_letterboxed_dataset_items():
  ds = FakeDataset()
  loader = _loader(ds, shuffle=False, hflip=False, drop_last=False, max_boxes=8)
  batch = next(loader.epoch(0))
  for row in range(4):
    image, record = ds.items[row]
    canvas, boxes, scale, hw = transforms.letterbox(image, record.boxes, 32)
    np.testing.assert_array_equal(batch["image"][row], canvas)
    n = len(record.boxes)
    np.testing.assert_allclose(batch["boxes"][row, :n], boxes, rtol=1e-6)
    assert batch["box_valid"][row].sum() == n
    assert tuple(batch["image_hw"][row]) == hw
    assert batch["scale"][row] == np.float32(scale)
    assert batch["image_id"][row] == record.image_id
  assert batch["box_crowd"][3].sum() == 1


def test_flipped_entries():
  ds = FakeDataset()
  loader = _loader(ds, shuffle=False, drop_last=False, max_boxes=8)
  flips = loader.flips(0)
  assert flips.any() and not flips.all()
  batches = list(loader.epoch(0))
  for index in np.flatnonzero(flips):
    image, record = ds.items[index]
    flipped, boxes = transforms.hflip(image, record.boxes, record.width)
    canvas, boxes, _, _ = transforms.letterbox(flipped, boxes, 32)
    entry = {k: v[index % 4] for k, v in batches[index // 4].items()}
    np.testing.assert_array_equal(entry["image"], canvas)
    np.testing.assert_allclose(entry["boxes"][: len(boxes)], boxes, rtol=1e-6)


def test_scale_jittered_entries():
  ds = FakeDataset()
  loader = _loader(
      ds,
      shuffle=False,
      hflip=False,
      drop_last=False,
      max_boxes=8,
      scale_jitter=(0.8, 2.0),
  )
  jitters = loader.jitters(0)
  assert (jitters[:, 0] >= 0.8).all() and (jitters[:, 0] <= 2.0).all()
  assert (jitters[:, 0] > 1.2).any() and (jitters[:, 0] < 1.0).any()
  batches = list(loader.epoch(0))
  for index, (factor, ox, oy) in enumerate(jitters):
    image, record = ds.items[index]
    canvas, boxes, keep, _, hw = transforms.scale_crop(
        image,
        np.concatenate([record.boxes, record.crowd_boxes]),
        32,
        factor,
        (ox, oy),
    )
    entry = {k: v[index % 4] for k, v in batches[index // 4].items()}
    np.testing.assert_array_equal(entry["image"], canvas)
    n = int(keep[: len(record.boxes)].sum())
    assert entry["box_valid"].sum() == n
    np.testing.assert_allclose(
        entry["boxes"][:n],
        boxes[: len(record.boxes)][keep[: len(record.boxes)]],
    )
    assert tuple(entry["image_hw"]) == hw
  _assert_same(
      batches,
      list(
          _loader(
              ds,
              shuffle=False,
              hflip=False,
              drop_last=False,
              max_boxes=8,
              scale_jitter=(0.8, 2.0),
          ).epoch(0)
      ),
  )
  with pytest.raises(ValueError, match="data.scale_jitter"):
    _loader(ds, scale_jitter=(2.0, 1.0))


def test_deterministic_and_independent_of_workers():
  ds = FakeDataset()
  first = list(_loader(ds).epoch(3))
  _assert_same(first, list(_loader(ds).epoch(3)))
  _assert_same(first, list(_loader(ds, num_workers=0).epoch(3)))
  other = list(_loader(ds).epoch(4))
  assert not np.array_equal(
      np.concatenate([b["image_id"] for b in first]),
      np.concatenate([b["image_id"] for b in other]),
  )


def test_shuffled_epoch_visits_every_image_once():
  ds = FakeDataset()
  ids = np.concatenate(
      [b["image_id"] for b in _loader(ds, drop_last=False).epoch(1)]
  )
  assert sorted(ids[ids >= 0].tolist()) == ds.image_ids


@pytest.mark.parametrize("start_step", [1, 2, 3])
def test_resume_mid_epoch(start_step):
  ds = FakeDataset(n=15)
  loader = _loader(ds, batch_size=3, drop_last=False)
  full = list(loader.epoch(2))
  _assert_same(full[start_step:], list(loader.epoch(2, start_step=start_step)))
  assert list(loader.epoch(2, start_step=loader.steps_per_epoch)) == []
  with pytest.raises(ValueError, match="start_step"):
    next(loader.epoch(2, start_step=loader.steps_per_epoch + 1))


def test_eval_mode_pads_the_last_batch():
  ds = FakeDataset(n=11)
  loader = _loader(ds, shuffle=False, drop_last=False, hflip=False)
  assert loader.steps_per_epoch == 3
  batches = list(loader.epoch(0))
  ids = np.concatenate([b["image_id"] for b in batches])
  np.testing.assert_array_equal(ids, ds.image_ids + [-1])
  last = batches[-1]
  np.testing.assert_array_equal(last["image_valid"], [1, 1, 1, 0])
  assert not last["image"][3].any() and not last["boxes"][3].any()
  assert not last["box_valid"][3].any() and last["scale"][3] == 1.0


def test_too_many_boxes_are_counted():
  loader = _loader(FakeDataset(), shuffle=False, max_boxes=6)
  list(loader.epoch(0))
  assert loader.stats["images_with_dropped_boxes"] == 1
  assert loader.stats["boxes_dropped"] == 1


def test_undecodable_image_is_skipped_and_counted(caplog):
  ds = FakeDataset(broken={2})
  loader = _loader(ds, shuffle=False, drop_last=False)
  with caplog.at_level(logging.WARNING):
    batches = list(loader.epoch(0))
  assert loader.stats["corrupt_images"] == 1
  assert any("fake2.jpg" in r.getMessage() for r in caplog.records)
  entry = {k: v[2] for k, v in batches[0].items()}
  assert not entry["image_valid"] and entry["image_id"] == 1002
  assert not entry["image"].any() and not entry["box_valid"].any()
  assert batches[0]["image_valid"].sum() == 3


def test_truncated_jpeg_in_a_coco_folder(tmp_path, caplog):
  root = synthetic.ensure_synthetic_dataset(
      str(tmp_path / "d"),
      num_train=10,
      num_val=0,
      seed=2,
      min_size=48,
      max_size=64,
  )
  ds = CocoDirDataset(root, "train", person_images_only=False)
  path = os.path.join(root, "train", f"{ds.image_ids[4]:012d}.jpg")
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 3])
  loader = _loader(
      ds,
      batch_size=4,
      image_size=64,
      max_boxes=16,
      shuffle=False,
      drop_last=False,
  )
  with caplog.at_level(logging.WARNING):
    batches = list(loader.epoch(0))
  assert len(batches) == 3
  assert loader.stats["corrupt_images"] == 1
  assert any(path in r.getMessage() for r in caplog.records)
  valid = np.concatenate([b["image_valid"] for b in batches])
  np.testing.assert_array_equal(np.flatnonzero(~valid), [4, 10, 11])


def test_stopping_early_releases_the_workers():
  loader = _loader(FakeDataset(n=40), prefetch_batches=1)
  epoch = loader.epoch(0)
  next(epoch)
  epoch.close()
  assert len(list(loader.epoch(0))) == 10


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_process_shares_cover_every_image_once(process_count):
  dataset = FakeDataset(21)
  seen = []
  for index in range(process_count):
    loader = BatchLoader(
        dataset,
        batch_size=8,
        image_size=16,
        max_boxes=2,
        shuffle=True,
        seed=3,
        drop_last=False,
        num_workers=0,
        process_index=index,
        process_count=process_count,
    )
    batches = list(loader.epoch(1))
    assert all(b["image"].shape[0] == 8 // process_count for b in batches)
    seen += [i for b in batches for i in b["image_id"].tolist() if i >= 0]
  assert sorted(seen) == sorted(dataset.image_ids)
