"""Relations on the scene graph: a ReCLIP-style resolver of referring expressions.

ReCLIP (Subramanian et al., ACL 2022) grounds "the cat to the left of the blue dog" in three
steps, and so does this module, one small function per step:

1. **Parse** (``reference_parser.parse_reference``): a rule-based reading, built on
   ``language.py``'s relation tables, turns the expression into a ``NounPhrase``: its head
   noun, its attributes (colour and other adjectives), its superlatives (leftmost, top, middle,
   biggest...), and its relations (left of, above, bigger than, inside, near, between...), each
   with the noun phrase(s) it points at. Relations that are not spatial ("holding", "with",
   "of") stay part of the noun phrase's text, as ReCLIP does with them.
2. **Score entities** (``entity_probabilities``): every noun phrase is scored against every
   proposal by an existing visual-prompt method (red-circle by default; crop; blur), whose
   scores become a distribution over proposals, ``softmax(score / temperature)``. Where the
   proposals carry class labels (ground-truth categories, YOLO class names) and labels are
   used, the distribution is multiplied by a label match: 1 for a proposal whose label names
   the head noun, ``label_floor`` for the others (unless no proposal matches the head noun at
   all, in which case labels say nothing).
3. **Resolve on the scene graph** (``resolve``): relations and superlatives are matrices over
   the proposals' boxes (``scene_graph.pairwise_relation`` / ``between_tensor``), combined with
   the distributions by the rules below.

The combination rule
--------------------
With ``P`` the head noun phrase's distribution over proposals:

* a relation ``r`` to a noun phrase with distribution ``Q`` (resolved recursively) gives
  ``P(i) <- P(i) * sum_j Q(j) R_r(i, j)``: the head's probability times the expected truth of
  the relation under the object's distribution (ReCLIP's rule). ``between`` uses both objects:
  ``P(i) <- P(i) * sum_jk Q1(j) Q2(k) B(i, j, k)``. A relation that no proposal satisfies is
  skipped rather than zeroing every proposal.
* a superlative ("the leftmost cat", "the cat on the left", "the bigger cat") gives
  ``P(i) <- P(i) * prod_{j more extreme than i} (1 - q(j))``, where ``q(j)`` is how much
  proposal j belongs to the head's candidates: its label match (1 or ``label_floor``) when
  labels are used, else ``P(j) / max P``. That is: i is a candidate and no candidate lies
  further in that direction. "middle" asks for a candidate on each side. This differs from
  ReCLIP's superlative rule, ``P(i) <- sum_j P(i) P(j) S(i, j)``, which gives zero to the only
  candidate of its kind when nothing else lies beyond it ("a cat on the left side" with one
  cat); ``superlative_rule="reclip"`` restores ReCLIP's rule for comparison.
* finally, as ReCLIP does, the result is multiplied by the distribution of the whole
  expression scored as one text (``full_expression=True``), and normalised.

Each step renormalises. The method's scores (``Prediction.scores``) are the final
probabilities; ``RelationsMethod.explain`` returns every intermediate distribution.

Why rules and not spaCy: see ``reference_parser``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from refcocog_tools.methods.interface import (
    BatchedMethod,
    EncodeRequest,
    GroundingMethod,
    PredictsFromRequest,
)
from refcocog_tools.methods.prediction import Prediction
from refcocog_tools.methods.relations.reference_parser import NounPhrase, parse_reference
from refcocog_tools.methods.relations.scene_graph import (
    between_tensor,
    box_areas,
    centroids,
    pairwise_relation,
)
from refcocog_tools.proposals.structures import Proposals

if TYPE_CHECKING:  # plotting types, and the options the registry builds this method from
    from matplotlib.axes import Axes

    from refcocog_tools.methods.relations.options import RelationsOptions

# ----------------------------------------------------------------------------------------------
# 2. Entity scores and label match
# ----------------------------------------------------------------------------------------------
# Nouns that name a COCO category in other words (people are referred to in many ways).
NOUN_LABELS: dict[str, str] = {
    **dict.fromkeys("""man woman boy girl guy lady kid child baby player person people men women
    children skier surfer skateboarder batter catcher umpire gentleman someone""".split(),
                    "person"),
    "bike": "bicycle", "motorbike": "motorcycle", "plane": "airplane", "aeroplane": "airplane",
    "sofa": "couch", "television": "tv", "phone": "cell phone", "cellphone": "cell phone",
    "doughnut": "donut", "table": "dining table", "puppy": "dog", "kitten": "cat",
    "kitty": "cat", "automobile": "car", "lorry": "truck", "ship": "boat",
}


def _singular(word: str) -> str:
    for suffix, replacement in (("ies", "y"), ("ses", "s"), ("es", "e"), ("s", "")):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            return word[: -len(suffix)] + replacement
    return word


def label_matches(noun: str | None, label: str | None) -> bool:
    """True when ``noun`` names the class ``label`` ("cat"/"cats"/"kitten" for "cat", "man"
    for "person", "light" for "traffic light")."""
    if not noun or not label:
        return False
    label = label.lower()
    for word in {noun, _singular(noun)}:
        if word == label or word == label.split()[-1] or NOUN_LABELS.get(word) == label:
            return True
    return False


def label_factor(noun: str | None, labels: Sequence[str | None], floor: float) -> torch.Tensor:
    """(P,) 1 where the proposal's label names ``noun``, ``floor`` elsewhere; all ones when no
    label names it (the labels then say nothing about this noun)."""
    match = torch.tensor([label_matches(noun, label) for label in labels], dtype=torch.bool)
    if not bool(match.any()):
        return torch.ones(len(labels))
    return torch.where(match, torch.tensor(1.0), torch.tensor(float(floor)))


def softmax_scores(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Scores (..., P) to distributions over proposals; -inf scores get probability 0."""
    return torch.softmax(scores.float() / temperature, dim=-1)


