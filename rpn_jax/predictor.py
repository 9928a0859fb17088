"""The jitted predictor of evaluate.py, and a detector for any image.

`make_predict_fn` turns a letterboxed batch into fixed-size proposals on
device; `Detector` wraps it for user images of any size: letterbox onto the
eval canvas, pad to a fixed batch, predict, undo the letterbox and select
detections (`rpn_jax.postprocess`) exactly as evaluate.py does.

Nothing here imports the training code (optimizer, orbax checkpoints), so an
exported detector (`rpn_jax.load_detector`) loads without it.
"""

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from rpn_jax import export as export_lib
from rpn_jax import parallel
from rpn_jax import postprocess
from rpn_jax import proposals as proposals_lib
from rpn_jax import setup_model
from rpn_jax import tta as tta_lib
from rpn_jax.data import transforms


def make_predict_fn(
    config: ml_collections.ConfigDict, model: Any, anchors: np.ndarray
):
  """`(variables, batch) -> {boxes [B,K,4], scores [B,K], valid [B,K]}`;
  boxes in canvas pixels, scores descending among valid.

  `batch` holds image uint8 [B, S, S, 3] (letterboxed top-left), image_hw
  int32 [B, 2] (content (h, w) in the canvas) and image_valid bool [B].
  With test-time augmentation (`eval.tta_scales` other than (1.0,) or
  `eval.hflip_tta`) the passes' proposals are fused (`rpn_jax.tta`) and K is
  the number of passes x post_nms_top_k.
  """
  tta_lib.check_config(config.eval)
  anchors = jnp.asarray(anchors)
  propose = functools.partial(
      proposals_lib.propose_batch, **setup_model.proposal_settings(config)
  )
  augmented = tta_lib.is_augmented(config.eval)
  tta_propose = tta_lib.make_tta_propose(config, model) if augmented else None
  mean, std = transforms.pixel_norm_stats(config.data)

  def predict(variables, batch):
    images = transforms.normalize_images(batch["image"], mean, std)
    if augmented:
      boxes, scores, valid = tta_propose(variables, images, batch["image_hw"])
    else:
      out = model.apply(variables, images, train=False)
      boxes, scores, valid = propose(
          anchors, out["objectness"], out["deltas"], batch["image_hw"]
      )
    valid = valid & batch["image_valid"][:, None]
    return {"boxes": boxes, "scores": scores, "valid": valid}

  return predict


def with_eval_canvas(
    config: ml_collections.ConfigDict,
) -> ml_collections.ConfigDict:
  """`config` with data.image_size set to eval.image_size (0: as it is)."""
  size = config.eval.image_size
  if size < 0:
    raise ValueError(
        f"eval.image_size must be >= 0 (0: data.image_size), got {size}"
    )
  return setup_model.on_canvas(config, size) if size else config


@dataclass
class Letterboxed:
  """One image on the eval canvas: canvas uint8 [S, S, 3] (content top-left,
  zero padded), hw (h, w) of the content in the canvas, scale = canvas px /
  original px, original_hw (H, W) of the image."""

  canvas: np.ndarray
  hw: tuple[int, int]
  scale: float
  original_hw: tuple[int, int]


