"""The logic chapters 01-08 call instead of holding it in their cells: chapter 04's runs
(report.regressor_runs), the verdict sentences and interval tables (report.chapter_answers),
and the generic table and chart helpers of report.figures they rely on."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from refcocog_tools.engine import uncertainty
from refcocog_tools.methods.regressor.data import RegressionData
from refcocog_tools.methods.regressor.training import TrainConfig
from refcocog_tools.report import chapter_answers, figures, regressor_runs
from refcocog_tools.report.reported import reported_value


# ----------------------------------------------------------------------------------------------
# Chapter 04: the runs of the large head
# ----------------------------------------------------------------------------------------------
def _regression_data(n: int, seed: int) -> RegressionData:
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([[320.0, 240.0], [640.0, 480.0]]).repeat(n // 2 + 1, 1)[:n]
    corners = torch.rand(n, 2, generator=generator) * 0.4
    boxes = torch.cat([corners, corners + 0.4], dim=1) * torch.cat([sizes, sizes], dim=1)
    features = torch.randn(n, 8, generator=generator)
    return RegressionData.from_features(features, features.flip(1), boxes, sizes)


def test_pixel_mse_grows_with_the_square_of_the_image_size_while_iou_does_not() -> None:
    table = regressor_runs.pixel_mse_scale(((100, 50), (200, 100), (400, 200)), shift=0.1)
    pixel = table["pixel MSE"].tolist()
    assert pixel[1] == pytest.approx(4 * pixel[0]) and pixel[2] == pytest.approx(16 * pixel[0])
    assert table["normalised MSE"].nunique() == 1 and table["IoU"].nunique() == 1
    # A shift of a tenth of a half-width box: IoU = 0.4 / 0.6 of the box's width.
    assert table["IoU"].iloc[0] == pytest.approx(0.4 / 0.6)


def test_train_loss_runs_trains_one_run_per_loss_and_unit_from_the_same_seed() -> None:
    train, val = _regression_data(12, 0), _regression_data(6, 1)
    base = TrainConfig(head="large", epochs=2, batch_size=4, seed=3)
    runs = regressor_runs.train_loss_runs(train, val, base)
    assert list(runs) == [("mse", "pixels"), ("mse", "normalized"), ("mix", "pixels"),
                          ("mix", "normalized")]
    for (loss, unit), run in runs.items():
        assert run.config.loss == loss and run.config.normalize_targets == (unit == "normalized")
        assert run.config.seed == 3 and run.config.epochs == 2
        assert 1 <= run.result.best_epoch <= 2 and 0.0 <= run.val_miou <= 1.0
    again = regressor_runs.train_loss_runs(train, val, base, losses=("mix",), units=("pixels",))
    assert again["mix", "pixels"].result.history == runs["mix", "pixels"].result.history
    with pytest.raises(ValueError, match="unit"):
        regressor_runs.train_loss_runs(train, val, base, units=("inches",))


def test_mixed_loss_terms_show_pixel_mse_drowning_the_iou_term() -> None:
    train, val = _regression_data(12, 0), _regression_data(6, 1)
    base = TrainConfig(head="large", epochs=1, batch_size=4, seed=0)
    runs = regressor_runs.train_loss_runs(train, val, base, losses=("mix",))
    terms = regressor_runs.mixed_loss_terms(runs, val)
    assert list(terms.index) == ["pixels", "normalized"]
    share = terms["IoU share of the loss"]
    assert ((share > 0) & (share < 1)).all()
    assert share["pixels"] < 0.05 < share["normalized"]  # boxes of hundreds of pixels


def test_loss_runs_table_needs_test_results_and_shows_intervals() -> None:
    train, val = _regression_data(8, 0), _regression_data(4, 1)
    runs = regressor_runs.train_loss_runs(train, val, TrainConfig(head="large", epochs=1),
                                          losses=("mse",), units=("pixels",))
    study = {"train": 0.17, "val": 0.17, "test": 0.17}
    with pytest.raises(ValueError, match="score_on_test"):
        regressor_runs.loss_runs_table(runs, study)
    runs["mse", "pixels"].test = _document([0.9, 0.1, 0.7, 0.2])
    table = regressor_runs.loss_runs_table(runs, study)
    assert list(table["numbers"]) == ["study", "this build"]
    shown = repr(figures.show_table(table))
    assert "test mean IoU" in shown and "[" in shown.splitlines()[-1]


# ----------------------------------------------------------------------------------------------
# Verdict sentences and tables with intervals
# ----------------------------------------------------------------------------------------------
def _document(ious: list[float], images: int = 4) -> dict:
    rows = [{"ref_id": k, "sent_id": k, "image_id": k % images, "iou": iou,
             "sentence": "the left cat" if k % 2 else "a dog"} for k, iou in enumerate(ious)]
    n = len(rows)
    return {"predictions": rows,
            "metrics": {"n": n, "miou": sum(ious) / n,
                        "accuracy": sum(i >= 0.5 for i in ious) / n, "cosine": None},
            "provenance": {"synthetic_data": True, "split": "test", "clip": [],
                           "proposals": {"name": "gt"}}}


def test_comparison_answer_says_beats_only_when_the_interval_is_above_zero() -> None:
    good = _document([0.9] * 40, images=20)
    bad = _document([0.1] * 40, images=20)
    assert "beats" in chapter_answers.comparison_answer("a", good, "b", bad)
    assert "does not beat" in chapter_answers.comparison_answer("b", bad, "a", good)
    same = chapter_answers.comparison_answer("a", good, "b", good)
    assert uncertainty.NO_DETECTABLE_DIFFERENCE in same and same.endswith(".")
    spatial = chapter_answers.compare_documents(good, bad,
                                                subset=lambda row: "left" in row["sentence"])
    assert spatial.n == 20


def test_study_report_quotes_the_reported_numbers_and_their_scope() -> None:
    text = chapter_answers.study_report("baseline", split="not stated")
    assert f"{reported_value('baseline', 'miou'):.3g}" in text
    assert f"{reported_value('baseline', 'accuracy'):.3g}" in text and "scope not stated" in text
    per_split = chapter_answers.study_report("bottleneck")
    assert "(train)" in per_split and "first expression" in per_split
    with pytest.raises(KeyError):
        chapter_answers.study_report("baseline", metrics=("nothing",))


def test_method_table_cells_carry_the_documents_intervals() -> None:
    document = _document([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    table = chapter_answers.method_table({"m": document})
    cell = table.loc[0, "accuracy"]
    assert isinstance(cell, uncertainty.Interval)
    assert cell.low <= document["metrics"]["accuracy"] == cell.estimate <= cell.high
    shown = repr(figures.show_table(table, chapter_answers.method_caption({"m": document})))
    assert uncertainty.format_interval(cell) in shown and "95% intervals" in shown
    both, caption = chapter_answers.study_and_build_table(["baseline"], {"m": document})
    assert list(both["numbers"]) == ["study", "this build"] and "reported" in caption


# ----------------------------------------------------------------------------------------------
# Generic helpers of report.figures
# ----------------------------------------------------------------------------------------------
def test_column_headers_are_words_not_snake_case() -> None:
    frame = pd.DataFrame({"miou": [0.5], "spatial_share": [0.25], "test miou": [0.1],
                          "n_words": [3]})
    header = repr(figures.show_table(frame)).splitlines()[0]
    assert "mean IoU" in header and "spatial share" in header and "test mean IoU" in header
    assert "n words" in header and "_" not in header


def test_metric_bar_chart_draws_equal_metrics_once_and_names_the_axis() -> None:
    table = pd.DataFrame({"method": ["a", "b"], "miou": [0.5, 0.25], "accuracy": [0.5, 0.25]})
    fig = figures.metric_bar_chart(table, ("miou", "accuracy"))
    axis = fig.axes[0]
    assert len(axis.patches) == 2  # one bar per row, not two identical ones
    assert axis.get_xlabel() == "mean IoU = accuracy@0.5"
    texts = {t.get_text() for t in axis.texts}
    assert {"0.500", "0.250"} <= texts  # every bar is labelled with its value
    different = table.assign(accuracy=[1.0, 0.0])
    errors = {"miou": [uncertainty.Interval(0.5, 0.4, 0.6), None]}
    fig = figures.metric_bar_chart(different, ("miou", "accuracy"), intervals=errors)
    assert len(fig.axes[0].patches) == 4 and fig.axes[0].get_xlabel() == "score (0 to 1)"
