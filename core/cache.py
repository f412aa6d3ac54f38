"""The on-disk cache: where it lives and how files get there atomically.

Like pooch: the root is a per-user cache folder (``POSTER_GENRE_CACHE`` overrides it), every write goes
to a temporary file in the same folder and is moved into place with ``os.replace``, so a reader never
sees half a file and a killed process leaves at most a stray ``*.tmp``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from core.errors import CacheError

CACHE_ENV = "POSTER_GENRE_CACHE"
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


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as .npy through a temporary file in the same folder (no pickle)."""
    with _atomic_file(path) as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def load_npy(path: Path, *, shape: tuple[int, ...] | None = None, dtype: str | None = None,
             mmap: bool = True) -> np.ndarray:
    """Open a cached .npy, checking that it is complete and holds what the caller expects.

    A truncated file (the header promises more bytes than the file has), a wrong shape or dtype
    raises ``CacheError`` so the caller can rebuild it instead of trusting it.
    """
    path = Path(path)
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise CacheError(f"cache file {path} is unreadable or truncated: {err}",
                         "it will be rebuilt; delete it if this repeats") from err
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise CacheError(f"cache file {path} holds shape {array.shape}, expected {shape}")
    if dtype is not None and array.dtype != np.dtype(dtype):
        raise CacheError(f"cache file {path} holds dtype {array.dtype}, expected {dtype}")
    return array


def read_json(path: Path) -> Any:
    """Read a JSON cache/sidecar file; a partial or invalid file raises ``CacheError``."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (ValueError, UnicodeDecodeError) as err:
        raise CacheError(f"{path} is not valid JSON: {err}", "it will be rebuilt") from err


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


_SHA256_MEMO: dict[tuple[str, int, int], str] = {}


def memo_file_sha256(path: Path) -> str:
    """``file_sha256`` remembered per process by (path, size, mtime), so an unchanged file is read once."""
    stat = Path(path).stat()
    memo = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _SHA256_MEMO:
        _SHA256_MEMO[memo] = file_sha256(path)
    return _SHA256_MEMO[memo]


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
