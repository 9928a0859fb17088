"""Letterbox, flip, box padding and normalisation vs hand-computed values."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from rpn_jax.data import transforms


def _image(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


@pytest.mark.parametrize(
    "h, w, size, hw",
    [
        (100, 200, 50, (25, 50)),  # landscape, downscale
        (200, 100, 50, (50, 25)),  # portrait
        (30, 20, 90, (90, 60)),  # upscale
        (3, 7, 10, (4, 10)),  # 3 * 10 / 7 = 4.29 rounds to 4
        (64, 64, 64, (64, 64)),  # no resize
    ],
)
def test_letterbox_geometry(h, w, size, hw):
  image = _image(h, w)
  boxes = np.array([[1.0, 2.0, 5.0, 3.0], [0.0, 0.0, w, h]], np.float32)
  canvas, out, scale, content = transforms.letterbox(image, boxes, size)
  assert canvas.shape == (size, size, 3) and canvas.dtype == np.uint8
  assert content == hw
  assert scale == pytest.approx(size / max(h, w))
  np.testing.assert_allclose(
      out, boxes * np.float32(size / max(h, w)), rtol=1e-6
  )
  assert out.dtype == np.float32
  # Content top-left, PIL bilinear; everything else zero.
  expected = (
      image
      if (h, w) == hw
      else np.asarray(
          Image.fromarray(image).resize((hw[1], hw[0]), Image.BILINEAR)
      )
  )
  np.testing.assert_array_equal(canvas[: hw[0], : hw[1]], expected)
  assert not canvas[hw[0] :].any() and not canvas[:, hw[1] :].any()


def test_letterbox_no_boxes():
  canvas, out, _, _ = transforms.letterbox(_image(10, 20), np.zeros((0, 4)), 40)
  assert out.shape == (0, 4) and canvas.shape == (40, 40, 3)


def test_scale_crop_hand_computed():
  # 40 x 80 image, canvas 20, factor 2: resized to 20 x 40 (scale 0.5), the
  # 20 px of x slack at offset 0.5 start the window at x = 10.
  image = _image(40, 80)
  boxes = np.array(
      [
          [24, 4, 36, 20],  # -> [2, 2, 8, 10]: inside
          [0, 0, 30, 40],  # -> [-10, 0, 5, 20] -> [0, 0, 5, 20]
          [0, 0, 22, 10],  # -> [-10, 0, 1, 5] -> 1 px wide
          [70, 30, 80, 40],
      ],  # -> [25, 15, 30, 20]: outside
      np.float32,
  )
  canvas, out, keep, scale, hw = transforms.scale_crop(
      image, boxes, 20, 2.0, (0.5, 0.9)
  )
  resized = np.asarray(Image.fromarray(image).resize((40, 20), Image.BILINEAR))
  np.testing.assert_array_equal(canvas, resized[:, 10:30])
  assert scale == 0.5 and hw == (20, 20)
  np.testing.assert_allclose(out[:2], [[2, 2, 8, 10], [0, 0, 5, 20]])
  np.testing.assert_array_equal(keep, [True, True, False, False])


def test_scale_crop_below_one_is_a_smaller_letterbox():
  image = _image(30, 60)
  boxes = np.array([[6, 3, 60, 30]], np.float32)
  canvas, out, keep, scale, hw = transforms.scale_crop(
      image, boxes, 40, 0.5, (0.3, 0.7)
  )
  small, expected, small_scale, small_hw = transforms.letterbox(
      image, boxes, 20
  )
  assert hw == small_hw == (10, 20) and scale == small_scale
  np.testing.assert_array_equal(canvas[:20, :20], small)
  assert not canvas[10:].any() and not canvas[:, 20:].any()
  np.testing.assert_allclose(out, expected)
  assert keep.all()


def test_hflip_hand_computed():
  image = _image(4, 100)
  boxes = np.array([[10, 5, 30, 15], [0, 0, 100, 4]], np.float32)
  flipped, out = transforms.hflip(image, boxes, 100)
  np.testing.assert_array_equal(out, [[70, 5, 90, 15], [0, 0, 100, 4]])
  np.testing.assert_array_equal(flipped[:, 0], image[:, 99])
  again, back = transforms.hflip(flipped, out, 100)
  np.testing.assert_array_equal(again, image)
  np.testing.assert_array_equal(back, boxes)
  # The flipped box covers the flipped pixels of the original box.
  np.testing.assert_array_equal(flipped[:, 70:90], image[:, 10:30][:, ::-1])


def test_pad_boxes_packs_persons_then_crowd():
  boxes = np.array([[0, 0, 2, 2], [1, 1, 4, 5]], np.float32)
  crowd = np.array([[5, 5, 9, 9]], np.float32)
  out, valid, is_crowd = transforms.pad_boxes(boxes, crowd, 5)
  np.testing.assert_array_equal(out[:3], np.concatenate([boxes, crowd]))
  assert not out[3:].any()
  np.testing.assert_array_equal(valid, [1, 1, 0, 0, 0])
  np.testing.assert_array_equal(is_crowd, [0, 0, 1, 0, 0])
  assert out.dtype == np.float32 and valid.dtype == bool


def test_pad_boxes_overflow_keeps_largest_and_warns_once(monkeypatch, caplog):
  monkeypatch.setattr(transforms, "_overflow_warned", False)
  sides = np.array([3, 9, 1, 7, 5], np.float32)
  boxes = np.stack([np.zeros(5), np.zeros(5), sides, sides], 1)
  crowd = np.array([[0, 0, 50, 50]], np.float32)
  with caplog.at_level(logging.WARNING):
    out, valid, is_crowd = transforms.pad_boxes(boxes, crowd, 3)
    transforms.pad_boxes(boxes, crowd, 3)
  # The three largest persons, in their original order; no room for crowd.
  np.testing.assert_array_equal(out[:, 2], [9, 7, 5])
  assert valid.all() and not is_crowd.any()
  assert sum("max_boxes" in r.getMessage() for r in caplog.records) == 1
  out, valid, is_crowd = transforms.pad_boxes(boxes[:2], crowd, 3)
  np.testing.assert_array_equal(valid, [1, 1, 0])
  np.testing.assert_array_equal(is_crowd, [0, 0, 1])


def test_normalize_hand_computed():
  pixel = np.array([[[10, 200, 30]]], np.uint8)
  mean, std = (1.0, 2.0, 3.0), (2.0, 4.0, 9.0)
  out = transforms.normalize_images(pixel, mean, std)
  np.testing.assert_allclose(out[0, 0], [4.5, 49.5, 3.0])
  assert out.dtype == np.float32
  bgr = transforms.normalize_images(pixel, mean, std, bgr=True)
  np.testing.assert_allclose(bgr[0, 0], [3.0, 49.5, 4.5])


def test_normalize_matches_the_seed_recipe():
  """Seed: read BGR, subtract the BGR mean, reorder to RGB, no std."""
  images = _image(6, 5)[None]
  bgr_input = images[..., ::-1].astype(np.float32)
  seed = (bgr_input - np.array([103.530, 116.280, 123.675]))[..., ::-1]
  ours = transforms.normalize_images(
      images, (123.675, 116.28, 103.53), (1.0, 1.0, 1.0)
  )
  np.testing.assert_allclose(ours, seed, rtol=1e-6, atol=1e-4)


def test_normalize_jax_matches_numpy_under_jit():
  images = _image(8, 8)[None]
  mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
  expected = transforms.normalize_images(images, mean, std, bgr=True)
  fn = jax.jit(lambda x: transforms.normalize_images(x, mean, std, bgr=True))
  out = fn(jnp.asarray(images))
  assert isinstance(out, jax.Array) and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6, atol=1e-5)


def test_normalize_rejects_bad_mean():
  with pytest.raises(ValueError, match="data.mean"):
    transforms.normalize_images(_image(2, 2), (1.0, 2.0), (1.0, 1.0, 1.0))
