"""The embedded dataset's expressions read back: which template wrote a sentence, which objects
of its image fit it, and an audit of a method's rows by expression type."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from refcocog_tools.core.files import read_json
from refcocog_tools.data.annotations import INSTANCES_FILE, DatasetError
from refcocog_tools.data.minidata import CATEGORIES, COLOURS, BoxGeometry

ExpressionType = Literal["plain", "position", "size", "relation"]


EXPRESSION_TYPES: tuple[str, ...] = ("plain", "position", "size", "relation")


_NAME = "|".join(sorted(name for name, _ in CATEGORIES.values()))


_COLOUR = "|".join(sorted(COLOURS))


# One pattern per template of ``_expressions``; the named groups are what the template says.
_TEMPLATES: tuple[tuple[ExpressionType, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern)) for kind, pattern in (
        ("plain", rf"the (?P<colour>{_COLOUR}) (?P<name>{_NAME})"),
        ("position", rf"the (?P<name>{_NAME}) (?:on the|in the|at the) "
                     r"(?P<where>left|right|middle|top|bottom)"),
        ("position", rf"a (?P<name>{_NAME}) on the (?P<side>left|right) side"),
        ("position", rf"a (?P<name>{_NAME}) in the (?P<side>middle) of the picture"),
        ("size", rf"the (?P<size>bigger|smaller) (?P<name>{_NAME})"),
        ("relation", rf"(?P<colour>{_COLOUR}) (?P<name>{_NAME}) to the (?P<relation>left|right)"
                     rf" of the (?P<other_colour>{_COLOUR}) (?P<other_name>{_NAME})"),
    ))


def _template_match(sentence: str) -> tuple[ExpressionType, dict[str, str]] | None:
    text = sentence.strip().lower().rstrip(".")
    for kind, pattern in _TEMPLATES:
        match = pattern.fullmatch(text)
        if match is not None:
            return kind, match.groupdict()
    return None


def expression_type(sentence: str) -> ExpressionType | None:
    """The template kind of a generated expression (None for a sentence no template made).

    Works on the ``sent`` and on the ``raw`` form ("The cat on the left.").
    """
    found = _template_match(sentence)
    return None if found is None else found[0]


@dataclass(frozen=True)
class SceneObject(BoxGeometry):
    """An object of a generated image as the generator knows it."""

    ann_id: int
    name: str
    colour: str | None
    box: tuple[float, float, float, float]  # xyxy


def scene_objects(instances: dict[str, Any]) -> dict[int, list[SceneObject]]:
    """Per image id, its objects with their drawn colours (None where not recorded: a data set
    written before colours were recorded, or a real one)."""
    names = {c["id"]: c["name"] for c in instances["categories"]}
    out: dict[int, list[SceneObject]] = {}
    for ann in instances["annotations"]:
        x, y, w, h = (float(v) for v in ann["bbox"])
        out.setdefault(ann["image_id"], []).append(SceneObject(
            ann["id"], names[ann["category_id"]], ann.get("colour"), (x, y, x + w, y + h)))
    return out


def fitting_objects(sentence: str, objects: list[SceneObject], image_size: tuple[int, int],
                    use_colour: bool = True) -> list[int] | None:
    """The ann ids of the ``objects`` that a generated ``sentence`` fits, by the generator's
    own rules (the rules ``_expressions`` wrote it with); None for a sentence of no template,
    or when it needs colours that were not recorded.

    One id: the expression singles its object out. Several: the generator made it ambiguous
    (twins of the same colour; both twins on the same side of the other object).
    ``use_colour=False`` ignores the colour words: the objects a reader blind to colour (an
    untrained CLIP, labels and geometry) cannot tell apart.
    """
    found = _template_match(sentence)
    if found is None:
        return None
    kind, words = found
    same = [o for o in objects if o.name == words["name"]]
    if use_colour and kind in ("plain", "relation") and any(o.colour is None for o in objects):
        return None

    def coloured(candidates: list[SceneObject], colour: str) -> list[SceneObject]:
        return [o for o in candidates if not use_colour or o.colour == colour]

    if kind == "plain":
        return [o.ann_id for o in coloured(same, words["colour"])]
    if kind == "relation":
        subjects = coloured(same, words["colour"])
        others = coloured([o for o in objects if o.name == words["other_name"]],
                          words["other_colour"])
        left = words["relation"] == "left"
        return [s.ann_id for s in subjects
                if any(o is not s and (s.centre[0] < o.centre[0]) == left
                       and s.centre[0] != o.centre[0] for o in others)]
    if kind == "size":
        areas = [o.area for o in same]
        extreme = max(areas) if words["size"] == "bigger" else min(areas)
        return [o.ann_id for o in same if o.area == extreme] if len(same) > 1 else []
    if "side" in words:  # the lone object of its category, placed in a third of the picture
        def third(o: SceneObject) -> str:
            cx = o.centre[0] / image_size[0]
            return "left" if cx < 0.35 else "right" if cx > 0.65 else "middle"
        return [o.ann_id for o in same if third(o) == words["side"]] if len(same) == 1 else []
    where = words["where"]
    axis = 1 if where in ("top", "bottom") else 0
    values = sorted(o.centre[axis] for o in same)
    if len(same) < 2:
        return []
    if where in ("left", "top"):
        return [o.ann_id for o in same if o.centre[axis] == values[0]]
    if where in ("right", "bottom"):
        return [o.ann_id for o in same if o.centre[axis] == values[-1]]
    return [o.ann_id for o in same if values[0] < o.centre[0] < values[-1]]


def expression_audit(root: str | Path, rows: list[dict[str, Any]]) -> Any:
    """One row per ``evaluate`` prediction row of a generated data root: the expression's
    type, how many objects it fits by the generator's rules with colour (``fits``; more than
    one: ambiguous) and without (``fits_without_colour``; more than ``fits``: only colour tells
    them apart), whether the prediction was right (IoU >= 0.5), and ``difficulty``:
    "ambiguous" (several objects fit even with colour), "needs colour" (one fits, but others
    fit once colour is ignored) or "" (labels and geometry single it out). A pandas DataFrame.

    On a data root that is not generated, ``type`` is "other" and the counts are missing.
    """
    import pandas as pd

    instances = read_json(Path(root) / "annotations" / INSTANCES_FILE, "annotation file",
                          DatasetError)
    objects = scene_objects(instances)
    sizes = {i["id"]: (i["width"], i["height"]) for i in instances["images"]}
    out = []
    for row in rows:
        scene, size = objects.get(row["image_id"], []), sizes.get(row["image_id"], (1, 1))
        fits = fitting_objects(row["sentence"], scene, size)
        blind = fitting_objects(row["sentence"], scene, size, use_colour=False)
        difficulty = ("" if fits is None or blind is None else "ambiguous" if len(fits) > 1
                      else "needs colour" if len(blind) > len(fits) else "")
        out.append({"type": expression_type(row["sentence"]) or "other",
                    "sentence": row["sentence"], "ref_id": row["ref_id"],
                    "image_id": row["image_id"], "correct": row["iou"] >= 0.5,
                    "fits": None if fits is None else len(fits),
                    "fits_without_colour": None if blind is None else len(blind),
                    "difficulty": difficulty})
    return pd.DataFrame(out, columns=["type", "sentence", "ref_id", "image_id", "correct",
                                      "fits", "fits_without_colour", "difficulty"]).astype(
        {"fits": "Int64", "fits_without_colour": "Int64"})
