"""`open_dataset`: the data config's source name -> a random-access dataset."""

import os

import ml_collections

from rpn_jax.data import coco_dir, synthetic
from rpn_jax.data.cache import cache_root
from rpn_jax.data.dataset import Dataset

SOURCES = ("synthetic", "coco_dir", "tfds")


def synthetic_root(data_cfg: ml_collections.ConfigDict) -> str:
  """Where `data.source='synthetic'` with an empty `data.coco_dir` lives: a
  cache folder named after the generator version and its parameters."""
  s = data_cfg.synthetic
  return os.path.join(
      cache_root(),
      synthetic.dataset_name(
          s.num_train, s.num_val, s.seed, s.min_size, s.max_size
      ),
  )


def open_dataset(data_cfg: ml_collections.ConfigDict, split: str) -> Dataset:
  """Opens `split` (e.g. data_cfg.train_split) of the configured source.

  synthetic: data.coco_dir if set (a generated folder), else the cached set
    (generated on first use); read by the COCO folder loader either way.
  coco_dir:  data.coco_dir in the COCO layout.
  tfds:      tfds coco/2017 in data.tfds_data_dir (else tfds's default);
    TensorFlow is imported only here.
  """
  source = data_cfg.source
  if source not in SOURCES:
    raise ValueError(
        f"unknown data.source {source!r}; expected one of "
        f"{', '.join(SOURCES)}"
    )
  if source == "tfds":
    from rpn_jax.data import tfds_coco  # pylint: disable=g-import-not-at-top

    return tfds_coco.TfdsCocoDataset(
        split, data_cfg.tfds_data_dir or None, data_cfg.person_images_only
    )
  root = data_cfg.coco_dir
  if source == "synthetic" and not root:
    s = data_cfg.synthetic
    root = synthetic.ensure_synthetic_dataset(
        synthetic_root(data_cfg),
        s.num_train,
        s.num_val,
        s.seed,
        s.min_size,
        s.max_size,
    )
  if not root:
    raise ValueError(
        "data.coco_dir is empty; set it to a folder with "
        "annotations/instances_<split>.json and <split>/"
    )
  try:
    return coco_dir.CocoDirDataset(root, split, data_cfg.person_images_only)
  except FileNotFoundError as e:
    # Name the key that chose the split (the base config's are "train" and
    # "val"; COCO's own folders are train2017 and val2017).
    keys = [k for k in ("train_split", "val_split") if data_cfg.get(k) == split]
    if not keys or not os.path.isdir(root):
      raise
    raise FileNotFoundError(
        f"{e}; set {' / '.join(f'--config.data.{k}' for k in keys)}"
    ) from None
