"""Host tensors moved to a device without making the host wait: the one way a host tensor
reaches a device."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def host_to_device(tensor: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """``tensor`` (in host memory) on ``device``, without making the host wait for the device.

    A plain copy to a GPU from ordinary (pageable) memory waits until all work queued on the
    device is done, so a copy per image or per proposal would stop the CPU from drawing the next
    images while the GPU encodes. Through pinned memory with ``non_blocking`` the copy is queued
    like a kernel instead. On the CPU the tensor is returned as it is.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return tensor
    if device.type == "cuda" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def concatenate_for(parts: Sequence[torch.Tensor], device: str | torch.device) -> torch.Tensor:
    """``torch.cat(parts)`` bound for ``device``: parts in host memory bound for a GPU are
    written straight into pinned memory (one copy instead of a copy and a pinning copy)."""
    if torch.device(device).type == "cuda" and all(p.device.type == "cpu" for p in parts):
        first = parts[0]
        shape = (sum(len(p) for p in parts), *first.shape[1:])
        return torch.cat(list(parts), out=torch.empty(shape, dtype=first.dtype,
                                                      pin_memory=True))
    return torch.cat(list(parts))
