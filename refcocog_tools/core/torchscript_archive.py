"""TorchScript archives (the format OpenAI ships CLIP in), read as data: weights out, no code run.

``torch.jit.load`` compiles the archive's ``code/`` and runs any ``__setstate__`` it defines, so
it is never called on a user's file. Here the archive is opened with ``zipfile``; its code is
read only as *text* (to refuse a class that defines ``__setstate__``/``__getstate__``, and to
learn which attributes of each module are parameters and buffers); ``<prefix>/data.pkl`` is
unpickled by :class:`_ArchiveUnpickler`, which admits an explicit allow-list of torch's tensor
rebuilders and storage types and turns every ``__torch__.*`` class into an inert record of its
attributes. The records are then walked into the flat state_dict that
``torch.jit.load(path).state_dict()`` gives, which is what ``clip.load(path, jit=False)`` feeds
to ``clip.model.build_model``.

The class names are never trusted as Python names: OpenAI's archives use
``__torch__.multimodal.model.multimodal_transformer.Multimodal`` where a traced
``clip.model.CLIP`` gives ``__torch__.clip.model.CLIP``, and either is just a key into the
archive's own class definitions.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from refcocog_tools.core.file_errors import UnreadableFileError, UnsafeFileError

__all__ = ["is_torchscript_archive", "read_torchscript_state_dict"]

# What data.pkl may name. Every entry only builds a container or a tensor from bytes; none can
# reach the file system or import anything.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    # TorchScript's pickler tags typed lists with these; each returns its argument unchanged.
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_tensorlist"): list,
    ("torch.jit._pickle", "restore_type_tag"): lambda value, _type: value,
}
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
# Methods torch.jit.load would run while reading the archive.
_LOAD_TIME_CODE = re.compile(r"^\s*def\s+(__setstate__|__getstate__)\s*\(", re.MULTILINE)
_CLASS_HEADER = re.compile(r"^class\s+(\w+)\s*\(\s*(\w+)\s*\)\s*:", re.MULTILINE)
_NAME_LIST = r"^\s*{}\s*=\s*\[([^\]]*)\]"


class _StorageKind:
    """What ``torch.FloatStorage`` & co. stand for in a pickle: only the element type."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class ScriptObjectRecord:
    """An inert stand-in for one ``__torch__.*`` object: its class name and its attributes.

    Unpickling calls this class's own ``__setstate__``, which only stores the state; no method
    of the archive's class (which this never is) runs.
    """

    qualified_name = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualified_name} record>"


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: Path) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path = archive, prefix, path
        self.records: dict[str, type[ScriptObjectRecord]] = {}
        self.storages: dict[str, torch.storage.TypedStorage] = {}
        self.swap_bytes = _byte_order(archive, prefix) != sys.byteorder

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self.records:
                # One inert subclass per TorchScript class, so NEWOBJ can instantiate it.
                self.records[qualified] = type(name, (ScriptObjectRecord,),
                                               {"qualified_name": qualified})
            return self.records[qualified]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageKind(_STORAGE_DTYPES[name])
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        raise UnsafeFileError(f"{self.path}: refused to load: its data.pkl references "
                              f"{module}.{name}, which could run code; a TorchScript archive "
                              "is read only as tensors and module attributes")

    def persistent_load(self, saved_id: Any) -> torch.storage.TypedStorage:
        if not (isinstance(saved_id, tuple) and len(saved_id) == 5 and saved_id[0] == "storage"
                and isinstance(saved_id[1], _StorageKind)):
            raise UnreadableFileError(f"{self.path}: not a readable TorchScript archive "
                                      f"(unknown persistent id {saved_id!r:.80})")
        _, kind, key, _location, numel = saved_id
        key = str(key)
        if key not in self.storages:
            self.storages[key] = self._storage(key, kind.dtype, int(numel))
        return self.storages[key]

    def _storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.storage.TypedStorage:
        entry = f"{self.prefix}/data/{key}"
        try:
            size = self.archive.getinfo(entry).file_size
        except KeyError:
            raise UnreadableFileError(f"{self.path}: not a readable TorchScript archive "
                                      f"(tensor data {entry} is missing)") from None
        nbytes = numel * torch._utils._element_size(dtype)
        if size != nbytes:
            # Checked before reading: a crafted entry cannot make us decompress unbounded data.
            raise UnreadableFileError(f"{self.path}: not a readable TorchScript archive ({entry} "
                                      f"holds {size} bytes, its tensor needs {nbytes})")
        data = self.archive.read(entry)
        # Always on the CPU, whatever device the archive was saved from (clip.load maps to cpu).
        untyped = torch.UntypedStorage.from_buffer(data, dtype=torch.uint8) if data \
            else torch.UntypedStorage(0)
        if self.swap_bytes:
            untyped.byteswap(dtype)
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def _byte_order(archive: zipfile.ZipFile, prefix: str) -> str:
    try:
        return archive.read(f"{prefix}/byteorder").decode("ascii").strip() or "little"
    except KeyError:
        return "little"  # archives older than the byteorder record are little-endian


