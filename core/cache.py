"""The on-disk cache: where it lives and how files get there atomically.

Like pooch: the root is a per-user cache folder (``POSTER_GENRE_CACHE`` overrides it), every write goes
to a temporary file in the same folder and is moved into place with ``os.replace``, so a reader never
sees half a file and a killed process leaves at most a stray ``*.tmp``.

Every array saved with ``atomic_save_npy`` gets a ``<name>.npy.sha256`` checksum file, and ``load_npy``
is the one way cached arrays are read back: complete, of the expected shape and dtype, matching its
checksum and, for floats, finite. Callers that can rebuild an array catch ``CacheError`` and do so.

What is trusted, exactly:

- A cached array's sha256 is computed from the bytes read, the first time a process reads the file.
  Within that process it is not hashed again while the file keeps its inode, size, mtime and ctime
  (any write changes the ctime, which no program can set back; a file younger than two seconds when
  checked is hashed at every read, so a change within one clock tick is seen too). Bytes that change
  under an array already handed out (a memory-mapped shard) are not seen by that array.
- Facts about the user's files (a poster's sha256, its header check) are remembered across processes
  by ``file_facts`` while the file keeps its size, mtime, ctime and inode, as git's index does.
  ``python -m core verify`` re-hashes all of them, as ``git fsck`` does.

A write that fails (full disk, read-only folder, a file where a folder should be) raises
``CacheUnwritableError`` and leaves the entry it was replacing as it was; only a read that proves
damage (checksum, size, shape) removes anything.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence

import numpy as np

from core.errors import CacheError, CacheUnreadableError, CacheUnwritableError

log = logging.getLogger(__name__)

CACHE_ENV = "POSTER_GENRE_CACHE"
CHECKSUM_SUFFIX = ".sha256"
_FINITE_CHUNK_BYTES = 64 << 20
CACHE_VERSION = "v1"


def cache_root() -> Path:
    """The cache folder for this user, created on first use."""
    return make_dirs(_configured_root())


def _configured_root() -> Path:
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("poster-genre-explorer")) / CACHE_VERSION


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_WRITE_FAULTS = (*_FULL, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST)


def make_dirs(folder: Path) -> Path:
    """``folder.mkdir(parents=True, exist_ok=True)``; a folder that cannot be made raises ``CacheUnwritableError``."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _raise_write_fault(folder, err)
    return folder


def check_writable(folder: Path) -> None:
    """Create and remove a file in ``folder`` (made if needed): a read-only or misplaced folder says so now."""
    folder = make_dirs(folder)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=".tmp")
    except OSError as err:
        _raise_write_fault(folder / ".write-check", err)
    os.close(fd)
    os.unlink(tmp)


