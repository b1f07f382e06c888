"""RefCOCOg as a PyTorch dataset (and RefCOCO / RefCOCO+): items, images, collate, validation
and stats.

The annotation files are read by ``annotations`` (records, with every problem found); this
module adds the pixels: images decoded safely (EXIF orientation applied, decompression bombs
and truncated files named), items in the "ref" view (one per referred object, every
expression) or the "expression" view (one per expression), and ``validate``, which lists every
problem of a data root, its images included.
"""

from __future__ import annotations

import struct
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from refcocog_tools.core.files import check_regular_file
from refcocog_tools.core.masks import instance_mask_problems
from refcocog_tools.data.annotations import (
    INSTANCES_FILE,
    DatasetError,
    RefRecord,
    load_records,
    load_records_and_duplicates,
    parse_refcocog,
)
from refcocog_tools.data.language import is_spatial
from refcocog_tools.data.layouts import DEFAULT_LAYOUT, Layout, get_layout

REFS_FILE = DEFAULT_LAYOUT.refs_file
SPLITS = DEFAULT_LAYOUT.splits
View = Literal["ref", "expression"]

def is_synthetic(root: str | Path) -> bool:
    """True for a dataset written by ``refcocog_tools.data.minidata`` (its instances.json says so).

    Only the start of the file is read: the generator writes ``info`` first, and the real
    instances.json is hundreds of megabytes.
    """
    try:
        path = Path(root) / "annotations" / INSTANCES_FILE
        check_regular_file(path)  # a FIFO would block the read forever
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return b'"synthetic":true' in head.replace(b" ", b"")


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
        check_regular_file(path)  # before Pillow opens it: a FIFO would block forever
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


def image_problem(path: Path, expected_size: tuple[int, int], decode: bool = True) -> str | None:
    """Compare the image's size, after EXIF orientation (what every method sees), with the
    annotation's; the problem found, or None.

    ``decode``: decode the whole image (``validate``: a truncated JPEG passes ``Image.verify()``
    and fails later). Without it only the header is read (the size, the orientation, a
    decompression bomb), so the image is decoded once per evaluation, by the engine, which
    names an image that fails to decode then.
    """
    try:
        check_regular_file(path)  # before Pillow opens it: a FIFO would block forever
        with open_image(path) as image:
            decoded = decode or _exif_needs_pixels(image, path)
            if decoded:
                image.load()
            width, height = image.size
            # A PNG without an eXIf chunk has no orientation; asking for it would decode it.
            exif_free = image.format == "PNG" and "exif" not in image.info and not decoded
            if not exif_free and image.getexif().get(0x0112) in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
    except FileNotFoundError:
        return f"{path}: image file not found"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error,
            Image.DecompressionBombError) as err:
        return f"{path}: image unreadable: {err}"
    if (width, height) != tuple(expected_size):
        # The annotation size is what the boxes refer to: a mismatch breaks every box.
        return (f"{path}: size {(width, height)} after EXIF orientation differs from "
                f"{INSTANCES_FILE} width/height {tuple(expected_size)}")
    return None


def _exif_needs_pixels(image: Image.Image, path: Path) -> bool:
    """Whether reading the image's EXIF means decoding it: a PNG may carry its eXIf chunk
    after the pixel data, where Pillow finds it only by decoding (``getexif`` then loads the
    image). The chunk headers are scanned instead, skipping the data; only a PNG that has a
    late eXIf chunk is decoded."""
    if image.format != "PNG" or "exif" in image.info:
        return False
    with open(path, "rb") as handle:
        handle.seek(8)  # the PNG signature
        while header := handle.read(8):
            if len(header) < 8:
                return False
            length, kind = struct.unpack(">I4s", header)
            if kind == b"eXIf":
                return True
            if kind == b"IEND":
                return False
            handle.seek(length + 4, 1)  # the chunk's data and CRC
    return False


def image_problems(records: Sequence[RefRecord], workers: int = 4,
                   decode: bool = True) -> list[str]:
    """``image_problem`` of each distinct image of ``records``, in record order; ``decode``:
    a full decode of each (``validate``), or the headers only (the check before a run).

    Decoding releases the GIL, so a few threads check a split several times faster.
    """
    first = {r.image_path: r for r in records}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        found = pool.map(lambda r: image_problem(r.image_path, r.image_size, decode),
                         first.values())
        return [problem for problem in found if problem]


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------
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


def validate(root: str | Path, check_images: bool = True,
             layout: Layout = DEFAULT_LAYOUT) -> list[str]:
    """Check every file and record under ``root``; return every problem (empty when clean).

    Instance masks are checked too: a ``segmentation`` that cannot be decoded, or whose pixels
    leave the instance's box by more than 2 px (``masks.segmentation_problem``).
    """
    try:
        records, problems = parse_refcocog(root, layout=layout)
    except DatasetError as err:
        return [str(err)]
    problems += instance_mask_problems(records, Path(root) / "annotations" / INSTANCES_FILE)
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
    construction, so ``dataset[i]`` is O(1); images decode lazily. A repeated image,
    annotation, ref or sentence id refuses the data, unless ``keep_first_duplicates``: then
    the first record of each id is kept, the later ones dropped (``duplicate_ids``), and
    ``problems`` names each repeat.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        view: View = "expression",
        clip_boxes: bool = False,
        dataset: str = "refcocog",
        split_by: str | None = None,
        keep_first_duplicates: bool = False,
    ) -> None:
        self.layout = get_layout(dataset, split_by)
        self.layout.check_split(split)
        if view not in ("ref", "expression"):
            raise ValueError(f"view must be 'ref' or 'expression', got {view!r}")
        self.root = Path(root)
        self.split = split
        self.view = view
        records, duplicates = load_records_and_duplicates(
            self.root, clip_boxes=clip_boxes, layout=self.layout,
            keep_first=keep_first_duplicates)
        self.problems: list[str] = [f"{text}: the first record of the id is kept, the later "
                                    "ones dropped" for text in duplicates]
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
