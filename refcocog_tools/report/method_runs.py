"""Methods evaluated for a chapter: a runner that evaluates each configuration once, the
results a chapter reads from its results folder or computes when missing, and the verdict of a
paired comparison in one sentence.

``MethodRunner`` evaluates the methods of one built run (``engine.run``: the split, the
proposals, the backbones, one embedding cache, the debiasing pool), each configuration at most
once. ``stored_or_computed`` is chapter 10's rule: a method's results document is read
from ``<results_dir>/<method>.json`` when a chapter computed it with this configuration, else
computed here and written there, so a build on real data computes nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refcocog_tools.data.mini_expressions import expression_type
from refcocog_tools.engine.evaluate import evaluate, group_by_image
from refcocog_tools.engine.regressor_results import results_on_split
from refcocog_tools.engine.run import Run, RunSpec, build_run
from refcocog_tools.engine.uncertainty import Comparison, compare, comparison_sentence
from refcocog_tools.methods.regressor.data import split_data
from refcocog_tools.methods.regressor.training import TrainConfig, train_regressor
from refcocog_tools.toy.verdict_world import VERDICT_SEED, verdict_world_root


@dataclass
class MethodRunner:
    """Evaluations of one built run (``engine.run.Run``: its split, proposer, backbones,
    embedding cache and debias pool); ``run`` computes each (method, options) once and
    returns the same document when asked again. Every method is made by the run builder
    (``Run.make_method``), which reads what it needs from the registry."""

    built: Run
    limit: int = 0
    world: str = "this page's data"  # how the page names the data these runs are on
    done: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def on_root(cls, root: str | Path, backbones: Sequence[Any], proposer: Any, *,
                split: str = "test", seed: int = 0, limit: int = 0) -> MethodRunner:
        """A runner on ``split`` of the data root ``root`` (expression view, RefCOCOg umd),
        debiasing with its train split's expressions, on these models."""
        spec = RunSpec(data_root=Path(root), split=split, method=None, seed=seed)
        return cls(build_run(spec, backbones=backbones, proposer=proposer), limit)

    @property
    def dataset(self) -> Any:
        return self.built.dataset

    @property
    def backbones(self) -> list[Any]:
        return self.built.backbones

    @property
    def proposer(self) -> Any:
        return self.built.proposer

    @property
    def cache(self) -> Any:
        return self.built.cache

    @property
    def debias_pool(self) -> Sequence[str]:
        """The train split's expressions red-circle debiases with (read on first use)."""
        return self.built.debias_pool()

    @property
    def size_text(self) -> str:
        """The split's size: "928 expressions over 150 images"."""
        groups = group_by_image(self.dataset, self.limit)
        return f"{sum(len(g) for g in groups)} expressions over {len(groups)} images"

    def make(self, name: str, proposer: Any = None, **options: Any) -> Any:
        """The method ``name`` with ``options``, on this run's backbones and cache, for
        ``proposer`` (default the run's: a mask prompt needs proposals with masks)."""
        return self.built.make_method(name, proposer=proposer, **options)

    def run(self, name: str, proposer: Any = None, **options: Any) -> dict[str, Any]:
        """The results document of ``name`` with ``options`` (and ``proposer``, default the
        run's); a configuration evaluated before is not evaluated again."""
        used = proposer if proposer is not None else self.proposer
        key = repr((name, sorted(options.items()), used.config()))
        if key not in self.done:
            self.done[key] = evaluate(self.dataset, self.make(name, used, **options), used,
                                      self.backbones, limit=self.limit)
        return self.done[key]