class Detector:
  """Person detections of a trained RPN on images of any size.

  `detector(image)` with a uint8 [H, W, 3] RGB array returns {"boxes": [n, 4]
  float32 xyxy original pixels, "scores": [n] float32}, best first; with a
  list of such arrays (any sizes), a list of those dicts. The detections are
  evaluate.py's: the same eval canvas (eval.image_size, else data.image_size),
  jitted predictor (test-time augmentation included), score threshold
  (eval.score_threshold), second NMS (eval.nms_threshold) and cap
  (eval.max_detections); then clipped to the image, which evaluate.py's are
  not (they can pass its border by under 0.5 / scale px, the rounding of the
  letterboxed size). Images go through in fixed batches of
  eval.batch_size (the last one padded), so one compiled program serves any
  number of images of any size.
  """

  def __init__(
      self, config: ml_collections.ConfigDict, variables: dict[str, Any]
  ):
    self.config = with_eval_canvas(config)
    self.canvas = self.config.data.image_size
    self.batch_size = self.config.eval.batch_size
    if self.batch_size < 1:
      raise ValueError(f"eval.batch_size must be >= 1, got {self.batch_size}")
    model = setup_model.build_model(self.config.model)
    self._mesh = parallel.data_mesh()
    self._predict = parallel.jit_sharded_map(
        make_predict_fn(
            self.config, model, setup_model.model_anchors(self.config)
        ),
        self._mesh,
    )
    self._variables = parallel.replicate(variables, self._mesh)

  def letterbox(self, image: np.ndarray) -> Letterboxed:
    """uint8 [H, W, 3] RGB -> the image on the eval canvas (the letterbox
    evaluate.py's loader applies). ValueError for any other array."""
    image = np.asarray(image)
    if (
        image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[2] != 3
        or 0 in image.shape
    ):
      raise ValueError(
          "a detector takes uint8 [H, W, 3] RGB images, got "
          f"{image.dtype} {list(image.shape)}"
      )
    canvas, _, scale, hw = transforms.letterbox(
        image, np.zeros((0, 4), np.float32), self.canvas
    )
    return Letterboxed(canvas, hw, scale, image.shape[:2])

  def detect_letterboxed(
      self, images: Sequence[Letterboxed]
  ) -> list[dict[str, np.ndarray]]:
    """Detections of at most `batch_size` letterboxed images, in their order
    (the `__call__` results)."""
    n = len(images)
    if not 0 < n <= self.batch_size:
      raise ValueError(f"{n} images for a batch of {self.batch_size}")
    pad = self.batch_size - n
    blank = np.zeros((self.canvas, self.canvas, 3), np.uint8)
    # Padding entries as the eval loader's: zero image, (0, 0) content, scale
    # 1, image_valid False (their proposals come back invalid).
    batch = {
        "image": np.stack([im.canvas for im in images] + [blank] * pad),
        "image_hw": np.asarray(
            [im.hw for im in images] + [(0, 0)] * pad, np.int32
        ),
        "image_valid": np.arange(self.batch_size) < n,
    }
    scale = np.asarray([im.scale for im in images] + [1.0] * pad, np.float32)
    out = parallel.gather(
        self._predict(self._variables, parallel.shard_batch(batch, self._mesh))
    )
    props = postprocess.Proposals(
        np.arange(self.batch_size),
        out["boxes"] / scale[:, None, None],
        out["scores"],
        out["valid"],
    )
    ev = self.config.eval
    boxes, scores, valid = postprocess.select_detections(
        props, ev.score_threshold, ev.nms_threshold, ev.max_detections
    )
    results = []
    for i, image in enumerate(images):
      # The content's (h, w) in the canvas is rounded, so a box at its edge
      # can end up to 0.5 / scale px past the original border.
      height, width = image.original_hw
      limit = np.asarray([width, height, width, height], np.float32)
      results.append(
          {
              "boxes": np.clip(boxes[i][valid[i]], 0, limit).astype(np.float32),
              "scores": scores[i][valid[i]].astype(np.float32),
          }
      )
    return results

  def __call__(
      self, images: np.ndarray | Sequence[np.ndarray]
  ) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
    single = isinstance(images, np.ndarray) and images.ndim == 3
    images = [images] if single else list(images)
    results = []
    for start in range(0, len(images), self.batch_size):
      results += self.detect_letterboxed(
          [self.letterbox(im) for im in images[start : start + self.batch_size]]
      )
    return results[0] if single else results


def load_detector(path: str) -> Detector:
  """The detector of a file written by `python -m rpn_jax.export`: its
  variables and config, nothing of the training code (see `Detector`)."""
  config, variables = export_lib.read_detector_file(path)
  return Detector(config, variables)
