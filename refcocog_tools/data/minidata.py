"""The embedded dataset: a small, deterministic, synthetic dataset in the exact RefCOCOg layout.

It exists so that every code path (loading, proposals, methods, metrics, the book) runs offline.
Its pictures are drawn shapes, not photographs: numbers computed on it say nothing about
RefCOCOg. Each image holds several objects, with at least one pair of the same category, and
its expressions need colour, position (left/right/top/bottom/middle) or relative size.

Every expression comes from one of four kinds of template, and ``mini_expressions`` reads the
kind back from the sentence: ``plain`` ("the red cat"), ``position`` ("the cat on the left",
"a cat on the right side"), ``size`` ("the bigger cat") and ``relation`` ("red cat to the left
of the blue dog"). Each annotation also records the object's drawn colour in a ``colour``
field that the RefCOCOg loader ignores, so ``fitting_objects`` can say which objects of an
image a sentence fits by the generator's own rules: more than one means the generator made
that expression ambiguous.
"""

from __future__ import annotations

import io
import json
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as coco_mask
from PIL import Image, ImageDraw

from refcocog_tools.core.files import atomic_write_bytes, cache_dir
from refcocog_tools.core.masks import encode as encode_mask
from refcocog_tools.data.annotations import INSTANCES_FILE
from refcocog_tools.data.dataset import is_synthetic
from refcocog_tools.data.layouts import DEFAULT_LAYOUT, Layout

# Real COCO category ids and names, so label handling is exercised as on the real data.
CATEGORIES: dict[int, tuple[str, str]] = {
    1: ("person", "person"),
    3: ("car", "vehicle"),
    6: ("bus", "vehicle"),
    17: ("cat", "animal"),
    18: ("dog", "animal"),
    28: ("umbrella", "accessory"),
    44: ("bottle", "kitchen"),
    62: ("chair", "furniture"),
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (235, 210, 40),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "orange": (240, 140, 30),
    "purple": (130, 50, 160),
}
BACKGROUNDS = [(120, 140, 120), (150, 130, 110), (110, 125, 150), (160, 160, 150)]
IMAGE_SIZES = [(320, 240), (288, 224), (256, 256), (240, 320)]
SPLIT_SHARES = (("train", 0.6), ("val", 0.15), ("test", 0.25))
# The file at the root of every folder write_mini_dataset wrote (see is_mini_dataset).
MINI_DATASET_MARKER = ".refcocog-tools-mini-dataset"
# Written into instances.json's info; 2: each segmentation is the RLE of the object's pixels.
MINI_DATA_VERSION = 2


class BoxGeometry:
    """The centre and area of an object's xyxy ``box`` (the drawn and the recorded object)."""

    box: tuple[float, float, float, float]

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


@dataclass
class _Object(BoxGeometry):
    category_id: int
    colour: str
    box: tuple[int, int, int, int]  # xyxy, integer pixels

    @property
    def name(self) -> str:
        return CATEGORIES[self.category_id][0]


