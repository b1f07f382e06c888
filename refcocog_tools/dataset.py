"""RefCOCOg loading (and RefCOCO / RefCOCO+): a safe pickle reader, items, collate,
validation and stats.

The layout is the one the original study (and the refer toolkit) used::

    <root>/annotations/refs(umd).p      pickle: a list of ref records
    <root>/annotations/instances.json   COCO-style images / annotations / categories
    <root>/images/<file_name>           the COCO train2014 images

The other datasets of the family differ only in the refs file (``refs(unc).p``,
``refs(google).p``) and the split names its records carry: see ``layouts``.

Boxes are converted once, here, from COCO ``xywh`` to ``xyxy`` floats in image pixels.
"""

from __future__ import annotations

import functools
import io
import json
import pickle
import sys
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .language import is_spatial
from .layouts import DEFAULT_LAYOUT, Layout, get_layout

REFS_FILE = DEFAULT_LAYOUT.refs_file
INSTANCES_FILE = "instances.json"
SPLITS = DEFAULT_LAYOUT.splits
View = Literal["ref", "expression"]

Box = tuple[float, float, float, float]


class DatasetError(ValueError):
    """A RefCOCOg file is missing or malformed; the message names the file and the field."""


# ----------------------------------------------------------------------------------------------
# Safe pickle loading
# ----------------------------------------------------------------------------------------------
class _PlainDataUnpickler(pickle.Unpickler):
    """Admits only what pickle encodes without a global: dicts, lists, tuples, str, numbers."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: the refs file may only hold plain "
            "containers and scalars"
        )


def load_refs_pickle(path: str | Path) -> list[dict[str, Any]]:
    """Load ``refs(umd).p`` without executing code: any class or callable in it is refused."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"{path}: cannot read the refs file ({err.strerror or err})") from None
    try:
        refs = _PlainDataUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise DatasetError(f"{path}: unsafe or corrupt pickle: {err}") from err
    except (EOFError, ValueError, IndexError, TypeError) as err:
        raise DatasetError(f"{path}: not a readable pickle: {err}") from err
    if not isinstance(refs, list):
        raise DatasetError(f"{path}: expected a list of ref records, got {type(refs).__name__}")
    return refs


