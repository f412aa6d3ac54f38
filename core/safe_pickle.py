"""Loading pickles that come from elsewhere (the tutorial's, PyTorch's legacy weights files) without
running anything in them.

Unpickling can call any importable function (``os.system`` included), so ``load_plain_pickle``
1. scans the opcodes first and refuses those that can reach an object without ``find_class``
   (copyreg extension codes, served from a process-wide cache) and persistent ids;
2. unpickles with ``find_class`` refusing every global, so no class or function is ever looked up,
   hence nothing is constructed or called;
3. checks that what came out is only dict, list, tuple, str, int, float, bool and None (sets and
   bytes are built by opcodes alone, so they are refused here).

``load_torch_legacy`` reads a PyTorch state dict saved in the legacy (pre-1.6) format without torch: the
same opcode scan (persistent ids allowed: they name storages), a ``find_class`` that answers only the
three globals a state dict needs (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and the
``torch.*Storage`` types, each mapped to an inert stand-in), then numpy arrays over the raw storages.
"""
from __future__ import annotations

import copyreg
import io
import pickle
import pickletools
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from core.errors import DatasetError, UnsafePickleError, WeightsError

ALLOWED_TYPES = (dict, list, tuple, str, int, float, bool, type(None))
REFUSED_OPCODES = frozenset({"EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"})
PLAIN_HINT = ("only plain lists, dicts, strings and numbers are loaded, and nothing in the file was "
              "run; re-save it with plain Python types, e.g. pickle.dump(json.loads(json.dumps(obj)), f)")
NUMPY_HINT = ("the pickle holds numpy arrays or numbers; re-save them as plain lists, e.g. "
              "pickle.dump(array.tolist(), f), or convert numpy ints with int(x)")
PANDAS_HINT = "the pickle holds a pandas object; re-save it as plain data, e.g. df.to_dict('records')"


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(f"refused global '{module}.{name}'", _hint_for(module))

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refused a persistent id", PLAIN_HINT)


def loads_plain(data: bytes, name: str = "pickle") -> Any:
    """Unpickle ``data`` holding only plain Python data; anything else raises ``UnsafePickleError``."""
    _scan_opcodes(data, name)
    value = _unpickle(data, name)
    _check_plain(value, name)
    return value


def load_plain_pickle(path: str | Path) -> Any:
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror}",
                           "check the path to the tutorial's .pckl file") from err
    return loads_plain(data, str(path))


def _unpickle(data: bytes, name: str) -> Any:
    """Python 2 ``str`` objects (the tutorial ran on Python 2) are read as UTF-8, else Latin-1."""
    refused: UnsafePickleError | None = None
    problem = "undecodable text"
    for encoding in ("utf-8", "latin-1"):
        try:
            return _PlainUnpickler(io.BytesIO(data), encoding=encoding).load()
        except UnicodeDecodeError:
            continue
        except UnsafePickleError as err:
            refused = err
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                AttributeError, MemoryError, OverflowError, RecursionError) as err:
            problem = f"{type(err).__name__}: {err}"
        break
    if refused is not None:
        raise UnsafePickleError(f"{name}: {refused.message}", refused.hint)
    raise DatasetError(f"{name} is not a readable pickle ({problem})",
                       "give the .pckl file the tutorial saved")


def _scan_opcodes(data: bytes, name: str, refused: frozenset[str] = REFUSED_OPCODES) -> None:
    if not data:
        raise DatasetError(f"{name} is not a pickle file (empty file)",
                           "give the .pckl file the tutorial saved")
    problem = None
    try:
        for opcode, _arg, _pos in pickletools.genops(data):
            if opcode.name in refused:
                raise UnsafePickleError(f"{name}: refused opcode {opcode.name}", PLAIN_HINT)
    except UnsafePickleError:
        raise
    except UnicodeDecodeError:
        problem = _unscannable(name)
    except (ValueError, EOFError) as err:
        raise DatasetError(f"{name} is not a pickle file ({err})",
                           "give the .pckl file the tutorial saved") from None
    if problem:
        raise UnsafePickleError(problem, PLAIN_HINT)