def _draw_object(draw: ImageDraw.ImageDraw, obj: _Object, ink: int | None = None) -> None:
    """Each category has its own silhouette, so a detector or CLIP could in principle tell them.

    ``ink``: draw every part in this one value instead of its colours (the object's mask, with
    the very calls that draw its pixels).
    """
    x1, y1, x2, y2 = obj.box
    w, h = x2 - x1, y2 - y1

    def paint(colour: tuple[int, int, int]) -> tuple[int, int, int] | int:
        return colour if ink is None else ink

    fill = paint(COLOURS[obj.colour])
    edge = paint((0, 0, 0) if obj.colour != "black" else (200, 200, 200))
    name = obj.name
    if name == "person":
        head = min(w, h // 3)
        draw.ellipse((x1 + (w - head) // 2, y1, x1 + (w + head) // 2, y1 + head), fill=fill,
                     outline=edge)
        draw.rectangle((x1, y1 + head, x2, y2), fill=fill, outline=edge)
    elif name in ("car", "bus"):
        wheel = max(4, h // 4)
        draw.rectangle((x1, y1, x2, y2 - wheel // 2), fill=fill, outline=edge)
        for cx in (x1 + w // 4, x2 - w // 4):
            draw.ellipse((cx - wheel // 2, y2 - wheel, cx + wheel // 2, y2),
                         fill=paint((20, 20, 20)))
        if name == "bus":
            for k in range(1, 4):
                wx = x1 + k * w // 4
                draw.rectangle((wx - w // 12, y1 + h // 6, wx + w // 12, y1 + h // 2),
                               fill=paint((200, 230, 250)))
    elif name in ("cat", "dog"):
        draw.ellipse((x1, y1 + h // 4, x2, y2), fill=fill, outline=edge)
        ear = max(3, w // 5)
        if name == "cat":
            draw.polygon([(x1 + ear, y1 + h // 4), (x1 + 2 * ear, y1), (x1 + 3 * ear, y1 + h // 4)],
                         fill=fill, outline=edge)
        else:
            draw.ellipse((x1, y1, x1 + 2 * ear, y1 + h // 2), fill=fill, outline=edge)
    elif name == "umbrella":
        draw.pieslice((x1, y1, x2, y1 + h), 180, 360, fill=fill, outline=edge)
        draw.line((x1 + w // 2, y1 + h // 2, x1 + w // 2, y2), fill=edge, width=2)
    elif name == "bottle":
        neck = max(2, w // 3)
        draw.rectangle((x1 + (w - neck) // 2, y1, x1 + (w + neck) // 2, y1 + h // 4), fill=fill,
                       outline=edge)
        draw.rectangle((x1, y1 + h // 4, x2, y2), fill=fill, outline=edge)
    else:  # chair
        draw.rectangle((x1, y1, x1 + w // 4, y2), fill=fill, outline=edge)
        draw.rectangle((x1, y1 + h // 2, x2, y1 + h // 2 + max(3, h // 8)), fill=fill,
                       outline=edge)
        draw.rectangle((x2 - w // 6, y1 + h // 2, x2, y2), fill=fill, outline=edge)


def _place(rng: random.Random, size: tuple[int, int], placed: list[_Object],
           category_id: int, colour: str) -> _Object | None:
    """Rejection-sample a box that overlaps no earlier object much."""
    width, height = size
    for _ in range(50):
        w = rng.randint(width // 7, width // 3)
        h = rng.randint(height // 6, height // 2 - 10)
        x1 = rng.randint(2, width - w - 2)
        y1 = rng.randint(2, height - h - 2)
        box = (x1, y1, x1 + w, y1 + h)
        if all(_overlap(box, o.box) < 0.1 for o in placed):
            return _Object(category_id, colour, box)
    return None


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller


def _expressions(target: _Object, objects: list[_Object], rng: random.Random,
                 size: tuple[int, int]) -> list[str]:
    """Two or three expressions for ``target``, needing position or size when it has a twin."""
    same = [o for o in objects if o.category_id == target.category_id]
    name = target.name
    out = [f"the {target.colour} {name}"]
    if len(same) > 1:
        xs = sorted(o.centre[0] for o in same)
        ys = sorted(o.centre[1] for o in same)
        areas = sorted(o.area for o in same)
        cx, cy = target.centre
        if cx == xs[0]:
            out.append(f"the {name} on the left")
        elif cx == xs[-1]:
            out.append(f"the {name} on the right")
        else:
            out.append(f"the {name} in the middle")
        if cy == ys[0]:
            out.append(f"the {name} at the top")
        elif cy == ys[-1]:
            out.append(f"the {name} at the bottom")
        if target.area == areas[-1]:
            out.append(f"the bigger {name}")
        elif target.area == areas[0]:
            out.append(f"the smaller {name}")
    else:
        cx = target.centre[0] / size[0]
        where = "left" if cx < 0.35 else "right" if cx > 0.65 else "middle"
        out.append(f"a {name} in the {where} of the picture" if where == "middle"
                   else f"a {name} on the {where} side")
    others = [o for o in objects if o is not target]
    if others:
        other = rng.choice(others)
        relation = "left of" if target.centre[0] < other.centre[0] else "right of"
        out.append(f"{target.colour} {name} to the {relation} the {other.colour} {other.name}")
    rng.shuffle(out)
    return out[: rng.randint(2, 3)]


def _test_splits(splits: tuple[str, ...]) -> list[str]:
    return [s for s in splits if s not in ("train", "val")]


def _split_of(index: int, n_images: int, splits: tuple[str, ...] = DEFAULT_LAYOUT.splits) -> str:
    """Contiguous split blocks in the study's proportions, each split at least one image.

    The test block takes the layout's test split names in turn (RefCOCO's testA, testB), or
    joins val where the layout has no test split (RefCOCOg's google split).
    """
    tests = _test_splits(splits)
    n_test_min = max(1, len(tests))
    n_train = max(1, round(n_images * SPLIT_SHARES[0][1]))
    n_val = max(1, round(n_images * SPLIT_SHARES[1][1]))
    if n_train + n_val > n_images - n_test_min:
        n_train = max(1, n_images - 1 - n_test_min)
        n_val = 1
    if index < n_train:
        return "train"
    if index < n_train + n_val or not tests:
        return "val"
    return tests[(index - n_train - n_val) % len(tests)]


def generate(n_images: int = 30, seed: int = 0, splits: tuple[str, ...] = DEFAULT_LAYOUT.splits
             ) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, bytes]]:
    """Build refs, instances and JPEG bytes in memory; the same seed gives the same bytes.

    ``splits``: the split names the refs carry (a ``Layout``'s); only the split field depends
    on them, so every layout of one seed has the same images, objects and expressions.
    """
    needed = 2 + max(1, len(_test_splits(splits)))
    if n_images < needed:
        raise ValueError(f"make-mini-dataset needs at least {needed} images for the splits "
                         f"{', '.join(splits)} (one image per split)")
    rng = random.Random(seed)
    images, annotations, refs = [], [], []
    files: dict[str, bytes] = {}
    ann_id, ref_id, sent_id = 1000, 0, 0
    for index in range(n_images):
        image_id = 500000 + index * 17
        size = IMAGE_SIZES[rng.randrange(len(IMAGE_SIZES))]
        split = _split_of(index, n_images, splits)
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        # One category twice (a distractor the expression must disambiguate), then others.
        twin = rng.choice(sorted(CATEGORIES))
        wanted = [twin, twin] + rng.sample(sorted(CATEGORIES), rng.randint(1, 3))
        objects: list[_Object] = []
        for category_id in wanted:
            colour = rng.choice(sorted(COLOURS))
            obj = _place(rng, size, objects, category_id, colour)
            if obj is not None:
                objects.append(obj)
        canvas = Image.new("RGB", size, BACKGROUNDS[rng.randrange(len(BACKGROUNDS))])
        draw = ImageDraw.Draw(canvas)
        # Which object each pixel shows: drawn in the same order with the same calls, so an
        # object partly covered by a later one keeps only its visible pixels, as COCO's masks.
        owners = Image.new("L", size, 0)
        owner_draw = ImageDraw.Draw(owners)
        for k, obj in enumerate(objects):
            _draw_object(draw, obj)
            _draw_object(owner_draw, obj, ink=k + 1)
        owner_pixels = np.asarray(owners)
        buffer = io.BytesIO()
        canvas.save(buffer, format="JPEG", quality=90)
        files[file_name] = buffer.getvalue()
        images.append({"license": 1, "file_name": file_name, "coco_url": "", "height": size[1],
                       "width": size[0], "date_captured": "", "flickr_url": "", "id": image_id})
        obj_ann_ids = []
        for k, obj in enumerate(objects):
            ann_id += 1
            obj_ann_ids.append(ann_id)
            x1, y1, x2, y2 = obj.box
            # Its visible pixels within its own rectangle (PIL draws both edges: x2, y2 too).
            # A tall car's wheels can stick out sideways; they belong to no annotation, so
            # that every mask lies in its box, as COCO's do.
            visible = np.zeros_like(owner_pixels, dtype=bool)
            visible[y1:y2 + 1, x1:x2 + 1] = owner_pixels[y1:y2 + 1, x1:x2 + 1] == k + 1
            segmentation = encode_mask(visible)  # COCO compressed RLE
            annotations.append({
                "segmentation": segmentation,
                "area": float(coco_mask.area(segmentation)), "iscrowd": 0, "image_id": image_id,
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "category_id": obj.category_id, "id": ann_id,
                "colour": obj.colour,  # not a COCO field; the loader ignores it
            })
        # Refer to both twins (they need disambiguation) and sometimes one other object.
        referred = [0, 1] + ([rng.randrange(2, len(objects))] if len(objects) > 2
                             and rng.random() < 0.5 else [])
        for k in referred:
            if k >= len(objects):
                continue
            obj = objects[k]
            sentences = []
            for text in _expressions(obj, objects, rng, size):
                raw = text[0].upper() + text[1:] + "."
                sentences.append({"tokens": text.split(), "raw": raw, "sent_id": sent_id,
                                  "sent": text})
                sent_id += 1
            refs.append({
                "image_id": image_id, "split": split, "sentences": sentences,
                "file_name": f"COCO_train2014_{image_id:012d}_{obj_ann_ids[k]}.jpg",
                "category_id": obj.category_id, "ann_id": obj_ann_ids[k],
                "sent_ids": [s["sent_id"] for s in sentences], "ref_id": ref_id,
            })
            ref_id += 1
    categories = [{"supercategory": sup, "id": cid, "name": name}
                  for cid, (name, sup) in sorted(CATEGORIES.items())]
    instances = {"info": {"description": "refcocog-tools embedded synthetic dataset",
                          "seed": seed, "synthetic": True, "version": MINI_DATA_VERSION},
                 "images": images, "annotations": annotations, "categories": categories}
    return refs, instances, files


def write_mini_dataset(out_dir: str | Path, n_images: int = 30, seed: int = 0,
                       layout: Layout = DEFAULT_LAYOUT) -> Path:
    """Write the embedded dataset under ``out_dir`` in the RefCOCOg layout; return ``out_dir``.

    ``layout``: another dataset of the family writes its own refs file (``refs(unc).p``) with
    its own split names. The folder is marked (``MINI_DATASET_MARKER``) before any data is
    written, so ``make-mini-dataset --force`` knows a folder it made, even a half-written or
    hand-edited one, from a real data root, which it never overwrites.
    """
    out = Path(out_dir)
    refs, instances, files = generate(n_images, seed, layout.splits)
    atomic_write_bytes(out / MINI_DATASET_MARKER,
                       b'{"generator": "refcocog_tools.data.minidata"}\n')
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write_bytes(out / "images" / name, data)
    # Protocol 2 is what the refer toolkit's Python 2 pickles use.
    atomic_write_bytes(out / "annotations" / layout.refs_file, pickle.dumps(refs, protocol=2))
    atomic_write_bytes(out / "annotations" / INSTANCES_FILE,
                       json.dumps(instances, indent=None, separators=(",", ":")).encode())
    return out


def is_mini_dataset(root: str | Path) -> bool:
    """A folder ``write_mini_dataset`` wrote: it carries the marker, or (written before the
    marker existed) its instances.json says it is synthetic."""
    return (Path(root) / MINI_DATASET_MARKER).is_file() or is_synthetic(root)


def default_data_root() -> Path:
    """The embedded dataset in the project cache, generated on first use."""
    root = cache_dir() / "mini-refcocog"
    instances = root / "annotations" / INSTANCES_FILE
    # A copy an older generator wrote (version 1: box-shaped segmentations) is written again;
    # the images are the same bytes, only the annotations change. ``info`` comes first.
    if not instances.is_file() or (f'"version":{MINI_DATA_VERSION},'.encode()
                                   not in instances.read_bytes()[:4096]):
        write_mini_dataset(root)
    return root


