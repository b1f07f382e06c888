"""Tests of the report's table and figure helpers (refcocog_tools.figures)."""

from __future__ import annotations

import math

import matplotlib
import pandas as pd
import pytest
import torch
from PIL import Image

from refcocog_tools import figures
from refcocog_tools.reported import reported_value
from refcocog_tools.visual_prompts import LUT_GRID, LUT_RGB, LUT_X_CUTS, LUT_Y_CUTS

matplotlib.use("Agg")


def _group(n: int, miou: float | None, acc: float | None = None,
           cos: float | None = None) -> dict:
    return {"n": n, "miou": miou, "accuracy": acc, "cosine": cos}


def _doc(miou: float = 0.25, synthetic: bool = True, untrained: bool = True,
         cosine: float | None = 0.5) -> dict:
    return {
        "metrics": {**_group(4, miou, 0.5, cosine),
                    "by_spatial": {"spatial": _group(1, 0.1, 0.0, cosine),
                                   "non_spatial": _group(3, 0.3, 0.67, cosine)}},
        "provenance": {"synthetic_data": synthetic, "split": "test",
                       "clip": [{"name": "tiny-rn", "untrained": untrained}],
                       "proposals": {"name": "gt", "untrained": False}},
    }


def test_build_source_names_data_models_proposals_and_n() -> None:
    assert figures.build_source(_doc()) == (
        "this build: synthetic dataset (test), tiny-rn (untrained), proposals gt, n=4")
    real = figures.build_source(_doc(synthetic=False, untrained=False))
    assert real.startswith("this build: RefCOCOg (test), tiny-rn (pretrained)")
    noted = _doc()
    noted["provenance"]["proposals"]["note"] = "ground-truth boxes: an upper bound"
    assert "proposals gt (ground-truth boxes: an upper bound), n=4" in figures.build_source(noted)


def test_build_source_marks_untrained_proposer_and_no_clip() -> None:
    doc = _doc()
    doc["provenance"]["clip"] = []
    doc["provenance"]["proposals"] = {"name": "tiny-yolov8s", "untrained": True}
    assert "no CLIP model, proposals tiny-yolov8s (untrained)" in figures.build_source(doc)


def test_results_table_keeps_order_and_missing_metric_is_nan() -> None:
    table = figures.results_table({"b": _doc(0.4), "a": _doc(0.2, cosine=None)})
    assert list(table["method"]) == ["b", "a"]
    assert list(table.columns) == ["method", "miou", "accuracy", "cosine", "n", "source"]
    assert table.loc[0, "miou"] == pytest.approx(0.4)
    assert math.isnan(table.loc[1, "cosine"])
    assert table["source"].str.startswith("this build:").all()


def test_reported_table_quotes_the_study_with_its_section() -> None:
    table = figures.reported_table(["baseline"])
    assert len(table) == 1
    assert table.loc[0, "miou"] == reported_value("baseline", "miou")
    assert table.loc[0, "source"].startswith("reported by the original study (Baseline")
    assert pd.isna(table.loc[0, "n"])  # the study does not state n
    with pytest.raises(KeyError):
        figures.reported_table(["no-such-key"])


def test_spatial_table_has_both_subsets_per_method() -> None:
    table = figures.spatial_table({"m": _doc()})
    assert list(table["expressions"]) == ["spatial", "non-spatial"]
    assert list(table["n"]) == [1, 3]
    assert table.loc[1, "miou"] == pytest.approx(0.3)


def test_metric_bar_chart_draws_one_bar_per_row_and_metric() -> None:
    table = figures.results_table({"x": _doc(0.4), "y": _doc(0.2)})
    fig = figures.metric_bar_chart(table, ("miou", "accuracy"), reference={"miou": 0.3})
    assert len(fig.axes[0].patches) == 4
    with pytest.raises(ValueError):
        figures.metric_bar_chart(table.iloc[:0])


def test_prediction_grid_draws_gt_and_prediction_boxes() -> None:
    image = Image.new("RGB", (40, 30))
    rows = [{"image_id": 1, "box": [0, 0, 10, 10], "gt_box": [5, 5, 20, 20],
             "sentence": "the thing", "iou": 0.1}] * 2
    fig = figures.prediction_grid({1: image}, rows, columns=3)
    assert len(fig.axes) == 2  # the grid shrinks to the number of rows
    colours = [p.get_edgecolor()[:3] for p in fig.axes[0].patches]
    assert colours == [matplotlib.colors.to_rgb(figures.GT_COLOUR),
                       matplotlib.colors.to_rgb(figures.PREDICTION_COLOUR)]


def test_lut_figure_labels_every_cell() -> None:
    fig = figures.lut_figure(LUT_GRID, LUT_RGB, LUT_X_CUTS, LUT_Y_CUTS)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert texts == {name for row in LUT_GRID for name in row}


def test_heatmap_grid_checks_lengths() -> None:
    image = Image.new("RGB", (8, 6))
    heat = torch.rand(2, 6, 8)
    boxes = torch.tensor([[0.0, 0, 4, 4], [1.0, 1, 5, 5]])
    fig = figures.heatmap_grid(image, heat, boxes, [[0, 0, 2, 2]] * 2, ["a", "b"])
    assert len(fig.axes) == 2
    with pytest.raises(ValueError):
        figures.heatmap_grid(image, heat, boxes, [[0, 0, 2, 2]], ["a", "b"])


def test_ultralytics_photos_are_found_without_importing_ultralytics() -> None:
    import sys

    had_ultralytics = "ultralytics" in sys.modules
    path = figures.ultralytics_photo("bus.jpg")
    assert path.is_file() and path.name == "bus.jpg"
    assert ("ultralytics" in sys.modules) == had_ultralytics
    with pytest.raises(FileNotFoundError, match="not among the photographs"):
        figures.ultralytics_photo("no-such.jpg")
