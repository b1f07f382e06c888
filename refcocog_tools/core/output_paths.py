"""The one door every command's output goes through, the lock a writer holds, and the swap
that lets ``--force`` replace a run folder without ever destroying the earlier one first.

``check_output`` runs first thing in a command, before any model is loaded:

* an output that already exists is refused unless ``--force`` (one line naming the path and
  the flag);
* an output that is one of the command's own inputs (the data root's annotation files, a
  detections file, a checkpoint, a CLIP file, the tool's caches, the embedded weights) is
  refused even with ``--force``: the path is compared after ``Path.resolve()`` (symlinks
  followed) and with ``os.path.samefile`` (a hard link is the same file), and nothing may be
  written inside the data root's ``annotations/`` and ``images/`` folders or the caches. A
  folder output may not hold an input either, since ``--force`` may replace the folder whole;
* then ``check_output_file`` / ``check_output_folder`` prove the place is writable.

``output_lock`` is an exclusive ``fcntl.flock`` on ``.<name>.lock`` beside the output (not in
it: a ``--force`` run swaps the folder, and a lock inside would be swapped away with it). The
lock file holds the holder's pid; the kernel drops the lock when the process ends, even by
SIGKILL, so a lock file a killed run leaves never blocks anyone. ``replacing_folder`` stages
a new run in a sibling folder and swaps it in only when it is complete.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from refcocog_tools.core.file_errors import OutputPathError
from refcocog_tools.core.files import TEMPORARY_SUFFIX


def _probe_folder(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and prove a file can be created in it."""
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"{parent}: is a file, so the {what} {folder} cannot "
                                      "be created")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputPathError(f"{folder}: the {what} is not writable "
                              f"({err.strerror or err})") from None


def check_output_file(path: Path, what: str = "output file") -> None:
    """``path`` can be written atomically (its folder takes a new file; it is not a folder)."""
    if path.is_dir():
        raise OutputPathError(f"{path}: is a folder; the {what} must be a file path")
    _probe_folder(path.parent, f"folder of the {what}")


def check_output_folder(path: Path, what: str = "output folder") -> None:
    """``path`` is (or can be created as) a folder that takes new files."""
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{path}: is a file; the {what} must be a folder")
    _probe_folder(path, what)


STAGED = ".refcocog-new-"  # .<name>.refcocog-new-<pid>: a run being written for --force
ASIDE = ".refcocog-old-"  # .<name>.refcocog-old-<pid>: the earlier run during the swap


@dataclass
class ProtectedPaths:
    """A command's inputs: files it reads and folders it reads from, each with its role."""

    files: dict[Path, str] = field(default_factory=dict)
    folders: dict[Path, str] = field(default_factory=dict)

    def add_file(self, path: str | os.PathLike[str] | None, role: str) -> None:
        if path is not None and str(path):
            self.files.setdefault(Path(path).expanduser(), role)

    def add_folder(self, path: str | os.PathLike[str] | None, role: str) -> None:
        if path is not None and str(path):
            self.folders.setdefault(Path(path).expanduser(), role)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies under it (both resolved)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def refuse_inputs(path: Path, what: str, inputs: ProtectedPaths, folder: bool = False) -> None:
    """Raise ``OutputPathError`` when writing ``path`` could change one of ``inputs``."""
    path = Path(path).expanduser()
    for source, role in inputs.files.items():
        if _same_file(path, source) or (folder and _inside(source, path)):
            relation = "is" if _same_file(path, source) else "holds"
            raise OutputPathError(
                f"{path}: refused, even with --force: the {what} {relation} this command's "
                f"{role} ({source}); choose another path")
    for source, role in inputs.folders.items():
        if _inside(path, source) or (folder and _inside(source, path)):
            relation = "lies inside" if _inside(path, source) else "holds"
            raise OutputPathError(
                f"{path}: refused, even with --force: the {what} {relation} the {role} "
                f"({source}); choose another path")


def check_output(path: Path, what: str, inputs: ProtectedPaths, force: bool = False,
                 folder: bool = False, earlier: Sequence[Path] | None = None,
                 already: str | None = None, alternative: str = "") -> None:
    """The door every output passes before a command does any work.

    ``earlier``: what of an earlier output is already there (default: ``path`` itself, for a
    file); refused without ``force``, with ``already`` (default "a <what>") and
    ``alternative`` (", or --resume to continue it") in the message. Inputs are refused even
    with ``force`` (``refuse_inputs``); then the place is proven writable.
    """
    path = Path(path).expanduser()
    refuse_inputs(path, what, inputs, folder=folder)
    if earlier is None:
        earlier = [path] if os.path.lexists(path) and not path.is_dir() else []
    if earlier and not force:
        raise OutputPathError(f"{earlier[0]}: {already or 'a ' + what} is already there; pass "
                              f"--force to overwrite it{alternative}")
    if folder:
        check_output_folder(path, what)
    else:
        check_output_file(path, what)


