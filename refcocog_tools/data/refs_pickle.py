"""The refs pickle read without running code: an unpickler that admits no class at all."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from refcocog_tools.core.files import check_regular_file
from refcocog_tools.data.records import DatasetError


class _PlainDataUnpickler(pickle.Unpickler):
    """Admits only what pickle encodes without a global: dicts, lists, tuples, str, numbers."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: the refs file may only hold plain "
            "containers and scalars"
        )


def load_refs_pickle(path: str | Path) -> list[dict[str, Any]]:
    """Load ``refs(umd).p`` without executing code: any class or callable in it is refused."""
    path = Path(path)
    try:
        check_regular_file(path)  # a FIFO would block the read forever
        data = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"{path}: cannot read the refs file ({err.strerror or err})") from None
    try:
        refs = _PlainDataUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise DatasetError(f"{path}: unsafe or corrupt pickle: {err}") from err
    except (EOFError, ValueError, IndexError, TypeError) as err:
        raise DatasetError(f"{path}: not a readable pickle: {err}") from err
    if not isinstance(refs, list):
        raise DatasetError(f"{path}: expected a list of ref records, got {type(refs).__name__}")
    return refs
