"""Scene graphs: hand-built layouts whose relations are known."""

from __future__ import annotations

import pytest
import torch

from refcocog_tools.data.dataset import RefCOCOg
from refcocog_tools.methods.relations.scene_graph import (
    RELATION_BITS,
    RELATIONS,
    build_scene_graph,
    centroids,
    edge_codes,
    extreme_node,
    position_answers,
    relation_tensor,
    resolve_by_position,
    weighted_adjacency,
)

# Three boxes in a 100 x 100 image: A top-left, B top-right, C bottom-left.
A = (0.0, 0.0, 20.0, 20.0)  # centre (10, 10)
B = (60.0, 0.0, 80.0, 20.0)  # centre (70, 10)
C = (0.0, 60.0, 20.0, 80.0)  # centre (10, 70)


def test_centroids() -> None:
    assert centroids([A, B, C]).tolist() == [[10.0, 10.0], [70.0, 10.0], [10.0, 70.0]]


def test_relation_tensor_matches_the_layout() -> None:
    rel = relation_tensor([A, B, C])
    left, right, above, below = (rel[RELATIONS.index(n)] for n in RELATIONS)
    # A is left of B; C (same x as A) is neither left nor right of A.
    assert left.tolist() == [[False, True, False], [False, False, False], [False, True, False]]
    assert right.tolist() == [[False, False, False], [True, False, True], [False, False, False]]
    # y grows downwards: A and B are above C.
    assert above.tolist() == [[False, False, True], [False, False, True], [False, False, False]]
    assert below.tolist() == [[False, False, False], [False, False, False], [True, True, False]]
    assert not rel.diagonal(dim1=1, dim2=2).any()


def test_relations_are_antisymmetric() -> None:
    rel = relation_tensor(torch.rand(7, 2).repeat(1, 2) + torch.tensor([0, 0, 1, 1]))
    left, right, above, below = rel
    assert torch.equal(left, right.T)
    assert torch.equal(above, below.T)


def test_margin_removes_near_ties() -> None:
    near = (62.0, 40.0, 82.0, 60.0)  # centre (72, 50): 2 px right of B's centre
    assert relation_tensor([B, near])[0, 0, 1]
    assert not relation_tensor([B, near], margin=5.0)[0, 0, 1]
    assert relation_tensor([B, near], margin=5.0)[2, 0, 1]  # B is still above it


def test_edge_codes_are_bit_sums() -> None:
    codes = edge_codes([A, B, C])
    assert codes[0, 1] == RELATION_BITS["left_of"]
    assert codes[1, 2] == RELATION_BITS["right_of"] + RELATION_BITS["above"]
    assert codes[2, 1] == RELATION_BITS["left_of"] + RELATION_BITS["below"]
    assert codes[0, 0] == 0


def test_weighted_adjacency() -> None:
    w = weighted_adjacency([A, B, C], (100, 100))
    diagonal = (100**2 + 100**2) ** 0.5
    assert torch.allclose(w, w.T)
    assert w.diagonal().eq(0).all()
    assert w[0, 1].item() == pytest.approx(1 - 60 / diagonal)
    assert w[1, 2].item() == pytest.approx(1 - (60**2 + 60**2) ** 0.5 / diagonal)
    assert w[0, 1] > w[1, 2]  # nearer pairs weigh more


def test_graph_edges_frame_and_labels() -> None:
    graph = build_scene_graph([A, B, C], (100, 100), ["cat", None, "dog"])
    assert graph.labels == ["cat", "1", "dog"]
    assert graph.edges("left_of") == [(0, 1, "left_of"), (2, 1, "left_of")]
    frame = graph.to_frame()
    assert len(frame) == 6
    row = frame[(frame.i == 1) & (frame.j == 2)].iloc[0]
    assert row.right_of and row.above and not row.left_of and row.code == 6


def test_extreme_node_and_resolution() -> None:
    cat_left, cat_right = (0, 40, 20, 60), (70, 40, 90, 60)
    dog = (40, 0, 60, 20)
    graph = build_scene_graph([cat_right, dog, cat_left], (100, 100), ["cat", "dog", "cat"])
    assert extreme_node(graph, [0, 2], "left_of") == 2
    assert extreme_node(graph, [0, 2], "right_of") == 0
    assert extreme_node(graph, [0, 2], "above") is None  # same height: no extreme
    assert resolve_by_position(graph, "the cat on the left", "cat") == 2
    assert resolve_by_position(graph, "rightmost cat", "cat") == 0
    assert resolve_by_position(graph, "the striped cat", "cat") is None
    assert resolve_by_position(graph, "the dog", "dog") == 1  # a single candidate


def test_bad_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        relation_tensor([[0, 0, 1]])


def test_position_answers_read_each_expression_of_a_split(mini_data) -> None:
    split = RefCOCOg(mini_data, "test")
    rows = position_answers(split)
    assert len(rows) == len(split) and len(position_answers(split, limit=5)) == 5
    assert [r["sentence"] for r in rows] == [split[i].sentence for i in range(len(split))]
    assert all(r["answered"] or not r["correct"] for r in rows)  # no answer is never right
    # An expression with a position word among same-category objects gets an answer.
    assert any(r["position_word"] and r["answered"] for r in rows)
    assert any(r["correct"] for r in rows) and not all(r["correct"] for r in rows)