def is_synthetic(root: str | Path) -> bool:
    """True for a dataset written by ``refcocog_tools.minidata`` (its instances.json says so).

    Only the start of the file is read: the generator writes ``info`` first, and the real
    instances.json is hundreds of megabytes.
    """
    try:
        with open(Path(root) / "annotations" / INSTANCES_FILE, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return b'"synthetic":true' in head.replace(b" ", b"")


def xywh_to_xyxy(box: Sequence[float]) -> Box:
    """COCO ``[x, y, width, height]`` to ``(x1, y1, x2, y2)``."""
    x, y, w, h = (float(v) for v in box)
    return (x, y, x + w, y + h)


def open_image(path: str | Path) -> Image.Image:
    """``PIL.Image.open`` as Pillow ships it.

    Importing ultralytics replaces ``PIL.Image.open`` with a wrapper that, on a file Pillow
    cannot identify, tries to install the pi-heif package and then fails with an ImportError.
    The data layer wants Pillow's own ``UnidentifiedImageError`` for an unreadable file, and no
    install attempt, whether or not a detector was loaded in the same process.
    """
    patches = sys.modules.get("ultralytics.utils.patches")
    opener = getattr(patches, "_image_open", None) or Image.open
    return opener(path)


def load_rgb_image(path: str | Path) -> Image.Image:
    """Open an image in any PIL mode as RGB, with its EXIF orientation applied."""
    path = Path(path)
    try:
        with open_image(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or (
                image.mode == "P" and "transparency" in image.info
            ):
                # Composite transparency on white instead of letting convert() drop it to black.
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, rgba).convert("RGB")
            return image.convert("RGB")
    except FileNotFoundError as err:
        raise DatasetError(f"{path}: image file not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise DatasetError(f"{path}: image unreadable: {err}") from err


# EXIF orientations that turn the stored pixels by 90 degrees (exif_transpose swaps w and h).
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def image_problem(path: Path, expected_size: tuple[int, int]) -> str | None:
    """Decode the whole image and compare its size, after EXIF orientation (what every method
    sees), with the annotation's; the problem found, or None.

    A full decode, not ``Image.verify()``: a truncated JPEG passes verify and fails later.
    """
    try:
        with open_image(path) as image:
            image.load()
            width, height = image.size
            if image.getexif().get(0x0112) in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
    except FileNotFoundError:
        return f"{path}: image file not found"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as err:
        return f"{path}: image unreadable: {err}"
    if (width, height) != tuple(expected_size):
        # The annotation size is what the boxes refer to: a mismatch breaks every box.
        return (f"{path}: size {(width, height)} after EXIF orientation differs from "
                f"{INSTANCES_FILE} width/height {tuple(expected_size)}")
    return None


def image_problems(records: Sequence[RefRecord], workers: int = 4) -> list[str]:
    """``image_problem`` of each distinct image of ``records``, in record order.

    Decoding releases the GIL, so a few threads check a split several times faster.
    """
    from concurrent.futures import ThreadPoolExecutor

    first = {r.image_path: r for r in records}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        found = pool.map(lambda r: image_problem(r.image_path, r.image_size), first.values())
        return [problem for problem in found if problem]


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Instance:
    """One COCO instance of an image: a possible answer, or a distractor."""

    ann_id: int
    category_id: int
    category: str
    box: Box


@dataclass(frozen=True)
class RefRecord:
    """Everything about one referred object except its pixels."""

    ref_id: int
    ann_id: int
    image_id: int
    category_id: int
    category: str
    split: str
    image_path: Path
    image_size: tuple[int, int]
    box: Box
    sentences: tuple[str, ...]
    sent_ids: tuple[int, ...]
    instances: tuple[Instance, ...]


@dataclass
class RefItem:
    """A dataset item. ``sentences`` holds every expression (ref view) or exactly one."""

    record: RefRecord
    sentences: tuple[str, ...]
    sent_ids: tuple[int, ...]

    @property
    def image(self) -> Image.Image:
        """The image as PIL RGB, decoded from its file on every access.

        Not cached on the item: an evaluation holds every item of a split, and cached pixels
        would keep every decoded image of the split in memory. Keep the returned image instead.
        """
        return load_rgb_image(self.record.image_path)

    def __getattr__(self, name: str) -> Any:
        # ref_id, ann_id, image_id, box, instances ... are read through from the record.
        if name.startswith("_") or name == "record":
            raise AttributeError(name)
        return getattr(self.record, name)

    @property
    def sentence(self) -> str:
        """The first (in the expression view, the only) sentence."""
        return self.sentences[0]

    @property
    def sent_id(self) -> int:
        return self.sent_ids[0]


def collate_items(batch: Sequence[RefItem]) -> dict[str, list[Any]]:
    """Collate items into lists: images stay PIL images of their own sizes."""
    return {
        "images": [item.image for item in batch],
        "boxes": torch.tensor([item.box for item in batch], dtype=torch.float32),
        "sentences": [list(item.sentences) for item in batch],
        "sent_ids": [list(item.sent_ids) for item in batch],
        "ref_ids": [item.ref_id for item in batch],
        "instances": [item.instances for item in batch],
    }


# ----------------------------------------------------------------------------------------------
# Parsing and validation (one pass that both the loader and `validate` use)
# ----------------------------------------------------------------------------------------------
def _annotation_files(root: Path, layout: Layout = DEFAULT_LAYOUT) -> tuple[Path, Path]:
    if not root.is_dir():
        raise DatasetError(f"{root}: data root not found (expected annotations/ and images/)")
    refs_path = root / "annotations" / layout.refs_file
    instances_path = root / "annotations" / INSTANCES_FILE
    for path in (refs_path, instances_path):
        if not path.is_file():
            others = sorted(p.name for p in path.parent.glob("refs(*).p")) if path.parent.is_dir() \
                else []
            hint = (f" ({layout.dataset} split by {layout.split_by} reads {layout.refs_file}; "
                    f"this folder holds {', '.join(others)}: choose --dataset and --split-by "
                    "to match)") if path == refs_path and others else ""
            raise DatasetError(f"{path}: annotation file not found{hint}")
    return refs_path, instances_path


def _load_instances(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON: {err}") from err
    except OSError as err:
        raise DatasetError(f"{path}: cannot read the file ({err.strerror or err})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: field '{key}' missing or not a list")
    return data


def _require(record: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected an object, got {type(record).__name__}")
    if key not in record:
        raise DatasetError(f"{where}: field '{key}' missing")
    value = record[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise DatasetError(f"{where}: field '{key}' has type {type(value).__name__}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _outside_root(file_name: str) -> bool:
    """True for a ``file_name`` that would read outside ``<root>/images``."""
    path = Path(file_name)
    return path.is_absolute() or ".." in path.parts or file_name.startswith("~")


def _check_box(
    box: Box, size: tuple[int, int], where: str, clip: bool, tolerance: float = 1.0
) -> tuple[Box, str | None]:
    """Return the (possibly clipped) box and a problem description, or None when it is fine."""
    x1, y1, x2, y2 = box
    width, height = size
    if not (x2 > x1 and y2 > y1):
        return box, f"{where}: degenerate box {box} (zero or negative width/height)"
    outside = min(x1, y1) < -tolerance or x2 > width + tolerance or y2 > height + tolerance
    if clip:
        box = (max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))
        if not (box[2] > box[0] and box[3] > box[1]):
            return box, f"{where}: box {(x1, y1, x2, y2)} lies outside the {width}x{height} image"
        return box, None
    if outside:
        return box, f"{where}: box {box} extends outside the {width}x{height} image"
    return box, None


def parse_refcocog(
    root: str | Path, clip_boxes: bool = False, layout: Layout = DEFAULT_LAYOUT
) -> tuple[list[RefRecord], list[str]]:
    """Read both annotation files and join them; return the records and every problem found.

    Missing root or annotation files and malformed top-level structure raise at once; problems
    with single records are collected so that ``validate`` can list them all.
    """
    records, ref_problems, instance_problems = parse_refcocog_detailed(root, clip_boxes, layout)
    return records, ref_problems + instance_problems


def parse_refcocog_detailed(
    root: str | Path, clip_boxes: bool = False, layout: Layout = DEFAULT_LAYOUT
) -> tuple[list[RefRecord], list[str], list[str]]:
    """Like ``parse_refcocog``, with the problems in two lists (see ``_parse``).

    The parse of a root is kept for the process, keyed by the annotation files' size and
    modification time: a notebook or an evaluation opens several splits of one root, and the
    real instances.json takes seconds to read. A changed file is read again.
    """
    refs_path, instances_path = _annotation_files(Path(root), layout)
    stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in (refs_path, instances_path))
    records, problems, instance_problems = _parse_memo(str(Path(root).resolve()), clip_boxes,
                                                       stamp, layout)
    return list(records), list(problems), list(instance_problems)


@functools.lru_cache(maxsize=4)
def _parse_memo(root: str, clip_boxes: bool, stamp: tuple[tuple[int, int], ...],
                layout: Layout = DEFAULT_LAYOUT
                ) -> tuple[tuple[RefRecord, ...], tuple[str, ...], tuple[str, ...]]:
    records, problems, instance_problems = _parse(Path(root), clip_boxes, layout)
    return tuple(records), tuple(problems), tuple(instance_problems)


def _parse(
    root: Path, clip_boxes: bool = False, layout: Layout = DEFAULT_LAYOUT
) -> tuple[list[RefRecord], list[str], list[str]]:
    """Both annotation files joined into records, with the problems in two lists.

    The first list holds problems that lose or break a referred object (a bad ref, image or
    category, or a bad box of a referred instance); the second, bad instances no ref points to.
    Those are only possible distractors: the dataset drops them with a warning instead of
    refusing to load, since one odd COCO box should not block a split of thousands of refs.
    """
    root = Path(root)
    refs_path, instances_path = _annotation_files(root, layout)
    refs = load_refs_pickle(refs_path)
    instances = _load_instances(instances_path)
    problems: list[str] = []
    rejected: dict[int | None, list[str]] = {}  # annotation id (when known) -> why dropped

    categories = {}
    for i, cat in enumerate(instances["categories"]):
        where = f"{instances_path}: categories[{i}]"
        try:
            categories[_require(cat, "id", int, where)] = str(_require(cat, "name", str, where))
        except DatasetError as err:
            problems.append(str(err))

    images: dict[int, dict[str, Any]] = {}
    image_index: dict[int, int] = {}
    for i, img in enumerate(instances["images"]):
        where = f"{instances_path}: images[{i}]"
        try:
            for key in ("id", "width", "height"):
                _require(img, key, int, where)
            file_name = _require(img, "file_name", str, where)
            if _outside_root(file_name):
                raise DatasetError(f"{where}: field 'file_name' {file_name!r} points outside "
                                   f"{root / 'images'}")
            if img["width"] <= 0 or img["height"] <= 0:
                raise DatasetError(f"{where}: fields 'width'/'height' must be positive")
            if img["id"] in image_index:
                # Which record's pixels would an annotation of this id get? Neither is trusted.
                raise DatasetError(f"{where}: field 'id' {img['id']} duplicates "
                                   f"images[{image_index[img['id']]}]")
        except DatasetError as err:
            problems.append(str(err))
            continue
        image_index[img["id"]] = i
        images[img["id"]] = img

    annotations: dict[int, dict[str, Any]] = {}
    instances_by_image: dict[int, list[Instance]] = {}
    annotation_index: dict[int, int] = {}
    for i, ann in enumerate(instances["annotations"]):
        where = f"{instances_path}: annotations[{i}]"
        try:
            ann_id = _require(ann, "id", int, where)
            if ann_id in annotation_index:
                # A second instance with one id would be a phantom proposal.
                problems.append(f"{where}: field 'id' {ann_id} duplicates "
                                f"annotations[{annotation_index[ann_id]}]")
                continue
            annotation_index[ann_id] = i
            where = f"{instances_path}: annotation id {ann_id}"
            image_id = _require(ann, "image_id", int, where)
            category_id = _require(ann, "category_id", int, where)
            bbox = _require(ann, "bbox", list, where)
            if len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
                raise DatasetError(f"{where}: field 'bbox' must be four numbers [x, y, w, h]")
            if image_id not in images:
                raise DatasetError(f"{where}: field 'image_id' {image_id} has no image record")
            if category_id not in categories:
                raise DatasetError(f"{where}: field 'category_id' {category_id} is unknown")
        except DatasetError as err:
            ann_key = ann.get("id") if isinstance(ann, dict) else None
            rejected.setdefault(ann_key if isinstance(ann_key, int) else None, []).append(str(err))
            continue
        size = (images[image_id]["width"], images[image_id]["height"])
        box, problem = _check_box(xywh_to_xyxy(bbox), size, f"{where}: field 'bbox'", clip_boxes)
        if problem:
            rejected.setdefault(ann_id, []).append(problem)
            continue
        annotations[ann_id] = ann
        instances_by_image.setdefault(image_id, []).append(
            Instance(ann_id, category_id, categories[category_id], box)
        )

    records: list[RefRecord] = []
    for i, ref in enumerate(refs):
        where = f"{refs_path}: refs[{i}]"
        try:
            if not isinstance(ref, dict):
                raise DatasetError(f"{where}: expected a dict, got {type(ref).__name__}")
            ref_id = _require(ref, "ref_id", int, where)
            where = f"{refs_path}: ref_id {ref_id}"
            ann_id = _require(ref, "ann_id", int, where)
            image_id = _require(ref, "image_id", int, where)
            split = _require(ref, "split", str, where)
            sentences = _require(ref, "sentences", list, where)
            if split not in layout.splits:
                raise DatasetError(f"{where}: field 'split' is {split!r}, not one of "
                                   f"{layout.splits} ({layout.dataset} split by "
                                   f"{layout.split_by})")
            if ann_id in rejected:
                raise DatasetError(f"{where}: field 'ann_id' {ann_id} refers to a rejected "
                                   f"instance ({rejected[ann_id][0]})")
            if ann_id not in annotations:
                raise DatasetError(f"{where}: field 'ann_id' {ann_id} has no instance in "
                                   f"{INSTANCES_FILE}")
            if image_id not in images:
                raise DatasetError(f"{where}: field 'image_id' {image_id} has no image record")
            if annotations[ann_id]["image_id"] != image_id:
                raise DatasetError(f"{where}: field 'ann_id' {ann_id} belongs to image "
                                   f"{annotations[ann_id]['image_id']}, not to image_id "
                                   f"{image_id}")
            if not sentences:
                raise DatasetError(f"{where}: field 'sentences' is empty")
            texts, sent_ids = [], []
            for j, sent in enumerate(sentences):
                if not isinstance(sent, dict) or not isinstance(sent.get("sent"), str):
                    raise DatasetError(f"{where}: field 'sentences[{j}].sent' missing")
                sent_id = sent.get("sent_id", -1)
                if not isinstance(sent_id, int) or isinstance(sent_id, bool):
                    raise DatasetError(f"{where}: field 'sentences[{j}].sent_id' is "
                                       f"{sent_id!r}, not an integer")
                texts.append(sent["sent"])
                sent_ids.append(sent_id)
        except DatasetError as err:
            problems.append(str(err))
            continue
        image = images[image_id]
        ann = annotations[ann_id]
        box = next(inst.box for inst in instances_by_image[image_id] if inst.ann_id == ann_id)
        records.append(
            RefRecord(
                ref_id=ref_id,
                ann_id=ann_id,
                image_id=image_id,
                category_id=int(ann["category_id"]),
                category=categories[int(ann["category_id"])],
                split=split,
                image_path=root / "images" / image["file_name"],
                image_size=(image["width"], image["height"]),
                box=box,
                sentences=tuple(texts),
                sent_ids=tuple(sent_ids),
                instances=tuple(instances_by_image[image_id]),
            )
        )
    # A rejected instance that a ref points to already produced that ref's problem.
    referred = {ref.get("ann_id") for ref in refs if isinstance(ref, dict)}
    instance_problems = [text for ann_id, texts in rejected.items()
                         if ann_id is None or ann_id not in referred for text in texts]
    return records, problems, instance_problems


def load_records(root: str | Path, clip_boxes: bool = False,
                 layout: Layout = DEFAULT_LAYOUT) -> list[RefRecord]:
    """Every ref of every split; raises on the first problem that breaks a ref, and warns
    about instances no ref points to that were dropped."""
    records, problems, dropped = parse_refcocog_detailed(root, clip_boxes=clip_boxes,
                                                         layout=layout)
    if problems:
        more = f" (and {len(problems) - 1} more; run `refcocog-tools validate`)"
        raise DatasetError(problems[0] + (more if len(problems) > 1 else ""))
    if dropped:
        warnings.warn(f"{len(dropped)} instance(s) no ref points to were dropped from the "
                      f"proposals, first: {dropped[0]} (run `refcocog-tools validate`)",
                      stacklevel=3)
    return records


def validate(root: str | Path, check_images: bool = True,
             layout: Layout = DEFAULT_LAYOUT) -> list[str]:
    """Check every file and record under ``root``; return every problem (empty when clean)."""
    try:
        records, problems = parse_refcocog(root, layout=layout)
    except DatasetError as err:
        return [str(err)]
    if check_images:
        problems += image_problems(records)
    return problems


# ----------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------
class RefCOCOg(torch.utils.data.Dataset):
    """One split of RefCOCOg, one item per referred object (``view="ref"``) or per expression.

    ``dataset`` / ``split_by`` choose another dataset of the family (``refcoco``, ``refcoco+``;
    see ``layouts``): the default is RefCOCOg's umd split. Items are built once at
    construction, so ``dataset[i]`` is O(1); images decode lazily.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        view: View = "expression",
        clip_boxes: bool = False,
        dataset: str = "refcocog",
        split_by: str | None = None,
    ) -> None:
        self.layout = get_layout(dataset, split_by)
        self.layout.check_split(split)
        if view not in ("ref", "expression"):
            raise ValueError(f"view must be 'ref' or 'expression', got {view!r}")
        self.root = Path(root)
        self.split = split
        self.view = view
        records = load_records(self.root, clip_boxes=clip_boxes, layout=self.layout)
        self.records = [r for r in records if r.split == split]
        if view == "ref":
            self._index = [(r, r.sentences, r.sent_ids) for r in self.records]
        else:
            self._index = [
                (r, (sent,), (sent_id,))
                for r in self.records
                for sent, sent_id in zip(r.sentences, r.sent_ids, strict=True)
            ]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> RefItem:
        record, sentences, sent_ids = self._index[index]
        return RefItem(record, sentences, sent_ids)

    def __iter__(self) -> Iterator[RefItem]:
        return (self[i] for i in range(len(self)))

    @property
    def image_ids(self) -> list[int]:
        """Distinct image ids of this split, in first-seen order."""
        return list(dict.fromkeys(r.image_id for r in self.records))

    def sentences(self) -> list[str]:
        """Every expression of the split (used for debiasing prompts)."""
        return [s for r in self.records for s in r.sentences]


def split_stats(root: str | Path, layout: Layout = DEFAULT_LAYOUT) -> dict[str, dict[str, float]]:
    """Per split: refs, expressions, images, objects per image, share of spatial expressions."""
    records = load_records(root, layout=layout)
    stats: dict[str, dict[str, float]] = {}
    for split in layout.splits:
        recs = [r for r in records if r.split == split]
        sentences = [s for r in recs for s in r.sentences]
        objects = {r.image_id: len(r.instances) for r in recs}
        stats[split] = {
            "refs": len(recs),
            "expressions": len(sentences),
            "images": len(objects),
            "objects_per_image": round(sum(objects.values()) / len(objects), 3) if objects else 0.0,
            "spatial_share": round(sum(map(is_spatial, sentences)) / len(sentences), 3)
            if sentences else 0.0,
            "categories": len(Counter(r.category for r in recs)),
        }
    return stats
