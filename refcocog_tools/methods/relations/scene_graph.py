"""Spatial scene graphs over object proposals (the study's idea 5, which it partially built).

Each proposal is a node; for every ordered pair (i, j) the graph records whether box i lies
left of, right of, above or below box j, judged from the box centroids in image coordinates
(x grows rightwards, y grows downwards). The study stored this as an m x m adjacency matrix
with a numeric weight per edge and planned a graph neural network to pick the referred node;
that network was never built, and it is not built here either. What is here:

* ``relation_tensor``: a boolean (4, m, m) tensor, one m x m matrix per relation;
* ``edge_codes``: one integer m x m matrix, the four relations as bit flags;
* ``weighted_adjacency``: a float m x m matrix, edge weight = closeness of the centroids;
* ``SceneGraph`` / ``build_scene_graph``: all of the above plus labels, with ``edges()`` and
  ``to_frame()``;
* ``extreme_node``: a training-free use of the graph, the candidate that stands in a relation
  to every other candidate ("the leftmost cat");
* ``pairwise_relation`` / ``between_tensor``: the wider relation vocabulary of ReCLIP (bigger,
  smaller, inside, near, between) beside the four of the study, as matrices the relation
  resolver of ``refcocog_tools.methods.relations.resolver`` multiplies with probabilities;
* ``draw_scene_graph`` and ``plot_relation_heatmap`` for the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from refcocog_tools.core.boxes import as_boxes
from refcocog_tools.data.language import tokenize

if TYPE_CHECKING:  # plotting types only; matplotlib is imported when a figure is drawn
    from matplotlib.axes import Axes
    from PIL import Image

RELATIONS = ("left_of", "right_of", "above", "below")
# Bit flags of ``edge_codes``: a pair can be both left_of and above, so the code is a sum.
RELATION_BITS = {name: 1 << k for k, name in enumerate(RELATIONS)}


def centroids(boxes: torch.Tensor | Sequence[Sequence[float]]) -> torch.Tensor:
    """(m, 2) box centres (cx, cy) of xyxy boxes."""
    b = as_boxes(boxes, torch.float32)
    return torch.stack(((b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2), dim=1)


def relation_tensor(
    boxes: torch.Tensor | Sequence[Sequence[float]], margin: float = 0.0
) -> torch.Tensor:
    """Boolean (4, m, m): ``R[k, i, j]`` is True when box i is ``RELATIONS[k]`` of box j.

    Centroids closer than ``margin`` pixels along an axis are in neither order along it, so two
    boxes side by side at the same height are neither above nor below each other. The diagonal
    is always False.
    """
    c = centroids(boxes)
    dx = c[:, 0][None, :] - c[:, 0][:, None]  # dx[i, j] = cx_j - cx_i
    dy = c[:, 1][None, :] - c[:, 1][:, None]
    left_of = dx > margin  # j's centre is further right, so i is left of j
    right_of = dx < -margin
    above = dy > margin  # y grows downwards: j lower in the image, so i is above j
    below = dy < -margin
    return torch.stack((left_of, right_of, above, below))


def edge_codes(
    boxes: torch.Tensor | Sequence[Sequence[float]], margin: float = 0.0
) -> torch.Tensor:
    """(m, m) int64: the sum of ``RELATION_BITS`` of every relation box i has to box j."""
    rel = relation_tensor(boxes, margin).long()
    bits = torch.tensor([RELATION_BITS[name] for name in RELATIONS]).view(4, 1, 1)
    return (rel * bits).sum(dim=0)


def weighted_adjacency(
    boxes: torch.Tensor | Sequence[Sequence[float]], image_size: tuple[int, int]
) -> torch.Tensor:
    """(m, m) float: 1 - centroid distance / image diagonal, so nearer pairs weigh more.

    Symmetric, in [0, 1], with a zero diagonal (no self-loops).
    """
    width, height = image_size
    c = centroids(boxes)
    distance = torch.cdist(c, c)
    weight = 1.0 - distance / float((width**2 + height**2) ** 0.5)
    weight.fill_diagonal_(0.0)
    return weight.clamp(min=0.0)


@dataclass
class SceneGraph:
    """A spatial scene graph over m boxes."""

    boxes: torch.Tensor  # (m, 4) xyxy
    labels: list[str]
    relations: torch.Tensor  # (4, m, m) bool, see relation_tensor
    codes: torch.Tensor  # (m, m) int64, see edge_codes
    weights: torch.Tensor  # (m, m) float, see weighted_adjacency

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def adjacency(self, relation: str) -> torch.Tensor:
        """The (m, m) boolean matrix of one relation."""
        return self.relations[RELATIONS.index(relation)]

    def edges(self, relation: str | None = None) -> list[tuple[int, int, str]]:
        """Every (i, j, relation) with i in that relation to j, in index order."""
        names = RELATIONS if relation is None else (relation,)
        out = []
        for name in names:
            for i, j in self.adjacency(name).nonzero().tolist():
                out.append((i, j, name))
        return sorted(out, key=lambda e: (e[0], e[1], RELATIONS.index(e[2])))

    def to_frame(self) -> pd.DataFrame:
        """One row per ordered pair i != j: labels, the four relations, code and weight."""
        rows = []
        for i in range(len(self)):
            for j in range(len(self)):
                if i == j:
                    continue
                row = {"i": i, "j": j, "label_i": self.labels[i], "label_j": self.labels[j]}
                for k, name in enumerate(RELATIONS):
                    row[name] = bool(self.relations[k, i, j])
                row["code"] = int(self.codes[i, j])
                row["weight"] = round(float(self.weights[i, j]), 4)
                rows.append(row)
        return pd.DataFrame(rows)


def build_scene_graph(
    boxes: torch.Tensor | Sequence[Sequence[float]],
    image_size: tuple[int, int],
    labels: Sequence[str | None] | None = None,
    margin: float = 0.0,
) -> SceneGraph:
    """The scene graph of ``boxes`` in an image of ``image_size`` (width, height)."""
    tensor = as_boxes(boxes, torch.float32)
    m = tensor.shape[0]
    names = [str(i) if labels is None or labels[i] is None else str(labels[i]) for i in range(m)]
    return SceneGraph(
        boxes=tensor,
        labels=names,
        relations=relation_tensor(tensor, margin),
        codes=edge_codes(tensor, margin),
        weights=weighted_adjacency(tensor, image_size),
    )


def extreme_node(graph: SceneGraph, candidates: Sequence[int], relation: str) -> int | None:
    """The candidate in ``relation`` to every other candidate, or None when none is.

    ``extreme_node(g, cats, "left_of")`` is the leftmost cat. With one candidate it is returned.
    """
    if not candidates:
        return None
    adjacency = graph.adjacency(relation)
    for i in candidates:
        if all(bool(adjacency[i, j]) for j in candidates if j != i):
            return i
    return None


# Words of an expression that name an extreme along a relation of the graph.
EXTREME_WORDS = {
    "left": "left_of", "leftmost": "left_of",
    "right": "right_of", "rightmost": "right_of",
    "top": "above", "upper": "above", "above": "above",
    "bottom": "below", "lower": "below", "below": "below",
}


def resolve_by_position(graph: SceneGraph, sentence: str, category: str) -> int | None:
    """Pick the node an expression like "the cat on the left" names, from the graph alone.

    Candidates are the nodes labelled ``category``; the first word of the sentence found in
    ``EXTREME_WORDS`` gives the relation; the answer is ``extreme_node``. None when the sentence
    has no such word or no candidate is extreme (a "middle" object, say).
    """
    candidates = [i for i, label in enumerate(graph.labels) if label == category]
    if len(candidates) == 1:
        return candidates[0]
    for word in tokenize(sentence):
        if word in EXTREME_WORDS:
            return extreme_node(graph, candidates, EXTREME_WORDS[word])
    return None


def position_answers(split: Sequence[Any], limit: int = 0, margin: float = 0.0
                     ) -> list[dict[str, Any]]:
    """Per expression of ``split`` (its first ``limit``; 0: all), what the scene graph of its
    image's ground-truth boxes and categories answers alone (``resolve_by_position``): its
    sentence and image, whether it has a position word, whether the graph answered and whether
    the answer is the referred object."""
    count = len(split) if not limit else min(limit, len(split))
    rows = []
    for index in range(count):
        expression = split[index]
        instances = expression.instances
        graph = build_scene_graph([inst.box for inst in instances], expression.image_size,
                                  [inst.category for inst in instances], margin=margin)
        truth = next(k for k, inst in enumerate(instances) if inst.ann_id == expression.ann_id)
        answer = resolve_by_position(graph, expression.sentence, expression.category)
        rows.append({"sentence": expression.sentence, "image_id": expression.image_id,
                     "position_word": any(w in EXTREME_WORDS
                                          for w in tokenize(expression.sentence)),
                     "answered": answer is not None, "correct": answer == truth})
    return rows


# Relations between two boxes beyond the study's four, and how each is judged.
PAIRWISE_RELATIONS = RELATIONS + ("bigger", "smaller", "inside", "near")
# Share of box i's area that must lie in box j for "i inside j".
INSIDE_SHARE = 0.5


def box_areas(boxes: torch.Tensor | Sequence[Sequence[float]]) -> torch.Tensor:
    """(m,) areas of xyxy boxes (zero for degenerate boxes)."""
    b = as_boxes(boxes, torch.float32)
    return (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)


def pairwise_relation(boxes: torch.Tensor | Sequence[Sequence[float]], relation: str,
                      image_size: tuple[int, int]) -> torch.Tensor:
    """(m, m) float in [0, 1]: how true "box i is ``relation`` box j" is; zero diagonal.

    ``left_of`` / ``right_of`` / ``above`` / ``below`` compare centroids (``relation_tensor``);
    ``bigger`` / ``smaller`` compare areas; ``inside`` holds when at least ``INSIDE_SHARE`` of
    box i's area lies in box j; ``near`` is the graded closeness ``weighted_adjacency``
    (1 - centroid distance / image diagonal). All but ``near`` are 0 or 1.
    """
    tensor = as_boxes(boxes, torch.float32)
    if relation in RELATIONS:
        return relation_tensor(tensor)[RELATIONS.index(relation)].float()
    if relation == "near":
        return weighted_adjacency(tensor, image_size)
    if relation in ("bigger", "smaller"):
        area = box_areas(tensor)
        out = area[:, None] > area[None, :] if relation == "bigger" else \
            area[:, None] < area[None, :]
        return out.float()
    if relation == "inside":
        top_left = torch.maximum(tensor[:, None, :2], tensor[None, :, :2])
        bottom_right = torch.minimum(tensor[:, None, 2:], tensor[None, :, 2:])
        inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
        share = inter / box_areas(tensor).clamp(min=1e-9)[:, None]
        out = (share >= INSIDE_SHARE).float()
        out.fill_diagonal_(0.0)
        return out
    raise ValueError(f"unknown relation {relation!r}; choose from {PAIRWISE_RELATIONS}")


def between_tensor(boxes: torch.Tensor | Sequence[Sequence[float]]) -> torch.Tensor:
    """(m, m, m) float: ``B[i, j, k]`` is 1 when box i's centre lies between the centres of
    boxes j and k, i.e. its projection on the segment from j's centre to k's falls strictly
    inside it, and i, j, k are three different boxes."""
    c = centroids(boxes)
    seg = c[None, :, :] - c[:, None, :]  # seg[j, k] = c_k - c_j
    rel = c[:, None, :] - c[None, :, :]  # rel[i, j] = c_i - c_j
    length2 = (seg**2).sum(-1)  # (j, k)
    t = torch.einsum("ijd,jkd->ijk", rel, seg) / length2.clamp(min=1e-9)[None]
    out = ((t > 0) & (t < 1) & (length2[None] > 0)).float()
    m = c.shape[0]
    idx = torch.arange(m)
    out[idx, idx, :] = 0.0
    out[idx, :, idx] = 0.0
    return out


def draw_scene_graph(ax: Axes, image: Image.Image, graph: SceneGraph, relation: str = "left_of",
                     highlight: int | None = None, fontsize: float = 10) -> None:
    """Draw the image, the boxes, and an arrow i -> j for every edge of ``relation``.

    Every edge is drawn (faintly), not a reduced set, so the picture shows the whole matrix.
    ``fontsize`` (points) of the node labels; the title is one point larger.
    """
    from matplotlib import patheffects
    from matplotlib.patches import FancyArrowPatch, Rectangle

    ax.imshow(image)
    c = centroids(graph.boxes)
    for i, (x1, y1, x2, y2) in enumerate(graph.boxes.tolist()):
        colour = "red" if i == highlight else "yellow"
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour,
                               linewidth=2))
        ax.text(x1 + 2, y1 + 2, f"{i}: {graph.labels[i]}", va="top", fontsize=fontsize,
                color="black", bbox={"facecolor": colour, "alpha": 0.8, "pad": 1})
    for i, j, _ in graph.edges(relation):
        # Dark blue edged in white: visible on a grey background and on a pale one.
        arrow = FancyArrowPatch(tuple(c[i].tolist()), tuple(c[j].tolist()), arrowstyle="-|>",
                                mutation_scale=16, color="#1f3fbf", linewidth=2.0,
                                connectionstyle="arc3,rad=0.15", path_effects=[
                                    patheffects.withStroke(linewidth=4, foreground="white")])
        ax.add_patch(arrow)
    ax.scatter(c[:, 0], c[:, 1], s=18, color="black", zorder=3)
    ax.set_title(f"i -> j: i is {relation.replace('_', ' ')} j", fontsize=fontsize + 1)
    ax.set_axis_off()


def plot_relation_heatmap(ax: Axes, graph: SceneGraph, matrix: str = "codes") -> None:
    """Heatmap of the integer edge codes (``"codes"``) or the closeness weights (``"weights"``)."""
    values = graph.codes if matrix == "codes" else graph.weights
    image = ax.imshow(values.numpy(), cmap="viridis")
    ticks = [f"{i}: {label}" for i, label in enumerate(graph.labels)]
    ax.set_xticks(range(len(graph)), ticks, rotation=60, ha="right", fontsize=9)
    ax.set_yticks(range(len(graph)), ticks, fontsize=9)
    ax.set_xlabel("j")
    ax.set_ylabel("i")
    if matrix == "codes":
        for i in range(len(graph)):
            for j in range(len(graph)):
                ax.text(j, i, str(int(values[i, j])), ha="center", va="center", fontsize=9,
                        color="white" if int(values[i, j]) < 6 else "black")
        ax.set_title("edge code of i -> j (left=1, right=2, above=4, below=8)", fontsize=11)
    else:
        ax.set_title("edge weight: 1 - distance / diagonal", fontsize=11)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
