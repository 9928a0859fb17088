"""predict.py on a folder of a user's own images: outputs, skipped files,
one-line errors."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from rpn_jax import predict_lib
from rpn_jax.data import CorruptImageError
from rpn_jax.data import image_files
from rpn_jax.data import open_dataset
from tests.tiny_config import get_config as tiny_config
from tests.test_cli import run


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """Four readable images of synthetic persons in four modes and sizes, a
  corrupt .jpg and a text file. Returns (folder, {name: (height, width)})."""
  val = open_dataset(tiny_config().data, "val")
  photos = [val.load(i)[0] for i in range(3)]
  path = tmp_path_factory.mktemp("photos")
  Image.fromarray(photos[0]).save(path / "photo.jpg", quality=90)
  Image.fromarray(photos[1]).convert("RGBA").save(path / "Shot.PNG")
  Image.fromarray(photos[2]).convert("L").save(path / "gray.png")
  # Phone-camera size, upscaled so that its persons fill a 4000 x 3000 photo.
  Image.fromarray(photos[0]).resize((4000, 3000), Image.BILINEAR).save(
      path / "big.jpg", quality=80
  )
  (path / "broken.jpg").write_bytes(b"not an image, whatever its name\n" * 8)
  (path / "notes.txt").write_text("not an image either, and not listed")
  sizes = {
      "photo.jpg": photos[0].shape[:2],
      "Shot.PNG": photos[1].shape[:2],
      "gray.png": photos[2].shape[:2],
      "big.jpg": (3000, 4000),
  }
  return path, sizes


def test_predict_a_folder(tiny_workdir, folder, tmp_path):
  path, sizes = folder
  out = tmp_path / "out"
  # Score threshold 0: every image gets detections whose boxes can be checked;
  # batches of 3: the second one is padded.
  proc = run(
      "predict.py",
      f"--ckpt={tiny_workdir}",
      f"--images={path}",
      f"--output_dir={out}",
      "--score_threshold=0",
      "--batch_size=3",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  warnings = [l for l in proc.stderr.splitlines() if "broken.jpg" in l]
  assert len(warnings) == 1 and "warning: skipped broken.jpg" in warnings[0]
  assert "Skipped 1 unreadable file(s): broken.jpg" in proc.stdout
  assert f"to {out}" in proc.stdout

  with open(out / "detections.json") as f:
    detections = json.load(f)
  assert {d["file_name"] for d in detections} == set(sizes)
  for d in detections:
    height, width = sizes[d["file_name"]]
    x, y, w, h = d["bbox"]
    # 0.01: x and w are each rounded to 2 decimals.
    assert x >= 0 and y >= 0 and w > 0 and h > 0
    assert x + w <= width + 0.01 and y + h <= height + 0.01
    assert d["category_id"] == 1 and 0 <= d["score"] <= 1

  with open(out / "images.json") as f:
    images = {i["file_name"]: i for i in json.load(f)}
  assert set(images) == set(sizes) | {"broken.jpg"}
  assert "error" in images["broken.jpg"]
  for name, (height, width) in sizes.items():
    assert (images[name]["height"], images[name]["width"]) == (height, width)
    assert (
        images[name]["detections"]
        == sum(d["image_id"] == images[name]["image_id"] for d in detections)
        > 0
    )

  pictures = sorted(os.listdir(out / "pictures"))
  assert pictures == ["Shot.jpg", "big.jpg", "gray.jpg", "photo.jpg"]
  with Image.open(out / "pictures" / "big.jpg") as picture:
    assert picture.size == (4000, 3000)


def test_predict_without_images_names_the_path(tiny_workdir, tmp_path):
  missing = str(tmp_path / "no_such_photos")
  proc = run("predict.py", f"--ckpt={tiny_workdir}", f"--images={missing}")
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and missing in lines[0]
  assert "Traceback" not in proc.stderr


def test_find_images_file_folder_glob(folder, tmp_path):
  path, sizes = folder
  listed = [os.path.basename(p) for p in image_files.find_images(str(path))]
  assert listed == sorted(set(sizes) | {"broken.jpg"})  # no notes.txt
  assert image_files.find_images(str(path / "gray.png")) == [
      str(path / "gray.png")
  ]
  assert [
      os.path.basename(p) for p in image_files.find_images(str(path / "*.png"))
  ] == [
      "gray.png"
  ]  # glob: case as written
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="empty"):
    image_files.find_images(str(tmp_path / "empty"))


def test_read_image_modes_and_exif(tmp_path):
  # Stored 30 wide, 20 high, EXIF orientation 6: shown rotated, 20 x 30.
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.new("RGB", (30, 20), (200, 10, 10)).save(
      tmp_path / "turned.jpg", exif=exif
  )
  assert image_files.read_image(str(tmp_path / "turned.jpg")).shape == (
      30,
      20,
      3,
  )
  palette = Image.new("P", (5, 4))
  palette.info["transparency"] = 0
  palette.save(tmp_path / "p.gif", transparency=0)
  image = image_files.read_image(str(tmp_path / "p.gif"))
  assert image.shape == (4, 5, 3) and image.dtype == np.uint8
  (tmp_path / "cut.png").write_bytes(
      (tmp_path / "p.gif").read_bytes()[:20]
  )  # truncated
  with pytest.raises(CorruptImageError, match="cut.png"):
    image_files.read_image(str(tmp_path / "cut.png"))


def test_output_names_of_clashing_files():
  names = predict_lib.display_names(["/a/x.jpg", "/a/sub/x.png", "/a/x.png"])
  assert names == ["x.jpg", os.path.join("sub", "x.png"), "x.png"]
  assert predict_lib.picture_names(names) == [
      "x.jpg.jpg",
      "sub__x.jpg",
      "x.png.jpg",
  ]
