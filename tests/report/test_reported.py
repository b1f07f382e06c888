"""The study's quoted numbers carry exactly the scope the study shows."""

from __future__ import annotations

from fractions import Fraction

import pytest

from refcocog_tools.report.reported import SCOPES, reported_results, reported_rows, reported_value


def test_every_row_has_a_known_scope_and_the_wide_table_shows_it() -> None:
    assert {row.scope for row in reported_rows()} <= set(SCOPES)
    wide = reported_results(wide=True)
    assert "scope" in wide.columns
    assert set(wide["scope"]) == {row.scope for row in reported_rows()}


def test_baseline_table_row_claims_no_split_and_batch_zero_rows_are_apart() -> None:
    table = [r for r in reported_rows() if r.key == "baseline"]
    assert {(r.split, r.scope) for r in table} == {("not stated", "not stated")}
    assert reported_value("baseline", "miou") == 0.504
    assert reported_value("baseline_batch0", "accuracy", split="test") == pytest.approx(69 / 124)
    val_cosine = reported_value("baseline_batch0", "cosine", split="val")
    assert val_cosine == pytest.approx(0.894, abs=5e-4)
    with pytest.raises(KeyError, match="several splits"):
        reported_value("baseline_batch0", "miou")


def test_final_row_is_a_118_expression_run_not_the_test_split() -> None:
    final = {r.metric: r for r in reported_rows() if r.key == "final"}
    assert {r.scope for r in final.values()} == {"118-expression run"}
    assert Fraction(final["accuracy"].value).limit_denominator(200) == Fraction(57, 118)


def test_regressor_rows_are_over_the_first_expression_of_each_ref() -> None:
    large = {r.split: r for r in reported_rows() if r.key == "large_regressor"}
    assert set(large) == {"train", "val", "test"}  # train 0.17 is in the log too
    assert {r.backbone for r in large.values()} == {"ViT-B/32"}
    assert "MSE + 1.0 IoU" in large["test"].method
    regressors = [r for r in reported_rows() if r.key in ("bottleneck", "large_regressor")]
    assert {r.scope for r in regressors} == {"full split, first expression of each ref"}


def test_missing_number_is_a_key_error_not_a_guess() -> None:
    with pytest.raises(KeyError):
        reported_value("final", "miou", split="val")