def lock_path(path: Path) -> Path:
    """``.<name>.lock`` beside ``path`` (resolved, so two spellings of one output share it)."""
    path = Path(path).expanduser().resolve()
    return path.parent / f".{path.name}.lock"


@contextmanager
def output_lock(path: Path, what: str = "output") -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` while writing it; a second writer is refused at once.

    Raises ``OutputPathError`` naming the holder's pid. The holder removes the lock file when
    it is done; a killed holder leaves it, unlocked (the kernel drops a flock with the
    process), and the next writer takes it over.
    """
    lock = lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = _take(lock)
    except BlockingIOError:
        raise OutputPathError(f"{path}: another run (pid {_holder(lock)}) is writing this "
                              f"{what}; wait for it to end or choose another path") from None
    except OSError as err:
        raise OutputPathError(f"{lock}: cannot lock the {what} ({err.strerror or err})"
                              ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock
    finally:
        # Unlinked while still locked: a writer that opened the old file finds, once it has
        # the lock, that the path no longer names it (see _take), and starts over.
        lock.unlink(missing_ok=True)
        os.close(fd)


def _take(lock: Path) -> int:
    """A descriptor of ``lock`` holding its flock; ``BlockingIOError`` when another holds it."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise BlockingIOError(err.errno, err.strerror) from None
            raise
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed this file as we locked it: lock the new one


def _holder(lock: Path) -> str:
    """The pid in a held lock file; the holder writes it just after locking, so wait a little."""
    for _ in range(20):
        try:
            text = lock.read_text(encoding="utf-8").strip()
        except OSError:
            text = ""
        if text:
            return text
        time.sleep(0.01)
    return "unknown"


# ----------------------------------------------------------------------------------------------
# Replacing a folder: the earlier run stays until the new one is complete
# ----------------------------------------------------------------------------------------------
def recover_interrupted_swap(out: Path) -> None:
    """Undo what a killed ``replacing_folder`` left beside ``out``; call it under the lock.

    Under the lock no other run is staging, so a staged folder is a dead run's: removed. A
    folder set aside is the earlier run: put back if ``out`` is missing (the run died between
    the two renames), else the swap had finished and it is removed.
    """
    out = Path(out).expanduser().resolve()
    if not out.parent.is_dir():
        return
    for kind in (ASIDE, STAGED):
        for leftover in sorted(_leftovers(out, kind)):
            if kind == ASIDE and not os.path.lexists(out):
                os.rename(leftover, out)
            else:
                shutil.rmtree(leftover)


def _leftovers(out: Path, kind: str) -> list[Path]:
    """The folders ``.<name><kind><pid>`` beside ``out``."""
    prefix = f".{out.name}{kind}"
    return [p for p in out.parent.iterdir()
            if p.name.startswith(prefix) and p.name[len(prefix):].isdigit()
            and p.is_dir() and not p.is_symlink()]


@contextmanager
def replacing_folder(out: Path) -> Iterator[Path]:
    """A fresh sibling folder to write a new ``out`` in; swapped into place on success.

    The earlier ``out`` is not touched while the new one is written. On success it is renamed
    aside, the new folder renamed to ``out``, and only then the earlier one deleted. On an
    exception the staged folder is deleted and ``out`` is as it was; after a SIGKILL the next
    ``recover_interrupted_swap`` cleans up, so ``out`` holds the earlier run or the new one,
    never a mix. Hold ``output_lock(out)`` around it.
    """
    out = Path(out).expanduser().resolve()
    staged = out.parent / f".{out.name}{STAGED}{os.getpid()}"
    try:
        if staged.exists():
            shutil.rmtree(staged)
        staged.mkdir(parents=True)
    except OSError as err:
        raise OutputPathError(f"{staged}: cannot create the folder the new run is written in "
                              f"before it replaces {out} ({err.strerror or err})") from None
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    aside = out.parent / f".{out.name}{ASIDE}{os.getpid()}"
    if os.path.lexists(out):
        os.rename(out, aside)
    os.rename(staged, out)
    if aside.exists():
        shutil.rmtree(aside)


def foreign_files(folder: Path, own: Iterable[str]) -> list[Path]:
    """What in ``folder`` is neither one of the ``own`` file names nor an atomic write's
    temporary: what replacing the folder would destroy."""
    names = set(own)
    return sorted(p for p in Path(folder).iterdir()
                  if p.name not in names
                  and not (p.name.startswith(".") and p.name.endswith(TEMPORARY_SUFFIX)))