def _raise_write_fault(path: Path, err: OSError) -> None:
    """Raise ``CacheUnwritableError`` for a full disk, a read-only folder or a file in a folder's place;
    re-raise anything else (an unexpected fault keeps its traceback)."""
    if err.errno not in _WRITE_FAULTS:
        raise err
    path = Path(path)
    root = _configured_root()
    in_cache = path == root or root in path.parents
    elsewhere = (f"or set {CACHE_ENV} to another folder" if in_cache else "or write to another folder")
    blocker = _file_in_the_way(path) if err.errno in (errno.ENOTDIR, errno.EEXIST) else None
    if blocker is not None and in_cache and (blocker == root or blocker in root.parents):
        message = f"the cache folder {root} cannot be used: {blocker} is a file, not a folder"
        hint = f"set {CACHE_ENV} to a folder (or unset it to use the default cache folder)"
    elif blocker is not None:
        message = f"cannot write {path}: {blocker} is a file, not a folder"
        hint = f"move the file {blocker} away, {elsewhere}"
    elif err.errno in _FULL:
        message = f"cannot write {path}: no space left on its disk ({err.strerror})"
        hint = f"free space on that disk, {elsewhere} on a disk with room"
    else:
        message = f"cannot write {path}: {err.strerror}"
        hint = f"make {path.parent} writable, {elsewhere}"
    raise CacheUnwritableError(message, hint) from err


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing entry at or above ``path`` when it is not a folder."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A handle on a temporary file beside ``path`` that replaces ``path`` once fully written.

    A failed write (full disk, read-only folder) removes only its temporary file: ``path`` keeps what it held.
    """
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        _raise_write_fault(path, err)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            _raise_write_fault(path, err)
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
    try:
        atomic_write_text(checksum_path(path), digest + "\n")
    except BaseException:
        # The new bytes must not stay beside the checksum of the old ones, which would read as damage.
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
            checksum_path(path).unlink(missing_ok=True)
        raise
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
    expected = sha256 or _read_checksum(path)
    if expected is None and require_checksum:
        raise CacheError(f"cache file {path} has no checksum ({checksum_path(path).name} is missing)")
    data = None
    try:
        stat = os.stat(path)
        if mmap:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            data = path.read_bytes()
            array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, FileNotFoundError) as err:
        raise CacheError(f"cache file {path} is unreadable or truncated: {err}") from err
    except OSError as err:
        raise CacheUnreadableError(f"cache file {path} cannot be read: {err.strerror or err}",
                                   "check its permissions and the disk; it was left in place") from err
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise CacheError(f"cache file {path} holds shape {array.shape}, expected {tuple(shape)}")
    if dtype is not None and array.dtype != np.dtype(dtype):
        raise CacheError(f"cache file {path} holds dtype {array.dtype}, expected {dtype}")
    _verify(path, stat, array, expected, data)
    return array


_VERIFIED: set[tuple] = set()
RACY_NS = 2_000_000_000
"""A file changed less than this before it was checked is checked again at its next read (git's "racy" rule)."""


def _verify(path: Path, stat: os.stat_result, array: np.ndarray, expected: str | None, data: bytes | None) -> None:
    """Checksum of the bytes read and finiteness, once per process for each version of a file.

    A version is (path, device, inode, size, mtime, ctime): rewriting a file in place, even keeping its
    size and mtime, changes its ctime, so the memo never stands in for bytes it did not hash.
    """
    memo = (str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, expected)
    if memo in _VERIFIED:
        return
    started = time.time_ns()
    if expected is not None and _sha256_read(path, array, data, stat.st_size) != expected:
        raise CacheError(f"cache file {path} fails its checksum: its bytes changed after it was written")
    if array.dtype.kind in "fc" and not _all_finite(array):
        raise CacheError(f"cache file {path} holds NaN or infinite values")
    if stat.st_ctime_ns < started - RACY_NS:
        _VERIFIED.add(memo)


def _sha256_read(path: Path, array: np.ndarray, data: bytes | None, size: int) -> str:
    """The sha256 of the bytes ``array`` was read from: ``data``, or the whole file as memory-mapped."""
    if data is not None:
        return bytes_sha256(data)
    mapped = getattr(array, "_mmap", None)  # np.memmap maps the file from byte 0 (the header is within a page)
    if mapped is not None and len(mapped) == size:
        return hashlib.sha256(mapped).hexdigest()
    try:
        return file_sha256(path)
    except OSError as err:
        raise CacheUnreadableError(f"cache file {path} cannot be read: {err.strerror or err}",
                                   "check its permissions and the disk; it was left in place") from err


def recheck_file(path: Path, expected: str | None, size: int | None = None) -> str | None:
    """Why ``path`` does not hold the bytes it was written with (``None`` when it does), hashing them all."""
    if not expected:
        return "its checksum is missing or empty"
    try:
        actual_size = os.stat(path).st_size
        if size is not None and actual_size != size:
            return f"holds {actual_size} bytes, {size} were written"
        if file_sha256(path) != expected:
            return "fails its checksum: its bytes changed after it was written"
    except FileNotFoundError:
        return "is missing"
    except OSError as err:
        return f"cannot be read: {err.strerror or err}"
    return None


def verify_checksummed_files(folder: Path) -> tuple[int, list[tuple[Path, str]]]:
    """Re-hash every file under ``folder`` that has a ``.sha256`` checksum beside it.

    Returns how many were checked and (path, reason) for each damaged one. A checksum whose file is
    gone is skipped: the entry was removed, nothing reads it.
    """
    checked, damaged = 0, []
    for checksum in sorted(Path(folder).rglob("*" + CHECKSUM_SUFFIX)):
        data = checksum.with_name(checksum.name[:-len(CHECKSUM_SUFFIX)])
        if not data.is_file():
            continue
        checked += 1
        reason = recheck_file(data, _read_checksum(data))
        if reason:
            damaged.append((data, reason))
    return checked, damaged


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
    """``compute(path)`` for each file, remembered across processes while its ``file_version`` stays the same.

    Facts (a content hash, a header check) live in one JSON file per folder under the cache, so a
    fresh process opening 100,000 posters pays one ``stat`` per file instead of reading each one.
    What was computed is saved before returning (when the cache cannot be written, the facts are
    kept for this process only, with a warning).
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
        version = file_version(os.stat(prefix + name))
        entry = entries.get(name)
        if entry is None or any(entry.get(field) != value for field, value in version.items()):
            entry = entries[name] = version
        if any(fact not in entry for fact in facts):
            entry.update(zip(facts, compute(Path(prefix + name))))
            _CHANGED_FOLDERS.add(folder)
        values.append(tuple(entry[fact] for fact in facts))
    return values


def file_version(stat: os.stat_result) -> dict[str, int]:
    """What a remembered fact is keyed by: ``cp -p`` or a restored mtime keeps size and mtime, but any
    write sets the ctime (which no program can set back), and a replaced file has another inode."""
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "ino": stat.st_ino}


def _save_file_facts() -> None:
    for folder in sorted(_CHANGED_FOLDERS):
        text = json.dumps({"folder": folder, "files": _FILE_FACTS[folder]}, separators=(",", ":"))
        try:
            atomic_write_text(_facts_path(folder), text)
        except CacheUnwritableError as err:
            log.warning("file facts of %s are not saved (%s); they are computed again next time", folder, err)
            break
    _CHANGED_FOLDERS.clear()


def stale_file_facts(folder: Path, fact: str, compute: Callable[[Path], Any]) -> tuple[int, list[tuple[str, str]]]:
    """Every remembered ``fact`` of files in ``folder`` that a read would trust, computed again.

    Returns how many were checked and (file name, reason) for each file whose fact changed while its
    version did not (its bytes were changed behind the file system's back); those entries are
    forgotten, so the next open computes them again. Files that changed version are left to the next open.
    """
    folder_key = os.path.abspath(folder)
    entries = _folder_facts(folder_key)
    checked, stale = 0, []
    for name, entry in sorted(entries.items()):
        path = os.path.join(folder_key, name)
        try:
            version = file_version(os.stat(path))
        except OSError:
            continue
        if fact not in entry or any(entry.get(field) != value for field, value in version.items()):
            continue
        checked += 1
        try:
            changed = compute(Path(path)) != entry[fact]
            reason = f"its {fact} changed but its size, mtime, ctime and inode did not"
        except OSError as err:
            changed, reason = True, f"cannot be read: {err.strerror or err}"
        if changed:
            stale.append((name, reason))
            del entries[name]
            _CHANGED_FOLDERS.add(folder_key)
    _save_file_facts()
    return checked, stale


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
    """``file_sha256``, remembered across processes by path and ``file_version`` (``file_facts``): for the
    user's files (posters, weights), never for cached arrays, which ``load_npy`` hashes as it reads them."""
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
