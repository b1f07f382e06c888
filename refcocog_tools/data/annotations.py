"""RefCOCOg's annotation files read into records, with every problem found (RefCOCO and
RefCOCO+ too).

The layout is the one the original study (and the refer toolkit) used::

    <root>/annotations/refs(umd).p      pickle: a list of ref records
    <root>/annotations/instances.json   COCO-style images / annotations / categories
    <root>/images/<file_name>           the COCO train2014 images

The other datasets of the family differ only in the refs file (``refs(unc).p``,
``refs(google).p``) and the split names its records carry: see ``layouts``. The refs file is
read by a pickle reader that refuses anything but plain data. Boxes are converted once, here,
from COCO ``xywh`` to ``xyxy`` floats in image pixels.

One pass both the loader (``load_records``, hence ``dataset.RefCOCOg``) and
``dataset.validate`` use: the categories, the images, the instances and the refs, each checked
in a part of its own, every problem named by file and field. Repeated ids (images,
annotations, refs, sentences) are problems of their own kind: a run may go past them
(``load_records_and_duplicates``), keeping the first record of each id (see ``duplicate_ids``).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refcocog_tools.core.files import NotRegularFileError, check_regular_file, read_json
from refcocog_tools.data.duplicate_ids import unique_refs
from refcocog_tools.data.layouts import DEFAULT_LAYOUT, Layout
from refcocog_tools.data.records import (
    Box,
    DatasetError,
    DuplicateIdError,
    Instance,
    RefRecord,
    xywh_to_xyxy,
)
from refcocog_tools.data.refs_pickle import load_refs_pickle

INSTANCES_FILE = "instances.json"


# ----------------------------------------------------------------------------------------------
# Parsing and validation (one pass that both the loader and `validate` use)
# ----------------------------------------------------------------------------------------------
def _annotation_files(root: Path, layout: Layout = DEFAULT_LAYOUT) -> tuple[Path, Path]:
    if not root.is_dir():
        raise DatasetError(f"{root}: data root not found (expected annotations/ and images/)")
    refs_path = root / "annotations" / layout.refs_file
    instances_path = root / "annotations" / INSTANCES_FILE
    for path in (refs_path, instances_path):
        try:
            check_regular_file(path)
            continue
        except NotRegularFileError as err:
            raise DatasetError(f"{path}: annotation file is {err}") from None
        except OSError:
            others = sorted(p.name for p in path.parent.glob("refs(*).p")) if path.parent.is_dir() \
                else []
            hint = (f" ({layout.dataset} split by {layout.split_by} reads {layout.refs_file}; "
                    f"this folder holds {', '.join(others)}: choose --dataset and --split-by "
                    "to match)") if path == refs_path and others else ""
            raise DatasetError(f"{path}: annotation file not found{hint}") from None
    return refs_path, instances_path


def _load_instances(path: Path) -> dict[str, Any]:
    data = read_json(path, "annotation file", DatasetError)
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
    records, ref_problems, instance_problems, duplicates = parse_refcocog_detailed(
        root, clip_boxes, layout)
    return records, ref_problems + duplicates + instance_problems


def parse_refcocog_detailed(
    root: str | Path, clip_boxes: bool = False, layout: Layout = DEFAULT_LAYOUT
) -> tuple[list[RefRecord], list[str], list[str], list[str]]:
    """Like ``parse_refcocog``, with the problems in three lists (see ``_parse``).

    The parse of a root is kept for the process, keyed by the annotation files' size and
    modification time: a notebook or an evaluation opens several splits of one root, and the
    real instances.json takes seconds to read. A changed file is read again.
    """
    refs_path, instances_path = _annotation_files(Path(root), layout)
    stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in (refs_path, instances_path))
    parsed = _parse_memo(str(Path(root).resolve()), clip_boxes, stamp, layout)
    return tuple(list(part) for part in parsed)  # type: ignore[return-value]


@functools.lru_cache(maxsize=4)
def _parse_memo(root: str, clip_boxes: bool, stamp: tuple[tuple[int, int], ...],
                layout: Layout = DEFAULT_LAYOUT) -> tuple[tuple[Any, ...], ...]:
    return tuple(tuple(part) for part in _parse(Path(root), clip_boxes, layout))


def _parse(
    root: Path, clip_boxes: bool = False, layout: Layout = DEFAULT_LAYOUT
) -> tuple[list[RefRecord], list[str], list[str], list[str]]:
    """Both annotation files joined into records, with the problems in three lists.

    The first list holds problems that lose or break a referred object (a bad ref, image or
    category, or a bad box of a referred instance); the second, bad instances no ref points to.
    Those are only possible distractors: the dataset drops them with a warning instead of
    refusing to load, since one odd COCO box should not block a split of thousands of refs.
    The third, repeated ids of images, annotations, refs or sentences: the records hold the
    first of each id only (``duplicate_ids``).
    """
    root = Path(root)
    refs_path, instances_path = _annotation_files(root, layout)
    refs = load_refs_pickle(refs_path)
    instances = _load_instances(instances_path)
    problems: list[str] = []  # each part adds its own, in file order
    duplicates: list[str] = []
    categories = _parse_categories(instances["categories"], instances_path, problems)
    images = _parse_images(instances["images"], instances_path, root, problems, duplicates)
    objects = _parse_annotations(instances["annotations"], instances_path, images, categories,
                                 clip_boxes, problems, duplicates)
    parsed: list[tuple[int, RefRecord]] = []
    for i, ref in enumerate(refs):
        try:
            parsed.append((i, _parse_ref(ref, refs_path, i, root, layout, images, categories,
                                         objects)))
        except DatasetError as err:
            problems.append(str(err))
    records, repeated = unique_refs(parsed, refs_path)
    # A rejected instance that a ref points to already produced that ref's problem.
    referred = {ref.get("ann_id") for ref in refs if isinstance(ref, dict)}
    instance_problems = [text for ann_id, texts in objects.rejected.items()
                         if ann_id is None or ann_id not in referred for text in texts]
    return records, problems, instance_problems, duplicates + repeated


def _parse_categories(entries: list[Any], path: Path, problems: list[str]) -> dict[int, str]:
    """Category id -> name."""
    categories = {}
    for i, cat in enumerate(entries):
        where = f"{path}: categories[{i}]"
        try:
            categories[_require(cat, "id", int, where)] = str(_require(cat, "name", str, where))
        except DatasetError as err:
            problems.append(str(err))
    return categories


def _parse_images(entries: list[Any], path: Path, root: Path, problems: list[str],
                  duplicates: list[str]) -> dict[int, dict[str, Any]]:
    """Image id -> image record, for the records that are whole, inside the root and unique."""
    images: dict[int, dict[str, Any]] = {}
    image_index: dict[int, int] = {}
    for i, img in enumerate(entries):
        where = f"{path}: images[{i}]"
        try:
            for key in ("id", "width", "height"):
                _require(img, key, int, where)
            file_name = _require(img, "file_name", str, where)
            if _outside_root(file_name):
                raise DatasetError(f"{where}: field 'file_name' {file_name!r} points outside "
                                   f"{root / 'images'}")
            if img["width"] <= 0 or img["height"] <= 0:
                raise DatasetError(f"{where}: fields 'width'/'height' must be positive")
        except DatasetError as err:
            problems.append(str(err))
            continue
        if img["id"] in image_index:
            # Which record's pixels would an annotation of this id get? The first, when a run
            # goes past the problem.
            duplicates.append(f"{where}: field 'id' {img['id']} duplicates "
                              f"images[{image_index[img['id']]}]")
            continue
        image_index[img["id"]] = i
        images[img["id"]] = img
    return images


@dataclass
class _Annotations:
    """The instances of ``instances.json`` that passed every check, and why the others did not."""

    by_id: dict[int, dict[str, Any]] = field(default_factory=dict)
    by_image: dict[int, list[Instance]] = field(default_factory=dict)
    # annotation id (None when unknown) -> why it was dropped
    rejected: dict[int | None, list[str]] = field(default_factory=dict)


def _parse_annotations(entries: list[Any], path: Path, images: dict[int, dict[str, Any]],
                       categories: dict[int, str], clip_boxes: bool,
                       problems: list[str], duplicates: list[str]) -> _Annotations:
    """Every instance checked: a duplicate id is a problem (it would be a phantom proposal),
    any other fault rejects the instance."""
    found = _Annotations()
    annotation_index: dict[int, int] = {}
    for i, ann in enumerate(entries):
        where = f"{path}: annotations[{i}]"
        try:
            ann_id = _require(ann, "id", int, where)
            if ann_id in annotation_index:
                duplicates.append(f"{where}: field 'id' {ann_id} duplicates "
                                  f"annotations[{annotation_index[ann_id]}]")
                continue
            annotation_index[ann_id] = i
            where = f"{path}: annotation id {ann_id}"
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
            found.rejected.setdefault(ann_key if isinstance(ann_key, int) else None,
                                      []).append(str(err))
            continue
        size = (images[image_id]["width"], images[image_id]["height"])
        box, problem = _check_box(xywh_to_xyxy(bbox), size, f"{where}: field 'bbox'", clip_boxes)
        if problem:
            found.rejected.setdefault(ann_id, []).append(problem)
            continue
        found.by_id[ann_id] = ann
        found.by_image.setdefault(image_id, []).append(
            Instance(ann_id, category_id, categories[category_id], box, ann.get("segmentation"))
        )
    return found


def _parse_ref(ref: Any, refs_path: Path, index: int, root: Path, layout: Layout,
               images: dict[int, dict[str, Any]], categories: dict[int, str],
               objects: _Annotations) -> RefRecord:
    """``refs[index]`` joined with its image and instance; DatasetError naming the field when
    it cannot be."""
    where = f"{refs_path}: refs[{index}]"
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
                           f"{layout.splits} ({layout.dataset} split by {layout.split_by})")
    if ann_id in objects.rejected:
        raise DatasetError(f"{where}: field 'ann_id' {ann_id} refers to a rejected "
                           f"instance ({objects.rejected[ann_id][0]})")
    if ann_id not in objects.by_id:
        raise DatasetError(f"{where}: field 'ann_id' {ann_id} has no instance in "
                           f"{INSTANCES_FILE}")
    if image_id not in images:
        raise DatasetError(f"{where}: field 'image_id' {image_id} has no image record")
    ann = objects.by_id[ann_id]
    if ann["image_id"] != image_id:
        raise DatasetError(f"{where}: field 'ann_id' {ann_id} belongs to image "
                           f"{ann['image_id']}, not to image_id {image_id}")
    texts, sent_ids = _parse_sentences(sentences, where)
    image = images[image_id]
    return RefRecord(
        ref_id=ref_id,
        ann_id=ann_id,
        image_id=image_id,
        category_id=int(ann["category_id"]),
        category=categories[int(ann["category_id"])],
        split=split,
        image_path=root / "images" / image["file_name"],
        image_size=(image["width"], image["height"]),
        box=next(inst.box for inst in objects.by_image[image_id] if inst.ann_id == ann_id),
        sentences=texts,
        sent_ids=sent_ids,
        instances=tuple(objects.by_image[image_id]),
    )


def _parse_sentences(sentences: list[Any], where: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """A ref's expressions and their ids (-1 where the file has none)."""
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
    return tuple(texts), tuple(sent_ids)


