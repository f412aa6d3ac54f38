"""The on-disk cache: where it lives and how files get there atomically.

Like pooch: the root is a per-user cache folder (``POSTER_GENRE_CACHE`` overrides it), every write goes
to a temporary file in the same folder and is moved into place with ``os.replace``, so a reader never
sees half a file and a killed process leaves at most a stray ``*.tmp``.

Every array saved with ``atomic_save_npy`` gets a ``<name>.npy.sha256`` checksum file, and ``load_npy``
is the one way cached arrays are read back: complete, of the expected shape and dtype, matching its
checksum and, for floats, finite. Callers that can rebuild an array catch ``CacheError`` and do so.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence

import numpy as np

from core.errors import CacheError

log = logging.getLogger(__name__)

CACHE_ENV = "POSTER_GENRE_CACHE"
CHECKSUM_SUFFIX = ".sha256"
_FINITE_CHUNK_BYTES = 64 << 20
CACHE_VERSION = "v1"


def cache_root() -> Path:
    """The cache folder for this user, created on first use."""
    override = os.environ.get(CACHE_ENV)
    if override:
        root = Path(override).expanduser()
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("poster-genre-explorer")) / CACHE_VERSION
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A handle on a temporary file beside ``path`` that replaces ``path`` once fully written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with _atomic_file(path) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def atomic_save_npy(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as .npy (no pickle) and then its checksum file, both atomically; returns the sha256."""
    path = Path(path)
    with _atomic_file(path) as handle:
        hashing = _HashingWriter(handle)
        np.save(hashing, np.ascontiguousarray(array), allow_pickle=False)
    digest = hashing.digest.hexdigest()
    atomic_write_text(checksum_path(path), digest + "\n")
    return digest


def checksum_path(path: Path) -> Path:
    """Where ``atomic_save_npy`` keeps the sha256 of ``path``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


class _HashingWriter:
    """A write-only file object that hashes what passes through (``np.save`` writes it in chunks)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.handle.write(data)


def load_npy(path: Path, *, shape: tuple[int, ...] | None = None, dtype: str | None = None,
             mmap: bool = True, sha256: str | None = None, require_checksum: bool = True) -> np.ndarray:
    """Open a cached .npy, checking that it is complete, intact and holds what the caller expects.

    The checksum is ``sha256`` when given, else the one ``atomic_save_npy`` wrote beside the file; a
    missing checksum is an error unless ``require_checksum`` is false (files of older versions that
    nothing can rebuild, such as a run's scores). Anything wrong raises ``CacheError``; the caller
    decides whether it rebuilds the file, so no message here promises that.
    """
    path = Path(path)
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise CacheError(f"cache file {path} is unreadable or truncated: {err}") from err
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise CacheError(f"cache file {path} holds shape {array.shape}, expected {tuple(shape)}")
    if dtype is not None and array.dtype != np.dtype(dtype):
        raise CacheError(f"cache file {path} holds dtype {array.dtype}, expected {dtype}")
    _verify(path, array, sha256 or _read_checksum(path), require_checksum)
    return array


_VERIFIED: set[tuple[str, int, int, str | None]] = set()


def _verify(path: Path, array: np.ndarray, expected: str | None, require_checksum: bool) -> None:
    """Checksum and finiteness, once per process for each (path, size, mtime) of a file."""
    if expected is None and require_checksum:
        raise CacheError(f"cache file {path} has no checksum ({checksum_path(path).name} is missing)")
    stat = path.stat()
    memo = (str(path), stat.st_size, stat.st_mtime_ns, expected)
    if memo in _VERIFIED:
        return
    if expected is not None and memo_file_sha256(path) != expected:
        raise CacheError(f"cache file {path} fails its checksum: its bytes changed after it was written")
    if array.dtype.kind in "fc" and not _all_finite(array):
        raise CacheError(f"cache file {path} holds NaN or infinite values")
    _VERIFIED.add(memo)


def _read_checksum(path: Path) -> str | None:
    try:
        text = checksum_path(path).read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return text or None


