"""A deterministic synthetic person dataset in the COCO layout.

Writes `annotations/instances_{train,val}.json` and `{train,val}/*.jpg` the
way cocodataset.org ships them (categories with id gaps, xywh boxes, areas,
crowd groups, extra fields), so reading it exercises the real COCO loader.

Each image has a textured background (gradients, stripes, smooth noise, tiles,
random blobs and lines), 0-6 stick-figure people (head, torso, arms, legs; many
poses, colours and sizes from ~12 px to larger than the image, some lying, cut
by the border or occluding one another), sometimes a dense crowd group
annotated iscrowd, and distractors: annotated cars, traffic lights and bottles
(other categories) and unannotated trees. A person box is the tight box of the
figure's visible pixels, so occluded or cut figures get the box of what shows.

Everything comes from `np.random.default_rng([seed, split, index])`, so an
image does not depend on how many workers drew it.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Bump when the pictures or annotations change: it names the cache folder.
GENERATOR_VERSION = 1

PERSON, CAR, TRAFFIC_LIGHT, BOTTLE = 1, 3, 10, 44
CATEGORIES = [
    {"id": PERSON, "name": "person", "supercategory": "person"},
    {"id": CAR, "name": "car", "supercategory": "vehicle"},
    {"id": TRAFFIC_LIGHT, "name": "traffic light", "supercategory": "outdoor"},
    {"id": BOTTLE, "name": "bottle", "supercategory": "kitchen"},
]
SPLITS = ("train", "val")
_MARKER = "synthetic.json"
# Pixels an annotated object must show, absolutely and as a share of its own.
_MIN_VISIBLE_PIXELS = 6
_MIN_VISIBLE_FRACTION = 0.2


def dataset_name(
    num_train: int, num_val: int, seed: int, min_size: int, max_size: int
) -> str:
  """Cache folder name: generator version and every parameter."""
  return (
      f"synthetic_v{GENERATOR_VERSION}_train{num_train}_val{num_val}"
      f"_seed{seed}_{min_size}-{max_size}px"
  )


def image_id_of(split: str, index: int) -> int:
  """Non-contiguous ids (like COCO's), disjoint between the splits."""
  return 1 + 3 * index + 1_000_000 * SPLITS.index(split)


# ---------------------------------------------------------------- drawing


class _Scene:
  """An RGB picture plus an instance map: which object owns each pixel."""

  def __init__(self, image: np.ndarray):
    self.image = image
    self.owner = np.zeros(image.shape[:2], np.int32)  # 0 = background
    # Per object: pixels covered when painted, and the extent painted (x0,
    # y0, x1, y1), which bounds where its visible pixels can be.
    self.drawn = [0]
    self.extent = [(0, 0, 0, 0)]
    self.height, self.width = image.shape[:2]

  def new_object(self) -> int:
    self.drawn.append(0)
    self.extent.append((self.width, self.height, 0, 0))
    return len(self.drawn) - 1

  def canvas(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    mask = Image.new("L", (self.width, self.height), 0)
    return mask, ImageDraw.Draw(mask)

  def paint(self, mask: Image.Image, palette: np.ndarray, owner: int) -> None:
    """Paints part labels (mask values 1..k) in colours palette[k]."""
    box = mask.getbbox()
    if box is None:
      return
    x0, y0, x1, y1 = box
    labels = np.asarray(mask)[y0:y1, x0:x1]
    on = labels > 0
    self.image[y0:y1, x0:x1][on] = palette[labels[on]]
    self.owner[y0:y1, x0:x1][on] = owner
    self.drawn[owner] += int(on.sum())
    e = self.extent[owner]
    self.extent[owner] = (
        min(e[0], x0),
        min(e[1], y0),
        max(e[2], x1),
        max(e[3], y1),
    )

  def visible_box(self, owner: int) -> tuple[list[float], int] | None:
    """Tight xyxy box of the owner's visible pixels and their count, or None
    when too little of the object shows to annotate it."""
    x0, y0, x1, y1 = self.extent[owner]
    ys, xs = np.nonzero(self.owner[y0:y1, x0:x1] == owner)
    if (
        len(ys) < _MIN_VISIBLE_PIXELS
        or len(ys) < _MIN_VISIBLE_FRACTION * self.drawn[owner]
    ):
      return None
    box = [
        float(x0 + xs.min()),
        float(y0 + ys.min()),
        float(x0 + xs.max() + 1),
        float(y0 + ys.max() + 1),
    ]
    return box, len(ys)


def _colour(rng: np.random.Generator) -> np.ndarray:
  return rng.integers(0, 256, 3)


def _skin(rng: np.random.Generator) -> np.ndarray:
  if rng.random() < 0.3:
    return _colour(rng)
  tone = rng.uniform(0.25, 1.0)
  return np.clip(
      np.array([95, 60, 40])
      + tone * np.array([160, 150, 140])
      + rng.normal(0, 12, 3),
      0,
      255,
  )


def _background(
    rng: np.random.Generator, height: int, width: int
) -> np.ndarray:
  """uint8 [H, W, 3] texture: a gradient, stripes, smooth noise or tiles
  between two random colours."""
  c0, c1 = _colour(rng), _colour(rng)
  angle = rng.uniform(0, math.pi)
  xs = np.arange(width, dtype=np.float32)[None, :] * math.cos(angle)
  ys = np.arange(height, dtype=np.float32)[:, None] * math.sin(angle)
  kind = rng.integers(4)
  # Each kind yields a position along the ramp between c0 and c1, 0-255.
  if kind == 0:
    along = xs + ys
    low, span = float(along.min()), max(float(np.ptp(along)), 1.0)
    level = (along - np.float32(low)) * np.float32(255 / span)
  elif kind == 1:
    period = rng.uniform(4, 48)
    level = 127.5 + 127.5 * np.sin((xs + ys) * np.float32(2 * math.pi / period))
    if rng.random() < 0.5:
      level = (level > 127.5) * np.float32(255)
  elif kind == 2:
    grid = rng.integers(
        0, 256, (int(rng.integers(2, 12)), int(rng.integers(2, 12))), np.uint8
    )
    level = np.asarray(
        Image.fromarray(grid).resize((width, height), Image.BILINEAR)
    )
  else:
    tile = rng.uniform(8, 64)
    columns = (np.arange(width) // tile).astype(np.int64) % 2
    rows = (np.arange(height) // tile).astype(np.int64) % 2
    level = np.logical_xor.outer(rows, columns) * np.uint8(255)
  ramp = np.linspace(0.0, 1.0, 256)[:, None]
  lut = np.round(c0 + ramp * (c1 - c0)).astype(np.uint8)
  return np.take(lut, np.asarray(level).astype(np.uint8), axis=0)


def _clutter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
  """Random blobs, boxes and lines over the background (never annotated)."""
  height, width = image.shape[:2]
  picture = Image.fromarray(image)
  draw = ImageDraw.Draw(picture)
  for _ in range(int(rng.integers(0, 9))):
    x, y = rng.uniform(0, width), rng.uniform(0, height)
    rx, ry = rng.uniform(3, width / 3), rng.uniform(3, height / 3)
    fill = tuple(int(v) for v in _colour(rng))
    shape = rng.integers(3)
    if shape == 0:
      draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=fill)
    elif shape == 1:
      draw.rectangle([x - rx, y - ry, x + rx, y + ry], fill=fill)
    else:
      draw.line(
          [x - rx, y - ry, x + rx, y + ry],
          fill=fill,
          width=int(rng.integers(1, 6)),
      )
  return np.array(picture)


def _rotate(
    points: np.ndarray, angle: float, centre: np.ndarray, scale: np.ndarray
) -> list[tuple[float, float]]:
  """Figure-local points [k, 2] (unit = figure height) to image pixels."""
  c, s = math.cos(angle), math.sin(angle)
  p = points * scale
  rotated = np.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1]], 1)
  return [tuple(q) for q in (rotated + centre).tolist()]


