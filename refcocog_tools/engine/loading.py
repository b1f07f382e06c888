"""The engine's images: each decoded once, in the main process or a DataLoader worker.

An image that cannot be decoded comes back as data (``ImageWork.problem``), so the main
process decides: the run stops on a one-line error naming the file, or, with a place to
record it (``--warn-data-problems``), the image is skipped and the others are evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from refcocog_tools.data.annotations import DatasetError
from refcocog_tools.data.dataset import RefItem
from refcocog_tools.engine.encoding import Encoding
from refcocog_tools.engine.preparing import ImageWork, prepare_inputs
from refcocog_tools.methods.interface import GroundingMethod
from refcocog_tools.proposals.structures import Proposer


class ImageGroups(torch.utils.data.Dataset):
    """One ``ImageWork`` per image group, computed in a DataLoader worker when ``--workers``
    > 0: the decoded image, its proposals (ground-truth proposals only, ``proposer``: a
    detector stays in the main process) and the model inputs the method and the metric need
    encoded (only when there are proposals)."""

    def __init__(self, groups: Sequence[Sequence[RefItem]], proposer: Proposer | None,
                 method: GroundingMethod, encodings: Sequence[Encoding]) -> None:
        self.groups = groups
        self.proposer = proposer
        self.method = method
        self.encodings = encodings

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> ImageWork:
        items = self.groups[index]
        try:
            image = items[0].image  # the one decode of this image in the run
        except DatasetError as err:
            # Sent back as data: raised in a worker it would reach the main process as a
            # traceback, and the main process decides whether to skip the image.
            return ImageWork(index, problem=str(err))
        work = ImageWork(index, image=image)
        if self.proposer is not None:
            work.proposals = self.proposer(items[0], image)
            if self.encodings:
                prepare_inputs(work, items, self.method, self.encodings)
        return work


def image_works(dataset: ImageGroups, workers: int) -> Iterable[ImageWork]:
    """The dataset's works in order: in this process, or from ``workers`` DataLoader ones."""
    if workers <= 0:
        return (dataset[i] for i in range(len(dataset)))
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False,
                                       num_workers=workers, collate_fn=_identity,
                                       prefetch_factor=4, persistent_workers=False)


def _identity(work: ImageWork) -> ImageWork:
    return work


def unreadable(index: int, problem: str, skipped: dict[int, str] | None) -> None:
    """An image that cannot be decoded: refuses the run, or is recorded in ``skipped``. The
    check before a run reads image headers only, so a file damaged past its header (a
    truncated JPEG) is first found here."""
    if skipped is None:
        raise DatasetError(f"{problem}; an image problem the check before the run, which "
                           "reads image headers only, cannot see: pass --warn-data-problems "
                           "to skip the image and evaluate the others")
    skipped[index] = problem