def load_records(root: str | Path, clip_boxes: bool = False,
                 layout: Layout = DEFAULT_LAYOUT) -> list[RefRecord]:
    """Every ref of every split; raises on the first problem that breaks a ref or repeats an
    id, and warns about instances no ref points to that were dropped."""
    return load_records_and_duplicates(root, clip_boxes, layout)[0]


def load_records_and_duplicates(root: str | Path, clip_boxes: bool = False,
                                layout: Layout = DEFAULT_LAYOUT, keep_first: bool = False
                                ) -> tuple[list[RefRecord], list[str]]:
    """``load_records`` and the repeated ids found. ``keep_first``: a repeated id is no
    reason to refuse: the records keep the first record of each id (``duplicate_ids``) and the
    repeats are returned; otherwise they raise, a ``DuplicateIdError`` when they are the only
    problems."""
    records, problems, dropped, duplicates = parse_refcocog_detailed(
        root, clip_boxes=clip_boxes, layout=layout)
    refusing = problems if keep_first else problems + duplicates
    if refusing:
        more = f" (and {len(refusing) - 1} more; run `refcocog-tools validate`)"
        kind = DatasetError if problems else DuplicateIdError
        raise kind(refusing[0] + (more if len(refusing) > 1 else ""))
    if dropped:
        warnings.warn(f"{len(dropped)} instance(s) no ref points to were dropped from the "
                      f"proposals, first: {dropped[0]} (run `refcocog-tools validate`)",
                      stacklevel=3)
    return records, duplicates