def _all_finite(array: np.ndarray) -> bool:
    """``np.isfinite(array).all()`` in row blocks, so a memory-mapped matrix is never copied whole."""
    if array.ndim == 0 or array.size == 0:
        return bool(np.isfinite(array).all())
    row_bytes = max(1, array[:1].nbytes)
    step = max(1, _FINITE_CHUNK_BYTES // row_bytes)
    return all(np.isfinite(array[start:start + step]).all() for start in range(0, len(array), step))


@contextlib.contextmanager
def file_lock(path: Path, *, waiting: str | None = None, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a file, created if needed, or a folder) across processes and threads.

    ``flock`` locks belong to the open file, so two sessions of one Streamlit server exclude each
    other as two processes do, and the kernel drops the lock of a killed process. When the lock is
    busy, ``waiting`` is logged once before blocking, or with ``wait=False`` ``BlockingIOError`` is
    raised. Without ``fcntl`` (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock_fd(path) as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise
            if waiting:
                log.warning(waiting)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def _lock_fd(path: Path) -> Iterator[int]:
    """A descriptor to lock: a folder is opened read-only, so locking it writes nothing into it."""
    fd = os.open(path, os.O_RDONLY) if path.is_dir() else os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        yield fd
    finally:
        os.close(fd)


def read_json(path: Path) -> Any:
    """Read a JSON cache/sidecar file; a partial or invalid file raises ``CacheError``."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (ValueError, UnicodeDecodeError) as err:
        raise CacheError(f"{path} is not valid JSON: {err}") from err


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short hex digest of a JSON-able object, independent of dict order."""
    payload = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:length]


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


FILE_FACTS_DIR = "files"
_FILE_FACTS: dict[str, dict[str, dict[str, Any]]] = {}
_CHANGED_FOLDERS: set[str] = set()


def file_facts(paths: Sequence[Path], fact: str, compute: Callable[[Path], Any]) -> list[Any]:
    """``compute(path)`` for each file, remembered across processes while its size and mtime stay the same.

    Facts (a content hash, a header check) live in one JSON file per folder under the cache, so a
    fresh process opening 100,000 posters pays one ``stat`` per file instead of reading each one.
    What was computed is saved before returning.
    """
    values: list[Any] = []
    names: list[str] = []
    folder = None
    for path in paths:
        parent, name = os.path.split(os.fspath(path))
        if parent != folder and names:
            values += _facts_in(folder, names, (fact,), lambda p: (compute(p),))
            names = []
        folder = parent
        names.append(name)
    if names:
        values += _facts_in(folder, names, (fact,), lambda p: (compute(p),))
    _save_file_facts()
    return [value for value, in values]


def folder_file_facts(folder: Path, names: Sequence[str], facts: tuple[str, ...],
                      compute: Callable[[Path], tuple]) -> list[tuple]:
    """Several facts of the files ``names`` in one ``folder`` at once (``compute`` returns them in the order
    of ``facts``), with one ``stat`` per file and no ``Path`` per file unless a fact must be computed."""
    values = _facts_in(os.fspath(folder), names, facts, compute)
    _save_file_facts()
    return values


def _facts_in(parent: str, names: Sequence[str], facts: tuple[str, ...],
              compute: Callable[[Path], tuple]) -> list[tuple]:
    folder = os.path.abspath(parent)
    entries = _folder_facts(folder)
    prefix = os.path.join(parent, "")
    values = []
    for name in names:
        stat = os.stat(prefix + name)
        entry = entries.get(name)
        if entry is None or entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
            entry = entries[name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if any(fact not in entry for fact in facts):
            entry.update(zip(facts, compute(Path(prefix + name))))
            _CHANGED_FOLDERS.add(folder)
        values.append(tuple(entry[fact] for fact in facts))
    return values


def _save_file_facts() -> None:
    for folder in sorted(_CHANGED_FOLDERS):
        text = json.dumps({"folder": folder, "files": _FILE_FACTS[folder]}, separators=(",", ":"))
        atomic_write_text(_facts_path(folder), text)
    _CHANGED_FOLDERS.clear()


def _facts_path(folder: str) -> Path:
    return cache_root() / FILE_FACTS_DIR / f"{stable_hash(folder)}.json"


def _folder_facts(folder: str) -> dict[str, dict[str, Any]]:
    if folder not in _FILE_FACTS:
        try:
            saved = read_json(_facts_path(folder))
            entries = saved["files"] if saved.get("folder") == folder and isinstance(saved["files"], dict) else {}
        except (FileNotFoundError, CacheError, KeyError, TypeError, AttributeError):
            entries = {}
        _FILE_FACTS[folder] = entries
    return _FILE_FACTS[folder]


def memo_file_sha256(path: Path) -> str:
    """``file_sha256``, remembered by (path, size, mtime) across processes (``file_facts``)."""
    return file_facts([path], "sha256", file_sha256)[0]


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
