"""Referring expressions parsed into noun phrases and relations: step 1 of the relations
resolver (``relations``), after ReCLIP (Subramanian et al., ACL 2022).

A rule-based reading, built on ``language.py``'s tokenizer and relation tables, turns the
expression into a ``NounPhrase``: its head noun, its attributes (colour and other adjectives),
its superlatives (leftmost, top, middle, biggest...), and its relations (left of, above, bigger
than, inside, near, between...), each with the noun phrase(s) it points at. Relations that are
not spatial ("holding", "with", "of") stay part of the noun phrase's text, as ReCLIP does with
them.

Why rules and not spaCy: spaCy's English models are distributed from GitHub releases, not as
packages of the package index (only unofficial re-uploads are there), so they cannot be
installed offline from a registry we trust; expressions are also rarely full sentences, where
a dependency parser is least reliable. The grammar here is small, documented and tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from refcocog_tools.data.language import (
    COLOUR_WORDS,
    DETERMINERS,
    RELATIONS,
    SPATIAL_RELATIONS,
    STOPWORDS,
    match_relation,
    tokenize,
)

# Words that make a phrase extreme among its candidates, and the direction each names.
SUPERLATIVE_WORDS: dict[str, str] = {
    **dict.fromkeys(("left", "leftmost", "western"), "left"),
    **dict.fromkeys(("right", "rightmost", "eastern"), "right"),
    **dict.fromkeys(("top", "topmost", "upper", "uppermost", "highest", "higher"), "top"),
    **dict.fromkeys(("bottom", "bottommost", "lower", "lowest"), "bottom"),
    **dict.fromkeys(("middle", "center", "centre", "central"), "middle"),
    # ReCLIP's reading of "closer" / "closest": nearer the camera, so bigger in the picture.
    **dict.fromkeys(("big", "bigger", "biggest", "large", "larger", "largest", "closer",
                     "closest", "nearest", "tall", "taller", "tallest"), "biggest"),
    **dict.fromkeys(("small", "smaller", "smallest", "little", "tiny", "tinier", "tiniest",
                     "farther", "farthest", "further", "furthest"), "smallest"),
}
# language.py's spatial relations, as relations between boxes (scene_graph names), as
# superlatives (relations to the picture itself), or "between".
BINARY_RELATIONS: dict[str, str] = {
    "left of": "left_of", "right of": "right_of", "above": "above", "on top of": "above",
    "below": "below", "next to": "near", "inside": "inside", "in the middle of": "inside",
    # As ReCLIP: "behind" is read as higher in the picture, "in front of" as lower.
    "behind": "above", "in front of": "below",
}
ABSOLUTE_RELATIONS: dict[str, str] = {
    "on the left": "left", "on the right": "right", "at the top": "top",
    "at the bottom": "bottom", "in the middle": "middle",
}
# A binary relation whose object is the picture is a superlative ("left of the picture").
PICTURE_SUPERLATIVES: dict[str, str] = {
    "left_of": "left", "right_of": "right", "above": "top", "below": "bottom",
    "inside": "middle", "near": "middle",
}
PICTURE_WORDS = frozenset("picture image photo photograph pic frame scene screen".split())
# Words that never head a noun phrase.
_NOT_A_HEAD = (DETERMINERS | STOPWORDS | COLOUR_WORDS | frozenset(SUPERLATIVE_WORDS)
               | frozenset("other another side part one ones".split()))
_CLAUSE_WORDS = frozenset("that who which whose while is are was".split())


@dataclass(frozen=True)
class RelationTo:
    """A spatial relation from a noun phrase to one (``between``: two) other noun phrases."""

    relation: str  # a scene_graph.PAIRWISE_RELATIONS name, or "between"
    objects: tuple[NounPhrase, ...]


@dataclass(frozen=True)
class NounPhrase:
    """One parsed noun phrase; the root one is the whole expression."""

    words: tuple[str, ...]  # the phrase's own words, determiners dropped
    head: str | None  # the head noun
    attributes: tuple[str, ...] = ()  # adjectives before the head (colours first)
    superlatives: tuple[str, ...] = ()  # SUPERLATIVE_WORDS directions
    relations: tuple[RelationTo, ...] = ()
    extra: tuple[str, ...] = ()  # non-spatial relation phrases kept in the text ("with a hat")

    @property
    def text(self) -> str:
        """What the entity scorer is shown: attributes, head and non-spatial relations."""
        core = [w for w in self.words if w not in SUPERLATIVE_WORDS] or list(self.words)
        return " ".join(core + list(self.extra))

    @property
    def is_picture(self) -> bool:
        return self.head in PICTURE_WORDS

    def phrases(self) -> list[NounPhrase]:
        """This phrase and every phrase its relations point at, depth first."""
        out = [self]
        for relation in self.relations:
            for obj in relation.objects:
                out.extend(obj.phrases())
        return out


def _simple_phrase(words: Sequence[str]) -> NounPhrase:
    """A noun phrase without relations: head, attributes, superlatives."""
    kept = tuple(w for w in words if w not in DETERMINERS and w not in _CLAUSE_WORDS)
    head = next((w for w in reversed(kept) if w not in _NOT_A_HEAD), None)
    superlatives = tuple(dict.fromkeys(SUPERLATIVE_WORDS[w] for w in kept
                                       if w in SUPERLATIVE_WORDS))
    attributes = tuple(w for w in kept if w != head and w not in SUPERLATIVE_WORDS
                       and w not in STOPWORDS)
    return NounPhrase(words=kept, head=head, attributes=attributes, superlatives=superlatives)


def _segments(tokens: Sequence[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The head's words and, in order, each relation (language.py's canonical name) with the
    words up to the next relation. Nothing is a relation before the head has a word."""
    head: list[str] = []
    relations: list[tuple[str, list[str]]] = []
    in_head = True
    i = 0
    while i < len(tokens):
        match = match_relation(tokens, i) if head else None
        if match is not None:
            relations.append((match[0], []))
            in_head = False
            i += match[1]
            continue
        word = tokens[i]
        if in_head and word in _CLAUSE_WORDS | {"and"} and head:
            in_head = False
        elif in_head:
            head.append(word)
        elif relations and word not in _CLAUSE_WORDS:
            relations[-1][1].append(word)
        i += 1
    return head, relations


