"""One run builder: "data root -> dataset -> proposer -> check -> backbones -> debias pool ->
method" written once, for ``evaluate``, ``bench``, ``ground`` and the toy world.

A ``RunSpec`` says what a run is (typed: a layout, the method's options object, the proposer
and CLIP specs); ``build_run`` makes it. A spec without a method (``method=None``: a chapter
that evaluates several) builds the data, the models and the cache; ``Run.make_method`` then
makes each method on them. What a method needs is read from its registry entry
(``methods.registry.MethodEntry``), never decided here: a CLIP, proposals with masks (the
proposer is then built with ``masks=True``, and a proposer that gives none is refused), and a
debias pool (the train split's expressions, read only when the method draws from them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refcocog_tools.data.annotations import RefRecord
from refcocog_tools.data.dataset import RefCOCOg
from refcocog_tools.data.layouts import DEFAULT_LAYOUT, Layout
from refcocog_tools.data.minidata import default_data_root  # writes images: on demand
from refcocog_tools.methods.interface import GroundingMethod
from refcocog_tools.methods.registry import (
    MethodEntry,
    canonical_method,
    make_method,
    method_entry,
    resolved_options,
)
from refcocog_tools.models.backbones import ClipBackbone
from refcocog_tools.models.clip_loading import load_clips
from refcocog_tools.models.prompt_cache import EmbeddingCache
from refcocog_tools.proposals.proposers import make_proposer
from refcocog_tools.proposals.structures import Proposer


class RunSpecError(ValueError):
    """A run that cannot be built as specified (a method without the models or masks it
    needs); the message is one line naming the option."""


@dataclass(frozen=True)
class RunSpec:
    """Everything that says what a run is, before anything is loaded.

    ``data_root`` None: the embedded synthetic dataset. ``split`` None: the layout's default.
    ``method`` None: no method is built (``Run.make_method`` makes them). ``options``: the
    method's options object (None: its defaults). ``proposals``: a ``make_proposer`` spec,
    with ``detector`` settings (conf, iou, max_det) for a YOLO one.
    ``cache_dir``: where embeddings are kept on disk (None: in memory only), ``cache_shard``
    this process's files there. ``keep_first_duplicates``: a repeated id keeps its first record
    instead of refusing the run.
    """

    data_root: Path | None = None
    layout: Layout = DEFAULT_LAYOUT
    split: str | None = None
    method: str | None = "red-circle"
    options: Any = None
    proposals: str = "gt"
    detector: Mapping[str, Any] = field(default_factory=dict)
    clip: str = "tiny-rn"
    device: str = "cpu"
    seed: int = 0
    cache_dir: Path | None = None
    cache_shard: str = ""
    keep_first_duplicates: bool = False

    @property
    def entry(self) -> MethodEntry | None:
        """The method's registry entry (None for a spec without a method)."""
        return method_entry(self.method) if self.method is not None else None

    @property
    def method_options(self) -> Any:
        """The method's options object, checked to be of its type (None without a method)."""
        return resolved_options(self.method, self.options) if self.method is not None else None

    def resolved_root(self) -> Path:
        """The data root, the embedded dataset (generated on first use) when none is given."""
        return Path(self.data_root) if self.data_root is not None else default_data_root()


@dataclass
class Run:
    """A built run: what the engine evaluates (``dataset`` None for records given directly,
    as ``ground`` gives its one photo)."""

    spec: RunSpec
    dataset: RefCOCOg | None
    records: Sequence[RefRecord]
    proposer: Proposer
    backbones: list[ClipBackbone]
    cache: EmbeddingCache
    method: GroundingMethod | None = field(default=None, init=False)
    _debias_pool: Sequence[str] | None = field(default=None, repr=False)

    def debias_pool(self) -> Sequence[str]:
        """The train split's expressions in file order, read once (the spec's data root and
        layout)."""
        if self._debias_pool is None:
            self._debias_pool = train_expressions(self.spec)
        return self._debias_pool

    def make_method(self, name: str | None = None, options: Any = None, *,
                    cache: EmbeddingCache | None = None, proposer: Proposer | None = None,
                    **settings: Any) -> GroundingMethod:
        """Another method on this run's models (default: the spec's method and options, with
        ``settings`` replacing single options), on ``cache`` (default: the run's); a method
        that needs what the proposer it will run with lacks (``proposer``, default the run's)
        is refused."""
        name = self.spec.method if name is None else name
        if name is None:
            raise RunSpecError("make_method: this run's spec names no method; name one")
        if (options is None and self.spec.method is not None
                and canonical_method(name) == canonical_method(self.spec.method)):
            options = self.spec.method_options
        options = resolved_options(name, options, **settings)
        return build_method(self.spec, name, options,
                            self.proposer if proposer is None else proposer, self.backbones,
                            self.cache if cache is None else cache, self.debias_pool)