def _person_parts(
    rng: np.random.Generator,
) -> list[tuple[int, str, Any, float]]:
  """A figure in local units (height 1, centred, y down) as parts
  (label, kind, points [k, 2], thickness): label 1 skin, 2 shirt, 3 trousers,
  4 hair; kind 'circle' (centre, radius as thickness), 'polygon' or 'line'."""
  r = rng.uniform(0.055, 0.075)
  shoulder_w, hip_w = rng.uniform(0.2, 0.3), rng.uniform(0.14, 0.22)
  top = -0.5
  head = np.array([[0.0, top + r]])
  y_sh = top + 2 * r + rng.uniform(0.005, 0.03)
  y_hip = y_sh + rng.uniform(0.27, 0.33)
  limb = rng.uniform(0.045, 0.07)
  torso = np.array(
      [
          [-shoulder_w / 2, y_sh],
          [shoulder_w / 2, y_sh],
          [hip_w / 2, y_hip],
          [-hip_w / 2, y_hip],
      ]
  )
  parts: list[tuple[int, str, Any, float]] = [
      (2, "polygon", torso, 0.0),
      (1, "circle", head, r),
  ]
  if rng.random() < 0.5:  # hair or a hat over the top of the head
    parts.append(
        (
            4,
            "polygon",
            np.array(
                [[-r, top + r], [-r * 0.8, top], [r * 0.8, top], [r, top + r]]
            ),
            0.0,
        )
    )
  pose = rng.choice(["stand", "walk", "sit"], p=[0.45, 0.4, 0.15])
  thigh, shin = rng.uniform(0.2, 0.26), rng.uniform(0.2, 0.26)
  for side in (-1.0, 1.0):
    hip = np.array([side * hip_w / 4, y_hip])
    if pose == "sit":
      knee = hip + [thigh * 0.9, 0.03]
      foot = knee + [rng.uniform(-0.05, 0.05), shin]
    else:
      spread = rng.uniform(0, 0.25 if pose == "walk" else 0.06)
      direction = np.array([side * math.sin(spread), math.cos(spread)])
      knee = hip + thigh * direction
      foot = knee + shin * direction + [side * rng.uniform(-0.02, 0.02), 0]
    parts.append((3, "line", np.stack([hip, knee, foot]), limb * 1.2))
    shoulder = np.array([side * (shoulder_w / 2 - limb / 2), y_sh + limb / 2])
    upper, lower = rng.uniform(0.14, 0.19), rng.uniform(0.13, 0.18)
    raise_angle = rng.choice(
        [rng.uniform(0.05, 0.35), rng.uniform(0.6, 1.6), rng.uniform(2.2, 3.0)],
        p=[0.6, 0.25, 0.15],
    )
    elbow = shoulder + upper * np.array(
        [side * math.sin(raise_angle), math.cos(raise_angle)]
    )
    bend = raise_angle + rng.uniform(-0.6, 0.6)
    hand = elbow + lower * np.array([side * math.sin(bend), math.cos(bend)])
    sleeve = 2 if rng.random() < 0.6 else 1
    parts.append((sleeve, "line", np.stack([shoulder, elbow, hand]), limb))
  return parts


