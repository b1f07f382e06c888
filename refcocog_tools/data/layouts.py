"""The datasets of the RefCOCO family: which refs file each split-by uses, and its split names.

The refer toolkit (lichengunc/refer) ships one folder per dataset, ``data/<dataset>/``, holding
that dataset's ``instances.json`` and one ``refs(<split_by>).p`` per split-by. A data root here
is one dataset: its ``annotations/`` folder is that ``data/<dataset>/`` folder as downloaded,
and ``images/`` holds the COCO train2014 images. ``--dataset`` and ``--split-by`` choose which
refs file is read and which split names its records may carry.

========  ========  ===================  ==========================
dataset   split-by  refs file            splits
========  ========  ===================  ==========================
refcocog  umd       ``refs(umd).p``      train, val, test
refcocog  google    ``refs(google).p``   train, val
refcoco   unc       ``refs(unc).p``      train, val, testA, testB
refcoco   google    ``refs(google).p``   train, val, test
refcoco+  unc       ``refs(unc).p``      train, val, testA, testB
========  ========  ===================  ==========================
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DATASETS", "DEFAULT_LAYOUT", "Layout", "LayoutError", "get_layout"]


class LayoutError(ValueError):
    """A dataset / split-by / split combination that the RefCOCO family does not have."""


@dataclass(frozen=True)
class Layout:
    """One dataset of the family under one split-by: its refs file and its split names."""

    dataset: str
    split_by: str
    splits: tuple[str, ...]

    @property
    def refs_file(self) -> str:
        return f"refs({self.split_by}).p"

    @property
    def name(self) -> str:
        """``refcoco_unc``: the ``<dataset>_<split_by>`` name the field's code and files use."""
        return f"{self.dataset}_{self.split_by}"

    @property
    def default_split(self) -> str:
        """The split a run evaluates on unless told: ``test``, else ``val`` (every layout has
        val; RefCOCO's unc split has testA and testB, which a run must name)."""
        return "test" if "test" in self.splits else "val"

    def check_split(self, split: str) -> str:
        """``split`` when this layout has it, else a ``LayoutError`` listing the ones it has."""
        if split not in self.splits:
            raise LayoutError(f"{self.dataset} split by {self.split_by} has no split {split!r}; "
                              f"its splits are {', '.join(self.splits)}")
        return split


_UNC = ("train", "val", "testA", "testB")
# dataset -> split-by -> splits; the first split-by of a dataset is its default.
DATASETS: dict[str, dict[str, tuple[str, ...]]] = {
    "refcocog": {"umd": ("train", "val", "test"), "google": ("train", "val")},
    "refcoco": {"unc": _UNC, "google": ("train", "val", "test")},
    "refcoco+": {"unc": _UNC},
}
# How prose names each dataset of the family.
TITLES = {"refcocog": "RefCOCOg", "refcoco": "RefCOCO", "refcoco+": "RefCOCO+"}
SPLIT_BYS = tuple(dict.fromkeys(s for by in DATASETS.values() for s in by))
ALL_SPLITS = tuple(dict.fromkeys(s for by in DATASETS.values() for ss in by.values() for s in ss))


def dataset_title(dataset: str) -> str:
    """How prose names a dataset of the family: ``refcoco+`` -> "RefCOCO+"."""
    return TITLES.get(dataset, dataset)


def get_layout(dataset: str = "refcocog", split_by: str | None = None) -> Layout:
    """The layout of ``dataset`` under ``split_by`` (default: the dataset's usual split-by).

    Raises ``LayoutError`` naming what the family has when the pair does not exist.
    """
    if dataset not in DATASETS:
        raise LayoutError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    split_bys = DATASETS[dataset]
    if split_by is None:
        split_by = next(iter(split_bys))
    if split_by not in split_bys:
        raise LayoutError(f"{dataset} has no split-by {split_by!r}; it has "
                          f"{', '.join(split_bys)}")
    return Layout(dataset, split_by, split_bys[split_by])


DEFAULT_LAYOUT = get_layout("refcocog", "umd")


