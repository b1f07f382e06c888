"""The results document: its schema, its provenance, the honesty wording, its builder, its files.

Every method's numbers travel in one JSON document, whoever computed them (``evaluate``, a
trained regressor through ``regressors.results_on_split``, the command line, a chapter)::

    {"schema": "refcocog-tools/results/2",
     "metrics": {...},      # refcocog_tools.engine.metrics.summarize of the predictions, plus
                            # "intervals": 95% image-bootstrap intervals (uncertainty.summary)
     "config": {...},       # the method, proposals, CLIP names, split, limit, threshold, ...
     "provenance": {...},   # package version, git commit, torch, data root, split, whether the
                            # data is synthetic and the weights untrained, checkpoint checksums
     "timing": {...},       # optional: seconds, images, expressions, ...
     "training": {...},     # optional: what only a trained head has (its test loss, best epoch)
     "problems": [...],     # optional: data problems the run went past (one line each, naming
                            # the file and the field, and what was done: an image skipped,
                            # the first record of a repeated id kept); [] when there were none
     "predictions": [...]}  # one row per expression

``results_document`` builds it, ``provenance`` writes its provenance, ``write_results`` and
``read_results`` store it as ``<results_dir>/<method>.json``, and ``find_results`` returns a
stored document only when it was computed on the same data, split, models and limit (so a
chapter can reuse what another chapter computed without ever mixing configurations).

The honesty wording lives here too, one vocabulary for five uses: ``honesty_label`` (the suffix
of a printed summary line), ``honesty_text`` and ``reading_note`` (a chapter's prose: the label
in words and what the numbers can show), ``build_source`` (a table's source), ``run_label`` (a
caption's configuration) and ``provenance_note`` (the box at the top of a chapter).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from refcocog_tools import __version__
from refcocog_tools.core.files import atomic_write_json, read_json
from refcocog_tools.data.dataset import is_synthetic
from refcocog_tools.data.layouts import DEFAULT_LAYOUT, dataset_title
from refcocog_tools.engine.metrics import summarize
from refcocog_tools.engine.uncertainty import summary as interval_summary

SCHEMA = "refcocog-tools/results/2"
# Schema 1 is schema 2 without metrics["intervals"]: still read (uncertainty.document_intervals
# computes its intervals from its predictions).
READABLE_SCHEMAS = ("refcocog-tools/results/1", SCHEMA)
REQUIRED = ("metrics", "config", "provenance", "predictions")
NOT_REFCOCOG = "not a RefCOCOg result"
GROUND_TRUTH_PROPOSALS = "ground-truth boxes: an upper bound, not the study's detector setting"
# A CLIP trained here by train-toy-clip (toy-rn): real learning, of the synthetic world only.
TOY_LABEL = "toy weights trained on the synthetic world"


class ResultsError(ValueError):
    """A results file that cannot be read as a results document; the message names the file
    and the field."""


# ----------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------
def git_commit() -> str | None:
    """The checkout's commit, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def clip_provenance(backbones: Sequence[Any]) -> list[dict[str, Any]]:
    """Name, checksum, whether untrained or toy, and which weights in words, per CLIP
    backbone."""
    out = []
    for b in backbones:
        untrained, toy = bool(b.untrained), bool(getattr(b, "toy", False))
        weights = ("untrained (random) weights" if untrained
                   else TOY_LABEL if toy else "pretrained weights")
        out.append({"name": b.name, "checksum": b.checksum, "untrained": untrained, "toy": toy,
                    "weights": weights})
    return out


def provenance(data_root: str | os.PathLike[str], split: str, backbones: Sequence[Any],
               proposer: Any = None, layout: Any = None) -> dict[str, Any]:
    """Where a document's numbers come from. ``proposer`` None: the method uses no proposals
    (a regressor), recorded as ``{"name": "none"}`` so that tables can say so. ``layout``: the
    dataset of the family and its split-by (``layouts.Layout``; RefCOCOg umd when None)."""
    layout = layout or DEFAULT_LAYOUT

    ground_truth = proposer is not None and proposer.name == "gt"
    if proposer is None:
        proposals = {"name": "none", "checksum": None, "untrained": False, "note": None}
    else:
        proposals = {"name": proposer.name, "checksum": getattr(proposer, "checksum", None),
                     "untrained": bool(getattr(proposer, "untrained", False)),
                     "note": GROUND_TRUTH_PROPOSALS if ground_truth else None}
    clip = clip_provenance(backbones)
    return {
        "package_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "data_root": str(data_root),
        "dataset": layout.dataset,
        "split_by": layout.split_by,
        "split": split,
        "synthetic_data": is_synthetic(data_root),
        "untrained": any(c["untrained"] for c in clip) or proposals["untrained"],
        "ground_truth_proposals": ground_truth,
        "clip": clip,
        "proposals": proposals,
    }