def train_expressions(spec: RunSpec) -> list[str]:
    """The spec's train split's expressions in file order (red-circle's debias pool)."""
    return RefCOCOg(spec.resolved_root(), "train", view="expression",
                    dataset=spec.layout.dataset, split_by=spec.layout.split_by,
                    keep_first_duplicates=spec.keep_first_duplicates).sentences()


def check_masks(name: str, options: Any, proposer: Proposer, proposals: str = "") -> None:
    """A method whose prompts are drawn from masks, given a proposer without masks, is
    refused in one line naming the options (``--window mask``) and the proposals."""
    entry = method_entry(name)
    if entry.needs_masks(options) and not getattr(proposer, "gives_masks", False):
        raise RunSpecError(f"{entry.mask_options(options)}: --proposals "
                           f"{proposals or proposer.name} gives no segmentation masks")


def build_proposer(spec: RunSpec) -> Proposer:
    """The spec's proposer, with masks when its method draws from them (a detection
    checkpoint or a detections file without segmentations is then refused by the proposer)."""
    masks = spec.entry is not None and spec.entry.needs_masks(spec.method_options)
    return make_proposer(spec.proposals, device=spec.device, **dict(spec.detector),
                         **({"masks": True} if masks else {}))


def build_method(spec: RunSpec, name: str, options: Any, proposer: Proposer,
                 backbones: Sequence[ClipBackbone], cache: EmbeddingCache,
                 debias_pool: Any = None) -> GroundingMethod:
    """Method ``name`` with ``options`` on these models, after the registry's needs are met:
    a CLIP, masks from the proposer, and (``debias_pool``: a callable giving it, read only
    when the method draws from it) the training expressions."""
    entry = method_entry(name)
    if entry.needs_clip and not backbones:
        raise RunSpecError(f"method {canonical_method(name)} needs --clip")
    check_masks(name, options, proposer, spec.proposals)
    pool = (debias_pool() if callable(debias_pool) else debias_pool or ()
            ) if entry.needs_debias_pool(options) else ()
    return make_method(name, backbones, options=options, cache=cache, debias_pool=pool,
                       seed=spec.seed)


def build_run(spec: RunSpec, *, backbones: Sequence[ClipBackbone] | None = None,
              proposer: Proposer | None = None,
              records: Sequence[RefRecord] | None = None) -> Run:
    """Build the run ``spec`` describes, in the order that fails cheapest first: the method's
    options, the dataset, the proposer (checked against the split's records), the backbones,
    the cache, the debias pool, the method.

    ``backbones`` / ``proposer``: already loaded ones to use instead of the spec's.
    ``records``: the records to run on instead of the spec's split (``ground``'s one photo);
    the spec's data root is then read only for a debias pool, where the method draws one.
    """
    options = spec.method_options  # a wrong options type fails before anything loads
    dataset = None
    if records is None:
        dataset = RefCOCOg(spec.resolved_root(), spec.split or spec.layout.default_split,
                           view="expression", dataset=spec.layout.dataset,
                           split_by=spec.layout.split_by,
                           keep_first_duplicates=spec.keep_first_duplicates)
        records = dataset.records
    if proposer is None:
        proposer = build_proposer(spec)
    if spec.method is not None:  # before any model loads
        check_masks(spec.method, options, proposer, spec.proposals)
    check = getattr(proposer, "check_dataset", None)
    if check is not None:  # a proposer that reads a file checks it against the records
        check(records)
    if backbones is None:
        backbones = load_clips(spec.clip, device=spec.device) if spec.clip else []
    backbones = list(backbones)
    cache = EmbeddingCache(spec.cache_dir, shard=spec.cache_shard)
    run = Run(spec, dataset, records, proposer, backbones, cache)
    if spec.method is not None:
        run.method = build_method(spec, spec.method, options, proposer, backbones, cache,
                                  run.debias_pool)
    return run