def _normalise(p: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    total = p.sum()
    return p / total if float(total) > 0 else fallback


# ----------------------------------------------------------------------------------------------
# 3. Resolution on the scene graph
# ----------------------------------------------------------------------------------------------
def more_extreme(boxes: torch.Tensor, direction: str) -> torch.Tensor:
    """(P, P) bool: ``M[j, i]`` when proposal j lies further in ``direction`` than i
    (centroids for left / right / top / bottom, areas for biggest / smallest)."""
    c = centroids(boxes)
    key = {"left": -c[:, 0], "right": c[:, 0], "top": -c[:, 1], "bottom": c[:, 1],
           "biggest": box_areas(boxes), "smallest": -box_areas(boxes)}[direction]
    return key[:, None] > key[None, :]


def superlative(p: torch.Tensor, members: torch.Tensor, boxes: torch.Tensor, direction: str,
                rule: str = "exclusive") -> torch.Tensor:
    """Apply a superlative to the distribution ``p`` (P,) of the head's candidates.

    ``members`` (P,) in [0, 1]: how much each proposal is one of the candidates. ``exclusive``:
    ``p(i) * prod_{j beyond i} (1 - members(j))``; "middle": ``p(i)`` times the chance of a
    candidate on its left and one on its right. ``reclip``: ``sum_j p(i) p(j) S(i, j)`` with
    ``S(i, j)`` = i beyond j (no "middle" in ReCLIP: there, a candidate between two others).
    """
    if direction == "middle":
        left = more_extreme(boxes, "left")  # left[j, i]: j left of i
        right = more_extreme(boxes, "right")
        weights = members if rule == "exclusive" else p
        none_left = torch.prod(torch.where(left, 1 - weights[:, None], torch.ones_like(p)[:, None]
                                           ), dim=0)
        none_right = torch.prod(torch.where(right, 1 - weights[:, None],
                                            torch.ones_like(p)[:, None]), dim=0)
        out = p * (1 - none_left) * (1 - none_right)
    elif rule == "exclusive":
        beyond = more_extreme(boxes, direction)  # beyond[j, i]
        out = p * torch.prod(torch.where(beyond, 1 - members[:, None],
                                         torch.ones_like(p)[:, None]), dim=0)
    elif rule == "reclip":
        beats = more_extreme(boxes, direction).float()  # beats[i, j]: i beyond j = S(i, j)
        out = p * (beats @ p)
    else:
        raise ValueError(f"superlative rule must be 'exclusive' or 'reclip', got {rule!r}")
    return _normalise(out, p)


@dataclass
class Resolution:
    """Every distribution behind one resolved expression (for tests, tables and figures)."""

    parse: NounPhrase
    texts: list[str]  # the scored texts, the whole expression first
    entity: dict[str, torch.Tensor]  # noun-phrase text -> distribution (label match included)
    steps: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # (what, distribution)
    final: torch.Tensor | None = None


class RelationsMethod:
    """Parse, score noun phrases with a visual-prompt scorer, resolve on the scene graph."""

    name = "relations"

    def __init__(
        self,
        entity_scorer: GroundingMethod | None,
        options: RelationsOptions,
        *,
        scorer_name: str | None = None,
    ) -> None:
        """``options``: the resolver's settings (its ``entity_scorer`` and ``scorer_options``
        were used by the registry to build ``entity_scorer``); ``scorer_name`` names the
        scorer in ``config`` (default: the scorer's own name)."""
        if options.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {options.temperature}")
        if not 0.0 <= options.label_floor <= 1.0:
            raise ValueError(f"label_floor must be in [0, 1], got {options.label_floor}")
        if options.superlative_rule not in ("exclusive", "reclip"):
            raise ValueError("superlative_rule must be 'exclusive' or 'reclip'")
        self.options = options
        self.entity_scorer = entity_scorer
        self.scorer_name = scorer_name or (entity_scorer.name if entity_scorer else "none")
        self.use_labels = options.use_labels
        self.label_floor = float(options.label_floor)
        self.temperature = float(options.temperature)
        self.full_expression = options.full_expression
        self.superlative_rule = options.superlative_rule
        # A scorer that declares its CLIP inputs (red-circle, crop, blur) lends the engine its
        # backbones and cache, which makes this method a ``BatchedMethod``: the engine then
        # encodes the scorer's prompts of many images in shared batches. Without such a scorer
        # (labels and geometry alone) the attributes stay unset and the engine does not batch.
        if isinstance(entity_scorer, BatchedMethod):
            self.backbones = entity_scorer.backbones
            self.cache = entity_scorer.cache

    def config(self) -> dict[str, Any]:
        return {
            "method": self.name, "entity_scorer": self.scorer_name,
            "entity_scorer_config": (self.entity_scorer.config() if self.entity_scorer
                                     else None),
            "use_labels": self.use_labels, "label_floor": self.label_floor,
            "temperature": self.temperature, "full_expression": self.full_expression,
            "superlative_rule": self.superlative_rule,
        }

    # -- pieces ---------------------------------------------------------------------------------
    @staticmethod
    def scored_texts(expressions: Sequence[str]) -> list[str]:
        """Every text the entity scorer is shown for ``expressions``: each whole expression,
        then the noun phrases of its parse, without repeats."""
        parses = [parse_reference(e) for e in expressions]
        return list(dict.fromkeys([*expressions, *(p.text for parse in parses
                                                   for p in parse.phrases())]))

    def encode_request(self, image: Image.Image, expressions: Sequence[str],
                       proposals: Proposals) -> EncodeRequest:
        """What the entity scorer will look up for ``expressions``: its visual prompts of the
        proposals and its text prompts of every scored text (see ``scored_texts``)."""
        if not isinstance(self.entity_scorer, BatchedMethod):
            raise TypeError(f"entity scorer {self.scorer_name!r} does not declare its inputs")
        return self.entity_scorer.encode_request(image, self.scored_texts(expressions),
                                                 proposals)

    def text_scores(self, image: Image.Image, texts: Sequence[str],
                    proposals: Proposals) -> torch.Tensor:
        """(T, P) entity-scorer scores of ``texts`` (zeros without a scorer).

        ``predict`` passes one ref's expressions and their noun phrases in one call, so a
        scorer that debiases over its call's texts (red-circle) still sees only that ref.
        """
        if self.entity_scorer is None or not texts:
            return torch.zeros(len(texts), len(proposals))
        return self.entity_scorer.predict(image, list(texts), proposals).scores.float()

    def _members(self, phrase: NounPhrase, p: torch.Tensor, labels: Sequence[str | None]
                 ) -> torch.Tensor:
        if self.use_labels and any(label_matches(phrase.head, label) for label in labels):
            return label_factor(phrase.head, labels, self.label_floor)
        return p / p.max().clamp(min=1e-12)

    def _resolve_phrase(self, phrase: NounPhrase, resolution: Resolution,
                        proposals: Proposals, image_size: tuple[int, int]) -> torch.Tensor:
        boxes = proposals.boxes
        p = resolution.entity[phrase.text]
        for relation in phrase.relations:
            objects = [self._resolve_phrase(o, resolution, proposals, image_size)
                       for o in relation.objects]
            if relation.relation == "between":
                truth = torch.einsum("ijk,j,k->i", between_tensor(boxes), objects[0], objects[1])
            else:
                truth = pairwise_relation(boxes, relation.relation, image_size) @ objects[0]
            p = _normalise(p * truth, p)
            resolution.steps.append((f"{phrase.text} {relation.relation} "
                                     f"{' and '.join(o.text for o in relation.objects)}", p))
        members = self._members(phrase, resolution.entity[phrase.text], proposals.labels)
        for direction in phrase.superlatives:
            p = superlative(p, members, boxes, direction, self.superlative_rule)
            resolution.steps.append((f"{phrase.text}: {direction}", p))
        return p

    def explain(self, image: Image.Image, expression: str, proposals: Proposals,
                scores: dict[str, torch.Tensor] | None = None) -> Resolution:
        """Resolve one expression and keep every distribution on the way.

        ``scores``: precomputed entity-scorer rows by text (``predict`` scores all the texts of
        an image's expressions in one call); missing texts are scored here.
        """
        parse = parse_reference(expression)
        texts = list(dict.fromkeys([expression] + [p.text for p in parse.phrases()]))
        scores = dict(scores or {})
        missing = [t for t in texts if t not in scores]
        if missing:
            scores.update(zip(missing, self.text_scores(image, missing, proposals), strict=True))
        entity = {}
        for phrase in parse.phrases():
            p = softmax_scores(scores[phrase.text], self.temperature)
            if self.use_labels:
                p = _normalise(p * label_factor(phrase.head, proposals.labels,
                                                self.label_floor), p)
            entity[phrase.text] = p
        resolution = Resolution(parse=parse, texts=texts, entity=entity)
        p = self._resolve_phrase(parse, resolution, proposals, image.size)
        if self.full_expression:
            whole = softmax_scores(scores[expression], self.temperature)
            p = _normalise(p * whole, p)
        resolution.final = p
        return resolution

    def predict(self, image: Image.Image, expressions: Sequence[str],
                proposals: Proposals) -> Prediction:
        texts = self.scored_texts(expressions)
        return self._resolved(image, expressions, proposals, texts,
                              self.text_scores(image, texts, proposals))

    def predict_from_request(self, request: EncodeRequest, image: Image.Image,
                             expressions: Sequence[str], proposals: Proposals) -> Prediction:
        """``predict`` from the image's request, already built (``encode_request`` for all the
        image's expressions: the engine builds it once per image); a scorer that predicts from
        a request reads it, another predicts as in ``predict``."""
        texts = self.scored_texts(expressions)
        scorer = self.entity_scorer
        if not isinstance(scorer, PredictsFromRequest) or not texts:
            return self.predict(image, expressions, proposals)
        rows = scorer.predict_from_request(request, image, texts, proposals).scores.float()
        return self._resolved(image, expressions, proposals, texts, rows)

    def _resolved(self, image: Image.Image, expressions: Sequence[str], proposals: Proposals,
                  texts: Sequence[str], rows: torch.Tensor) -> Prediction:
        """The prediction from the scorer's ``rows`` of ``texts``, the expressions'
        ``scored_texts``."""
        scores = dict(zip(texts, rows, strict=True))
        finals = [self.explain(image, e, proposals, scores).final for e in expressions]
        stacked = (torch.stack(finals) if finals else torch.zeros(0, len(proposals)))
        return Prediction.from_scores(stacked, proposals)


# ----------------------------------------------------------------------------------------------
# Figure
# ----------------------------------------------------------------------------------------------
def draw_resolution(ax: Axes, image: Image.Image, proposals: Proposals,
                    resolution: Resolution) -> None:
    """Draw a resolved expression on its image: every proposal (grey, with its label and final
    probability), the head's candidates (yellow), each relation's most likely object (blue,
    with an arrow from the answer labelled by the relation) and the answer (red)."""
    from matplotlib.patches import FancyArrowPatch, Rectangle

    assert resolution.final is not None
    ax.imshow(image)
    boxes = proposals.boxes
    final = resolution.final
    chosen = int(final.argmax())
    head = resolution.entity[resolution.parse.text]
    centres = centroids(boxes)
    objects = {int(resolution.entity[obj.text].argmax()): rel.relation
               for rel in resolution.parse.relations for obj in rel.objects}
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        colour = ("red" if i == chosen else "deepskyblue" if i in objects
                  else "yellow" if float(head[i]) >= 0.1 * float(head.max()) else "lightgrey")
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour,
                               linewidth=3 if i == chosen else 1.5))
        label = proposals.labels[i] or f"#{i}"
        ax.text(x1 + 2, y1 + 2, f"{label} {float(final[i]):.2f}", va="top", fontsize=7,
                bbox={"facecolor": colour, "alpha": 0.85, "pad": 1})
    for j, relation in objects.items():
        arrow = FancyArrowPatch(tuple(centres[chosen].tolist()), tuple(centres[j].tolist()),
                                arrowstyle="-|>", mutation_scale=12, color="white", linewidth=2)
        ax.add_patch(arrow)
        middle = ((centres[chosen] + centres[j]) / 2).tolist()
        ax.text(middle[0], middle[1], relation.replace("_", " "), fontsize=8, ha="center",
                bbox={"facecolor": "white", "alpha": 0.85, "pad": 1})
    superlatives = ", ".join(resolution.parse.superlatives)
    ax.set_title(f'"{resolution.texts[0]}"'
                 + (f"\nsuperlative: {superlatives}" if superlatives else ""), fontsize=9)
    ax.set_axis_off()
