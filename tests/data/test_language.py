"""The rule-based expression analysis."""

from __future__ import annotations

from pathlib import Path

import pytest

from refcocog_tools.data.annotations import parse_refcocog
from refcocog_tools.data.language import (
    SPATIAL_RELATIONS,
    expression_table,
    is_spatial,
    parse_expression,
    relation_counts,
    tokenize,
    word_frequencies,
)


def test_tokenize_lowercases_and_drops_punctuation() -> None:
    assert tokenize("The man's hat, on the LEFT!") == ["the", "man's", "hat", "on", "the", "left"]


def test_relation_with_object_phrase() -> None:
    parsed = parse_expression("the red car to the left of the blue dog")
    assert parsed.head_phrase == ("the", "red", "car")
    assert parsed.head == "car"
    assert [(r.relation, r.spatial, r.phrase, r.head) for r in parsed.relations] == [
        ("left of", True, ("the", "blue", "dog"), "dog")
    ]
    assert parsed.colours == ("red", "blue")
    assert parsed.spatial


@pytest.mark.parametrize(
    ("sentence", "head", "relations", "spatial"),
    [
        ("the cat on the left", "cat", ["on the left"], True),
        ("a woman in a white shirt holding a racket", "woman", ["in", "holding"], False),
        ("man who is wearing a hat", "man", ["wearing"], False),
        ("the bigger umbrella", "umbrella", [], True),
        ("left dog", "dog", [], True),
        ("the one on the left side", None, ["on the left"], True),
        ("a person in the middle of the picture", "person", ["in the middle of"], True),
    ],
)
def test_heads_and_relations(sentence: str, head: str | None, relations: list[str],
                             spatial: bool) -> None:
    parsed = parse_expression(sentence)
    assert parsed.head == head
    assert [r.relation for r in parsed.relations] == relations
    assert parsed.spatial is spatial


def test_longest_relation_wins() -> None:
    # "to the right of" must not be read as the relation "of" or "to the right".
    parsed = parse_expression("bus to the right of the chair")
    assert [r.relation for r in parsed.relations] == ["right of"]
    assert parsed.relations[0].head == "chair"


def test_word_frequencies_order_and_stopwords() -> None:
    frame = word_frequencies(["the cat", "the dog", "a cat", "the bird"])
    assert list(frame["word"]) == ["cat", "bird", "dog"]  # ties alphabetically
    assert list(frame["count"]) == [2, 1, 1]
    assert frame["share"].sum() == pytest.approx(1.0)
    with_stop = word_frequencies(["the cat", "the dog"], drop_stopwords=False, top=1)
    assert list(with_stop["word"]) == ["the"]


def test_expression_table_on_the_mini_dataset(mini_data: Path) -> None:
    records, problems = parse_refcocog(mini_data)
    assert not problems
    table = expression_table(records)
    assert len(table) == sum(len(r.sentences) for r in records)
    assert set(table["split"]) == {"train", "val", "test"}
    first = records[0]
    row = table.iloc[0]
    assert row["sentence"] == first.sentences[0]
    assert row["n_words"] == len(tokenize(first.sentences[0]))
    # The generator always names the category, so the head matches it.
    assert table["head_is_category"].all()
    counts = relation_counts(table).set_index("relation")
    assert counts["count"].is_monotonic_decreasing
    # The generator writes "... to the left of the ..." and "... on the left".
    assert counts.loc["left of", "spatial"] and counts.loc["on the left", "spatial"]
    assert counts["count"].sum() == table["n_relations"].sum()
    assert set(counts.index[counts["spatial"]]) <= set(SPATIAL_RELATIONS.values())


def test_spatial_words() -> None:
    assert is_spatial("the dog on the left")
    assert is_spatial("The BIGGER cat")
    assert not is_spatial("a red umbrella")
    assert not is_spatial("the leftover pizza")  # whole words only
    assert is_spatial("the car's left side") and is_spatial("left's")  # a possessive counts


def test_tokenize_keeps_or_splits_apostrophes() -> None:
    sentence = "The man's LEFT arm, 2 o'clock-ish: rock'n'roll!"
    assert tokenize(sentence) == ["the", "man's", "left", "arm", "o'clock", "ish", "rock'n", "roll"]
    assert tokenize(sentence, split_apostrophes=True) == [
        "the", "man", "s", "left", "arm", "o", "clock", "ish", "rock", "n", "roll"]
