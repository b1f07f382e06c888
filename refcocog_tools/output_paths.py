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
* then ``options.check_output_file`` / ``check_output_folder`` prove the place is writable.

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
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .layouts import Layout
from .options import OutputPathError, check_output_file, check_output_folder

# The tool's own folders in the cache: weights, embeddings and the embedded data root.
CACHE_FOLDERS = ("clip", "yolo", "embeddings", "regressor-embeddings", "mini-refcocog")
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


def command_inputs(data_root: Path | None = None, refs_file: str | None = None,
                   clip: str = "", proposals: str = "", checkpoint: Path | None = None,
                   embedding_cache: Path | None = None) -> ProtectedPaths:
    """The inputs of a command from its options (``None`` / empty: the option is not given).

    Always protected: the tool's cache folders (``CACHE_FOLDERS`` under ``cache_dir()``) and the
    embedded weights shipped in the package.
    """
    from .annotations import INSTANCES_FILE
    from .io_utils import cache_dir

    inputs = ProtectedPaths()
    if data_root is not None:
        root = Path(data_root).expanduser()
        inputs.add_file(root / "annotations" / INSTANCES_FILE, "data root's instances file")
        if refs_file:
            inputs.add_file(root / "annotations" / refs_file, "data root's refs file")
        inputs.add_folder(root / "annotations", "data root's annotations folder")
        inputs.add_folder(root / "images", "data root's images folder")
    for spec in (s.strip() for s in clip.split(",")):
        if spec and _is_a_file(spec):
            inputs.add_file(spec, "--clip checkpoint")
            if _is_a_file(spec + ".json"):
                inputs.add_file(spec + ".json", "--clip checkpoint's sidecar")
    proposals = proposals.strip()
    if proposals.startswith("dets:"):
        inputs.add_file(proposals[len("dets:"):], "--proposals detections file")
    elif proposals and _is_a_file(proposals):
        inputs.add_file(proposals, "--proposals detector checkpoint")
    inputs.add_file(checkpoint, "--checkpoint")
    inputs.add_folder(embedding_cache, "embedding cache folder")
    cache = cache_dir()
    for name in CACHE_FOLDERS:
        inputs.add_folder(cache / name, f"tool's cache folder ({name})")
    inputs.add_folder(Path(__file__).parent / "weights", "package's embedded weights folder")
    return inputs


def _is_a_file(spec: str) -> bool:
    """A model spec that names an existing file (``ViT-B/32`` names a model, not a path). A
    spec naming no file cannot be overwritten: loading it fails before anything is written."""
    try:
        return Path(spec).expanduser().is_file()
    except OSError:
        return False


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


def check_run_inputs(data_root: Path, layout: Layout, clip: str) -> None:
    """The data root's annotation files are there and readable, and every ``clip`` spec names
    a model this tool can load; checked without loading anything, so that a run that replaces
    an earlier one fails on a misspelt name or a missing folder before it starts."""
    from .annotations import DatasetError, _annotation_files
    from .backbones import TOY_CLIPS, BackboneError
    from .openai_clip import clip as openai_clip
    from .untrained_models import EMBEDDED_CLIPS, TINY_CLIP_CONFIGS

    for path in _annotation_files(Path(data_root).expanduser(), layout):
        if not os.access(path, os.R_OK):
            raise DatasetError(f"{path}: annotation file not readable (permission denied)")
    names = [s.strip() for s in clip.split(",") if s.strip()]
    if not names:
        raise BackboneError("no CLIP backbone given")
    known = {*TINY_CLIP_CONFIGS, *TOY_CLIPS, *openai_clip.available_models()}
    for spec in names:
        if spec not in known and not _is_a_file(spec):
            raise BackboneError(f"unknown CLIP spec {spec!r}: not a file, not one of "
                                f"{openai_clip.available_models()} and not an embedded model "
                                f"{[*EMBEDDED_CLIPS, *TOY_CLIPS]}")


# ----------------------------------------------------------------------------------------------
# The lock a writer holds
# ----------------------------------------------------------------------------------------------
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
    from .io_utils import TEMPORARY_SUFFIX

    names = set(own)
    return sorted(p for p in Path(folder).iterdir()
                  if p.name not in names
                  and not (p.name.startswith(".") and p.name.endswith(TEMPORARY_SUFFIX)))
