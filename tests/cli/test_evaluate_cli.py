"""The `evaluate` command: one results file with metrics, config, provenance and predictions."""

from __future__ import annotations

import json

from refcocog_tools.cli.main import main as cli_main


def test_evaluate_command_writes_a_complete_results_file(tmp_path, mini_data, isolated_cache,
                                                         capsys) -> None:
    out = tmp_path / "results" / "red.json"
    code = cli_main(["evaluate", "--data-root", str(mini_data), "--method", "red-circle",
                     "--clip", "tiny-rn,tiny-vit", "--proposals", "gt", "--limit", "6",
                     "--n-debias", "40", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert ("[untrained weights, synthetic data: not a RefCOCOg result; ground-truth boxes: an "
            "upper bound, not the study's detector setting]") in printed
    results = json.loads(out.read_text())
    assert set(results) >= {"metrics", "config", "provenance", "predictions"}
    assert results["metrics"]["n"] == 6 == len(results["predictions"])
    assert {"miou", "accuracy", "cosine", "by_spatial", "by_category"} <= set(results["metrics"])
    prov = results["provenance"]
    assert prov["untrained"] is True and prov["synthetic_data"] is True
    assert [c["name"] for c in prov["clip"]] == ["tiny-rn", "tiny-vit"]
    assert all(len(c["checksum"]) == 64 for c in prov["clip"])
    assert prov["split"] == "test" and prov["data_root"] == str(mini_data)
    assert results["config"]["method"]["n_debias"] == 40
    assert results["config"]["method"]["variant_fusion"] == "max"
    assert results["config"]["method"]["debias"].startswith("per referred object")
    assert prov["ground_truth_proposals"] is True
    assert prov["proposals"]["note"] == ("ground-truth boxes: an upper bound, not the study's "
                                         "detector setting")
    row = results["predictions"][0]
    assert {"ref_id", "sent_id", "box", "iou", "chosen"} <= set(row)
    # Atomic write: nothing but the results file is left in the folder.
    assert [p.name for p in out.parent.iterdir()] == ["red.json"]
    # The embedding cache was written for the next run.
    assert list((isolated_cache / "embeddings").rglob("image.pt"))


def test_evaluate_with_a_missing_named_model_fails_fast(tmp_path, mini_data, isolated_cache,
                                                        capsys) -> None:
    code = cli_main(["evaluate", "--data-root", str(mini_data), "--method", "baseline",
                     "--clip", "RN50x16", "--out", str(tmp_path / "r.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "RN50x16.pt" in err and str(isolated_cache / "clip") in err
    assert not (tmp_path / "r.json").exists()


def test_honesty_label_names_ground_truth_proposals_even_on_real_data() -> None:
    from refcocog_tools.engine.results import honesty_label

    assert honesty_label({"ground_truth_proposals": True}) == (
        "  [ground-truth boxes: an upper bound, not the study's detector setting]")
    assert honesty_label({"untrained": True}) == "  [untrained weights: not a RefCOCOg result]"
    assert honesty_label({"ground_truth_proposals": False}) == ""
