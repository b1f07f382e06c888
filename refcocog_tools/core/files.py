"""Small file helpers: atomic writes, checksums, the cache directory, and the one reader of
the JSON files a user hands the tool (regular files only, depth bounded)."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from refcocog_tools.core.file_errors import OutputPathError, UnreadableFileError, UnsafeFileError

CACHE_ENV = "REFCOCOG_TOOLS_CACHE"


class NotRegularFileError(OSError):
    """A FIFO, device, socket or folder where a file should be. Refused before it is opened:
    reading a FIFO waits for a writer, forever when there is none. The message says what the
    path is (``"a named pipe (FIFO), not a regular file"``); the caller names the path."""


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"))


def check_regular_file(path: str | os.PathLike[str]) -> None:
    """Raise ``NotRegularFileError`` unless ``path`` (links followed) is a regular file.

    Only ``os.stat``, which never blocks: call it before any ``open()`` of a user's file. A
    missing path raises ``FileNotFoundError`` (another failed stat its ``OSError``).
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a plain file")
        raise NotRegularFileError(f"{kind}, not a regular file")


def read_json(path: str | os.PathLike[str], what: str = "JSON file",
              error: type[Exception] = UnreadableFileError, **loads_options: Any) -> Any:
    """The one reader of a user's JSON file (instances.json, detections, results, sidecars).

    Every problem raises ``error`` with one line naming the file: missing, not a regular file
    (checked before opening), unreadable, not UTF-8, not JSON, or nested deeper than Python's
    recursion limit (``json`` recurses once per level: 100,000 ``[`` would otherwise end in a
    ``RecursionError`` traceback). ``loads_options`` go to ``json.loads``.
    """
    path = Path(path)
    try:
        check_regular_file(path)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as err:
        raise error(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise error(f"{path}: not a readable {what}: not UTF-8 text ({err})") from None
    try:
        return json.loads(text, **loads_options)
    except RecursionError:
        raise error(f"{path}: not a readable {what}: JSON nested too deep (more than about "
                    f"{sys.getrecursionlimit()} levels of lists or objects)") from None
    except ValueError as err:  # JSONDecodeError, and what a parse_constant hook refuses
        raise error(f"{path}: not a readable {what}: not valid JSON: {err}") from None


def cache_dir() -> Path:
    """Where weights, embedded checkpoints and embedding caches live.

    ``$REFCOCOG_TOOLS_CACHE`` when set, else ``$XDG_CACHE_HOME/refcocog-tools`` (``~/.cache``).
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        path = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "refcocog-tools"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputPathError(f"{path}: cannot create the cache folder ({err.strerror or err}); "
                              f"set {CACHE_ENV} to a writable folder") from None
    return path


def _file_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


TEMPORARY_SUFFIX = ".tmp"


def remove_stale_temporaries(folder: str | Path, max_age_s: float = 3600.0) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed process left in ``folder``.

    Only files older than ``max_age_s`` go: a younger one may belong to a write in progress
    in another process.
    """
    removed = []
    now = time.time()
    for path in Path(folder).glob(f".*{TEMPORARY_SUFFIX}"):
        try:
            if path.is_file() and now - path.stat().st_mtime > max_age_s:
                path.unlink()
                removed.append(path)
        except OSError:
            continue  # gone meanwhile, or not ours to delete
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the mode any other new file gets, so a shared
        # cache or results folder stays readable by the group the umask allows.
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """JSON with sorted keys and a final newline, written atomically.

    A non-finite float (NaN, an infinite loss, the -inf "best so far" of a run with no epoch)
    is written as ``null``: ``NaN`` and ``-Infinity`` are not JSON, and other readers reject them.
    """
    text = json.dumps(_finite(obj), indent=2, sort_keys=True, default=_json_default,
                      allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (containers copied as needed)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return _finite(obj.tolist())
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place.

    Saving through a buffer (not a path) also keeps the archive's inner folder name constant,
    so the same object always gives the same bytes.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _regular_weights_file(path: str | Path) -> Path:
    """``path``, checked with ``os.stat`` alone to be a regular file (a FIFO would block the
    read forever): ``FileNotFoundError`` when missing, ``UnreadableFileError`` otherwise."""
    path = Path(path)
    try:
        check_regular_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as err:  # NotRegularFileError among them
        raise UnreadableFileError(f"{path}: {err.strerror or err}") from None
    return path


def load_torch_file(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code.

    The one door for the tool's own torch files (regressor checkpoints, embedding caches). A
    file that references anything else (a pickled function or class: what a hostile
    checkpoint uses to run code) is refused with an ``UnsafeFileError`` naming the file and the
    references, instead of torch's advice to retry with ``weights_only=False``; so is a
    TorchScript archive, which ``torch.load`` would hand to ``torch.jit.load`` (it runs the
    archive's code; :func:`load_weights_file` reads one as data). A missing file raises
    ``FileNotFoundError``, a damaged one (empty, truncated, text) ``UnreadableFileError``.
    """
    import torch

    # The archive reader imports torch: imported here, so light commands never pay for it.
    from refcocog_tools.core.torchscript_archive import is_torchscript_archive

    path = _regular_weights_file(path)
    if is_torchscript_archive(path):
        raise UnsafeFileError(f"{path}: refused to load: it is a TorchScript archive, whose code "
                              "torch.jit.load would run; only tensors and plain containers are "
                              "accepted")
    try:
        # weights_only=True, stated at the call: torch then refuses a TorchScript archive our
        # zip reader did not recognise instead of dispatching it to torch.jit.load, and the
        # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD environment variable cannot override it.
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - not a zip archive: no names to report
            names = []
        what = (f"it references {', '.join(sorted(names))}, which could run code"
                if names else "it is not a plain-data torch file")
        raise UnsafeFileError(f"{path}: refused to load: {what}; only tensors and plain "
                              "containers are accepted") from None
    except Exception as err:  # noqa: BLE001 - bytes torch cannot parse (a text file gives
        # KeyError, an empty one EOFError, a truncated zip RuntimeError): all one condition.
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        reason = f"{type(err).__name__}: {detail}" if detail else type(err).__name__
        raise UnreadableFileError(f"{path}: not a readable torch file (empty, truncated or "
                                  f"corrupt; {reason})") from None


def load_weights_file(path: str | Path) -> Any:
    """A model's weights, read as data: a plain torch file, or a TorchScript archive's state_dict.

    The one door for checkpoints that may come in TorchScript form (OpenAI's CLIP files): a
    TorchScript archive is read by ``torchscript_archive`` (its code as text, never run) into
    the state_dict ``torch.jit.load(path).state_dict()`` gives; anything else goes through
    :func:`load_torch_file`. Errors as there.
    """
    from refcocog_tools.core.torchscript_archive import (
        is_torchscript_archive,
        read_torchscript_state_dict,
    )

    path = _regular_weights_file(path)
    if is_torchscript_archive(path):
        return read_torchscript_state_dict(path)
    return load_torch_file(path)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    check_regular_file(path)  # hashing a FIFO would wait forever
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