def results_document(rows: list[dict[str, Any]], *, config: dict[str, Any],
                     provenance: dict[str, Any], threshold: float = 0.5,
                     timing: dict[str, Any] | None = None,
                     training: dict[str, Any] | None = None,
                     problems: Sequence[str] | None = None) -> dict[str, Any]:
    """The one builder of a results document: metrics summarised from ``rows`` (one per
    expression) at the IoU ``threshold``, with their 95% intervals by bootstrap over images
    (``metrics["intervals"]``), and the config and provenance given. ``problems``: the data
    problems the run went past (the metrics cover the rows only: a skipped expression is in
    neither)."""
    metrics = summarize(rows, threshold=threshold)
    metrics["intervals"] = interval_summary(rows, threshold=threshold)
    document: dict[str, Any] = {"schema": SCHEMA, "metrics": metrics,
                                "config": config, "provenance": provenance}
    if timing is not None:
        document["timing"] = timing
    if training is not None:
        document["training"] = training
    if problems is not None:
        document["problems"] = [str(problem) for problem in problems]
    document["predictions"] = rows
    return document


# ----------------------------------------------------------------------------------------------
# Honesty wording
# ----------------------------------------------------------------------------------------------
def data_words(synthetic: bool, dataset: str = "refcocog") -> str:
    """The data a number was computed on: "synthetic dataset", or the dataset's name
    ("RefCOCOg", "RefCOCO", "RefCOCO+")."""
    return "synthetic dataset" if synthetic else dataset_title(dataset)


def weights_words(untrained: bool, toy: bool = False) -> str:
    return "untrained" if untrained else "toy, trained here" if toy else "pretrained"


def _is_toy(provenance: Mapping[str, Any]) -> bool:
    return any(isinstance(c, Mapping) and c.get("toy") for c in provenance.get("clip") or ())


def _honesty_notes(provenance: Mapping[str, Any]) -> list[str]:
    parts = [text for key, text in (("untrained", "untrained weights"),
                                    ("synthetic_data", "synthetic data")) if provenance.get(key)]
    if _is_toy(provenance):
        parts = [p for p in parts if p != "synthetic data"] + [TOY_LABEL]
    notes = [f"{', '.join(parts)}: {NOT_REFCOCOG}"] if parts else []
    if provenance.get("ground_truth_proposals"):
        notes.append(GROUND_TRUTH_PROPOSALS)
    return notes


def honesty_label(provenance: Mapping[str, Any]) -> str:
    """The suffix every printed number gets when it is not a RefCOCOg result with detected
    proposals ("" when it is). Toy weights name the synthetic world themselves, so they replace
    the "synthetic data" part."""
    notes = _honesty_notes(provenance)
    return f"  [{'; '.join(notes)}]" if notes else ""


def honesty_text(provenance: Mapping[str, Any]) -> str:
    """The honesty label in words, for a chapter's prose: what ``honesty_label`` says without
    its brackets (e.g. "toy weights trained on the synthetic world: not a RefCOCOg result;
    ground-truth boxes: ..."), or, when there is nothing to warn about, the dataset and
    "pretrained weights"."""
    notes = _honesty_notes(provenance)
    if notes:
        return "; ".join(notes)
    return f"{data_words(False, provenance.get('dataset', 'refcocog'))}, pretrained weights"