def _looks_like_torchscript(names: list[str]) -> bool:
    # torch.load's own test is a constants.pkl record; code/ is what torch.jit.load compiles.
    return any(rest == "constants.pkl" or rest.startswith("code/")
               for rest in (name.partition("/")[2] for name in names))


def _archive_prefix(archive: zipfile.ZipFile) -> str | None:
    """The top folder holding data.pkl, if the zip is laid out like a TorchScript archive."""
    names = archive.namelist()
    if not _looks_like_torchscript(names):
        return None
    for name in names:
        prefix, _, rest = name.partition("/")
        if rest == "data.pkl":
            return prefix
    return None


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether ``path`` is a zip laid out like a TorchScript archive (``constants.pkl``, ``code/``).

    ``torch.load`` hands exactly these files to ``torch.jit.load``; a file that is not a zip,
    or a damaged one, is not TorchScript here (the caller's own reader reports it).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return _looks_like_torchscript(archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def _class_definitions(archive: zipfile.ZipFile, prefix: str,
                       path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """``{qualified class name: (parameter names, buffer names)}`` from ``code/`` read as text.

    Refuses the archive if any class defines a method ``torch.jit.load`` runs on load.
    """
    classes: dict[str, tuple[list[str], list[str]]] = {}
    code_root = f"{prefix}/code/"
    for entry in archive.namelist():
        if not (entry.startswith(code_root) and entry.endswith(".py")):
            continue
        text = archive.read(entry).decode("utf-8", errors="replace")
        found = _LOAD_TIME_CODE.search(text)
        if found:
            raise UnsafeFileError(
                f"{path}: refused to load: its TorchScript code defines {found.group(1)} "
                f"({entry[len(prefix) + 1:]}), code that torch.jit.load would run")
        module = entry[len(code_root):-len(".py")].replace("/", ".")
        headers = list(_CLASS_HEADER.finditer(text))
        for i, header in enumerate(headers):
            body = text[header.end():headers[i + 1].start() if i + 1 < len(headers) else None]
            classes[f"{module}.{header.group(1)}"] = (_names(body, "__parameters__"),
                                                      _names(body, "__buffers__"))
    return classes


def _names(body: str, field: str) -> list[str]:
    listed = re.search(_NAME_LIST.format(field), body, re.MULTILINE)
    return re.findall(r'"([^"]*)"', listed.group(1)) if listed else []


def _flatten(root: ScriptObjectRecord, classes: dict[str, tuple[list[str], list[str]]],
             path: Path) -> dict[str, torch.Tensor]:
    """The module tree as ``nn.Module.state_dict`` orders it: each module's parameters, then its
    buffers (in attribute order), then its submodules, depth first."""
    state_dict: dict[str, torch.Tensor] = collections.OrderedDict()

    def visit(record: ScriptObjectRecord, prefix: str, ancestors: frozenset[int]) -> None:
        # A module shared by two parents is listed under both, as nn.Module.state_dict does;
        # only a module inside itself (a pickle can build that loop) is refused.
        if id(record) in ancestors:
            raise UnreadableFileError(f"{path}: not a readable TorchScript archive (module "
                                      f"{prefix.rstrip('.') or 'root'} contains itself)")
        ancestors = ancestors | {id(record)}
        if record.qualified_name not in classes:
            raise UnreadableFileError(f"{path}: not a readable TorchScript archive (no code/ "
                                      f"definition of {record.qualified_name})")
        attributes = getattr(record, "state", None)
        if not isinstance(attributes, dict):
            raise UnreadableFileError(f"{path}: not a readable TorchScript archive "
                                      f"({record.qualified_name} has no attribute dict)")
        parameters, buffers = classes[record.qualified_name]
        for wanted in (set(parameters), set(buffers)):
            for name, value in attributes.items():
                if name in wanted and isinstance(value, torch.Tensor):
                    state_dict[prefix + name] = value.detach()
        for name, value in attributes.items():
            if isinstance(value, ScriptObjectRecord) and value.qualified_name in classes:
                visit(value, f"{prefix}{name}.", ancestors)

    visit(root, "", frozenset())
    return state_dict


def read_torchscript_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict ``torch.jit.load(path).state_dict()`` would give, read without running code.

    Raises ``UnsafeFileError`` for an archive whose code would run at load or whose pickle
    names anything outside the allow-list, ``UnreadableFileError`` for a damaged one.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = _archive_prefix(archive)
            if prefix is None:
                raise UnreadableFileError(f"{path}: not a readable TorchScript archive (no "
                                          "data.pkl beside its constants.pkl and code/)")
            classes = _class_definitions(archive, prefix, path)
            unpickler = _ArchiveUnpickler(archive.read(f"{prefix}/data.pkl"), archive, prefix,
                                          path)
            root = unpickler.load()
    except (UnreadableFileError, UnsafeFileError):
        raise
    except Exception as err:  # noqa: BLE001 - any failure to parse the bytes: a damaged file
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise UnreadableFileError(f"{path}: not a readable TorchScript archive (truncated or "
                                  f"corrupt; {type(err).__name__}: {detail})") from None
    if not isinstance(root, ScriptObjectRecord):
        raise UnreadableFileError(f"{path}: not a readable TorchScript archive (its data.pkl "
                                  "holds no module)")
    return _flatten(root, classes, path)