def _draw_parts(
    draw: ImageDraw.ImageDraw,
    parts,
    angle: float,
    centre: np.ndarray,
    scale: np.ndarray,
) -> None:
  """Draws figure-local parts; scale = (x, y) pixels per unit (x carries the
  build and the mirroring, so limbs thicken with the build, heads do not)."""
  for label, kind, points, thickness in parts:
    pts = _rotate(np.asarray(points, np.float64), angle, centre, scale)
    if kind == "circle":
      (x, y), rad = pts[0], thickness * scale[1]
      draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=label)
    elif kind == "polygon":
      draw.polygon(pts, fill=label)
    else:
      width = max(1, int(round(thickness * abs(scale[0]))))
      draw.line(pts, fill=label, width=width, joint="curve")


def _person_palette(rng: np.random.Generator) -> np.ndarray:
  return np.stack(
      [np.zeros(3), _skin(rng), _colour(rng), _colour(rng), _colour(rng)]
  ).astype(np.uint8)


def _draw_person(
    rng: np.random.Generator,
    scene: _Scene,
    owner: int,
    height: float,
    centre: np.ndarray,
) -> None:
  """One stick figure `height` px tall centred at `centre` (x, y)."""
  angle = rng.normal(0, 0.12)
  if rng.random() < 0.1:  # lying down
    angle = rng.choice([-1, 1]) * math.pi / 2 + rng.normal(0, 0.2)
  build = rng.uniform(0.8, 1.3)
  mirror = rng.choice([-1.0, 1.0])
  scale = np.array([mirror * build * height, height])
  mask, draw = scene.canvas()
  _draw_parts(draw, _person_parts(rng), angle, centre, scale)
  scene.paint(mask, _person_palette(rng), owner)