def reading_note(provenance: Mapping[str, Any]) -> str:
    """One sentence on what a run's numbers can show, chosen from its provenance (the weights
    and the data), so that a chapter's prose stays true whatever configuration ran it."""
    name = data_words(False, provenance.get("dataset", "refcocog"))
    if provenance.get("untrained"):
        return ("With untrained weights CLIP's scores carry no knowledge: these numbers check "
                "that the code runs end to end and is deterministic, and whatever part of them "
                "depends on CLIP is chance.")
    if _is_toy(provenance):
        return (f"With {TOY_LABEL} these numbers show, in miniature, what each method makes of "
                "a CLIP trained on captions of that world's shapes, colours and positions; they "
                f"say nothing about {name} or about a pretrained CLIP on photographs.")
    if provenance.get("synthetic_data"):
        return ("With pretrained weights on pictures of drawn shapes these numbers say nothing "
                f"about {name}.")
    return (f"These numbers come from pretrained weights on {name}: they can be set beside "
            "the study's where the two configurations agree.")


def build_source(results: Mapping[str, Any]) -> str:
    """A table's source for a number this build computed, from its results document, e.g.
    ``"this build: synthetic dataset (test), tiny-rn (untrained), proposals gt, n=43"``."""
    prov = results["provenance"]
    clips = prov.get("clip") or []
    if clips:
        models = ", ".join(f"{c['name']} ({weights_words(c['untrained'], c.get('toy', False))})"
                           for c in clips)
    else:
        models = "no CLIP model"
    proposals = prov.get("proposals") or {}
    name = proposals.get("name", "?")
    if proposals.get("untrained"):
        name += " (untrained)"
    if proposals.get("note"):  # ground-truth boxes: says they are an upper bound
        name += f" ({proposals['note']})"
    n = results["metrics"]["n"]
    data = data_words(bool(prov.get("synthetic_data")), prov.get("dataset", "refcocog"))
    return (f"this build: {data} "
            f"({prov.get('split', '?')}), {models}, proposals {name}, n={n}")


def run_label(data_root: str | os.PathLike[str], backbones: Sequence[Any],
              dataset: str = "refcocog") -> str:
    """A caption's configuration, e.g. "this build: synthetic dataset, CLIP tiny-rn
    (untrained)"; ``dataset`` names real data (refcocog, refcoco, refcoco+)."""
    clips = ",".join(b.name for b in backbones)
    untrained = any(b.untrained for b in backbones)
    toy = any(getattr(b, "toy", False) for b in backbones)
    return (f"this build: {data_words(is_synthetic(data_root), dataset)}, CLIP {clips} "
            f"({weights_words(untrained, toy)})")


class ProvenanceNote:
    """A visible statement of where a page's numbers come from.

    Renders as a MyST admonition in the book (``text/markdown``) and as plain text elsewhere
    (``text/plain``, which nbval compares).
    """

    def __init__(self, title: str, body: str, kind: str) -> None:
        self.title = title
        self.body = body
        self.kind = kind  # "warning" or "note"

    def _repr_markdown_(self) -> str:
        return f"```{{admonition}} {self.title}\n:class: {self.kind}\n{self.body}\n```\n"

    def __repr__(self) -> str:
        return f"{self.kind.upper()}: {self.title}\n{self.body}"

    def __str__(self) -> str:
        return repr(self)


