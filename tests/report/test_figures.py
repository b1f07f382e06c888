"""Tests of the report's table and figure helpers (refcocog_tools.report.figures)."""

from __future__ import annotations

import math

import matplotlib
import pandas as pd
import pytest
import torch
from PIL import Image

from refcocog_tools.methods.colour_encodings import LUT_GRID, LUT_RGB, LUT_X_CUTS, LUT_Y_CUTS
from refcocog_tools.report import figure_panels, figures, result_tables
from refcocog_tools.report.reported import reported_value

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
    table = result_tables.results_table({"b": _doc(0.4), "a": _doc(0.2, cosine=None)})
    assert list(table["method"]) == ["b", "a"]
    assert list(table.columns) == ["method", "miou", "accuracy", "cosine", "n"]
    assert table.loc[0, "miou"] == pytest.approx(0.4)
    assert math.isnan(table.loc[1, "cosine"])


def test_reported_table_quotes_the_study_with_its_section() -> None:
    table = result_tables.reported_table(["baseline"])
    assert len(table) == 1
    assert table.loc[0, "miou"] == reported_value("baseline", "miou")
    assert pd.isna(table.loc[0, "n"])  # the study does not state n
    assert result_tables.reported_caption(["baseline"]).startswith(
        "reported by the original study (Baseline")
    with pytest.raises(KeyError):
        result_tables.reported_table(["no-such-key"])


def test_spatial_table_has_both_subsets_per_method() -> None:
    table = figures.spatial_table({"m": _doc()})
    assert list(table["expressions"]) == ["spatial", "non-spatial"]
    assert list(table["n"]) == [1, 3]
    assert table.loc[1, "miou"] == pytest.approx(0.3)


def test_metric_bar_chart_draws_one_bar_per_row_and_metric() -> None:
    table = result_tables.results_table({"x": _doc(0.4), "y": _doc(0.2)})
    fig = figures.metric_bar_chart(table, ("miou", "accuracy"), reference={"miou": 0.3})
    assert len(fig.axes[0].patches) == 4
    with pytest.raises(ValueError):
        figures.metric_bar_chart(table.iloc[:0])


def test_prediction_grid_draws_gt_and_prediction_boxes() -> None:
    image = Image.new("RGB", (40, 30))
    rows = [{"image_id": 1, "box": [0, 0, 10, 10], "gt_box": [5, 5, 20, 20],
             "sentence": "the thing", "iou": 0.1}] * 2
    fig = figure_panels.prediction_grid({1: image}, rows, columns=3)
    assert len(fig.axes) == 2  # the grid shrinks to the number of rows
    colours = [p.get_edgecolor()[:3] for p in fig.axes[0].patches]
    assert colours == [matplotlib.colors.to_rgb(figure_panels.GT_COLOUR),
                       matplotlib.colors.to_rgb(figure_panels.PREDICTION_COLOUR)]


def test_lut_figure_labels_every_cell() -> None:
    fig = figure_panels.lut_figure(LUT_GRID, LUT_RGB, LUT_X_CUTS, LUT_Y_CUTS)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert texts == {name for row in LUT_GRID for name in row}


def test_heatmap_grid_checks_lengths() -> None:
    image = Image.new("RGB", (8, 6))
    heat = torch.rand(2, 6, 8)
    boxes = torch.tensor([[0.0, 0, 4, 4], [1.0, 1, 5, 5]])
    fig = figure_panels.heatmap_grid(image, heat, boxes, [[0, 0, 2, 2]] * 2, ["a", "b"])
    assert len(fig.axes) == 2
    with pytest.raises(ValueError):
        figure_panels.heatmap_grid(image, heat, boxes, [[0, 0, 2, 2]], ["a", "b"])