def parse_reference(sentence: str) -> NounPhrase:
    """Parse an expression into its head noun phrase, superlatives and relations.

    Rules, in order:

    * the head phrase runs from the start to the first relation of ``language.RELATIONS``
      (longest match) or clause word; its last word that is not a determiner, colour,
      superlative or filler is the head noun; ``SUPERLATIVE_WORDS`` in it are superlatives
      ("the bigger cat", "the left dog"), the other words attributes;
    * each relation takes the words up to the next relation as its object phrase; "between"
      splits them at "and" into two objects;
    * an absolute position ("on the left", "at the top", "in the middle") is a superlative of
      the head, and so is a relation whose object is the picture ("in the middle of the
      picture", "left of the image"); "on the left side of the bus" is "left of the bus";
    * spatial relations become scene-graph relations (``BINARY_RELATIONS``); other relations
      ("holding", "with", "on", "of") stay in the head phrase's text for the entity scorer.
    """
    head_words, parts = _segments(tokenize(sentence))
    root = _simple_phrase(head_words)
    superlatives = list(root.superlatives)
    relations: list[RelationTo] = []
    extra: list[str] = []
    k = 0
    while k < len(parts):
        name, words = parts[k]
        k += 1
        if name in ABSOLUTE_RELATIONS:
            # "on the left side of the bus": the side is relative to the phrase after "of".
            if words in (["side"], []) and k < len(parts) and parts[k][0] == "of":
                name, words = f"{ABSOLUTE_RELATIONS[name]}_of", parts[k][1]
                k += 1
                direction = {"left_of": "left_of", "right_of": "right_of", "top_of": "above",
                             "bottom_of": "below", "middle_of": "inside"}[name]
                obj = _simple_phrase(words)
                if obj.is_picture or obj.head is None:
                    superlatives.append(PICTURE_SUPERLATIVES[direction])
                else:
                    relations.append(RelationTo(direction, (obj,)))
            else:
                superlatives.append(ABSOLUTE_RELATIONS[name])
            continue
        if name == "between":
            sides = " ".join(words).split(" and ", 1) if "and" in words else []
            objects = tuple(_simple_phrase(s.split()) for s in sides)
            if len(objects) == 2 and all(o.head for o in objects):
                relations.append(RelationTo("between", objects))
            continue
        if name in BINARY_RELATIONS:
            obj = _simple_phrase(words)
            relation = BINARY_RELATIONS[name]
            if obj.is_picture or obj.head is None:
                superlatives.append(PICTURE_SUPERLATIVES[relation])
            else:
                relations.append(RelationTo(relation, (obj,)))
            continue
        if name not in SPATIAL_RELATIONS.values():  # holding, wearing, with, on, of...
            extra.append(" ".join([name, *[w for w in words if w not in DETERMINERS]]))
    return NounPhrase(words=root.words, head=root.head, attributes=root.attributes,
                      superlatives=tuple(dict.fromkeys(superlatives)),
                      relations=tuple(relations), extra=tuple(extra))


assert "left of" in RELATIONS.values()  # the tables above are written against language.py's
