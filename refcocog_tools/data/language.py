"""Language analysis of referring expressions (the study's idea 4, which it only investigated).

The study proposed parsing each expression into noun phrases and relations (with spaCy) so that
every noun phrase could be matched to an object proposal and the relations could pick the right
one. It noted two obstacles: expressions are rarely complete sentences, and objects that differ
only by position cannot be told apart from crops. This module measures what such a parser would
face, with a small rule-based analysis that needs no model and no download:

* ``tokenize``: lower-case word tokens, the project's one tokenizer;
* ``SPATIAL_WORDS`` and ``is_spatial``: the words about position or relative size, which split
  every table of results into spatial and non-spatial expressions;
* ``parse_expression``: the head noun phrase (words before the first relation or clause
  boundary), its head word, the relation phrases found ("left of", "next to", "holding"...)
  with the phrase that follows each, the spatial words and the colour words;
* ``expression_table``: one row per expression of a dataset, for counting and plotting;
* ``word_frequencies``: word counts with or without function words.

The heuristic is deliberately simple and is meant for statistics, not for grounding: a real
parser (spaCy, a constituency parser) would replace ``parse_expression``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the dataset imports this module (is_spatial); pandas is slow to import
    import pandas as pd

    from refcocog_tools.data.annotations import RefRecord

_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?")

# Words that make an expression depend on where the object is, not only on what it looks like.
SPATIAL_WORDS = frozenset(
    """left right top bottom middle center centre above below under behind front
    upper lower leftmost rightmost closest nearest farthest furthest far near next beside
    between corner side bigger biggest smaller smallest larger largest""".split()
)

# Multi-word relations first: the longest match wins, so "to the left of" is not read as "of".
# Each value is the canonical relation name; "spatial" relations are about position.
SPATIAL_RELATIONS: dict[tuple[str, ...], str] = {
    ("to", "the", "left", "of"): "left of",
    ("on", "the", "left", "of"): "left of",
    ("left", "of"): "left of",
    ("to", "the", "right", "of"): "right of",
    ("on", "the", "right", "of"): "right of",
    ("right", "of"): "right of",
    ("in", "front", "of"): "in front of",
    ("on", "top", "of"): "on top of",
    ("next", "to"): "next to",
    ("close", "to"): "next to",
    ("behind",): "behind",
    ("above",): "above",
    ("below",): "below",
    ("under",): "below",
    ("underneath",): "below",
    ("beneath",): "below",
    ("over",): "above",
    ("beside",): "next to",
    ("near",): "next to",
    ("between",): "between",
    ("inside",): "inside",
    ("inside", "of"): "inside",
    ("within",): "inside",
    ("in", "the", "middle", "of"): "in the middle of",
    # Absolute positions: relations to the picture itself.
    ("on", "the", "left"): "on the left",
    ("on", "the", "right"): "on the right",
    ("to", "the", "left"): "on the left",
    ("to", "the", "right"): "on the right",
    ("at", "the", "top"): "at the top",
    ("at", "the", "bottom"): "at the bottom",
    ("in", "the", "middle"): "in the middle",
    ("in", "the", "center"): "in the middle",
    ("in", "the", "centre"): "in the middle",
}
OTHER_RELATIONS: dict[tuple[str, ...], str] = {
    ("holding",): "holding",
    ("wearing",): "wearing",
    ("with",): "with",
    ("carrying",): "carrying",
    ("riding",): "riding",
    ("sitting", "on"): "sitting on",
    ("standing", "on"): "standing on",
    ("looking", "at"): "looking at",
    ("eating",): "eating",
    ("on",): "on",
    ("in",): "in",
    ("at",): "at",
    ("of",): "of",
    ("by",): "by",
}
RELATIONS: dict[tuple[str, ...], str] = {**SPATIAL_RELATIONS, **OTHER_RELATIONS}
_MAX_RELATION = max(len(k) for k in RELATIONS)

# Words that end the head phrase without being a relation: clauses and conjunctions.
CLAUSE_WORDS = frozenset("that who which whose while and but is are was".split())
DETERMINERS = frozenset("a an the this that these those some one two three".split())
COLOUR_WORDS = frozenset(
    """red green blue yellow white black orange purple pink brown gray grey silver gold dark
    light beige tan""".split()
)
# Function words left out of "content" word frequencies.
STOPWORDS = frozenset(
    """a an the of on in at to with and or is are was be it its his her their this that these
    those from by for as which who whose while there here one""".split()
)
# Modifiers that are not the head even when they come last in the phrase ("the cat on the left"
# has head "cat"; "the one on the left" has none worth matching).
_NON_HEAD = SPATIAL_WORDS | COLOUR_WORDS | DETERMINERS | frozenset(
    "other another side picture image photo one part".split()
)


def tokenize(sentence: str, split_apostrophes: bool = False) -> list[str]:
    """Lower-case word tokens: runs of letters, with one inner apostrophe kept ("man's");
    numbers and punctuation dropped. ``split_apostrophes`` gives the letter runs on either side
    of it instead ("man", "s"), so that a keyword followed by a possessive still counts."""
    tokens = _TOKEN.findall(sentence.lower())
    return [part for token in tokens for part in token.split("'")] if split_apostrophes else tokens


def is_spatial(sentence: str) -> bool:
    """True when the expression contains a word about position or relative size."""
    return any(word in SPATIAL_WORDS for word in tokenize(sentence, split_apostrophes=True))


@dataclass(frozen=True)
class Relation:
    """A relation phrase and the words that follow it up to the next relation."""

    relation: str
    spatial: bool
    phrase: tuple[str, ...]

    @property
    def head(self) -> str | None:
        """The last word of the phrase that could name an object."""
        return _head_of(self.phrase)


@dataclass(frozen=True)
class ParsedExpression:
    """What a rule-based reading of one expression finds."""

    sentence: str
    tokens: tuple[str, ...]
    head_phrase: tuple[str, ...]
    head: str | None
    relations: tuple[Relation, ...] = field(default=())
    spatial_words: tuple[str, ...] = field(default=())
    colours: tuple[str, ...] = field(default=())

    @property
    def spatial(self) -> bool:
        """True when the expression mentions position (a spatial word or spatial relation)."""
        return bool(self.spatial_words) or any(r.spatial for r in self.relations)


def _head_of(words: Sequence[str]) -> str | None:
    """Last word that is not a determiner, colour, spatial word or filler; None if there is none."""
    for word in reversed(words):
        if word not in _NON_HEAD and word not in STOPWORDS:
            return word
    return None


def match_relation(tokens: Sequence[str], start: int) -> tuple[str, int] | None:
    """The longest relation beginning at ``start``: (canonical name, length), or None."""
    for length in range(min(_MAX_RELATION, len(tokens) - start), 0, -1):
        name = RELATIONS.get(tuple(tokens[start:start + length]))
        if name is not None:
            return name, length
    return None


def parse_expression(sentence: str) -> ParsedExpression:
    """Split an expression into its head phrase and the relation phrases that follow.

    The head phrase runs from the start to the first relation or clause word, so "the red car to
    the left of the blue dog" gives head phrase ("the", "red", "car"), head "car", and one
    relation "left of" with phrase ("the", "blue", "dog"). A phrase made only of modifiers
    ("the one on the left") has head None.
    """
    tokens = tokenize(sentence)
    head_phrase: list[str] = []
    relations: list[Relation] = []
    current: tuple[str, bool, list[str]] | None = None
    in_head = True
    i = 0
    while i < len(tokens):
        # Nothing is a relation before the head phrase has a word ("on the left" alone stays a
        # head phrase without a head).
        match = match_relation(tokens, i) if (head_phrase or not in_head) else None
        if match is not None:
            name, length = match
            if current is not None:
                relations.append(Relation(current[0], current[1], tuple(current[2])))
            current = (name, name in SPATIAL_RELATIONS.values(), [])
            in_head = False
            i += length
            continue
        word = tokens[i]
        if in_head and word in CLAUSE_WORDS and head_phrase:
            in_head = False
        elif in_head:
            head_phrase.append(word)
        elif current is not None and word not in CLAUSE_WORDS:
            current[2].append(word)
        i += 1
    if current is not None:
        relations.append(Relation(current[0], current[1], tuple(current[2])))
    return ParsedExpression(
        sentence=sentence,
        tokens=tuple(tokens),
        head_phrase=tuple(head_phrase),
        head=_head_of(head_phrase),
        relations=tuple(relations),
        spatial_words=tuple(t for t in tokens if t in SPATIAL_WORDS),
        colours=tuple(t for t in tokens if t in COLOUR_WORDS),
    )


def expression_table(records: Iterable[RefRecord]) -> pd.DataFrame:
    """One row per expression: split, ids, category, length, spatial flags, parsed head/relations.

    ``head_is_category`` says whether the parsed head word names the referred object's category
    (singular or plural), the case where a noun phrase could be matched to a labelled proposal.
    """
    import pandas as pd  # lazily: the dataset imports this module

    rows = []
    for record in records:
        category_words = set(record.category.split())
        for sentence, sent_id in zip(record.sentences, record.sent_ids, strict=True):
            parsed = parse_expression(sentence)
            head = parsed.head
            rows.append({
                "split": record.split,
                "ref_id": record.ref_id,
                "sent_id": sent_id,
                "image_id": record.image_id,
                "category": record.category,
                "sentence": sentence,
                "n_words": len(parsed.tokens),
                "spatial": is_spatial(sentence),
                "parsed_spatial": parsed.spatial,
                "head": head,
                "head_is_category": head is not None
                and (head in category_words or head.rstrip("s") in category_words),
                "n_relations": len(parsed.relations),
                "relations": ", ".join(r.relation for r in parsed.relations),
                "n_colours": len(parsed.colours),
                "n_objects_in_image": len(record.instances),
            })
    return pd.DataFrame(rows)


def word_frequencies(
    sentences: Iterable[str], drop_stopwords: bool = True, top: int | None = None
) -> pd.DataFrame:
    """Word counts over ``sentences`` (columns ``word``, ``count``, ``share``), most common first.

    Ties are broken alphabetically so the table is the same on every run.
    """
    import pandas as pd  # lazily: the dataset imports this module

    counts: Counter[str] = Counter()
    for sentence in sentences:
        counts.update(t for t in tokenize(sentence) if not (drop_stopwords and t in STOPWORDS))
    total = sum(counts.values())
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    frame = pd.DataFrame(ordered, columns=["word", "count"])
    frame["share"] = (frame["count"] / total).round(4) if total else 0.0
    return frame


def relation_counts(table: pd.DataFrame) -> pd.DataFrame:
    """How often each canonical relation occurs, with whether it is spatial; most common first."""
    import pandas as pd  # lazily: the dataset imports this module

    counts: Counter[str] = Counter()
    for relations in table["relations"]:
        counts.update(r for r in relations.split(", ") if r)
    spatial = set(SPATIAL_RELATIONS.values())
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    frame = pd.DataFrame(ordered, columns=["relation", "count"])
    frame["spatial"] = frame["relation"].isin(spatial)
    return frame
