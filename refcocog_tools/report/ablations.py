"""Chapter 09's experiments on the red-circle method: one setting changed at a time, the
prompt-shape ablation (box, ellipse and FGVP's mask prompts on the same proposals), and the
debiasing example (the study's matrix form against the fast form on one ref).

Every row is a results document computed by a ``method_runs.MethodRunner``, so identical
configurations run once; tables show 95% intervals and each row's paired difference from a
reference row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from refcocog_tools.engine.evaluate import group_by_image
from refcocog_tools.engine.uncertainty import compare, format_interval, verdict
from refcocog_tools.methods.red_circle import debias_explicit, debias_fast
from refcocog_tools.methods.scoring import request_embeddings
from refcocog_tools.report.method_runs import MethodRunner
from refcocog_tools.report.result_tables import interval_table

# (row label, option, values): one change at a time from the page's parameters.
ABLATIONS: tuple[tuple[str, str, list[Any]], ...] = (
    ("variants", "variants", [("blur", "blur_gray"), ("blur",), ("blur_gray",), ("marker",),
                              ("gray",)]),
    ("blur radius", "blur_radius", [0.0, 5.0, 20.0]),
    ("stroke width", "stroke_width", [1, 3, 6]),
    ("debias expressions", "n_debias", [0, 100, 5000]),
    ("area filter", "area_filter", [None, 0.8]),
    ("class prior", "class_prior", [False, True]),
    ("preprocess", "preprocess", ["center-crop", "square"]),
)
# The prompt shapes compared on the same ground-truth proposals with their true masks: the
# study's ellipse first (the reference row), then a box, and FGVP's mask forms.
STUDY_PROMPT = "ellipse marker, blur outside the box (the study's)"
PROMPT_SHAPES: tuple[tuple[str, dict[str, Any]], ...] = (
    (STUDY_PROMPT, {}),
    ("box marker, blur outside the box", {"marker": "rectangle"}),
    ("no marker, blur outside the box", {"marker": "none"}),
    ("no marker, blur outside the mask (FGVP's blur reverse mask)",
     {"marker": "none", "window": "mask"}),
    ("mask contour, blur outside the box", {"marker": "mask-contour"}),
)


def setting_text(value: Any) -> str:
    """An option's value as a table shows it: ``blur+blur_gray`` for a tuple of variants."""
    return "+".join(value) if isinstance(value, tuple) else str(value)


def run_ablations(runner: MethodRunner, options: Mapping[str, Any],
                  ablations: Sequence[tuple[str, str, list[Any]]] = ABLATIONS,
                  ) -> dict[str, dict[str, Any]]:
    """Red-circle with ``options`` (the first row) and, per ablation, with one option changed;
    a row equal to the page's setting says so and is evaluated once."""
    rows = {"this page's parameters": runner.run("red-circle", **options)}
    for label, option, values in ablations:
        for value in values:
            same = " (page's setting)" if value == options.get(option) else ""
            rows[f"{label} = {setting_text(value)}{same}"] = runner.run(
                "red-circle", **{**options, option: value})
    return rows


def run_prompt_shapes(runner: MethodRunner, options: Mapping[str, Any], proposer: Any,
                      shapes: Sequence[tuple[str, dict[str, Any]]] = PROMPT_SHAPES,
                      ) -> dict[str, dict[str, Any]]:
    """Red-circle with ``options`` and each prompt shape, all on ``proposer`` (proposals with
    masks, so the mask rows draw the true masks)."""
    return {label: runner.run("red-circle", proposer=proposer, **{**options, **shape})
            for label, shape in shapes}


def paired_table(results: Mapping[str, Mapping[str, Any]], reference: str,
                 label: str = "setting") -> pd.DataFrame:
    """Accuracy of ``results`` with its 95% interval and each row's paired accuracy difference
    from the ``reference`` row (95% interval), its verdict and McNemar's p."""
    table = interval_table(results, label).drop(columns="mean IoU [95% CI]")  # narrow
    base = results[reference]["predictions"]
    differences, verdicts, p_values = [], [], []
    for name, doc in results.items():
        if name == reference:
            differences.append("reference")
            verdicts.append("")
            p_values.append(float("nan"))
            continue
        comparison = compare(doc["predictions"], base)
        differences.append(format_interval(comparison.accuracy, signed=True))
        verdicts.append(verdict(comparison.accuracy))
        p_values.append(comparison.mcnemar_p)
    return table.assign(**{"accuracy minus reference": differences, "verdict": verdicts,
                           "McNemar p": p_values})


@dataclass(frozen=True)
class DebiasingExample:
    """One ref's similarities with its visual prompts, raw and debiased, and whether the
    study's matrix form and the fast form agree on it."""

    raw: torch.Tensor
    debiased: torch.Tensor
    forms_agree: bool
    n_expressions: int


def debiasing_example(method: Any, dataset: Any, proposer: Any, limit: int = 0,
                      image_index: int = 0) -> DebiasingExample:
    """The first ref of image ``image_index`` of the split: its expressions' cosine similarities
    with its visual prompts on the first backbone, raw and debiased (the fast form), and
    whether the study's (E + N) x V matrix form gives the same (atol 1e-5)."""
    groups = group_by_image(dataset, limit)
    items = groups[min(image_index, len(groups) - 1)]
    items = [it for it in items if it.ref_id == items[0].ref_id]  # debiasing works per ref
    proposals = proposer(items[0])
    request = method.encode_request(items[0].image, [it.sentence for it in items], proposals)
    backbone = method.backbones[0]
    visual = request_embeddings(method.cache, backbone, request)
    texts = method.cache.texts(backbone, request.texts)
    raw = texts @ visual.T
    if not method.debias_sentences:
        return DebiasingExample(raw, raw, True, len(items))
    debias_rows = method.cache.texts(backbone, method.debias_sentences)
    explicit = debias_explicit(torch.cat([texts, debias_rows]) @ visual.T, len(items))
    fast = debias_fast(raw, visual @ method.debias_means[0], len(method.debias_sentences))
    return DebiasingExample(raw, fast, bool(torch.allclose(explicit, fast, atol=1e-5)),
                            len(items))