def _unscannable(name: str) -> str | None:
    """pickletools cannot scan Python 2 non-ASCII ``str`` opcodes. Extension codes (the only
    opcodes that can skip ``find_class``) then need an empty extension cache to be harmless."""
    if copyreg._extension_cache:  # type: ignore[attr-defined]
        return f"{name}: cannot scan this pickle while copyreg extension codes are cached"
    return None


def _check_plain(value: Any, name: str) -> None:
    stack: list[tuple[Any, str]] = [(value, "")]
    seen: set[int] = set()
    while stack:
        item, where = stack.pop()
        if type(item) not in ALLOWED_TYPES:
            raise UnsafePickleError(f"{name}: refused type '{type(item).__name__}' at "
                                    f"{where or 'the top level'}", PLAIN_HINT)
        if isinstance(item, (dict, list, tuple)):
            if id(item) in seen:
                continue
            seen.add(id(item))
        if isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, f"{where} (a key)"))
                stack.append((child, f"{where}[{key!r}]"))
        elif isinstance(item, (list, tuple)):
            stack.extend((child, f"{where}[{index}]") for index, child in enumerate(item))


def _hint_for(module: str) -> str:
    if module.split(".")[0] == "numpy":
        return NUMPY_HINT
    if module.split(".")[0] == "pandas":
        return PANDAS_HINT
    return PLAIN_HINT


# ---- PyTorch's legacy (pre-1.6) serialization ------------------------------------------------------

TORCH_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
TORCH_PROTOCOL_VERSION = 1001
TORCH_STORAGE_DTYPES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8",
                        "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
                        "BoolStorage": "?"}
TORCH_HINT = ("give the .pth file as torch.save wrote it before PyTorch 1.6 (or with "
              "_use_new_zipfile_serialization=False): a state dict of CPU tensors, nothing else")
_TORCH_REFUSED_OPCODES = frozenset({"EXT1", "EXT2", "EXT4", "PERSID"})


@dataclass(frozen=True)
class _StorageType:
    name: str


class _StorageRef(NamedTuple):
    """Named tuples, so a BUILD opcode cannot rewrite them after they were checked (they have no ``__dict__``)."""

    key: str
    dtype: str
    numel: int


class _TensorRef(NamedTuple):
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _StateDict(dict):
    """``collections.OrderedDict`` as a plain dict that also takes the ``_metadata`` attribute torch sets."""


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> _TensorRef:
    if not (isinstance(storage, _StorageRef) and type(offset) is int and offset >= 0 and _ints(size) and _ints(stride)
            and len(size) == len(stride)):
        raise UnsafePickleError("refused a tensor whose storage, offset, size or stride is malformed", TORCH_HINT)
    return _TensorRef(storage, offset, tuple(size), tuple(stride))


def _ints(values: Any) -> bool:
    return isinstance(values, tuple) and all(type(value) is int and value >= 0 for value in values)


class _TorchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return _StateDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in TORCH_STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafePickleError(f"refused global '{module}.{name}'", TORCH_HINT)

    def persistent_load(self, pid: Any) -> Any:
        """``('storage', storage type, key, location, numel)``, with a sixth ``None`` (no view) from torch 1.x."""
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[3], str)
                and type(pid[4]) is int and pid[4] >= 0 and (len(pid) == 5 or pid[5] is None)):
            raise UnsafePickleError(f"refused persistent id {str(pid)[:80]}", TORCH_HINT)
        return _StorageRef(pid[2], TORCH_STORAGE_DTYPES[pid[1].name], pid[4])