def _draw_car(rng, scene: _Scene, owner: int) -> None:
  w = math.exp(rng.uniform(math.log(20), math.log(0.7 * scene.width)))
  h = w * rng.uniform(0.22, 0.32)
  x = rng.uniform(-0.2 * w, scene.width - 0.8 * w)
  y = rng.uniform(0, scene.height)
  mask, draw = scene.canvas()
  draw.rectangle([x, y, x + w, y + h], fill=1)
  draw.polygon(
      [
          (x + 0.2 * w, y),
          (x + 0.3 * w, y - 0.7 * h),
          (x + 0.7 * w, y - 0.7 * h),
          (x + 0.8 * w, y),
      ],
      fill=2,
  )
  for cx in (x + 0.22 * w, x + 0.78 * w):
    rad = 0.13 * w
    draw.ellipse([cx - rad, y + h - rad, cx + rad, y + h + rad], fill=3)
  palette = np.stack(
      [
          np.zeros(3),
          _colour(rng),
          rng.integers(120, 230, 3),
          rng.integers(0, 60, 3),
      ]
  ).astype(np.uint8)
  scene.paint(mask, palette, owner)


def _draw_upright_thing(rng, scene: _Scene, owner: int, kind: int) -> None:
  """A traffic light (pole, box, three lamps), a bottle (body, shoulder,
  neck, cap) or a tree (trunk, round crown): tall shapes that look a bit
  like people, so height alone does not give a person away."""
  w = math.exp(rng.uniform(math.log(4), math.log(0.2 * scene.width)))
  x, y = rng.uniform(0, scene.width), rng.uniform(0, scene.height)
  mask, draw = scene.canvas()
  if kind == TRAFFIC_LIGHT:
    h = w * 2.6
    draw.rectangle([x - w / 2, y, x + w / 2, y + h], fill=1)
    for i in range(3):
      cy, rad = y + h * (i + 0.5) / 3, w * 0.33
      draw.ellipse([x - rad, cy - rad, x + rad, cy + rad], fill=2 + i)
    palette = np.array(
        [
            [0, 0, 0],
            rng.integers(0, 70, 3),
            [230, 30, 30],
            [240, 200, 30],
            [40, 220, 60],
        ],
        np.uint8,
    )
  elif kind == BOTTLE:
    h = w * rng.uniform(1.8, 2.6)
    draw.rectangle([x - w / 2, y, x + w / 2, y + h], fill=1)
    draw.polygon(
        [
            (x - w / 2, y),
            (x - w / 6, y - 0.4 * w),
            (x + w / 6, y - 0.4 * w),
            (x + w / 2, y),
        ],
        fill=1,
    )
    draw.rectangle([x - w / 6, y - 0.9 * w, x + w / 6, y - 0.4 * w], fill=1)
    draw.rectangle([x - w / 5, y - 1.05 * w, x + w / 5, y - 0.85 * w], fill=2)
    palette = np.stack([np.zeros(3), _colour(rng), _colour(rng)]).astype(
        np.uint8
    )
  else:
    h = w * rng.uniform(2.0, 4.0)
    draw.rectangle([x - w / 6, y, x + w / 6, y + h], fill=1)
    draw.ellipse([x - w / 2, y - w * 0.9, x + w / 2, y + w * 0.1], fill=2)
    palette = np.stack(
        [np.zeros(3), rng.integers(60, 140, 3), _colour(rng)]
    ).astype(np.uint8)
  scene.paint(mask, palette, owner)