def provenance_note(synthetic: bool, backbones_untrained: bool | None = None,
                    models: str = "", toy: bool = False,
                    dataset: str = "refcocog") -> ProvenanceNote:
    """What the numbers on a page are, given whether its data is synthetic and its models.

    ``backbones_untrained`` is None for a page that uses no model, else whether any model used
    (CLIP backbone, detector, regressor) has untrained weights. ``models`` names them. ``toy``:
    a CLIP trained here on the synthetic world (``toy-rn``) is among them. ``dataset`` names
    the real data's dataset of the family (refcocog, refcoco, refcoco+).
    """
    name = data_words(False, dataset)
    named = f" ({models})" if models else ""
    if synthetic:
        data = ("the embedded **synthetic** dataset (pictures of drawn shapes with generated "
                "expressions, written by `refcocog_tools.data.minidata`)")
    else:
        data = f"the {name} data found at the `data_root` parameter of this run"
    if backbones_untrained is None:
        model_text = "No model is used on this page."
    elif backbones_untrained:
        model_text = (f"The models{named} are **{weights_words(True)}**: their weights are "
                      "random, so their outputs carry no visual or linguistic knowledge.")
    else:
        model_text = f"The models{named} use {weights_words(False)} weights."
    if toy and not backbones_untrained:
        model_text = (f"The CLIP model{named} has {TOY_LABEL} (`refcocog-tools train-toy-clip`, "
                      "on the train split of another seed's generated world): it has learnt "
                      "the shapes, colours and position words of that world and nothing else.")
        return ProvenanceNote(
            f"Computed here with {TOY_LABEL}: {NOT_REFCOCOG}",
            f"Every number on this page was computed by this build from {data}. {model_text} "
            f"The numbers tell the methods apart in miniature; they say nothing about {name} "
            "or about a pretrained CLIP.", "warning")
    if synthetic or backbones_untrained:
        title = f"Computed here on a smoke-test configuration: {NOT_REFCOCOG}"
        meaning = ("These numbers check that the code runs end to end and is deterministic; "
                   f"they say nothing about {name} or about how well any method works. "
                   "The original study's numbers are quoted separately, with their source.")
        if not synthetic:
            meaning = ("The data is real, but with untrained models the numbers say nothing "
                       "about how well any method works.")
        return ProvenanceNote(title, f"Every number on this page was computed by this build "
                              f"from {data}. {model_text} {meaning}", "warning")
    title = f"Computed here on {name} with {weights_words(False)} weights"
    body = (f"Every number on this page was computed by this build from {data}. {model_text} "
            "Compare them with the original study's numbers, which are quoted separately "
            "with their source.")
    return ProvenanceNote(title, body, "note")


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------
def results_path(results_dir: str | os.PathLike[str], method: str) -> Path:
    """``<results_dir>/<method>.json``; the method name is a file name, never a path."""
    if not method or Path(method).name != method or method.startswith("."):
        raise ValueError(f"results: {method!r} is not a method name")
    return Path(results_dir) / f"{method}.json"


def write_results(document: Mapping[str, Any], results_dir: str | os.PathLike[str],
                  method: str) -> Path:
    """Store ``document`` atomically as ``<results_dir>/<method>.json`` (the build's own
    output: a newer run of the same method replaces it)."""
    missing = [key for key in REQUIRED if key not in document]
    if missing:
        raise ResultsError(f"results for {method}: missing {', '.join(missing)}")
    path = results_path(results_dir, method)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"schema": SCHEMA, **document})
    return path


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A stored results document; ResultsError naming the file and the field when it is not
    one (plain JSON only: reading it runs no code)."""
    path = Path(path)
    document = read_json(path, "results file", ResultsError)
    if not isinstance(document, dict):
        raise ResultsError(f"{path}: a results file holds a JSON object")
    if document.get("schema") not in READABLE_SCHEMAS:
        raise ResultsError(f"{path}: field 'schema' is {document.get('schema')!r}, "
                           f"expected one of {', '.join(map(repr, READABLE_SCHEMAS))}")
    for key in REQUIRED:
        if key not in document:
            raise ResultsError(f"{path}: field {key!r} is missing")
    for key in ("metrics", "config", "provenance"):
        if not isinstance(document[key], dict):
            raise ResultsError(f"{path}: field {key!r} must be an object")
    return document


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from a JSON file (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))


def _same_models(prov: Mapping[str, Any], backbones: Sequence[Any]) -> bool:
    stored = [(c.get("name"), c.get("checksum")) for c in prov.get("clip") or []]
    return stored == [(b.name, b.checksum) for b in backbones]


def find_results(results_dir: str | os.PathLike[str], method: str, *,
                 data_root: str | os.PathLike[str], split: str, backbones: Sequence[Any],
                 proposals: str | None, limit: int,
                 config: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The stored document of ``method`` when it was computed on this data root and split,
    with these CLIP checkpoints (by checksum), these proposals (None: a method without
    proposals), this ``limit`` and every ``config`` entry equal (values of the document's
    ``config`` or of its ``config["method"]``); None otherwise, or when there is no file."""
    path = results_path(results_dir, method)
    if not path.is_file():
        return None
    document = read_results(path)
    prov, stored = document["provenance"], document["config"]
    method_config = stored.get("method") if isinstance(stored.get("method"), dict) else {}
    expected_proposals = "none" if proposals is None else proposals
    checks = [
        prov.get("data_root") == str(Path(data_root)),
        prov.get("split") == split,
        _same_models(prov, backbones),
        (prov.get("proposals") or {}).get("name") == expected_proposals,
        int(stored.get("limit", 0) or 0) == int(limit),
        *(_as_json(stored.get(key, method_config.get(key))) == _as_json(value)
          for key, value in (config or {}).items()),
    ]
    return document if all(checks) else None