def load_torch_legacy(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a legacy-format PyTorch state dict as float/int numpy arrays, by name.

    Nothing in the file is run. ``WeightsError`` for a file that is not such a state dict (a zip-format
    ``.pth`` of PyTorch 1.6+ included); ``UnsafePickleError`` for one that asks for anything else.
    """
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as err:
        raise WeightsError(f"cannot read {path}: {err.strerror}", "check the path of the .pth file") from err
    if data[:2] == b"PK":
        raise WeightsError(f"{path} is a zip-format PyTorch file (PyTorch 1.6+), not the legacy format", TORCH_HINT)
    stream = io.BytesIO(data)
    header = [_next_plain(stream, path) for _ in range(3)]
    if header[0] != TORCH_MAGIC_NUMBER or header[1] != TORCH_PROTOCOL_VERSION:
        raise WeightsError(f"{path} is not a legacy PyTorch file (magic number or protocol version differ)",
                           TORCH_HINT)
    if not isinstance(header[2], dict) or header[2].get("little_endian") is not True:
        raise WeightsError(f"{path} was saved on a big-endian machine or lacks its system info", TORCH_HINT)
    tensors = _next_state_dict(stream, path)
    keys = _next_plain(stream, path)
    if not (isinstance(keys, list) and all(isinstance(key, str) for key in keys)):
        raise WeightsError(f"{path}: the storage key list is malformed", TORCH_HINT)
    storages = _read_storages(stream, keys, {ref.storage.key: ref.storage for ref in tensors.values()}, path)
    return {name: _tensor(ref, storages[ref.storage.key], name, path) for name, ref in tensors.items()}


def _next_pickle(stream: io.BytesIO, path: Path, refused: frozenset[str]) -> bytes:
    """The bytes of the pickle at the stream's position (scanned), the stream left just after it."""
    start = stream.tell()
    data = stream.getbuffer()[start:].tobytes()
    _scan_opcodes(data, str(path), refused)
    end = max(position for _, _, position in pickletools.genops(data)) + 1
    stream.seek(start + end)
    return data[:end]


def _next_plain(stream: io.BytesIO, path: Path) -> Any:
    try:
        return loads_plain(_next_pickle(stream, path, REFUSED_OPCODES), str(path))
    except DatasetError as err:
        raise WeightsError(err.message, TORCH_HINT) from None


def _next_state_dict(stream: io.BytesIO, path: Path) -> dict[str, _TensorRef]:
    try:
        data = _next_pickle(stream, path, _TORCH_REFUSED_OPCODES)
    except DatasetError as err:
        raise WeightsError(err.message, TORCH_HINT) from None
    try:
        value = _TorchUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{path}: {err.message}", err.hint) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            MemoryError, OverflowError, RecursionError) as err:
        raise WeightsError(f"{path} is not a readable state dict ({type(err).__name__}: {err})", TORCH_HINT) from None
    if not isinstance(value, dict) or not all(isinstance(key, str) and isinstance(ref, _TensorRef)
                                              for key, ref in value.items()):
        raise UnsafePickleError(f"{path} holds a {type(value).__name__}, not a state dict of tensors", TORCH_HINT)
    return dict(value)


def _read_storages(stream: io.BytesIO, keys: list[str], expected: dict[str, _StorageRef],
                   path: Path) -> dict[str, np.ndarray]:
    """Each storage in ``keys`` order: its element count (8 bytes, little-endian) then its raw bytes."""
    if set(keys) != set(expected):
        raise WeightsError(f"{path}: the storage keys do not match the tensors' storages", TORCH_HINT)
    storages = {}
    for key in keys:
        ref = expected[key]
        (count,) = struct.unpack("<q", _read_exactly(stream, 8, path))
        if count != ref.numel:
            raise WeightsError(f"{path}: storage {key} holds {count} elements, its tensors say {ref.numel}",
                               TORCH_HINT)
        dtype = np.dtype(ref.dtype)
        storages[key] = np.frombuffer(_read_exactly(stream, count * dtype.itemsize, path), dtype=dtype)
    return storages


def _read_exactly(stream: io.BytesIO, size: int, path: Path) -> bytes:
    chunk = stream.read(size)
    if len(chunk) != size:
        raise WeightsError(f"{path} is truncated (a storage ends early)", "download or copy the file again")
    return chunk


def _tensor(ref: _TensorRef, storage: np.ndarray, name: str, path: Path) -> np.ndarray:
    last = ref.offset + sum((size - 1) * stride for size, stride in zip(ref.size, ref.stride) if size > 0)
    if any(size == 0 for size in ref.size):
        return np.zeros(ref.size, dtype=storage.dtype)
    if last >= len(storage):
        raise WeightsError(f"{path}: tensor {name} reaches past the end of its storage", TORCH_HINT)
    strides = tuple(stride * storage.itemsize for stride in ref.stride)
    view = np.lib.stride_tricks.as_strided(storage[ref.offset:], shape=ref.size, strides=strides, writeable=False)
    return np.array(view, dtype=storage.dtype.newbyteorder("="))