def test_ultralytics_photos_are_found_without_importing_ultralytics() -> None:
    import sys

    had_ultralytics = "ultralytics" in sys.modules
    path = figure_panels.ultralytics_photo("bus.jpg")
    assert path.is_file() and path.name == "bus.jpg"
    assert ("ultralytics" in sys.modules) == had_ultralytics
    with pytest.raises(FileNotFoundError, match="not among the photographs"):
        figure_panels.ultralytics_photo("no-such.jpg")


def test_table_source_states_one_source_once() -> None:
    docs = [_doc(0.4), _doc(0.2)]
    assert result_tables.table_source(docs) == (
        "this build: synthetic dataset (test), tiny-rn (untrained), proposals gt")
    mixed = result_tables.table_source([_doc(), _doc(untrained=False)])
    assert mixed.count("this build:") == 2 and "; " in mixed


def test_comparison_table_keeps_study_and_build_rows_apart() -> None:
    table, caption = result_tables.comparison_table(["baseline"], {"ours": _doc(0.4)})
    assert list(table["numbers"]) == ["study", "this build"]
    assert "source" not in table.columns
    assert caption.startswith("reported by the original study (Baseline")
    assert "this build: synthetic dataset (test)" in caption


def test_show_table_formats_cells_for_a_reader() -> None:
    frame = pd.DataFrame({"method": ["a", "b"], "miou": [0.123456, float("nan")],
                          "n": pd.array([43, None], dtype="Int64"),
                          "count": [3.0, 4.0], "cosine": [1.0, 0.5]},
                         index=[5, 6])
    shown = figures.show_table(frame, "computed here")
    text = repr(shown)
    assert text.splitlines()[0] == "computed here"
    assert "0.123" in text and "0.1234" not in text  # three decimals
    assert "43" in text and "43.0" not in text and " 3 " in text + " "  # counts as integers
    assert "1.000" in text  # a metric stays a metric even when whole
    assert "NaN" not in text and "<NA>" not in text and text.count(result_tables.MISSING) == 2
    assert " 5 " not in text  # no index
    html = shown._repr_html_()
    assert "<caption>computed here</caption>" in html and "0.123" in html
    named = figures.show_table(frame.set_index("method"), "")
    assert list(named.frame.columns)[0] == "method"  # a labelled index becomes a column


def test_study_vs_build_puts_the_study_number_and_scope_beside_this_build() -> None:
    table = result_tables.study_vs_build([("baseline", "baseline", _doc(0.4)),
                                    ("overlay", None, _doc(0.2))])
    assert table.loc[0, "study miou"] == pytest.approx(0.504)  # the study's results table
    assert "RN50x16" in table.loc[0, "study configuration"]
    assert "scope" in table.loc[0, "study configuration"]
    assert table.loc[0, "this build miou"] == pytest.approx(0.4)
    assert math.isnan(table.loc[1, "study miou"]) and pd.isna(table.loc[1, "study configuration"])
    assert table.loc[1, "this build configuration"].startswith("synthetic dataset (test)")
    fig = result_tables.study_vs_build_chart(table)
    assert len(fig.axes[0].patches) == 4


def test_side_by_side_figure() -> None:
    images = [Image.new("RGB", (64, 48), "red"), Image.new("RGB", (64, 48), "blue"),
              Image.new("RGB", (32, 32), "white")]
    fig = figure_panels.side_by_side(images, ["a", "b", "c"])
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 3 and [ax.get_title() for ax in axes] == ["a", "b", "c"]
    with pytest.raises(ValueError):
        figure_panels.side_by_side(images, ["only one"])
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_side_by_side_leaves_room_for_long_titles() -> None:
    """Titles of three or four lines get more room than two-line ones (which keep the old
    layout), so they never run into the row above."""
    import matplotlib.pyplot as plt

    images = [Image.new("RGB", (32, 32), "red")] * 4
    heights = {}
    for lines in (1, 2, 4):
        fig = figure_panels.side_by_side(images, ["\n".join(["t"] * lines)] * 4, columns=2)
        heights[lines] = fig.get_figheight()
        plt.close(fig)
    assert heights[1] == heights[2] < heights[4]
