"""The regressors' training data: cached CLIP embeddings and boxes, one row per expression.

Training a head needs, per (image, expression) pair, the CLIP embedding of the whole image, the
CLIP embedding of the expression and the box. The embeddings come from
:mod:`refcocog_tools.models.split_embeddings`, so CLIP runs once per backbone and split, and every
training run reuses them (the study stored them in a CSV file for the same reason).

Training set. The study trained on the first expression of each ref per step; here every
(image, expression) pair of the split is a sample (the dataset's "expression" view), which uses all
annotations and makes an epoch of the same size as the evaluation.

Targets are pixels (the study's choice; the MSE then grows with the image scale and dominates the
``mix`` loss) or, with ``normalize_targets``, corners divided by the image width and height
(:meth:`RegressionData.targets`; :func:`to_pixels` goes back).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from refcocog_tools.data.annotations import DatasetError
from refcocog_tools.data.dataset import RefCOCOg
from refcocog_tools.data.layouts import DEFAULT_LAYOUT, Layout
from refcocog_tools.models.split_embeddings import SplitEmbeddings, split_embeddings


@dataclass
class RegressionData:
    """Samples for a head. Features are gathered per batch from the embedding tables, so the
    (N, 2d) input matrix is never materialised."""

    image_embeddings: torch.Tensor  # (I, d)
    text_embeddings: torch.Tensor  # (S, d)
    image_index: torch.Tensor  # (N,) long rows of image_embeddings
    text_index: torch.Tensor  # (N,) long rows of text_embeddings
    boxes: torch.Tensor  # (N, 4) xyxy pixels
    sizes: torch.Tensor  # (N, 2) image (width, height)
    rows: list[dict[str, Any]] = field(default_factory=list)  # ref_id, sent_id, image_id, sentence

    def __post_init__(self) -> None:
        n = len(self.image_index)
        if not (len(self.text_index) == len(self.boxes) == len(self.sizes) == n):
            raise ValueError("image_index, text_index, boxes and sizes must have the same length")
        if self.image_embeddings.shape[1] != self.text_embeddings.shape[1]:
            raise ValueError("image and text embeddings must have the same size")

    def __len__(self) -> int:
        return len(self.image_index)

    @property
    def embed_dim(self) -> int:
        return int(self.image_embeddings.shape[1])

    def features(self, index: torch.Tensor) -> torch.Tensor:
        """(B, 2d): the image embedding, then the expression embedding."""
        return torch.cat([self.image_embeddings[self.image_index[index]],
                          self.text_embeddings[self.text_index[index]]], dim=1)

    def targets(self, index: torch.Tensor, normalize: bool) -> torch.Tensor:
        boxes = self.boxes[index]
        if normalize:
            sizes = self.sizes[index]
            boxes = boxes / torch.cat([sizes, sizes], dim=1)
        return boxes

    def first(self, n: int) -> RegressionData:
        """The first ``n`` samples (all of them when ``n`` <= 0), sharing the embedding tables."""
        if n <= 0 or n >= len(self):
            return self
        return RegressionData(self.image_embeddings, self.text_embeddings, self.image_index[:n],
                              self.text_index[:n], self.boxes[:n], self.sizes[:n],
                              self.rows[:n])

    def to(self, device: str | torch.device) -> RegressionData:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device)
        return RegressionData(**moved)

    @classmethod
    def from_features(cls, image_features: torch.Tensor, text_features: torch.Tensor,
                      boxes: torch.Tensor, sizes: torch.Tensor) -> RegressionData:
        """One sample per row of already-paired features (used for synthetic data)."""
        n = len(boxes)
        index = torch.arange(n)
        return cls(image_features.float(), text_features.float(), index, index.clone(),
                   boxes.float(), sizes.float())

    @classmethod
    def from_dataset(cls, dataset: RefCOCOg,
                     embeddings: Sequence[SplitEmbeddings]) -> RegressionData:
        """Pair every expression of ``dataset`` with its image; one embedding table per backbone,
        concatenated along the feature axis (image and text in the same backbone order)."""
        if not embeddings:
            raise ValueError("need the embeddings of at least one backbone")
        image_ids = list(dict.fromkeys(r.image_id for r in dataset.records))
        sentences = list(dict.fromkeys(dataset.sentences()))
        images = torch.cat([e.image_embeddings[e.image_rows(image_ids)] for e in embeddings], 1)
        texts = torch.cat([e.text_embeddings[e.text_rows(sentences)] for e in embeddings], 1)
        image_row = {i: k for k, i in enumerate(image_ids)}
        text_row = {s: k for k, s in enumerate(sentences)}
        image_index, text_index, boxes, sizes, rows = [], [], [], [], []
        for record in dataset.records:
            for sentence, sent_id in zip(record.sentences, record.sent_ids, strict=True):
                image_index.append(image_row[record.image_id])
                text_index.append(text_row[sentence])
                boxes.append(record.box)
                sizes.append(record.image_size)
                rows.append({"ref_id": record.ref_id, "sent_id": sent_id,
                             "image_id": record.image_id, "ann_id": record.ann_id,
                             "category": record.category, "sentence": sentence})
        return cls(images, texts, torch.tensor(image_index), torch.tensor(text_index),
                   torch.tensor(boxes, dtype=torch.float32),
                   torch.tensor(sizes, dtype=torch.float32), rows)


def to_pixels(boxes: torch.Tensor, sizes: torch.Tensor, normalized: bool) -> torch.Tensor:
    """Boxes in the target unit back to pixels, clipped to the image."""
    if normalized:
        boxes = boxes * torch.cat([sizes, sizes], dim=1)
    return clip_to_image(boxes, sizes)


def clip_to_image(boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Clamp xyxy pixel boxes (N, 4) into their images; ``sizes`` is (N, 2) as (width, height)."""
    limits = torch.cat([sizes, sizes], dim=1).to(boxes)
    return torch.minimum(boxes.clamp(min=0), limits)



def split_data(data_root: str | Path, split: str, backbones: Sequence[Any],
               cache_root: str | Path | None = None, progress: bool = False,
               raw: bool = False, layout: Layout = DEFAULT_LAYOUT) -> RegressionData:
    """The expression view of ``split`` of the ``layout``'s dataset (default RefCOCOg umd) with
    each backbone's cached embeddings (L2-normalised, or as CLIP outputs them with ``raw``).

    Raises ``LayoutError`` naming the layout's splits, before any file is read, when it has no
    ``split``.
    """
    dataset = RefCOCOg(data_root, split=split, view="expression", dataset=layout.dataset,
                       split_by=layout.split_by)
    if len(dataset) == 0:
        raise DatasetError(f"{data_root}: the {split} split has no expressions ({layout.dataset} "
                           f"split by {layout.split_by}); a regressor needs expressions in its "
                           "train, val and evaluated splits")
    embeddings = [split_embeddings(dataset, b, cache_root=cache_root, progress=progress,
                                   raw=raw)
                  for b in backbones]
    return RegressionData.from_dataset(dataset, embeddings)