def verdict_runner(chapter: Any, verdict_images: int) -> MethodRunner:
    """Where a chapter's verdict is computed: with ``verdict_images`` > 0 on the embedded
    defaults (no ``data_root``), the test split of the generated verdict world of that many
    images (``toy.verdict_world``; its train split debiases); otherwise the chapter's own run
    (``chapter.runner``: on real data the verdict is the real data's)."""
    params = chapter.params
    if verdict_images > 0 and not params.get("data_root"):
        runner = MethodRunner.on_root(verdict_world_root(verdict_images), chapter.backbones,
                                      chapter.proposer, seed=params.get("seed", 0))
        runner.world = (f"the verdict world (generated like the embedded dataset, seed "
                        f"{VERDICT_SEED}, {verdict_images} images; its test split: "
                        f"{runner.size_text})")
        return runner
    return MethodRunner(chapter.run, params.get("limit", 0),
                        world=f"this page's split ({params.get('split', 'test')})")


@dataclass(frozen=True)
class StoredMethod:
    """A row of chapter 10: the registry name, its options and the study's row key."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    study_key: str | None = None


def stored_or_computed(chapter: Any, runner: MethodRunner,
                       methods: Mapping[str, StoredMethod]) -> tuple[dict[str, dict], list[str]]:
    """Per label, the results document of its method: read from the chapter's results folder
    when one was computed with this configuration (``chapter.stored_results``), else computed
    by ``runner`` and saved there. Returns the documents and the names computed here."""
    computed: dict[str, dict[str, Any]] = {}
    recomputed: list[str] = []
    for label, wanted in methods.items():
        method = runner.make(wanted.name, **dict(wanted.options))
        document = chapter.stored_results(wanted.name, config={"method": method.config()})
        if document is None:
            document = runner.run(wanted.name, **dict(wanted.options))
            chapter.save_results(wanted.name, document)
            recomputed.append(wanted.name)
        computed[label] = document
    return computed, recomputed


def stored_or_trained_regressors(chapter: Any, root: Path, backbones: list[Any],
                                 heads: Mapping[str, str], *, epochs: int, seed: int,
                                 limit: int, device: str) -> tuple[dict[str, dict], list[str]]:
    """Per label, the results of the regressor ``head`` trained with the study's settings (MSE
    on pixel targets, ``epochs`` epochs): read when stored with this configuration, else
    trained on the train split's embeddings and saved."""
    computed: dict[str, dict[str, Any]] = {}
    recomputed: list[str] = []
    data = None
    for label, head in heads.items():
        config = TrainConfig(head=head, loss="mse", epochs=epochs, seed=seed)
        name = f"regressor-{head}"
        document = chapter.stored_results(name, uses_proposals=False, config=config.to_dict())
        if document is None:
            data = data or {split: split_data(root, split, backbones).first(limit)
                            for split in ("train", "val", "test")}
            trained = train_regressor(data["train"], data["val"], config, device=device)
            document = results_on_split(trained, data["test"], root, backbones, limit=limit)
            chapter.save_results(name, document)
            recomputed.append(name)
        computed[label] = document
    return computed, recomputed


def paired(document_a: Mapping[str, Any], document_b: Mapping[str, Any],
           keep: Callable[[Mapping[str, Any]], bool] | None = None) -> Comparison:
    """Method A against method B on the same expressions (``uncertainty.compare``), on the
    rows ``keep`` accepts (all of them without it)."""
    rows_a, rows_b = document_a["predictions"], document_b["predictions"]
    if keep is not None:
        rows_a, rows_b = [r for r in rows_a if keep(r)], [r for r in rows_b if keep(r)]
    return compare(rows_a, rows_b)


def of_expression_type(kind: str) -> Callable[[Mapping[str, Any]], bool]:
    """A ``keep`` for ``paired``: rows whose sentence the generator wrote as ``kind``
    (``minidata.expression_type``: relation, position, size or plain)."""
    return lambda row: expression_type(str(row.get("sentence", ""))) == kind


def verdict_sentence(name_a: str, name_b: str, document_a: Mapping[str, Any],
                     document_b: Mapping[str, Any], metric: str = "accuracy",
                     keep: Callable[[Mapping[str, Any]], bool] | None = None,
                     ) -> tuple[str, Comparison]:
    """The one-sentence verdict of A against B (``comparison_sentence``) and the comparison."""
    comparison = paired(document_a, document_b, keep)
    return comparison_sentence(name_a, name_b, comparison, metric) + ".", comparison