def render_image(
    seed: int, split: str, index: int, min_size: int, max_size: int
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
  """Draws one image.

  Returns the picture uint8 [H, W, 3] before JPEG coding, the owner map int32
  [H, W] (object index per pixel, 0 = background) and the annotated objects:
  dicts with owner, category_id, iscrowd, box (xyxy, tight around the
  owner's visible pixels) and area (visible pixel count).
  """
  rng = np.random.default_rng([seed, SPLITS.index(split), index])
  height, width = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
  scene = _Scene(_clutter(rng, _background(rng, height, width)))
  longer = max(height, width)

  plan: list[tuple[str, int]] = []
  num_people = (
      0
      if rng.random() < 0.12
      else int(
          rng.choice([1, 2, 3, 4, 5, 6], p=[0.3, 0.25, 0.18, 0.12, 0.09, 0.06])
      )
  )
  plan += [("person", 0)] * num_people
  plan += [
      ("thing", int(rng.choice([CAR, TRAFFIC_LIGHT, BOTTLE, 0])))
      for _ in range(int(rng.integers(0, 4)))
  ]
  if rng.random() < 0.1:
    plan.append(("crowd", 0))
  order = rng.permutation(len(plan))

  objects = []
  for k in order:
    kind, category = plan[k]
    owner = scene.new_object()
    if kind == "person":
      size = math.exp(rng.uniform(math.log(12), math.log(0.9 * longer)))
      centre = rng.uniform([0, 0], [width, height])
      _draw_person(rng, scene, owner, size, centre)
      objects.append({"owner": owner, "category_id": PERSON, "iscrowd": 0})
    elif kind == "crowd":
      rw, rh = rng.uniform(0.3, 0.8) * width, rng.uniform(0.12, 0.3) * height
      x0, y0 = rng.uniform(0, width - rw), rng.uniform(0, height - rh)
      for _ in range(int(rng.integers(6, 16))):
        size = rh * rng.uniform(0.6, 1.0)
        centre = np.array(
            [
                rng.uniform(x0, x0 + rw),
                rng.uniform(y0 + size / 2, y0 + rh - size / 2 + 1),
            ]
        )
        _draw_person(rng, scene, owner, size, centre)
      objects.append({"owner": owner, "category_id": PERSON, "iscrowd": 1})
    elif category == CAR:
      _draw_car(rng, scene, owner)
      objects.append({"owner": owner, "category_id": CAR, "iscrowd": 0})
    else:
      _draw_upright_thing(rng, scene, owner, category)
      if category:
        objects.append({"owner": owner, "category_id": category, "iscrowd": 0})

  # Contrast and brightness through a lookup table, then uniform noise.
  gain, offset = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
  lut = np.clip(np.arange(256) * gain + offset, 0, 255).astype(np.int16)
  picture = np.take(lut, scene.image)
  amplitude = int(rng.integers(0, 16))
  if amplitude:  # luminance noise: one draw per pixel, shared by the channels
    picture += rng.integers(
        -amplitude, amplitude + 1, picture.shape[:2] + (1,), dtype=np.int16
    )
  picture = np.clip(picture, 0, 255).astype(np.uint8)
  if rng.random() < 0.25:  # a box blur: a few times cheaper than Gaussian
    picture = np.asarray(
        Image.fromarray(picture).filter(
            ImageFilter.BoxBlur(rng.uniform(0.3, 0.8))
        )
    )

  annotated = []
  for obj in sorted(objects, key=lambda o: o["owner"]):
    seen = scene.visible_box(obj["owner"])
    if seen is not None:
      annotated.append(dict(obj, box=seen[0], area=float(seen[1])))
  return picture, scene.owner, annotated


def _render_and_save(args: tuple) -> tuple[dict, list[dict]]:
  """Draws image `index` of `split`, writes its JPEG, returns the COCO image
  entry and annotations (without annotation ids)."""
  root, split, index, seed, min_size, max_size = args
  picture, _, objects = render_image(seed, split, index, min_size, max_size)
  image_id = image_id_of(split, index)
  file_name = f"{image_id:012d}.jpg"
  quality = int(
      np.random.default_rng([seed, 7, SPLITS.index(split), index]).integers(
          70, 96
      )
  )
  Image.fromarray(picture).save(
      os.path.join(root, split, file_name), format="JPEG", quality=quality
  )
  height, width = picture.shape[:2]
  image = {
      "license": 1,
      "file_name": file_name,
      "coco_url": "",
      "height": height,
      "width": width,
      "date_captured": "2020-01-01 00:00:00",
      "flickr_url": "",
      "id": image_id,
  }
  anns = []
  for obj in objects:
    x1, y1, x2, y2 = obj["box"]
    anns.append(
        {
            "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]],
            "area": obj["area"],
            "iscrowd": obj["iscrowd"],
            "image_id": image_id,
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "category_id": obj["category_id"],
        }
    )
  return image, anns


def _render_shard(tasks_path: str, out_path: str) -> None:
  """Subprocess entry: renders the tasks in one json file, writes results."""
  with open(tasks_path) as f:
    tasks = json.load(f)
  results = [_render_and_save(tuple(t)) for t in tasks]
  with open(out_path, "w") as f:
    json.dump(results, f)


def _render_in_subprocesses(
    tasks: list[tuple], workers: int, tmp: str
) -> list[tuple[dict, list[dict]]]:
  """Renders `tasks` in `workers` fresh Python processes, results in order.

  Fresh interpreters rather than a multiprocessing pool: fork is unsafe in a
  process that runs JAX or TensorFlow threads, and spawn re-imports the
  caller's main script, which breaks scripts without a __main__ guard.
  """
  package_parent = os.path.dirname(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )
  env = dict(
      os.environ,
      PYTHONPATH=os.pathsep.join(
          [package_parent] + [p for p in [os.environ.get("PYTHONPATH")] if p]
      ),
  )
  code = (
      "import sys; from rpn_jax.data import synthetic; "
      "synthetic._render_shard(sys.argv[1], sys.argv[2])"
  )
  procs = []
  for k in range(workers):
    tasks_path = os.path.join(tmp, f"_tasks{k}.json")
    with open(tasks_path, "w") as f:
      json.dump(tasks[k::workers], f)
    out_path = os.path.join(tmp, f"_results{k}.json")
    procs.append(
        (
            subprocess.Popen(
                [sys.executable, "-c", code, tasks_path, out_path],
                env=env,
                stderr=subprocess.PIPE,
                text=True,
            ),
            tasks_path,
            out_path,
        )
    )
  shards = []
  for proc, tasks_path, out_path in procs:
    _, err = proc.communicate()
    if proc.returncode != 0:
      raise RuntimeError(
          f"synthetic data worker failed ({proc.returncode}): "
          f"{err.strip().splitlines()[-1:]}"
      )
    with open(out_path) as f:
      shards.append(json.load(f))
    os.remove(tasks_path)
    os.remove(out_path)
  results = [None] * len(tasks)
  for k, shard in enumerate(shards):
    results[k::workers] = [tuple(r) for r in shard]
  return results


def _coco_json(images: list[dict], anns: list[dict], split: str) -> dict:
  for ann_id, ann in enumerate(anns, start=1):
    ann["id"] = ann_id
  return {
      "info": {
          "description": f"rpn_jax synthetic persons, {split}",
          "version": str(GENERATOR_VERSION),
          "year": 2020,
      },
      "licenses": [{"id": 1, "name": "CC0", "url": ""}],
      "images": images,
      "annotations": anns,
      "categories": CATEGORIES,
  }


def _parameters(num_train, num_val, seed, min_size, max_size) -> dict:
  return {
      "generator_version": GENERATOR_VERSION,
      "num_train": num_train,
      "num_val": num_val,
      "seed": seed,
      "min_size": min_size,
      "max_size": max_size,
  }


def _is_complete(root: str, parameters: dict) -> bool:
  try:
    with open(os.path.join(root, _MARKER)) as f:
      return json.load(f) == parameters
  except (OSError, ValueError):
    return False


def ensure_synthetic_dataset(
    root: str,
    num_train: int,
    num_val: int,
    seed: int,
    min_size: int = 192,
    max_size: int = 320,
    workers: int | None = None,
) -> str:
  """Generates the dataset into `root` unless it is already there; returns root.

  The set is drawn into a temporary sibling folder and renamed into place,
  with `synthetic.json` (the parameters) written last, so an interrupted run
  leaves no half dataset behind. Image sides are drawn in
  [min_size, max_size]. `workers` processes draw (default: the CPU count;
  small sets are drawn in this process).
  """
  if not 8 <= min_size <= max_size:
    raise ValueError(
        f"synthetic sizes need 8 <= min_size <= max_size, got "
        f"{min_size}, {max_size}"
    )
  root = os.path.abspath(root)
  parameters = _parameters(num_train, num_val, seed, min_size, max_size)
  if _is_complete(root, parameters):
    return root
  if os.path.exists(root):
    raise FileExistsError(
        f"{root} exists but is not a complete synthetic "
        "dataset with these parameters; remove it"
    )
  tmp = f"{root}.tmp{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(os.path.join(tmp, "annotations"))
  counts = {"train": num_train, "val": num_val}
  tasks = []
  for split in SPLITS:
    os.makedirs(os.path.join(tmp, split))
    tasks += [
        (tmp, split, i, seed, min_size, max_size) for i in range(counts[split])
    ]
  workers = min(workers or os.cpu_count() or 1, -(-len(tasks) // 64))
  if workers > 1:
    results = _render_in_subprocesses(tasks, workers, tmp)
  else:
    results = [_render_and_save(t) for t in tasks]
  start = 0
  for split in SPLITS:
    chunk = results[start : start + counts[split]]
    start += counts[split]
    data = _coco_json(
        [im for im, _ in chunk], [a for _, anns in chunk for a in anns], split
    )
    with open(
        os.path.join(tmp, "annotations", f"instances_{split}.json"), "w"
    ) as f:
      json.dump(data, f)
  with open(os.path.join(tmp, _MARKER), "w") as f:
    json.dump(parameters, f)
  try:
    os.rename(tmp, root)
  except OSError:
    shutil.rmtree(tmp, ignore_errors=True)
    if not _is_complete(root, parameters):
      raise
  return root
