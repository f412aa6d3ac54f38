"""The per-image feature cache, and each dataset's matrix assembled from it by reference.

Layout under ``cache_root()/features/<config key>/``:

- ``shard-*.npy`` + ``shard-*.json``: the rows of one extraction batch (float16 for VGG16 features),
  keyed by the sha256 of each image file's bytes. The .json is written after the .npy and names its
  row count, dtype, size and checksum, so a shard without a readable, matching sidecar is ignored and
  its images are extracted again.
- ``.lock``: held while posters are extracted into the store, so a second extraction of the same
  posters waits and then finds them cached instead of computing them twice.

A dataset's matrix is not a file: ``open`` returns ``ShardedRows``, an index (shard, row) per poster
over memory-mapped shards, so nothing is copied and opening costs the sidecars only. Each shard is
checked (``load_npy``: the sha256 of its bytes as read, and finiteness) the first time its rows are read
in a process; a damaged one is removed and the read raises ``CacheError``, and the next extraction
computes its posters again. Only a read that proves damage removes a shard: one the system refuses to
read (permissions, I/O) is reported and kept. ``verify_stores`` re-hashes every shard (``python -m core
verify``).

Everything is written atomically, so killing an extraction loses at most the batch in flight.
"""
from __future__ import annotations

import contextlib
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from core.cache import (atomic_write_bytes, atomic_write_json, bytes_sha256, cache_root, file_lock, load_npy,
                        make_dirs, npy_bytes, read_json, recheck_file, stable_hash)
from core.errors import CacheError, CacheUnreadableError

log = logging.getLogger(__name__)

FLOAT16_MAX = float(np.finfo(np.float16).max)
STORE_DTYPES = ("float32", "float16", "uint8")
_ROW_BITS = 32


@dataclass(frozen=True)
class Shard:
    path: Path
    keys: tuple[str, ...]
    sha256: str


class FeatureStore:
    """Cached feature rows for one extraction configuration (weights, size, resize, precision, storage...).

    ``dtype`` is how rows are kept on disk (float16 values are clipped to ±65,504 first); reads give
    float32 unless ``intact_rows`` is asked for another dtype (the mosaic's uint8 thumbnails). ``prepare``
    maps a batch as extracted to the rows kept (a pooled-only store pools full rows), so every writer
    hands ``add`` the extractor's float32 output.
    """

    def __init__(self, config_key: str, dim: int, description: dict | None = None, root: Path | None = None, *,
                 dtype: str = "float32", prepare: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        if dtype not in STORE_DTYPES:
            raise ValueError(f"store dtype must be one of {STORE_DTYPES}, got {dtype!r}")
        self.config_key = config_key
        self.dim = dim
        self.dtype = dtype
        self.prepare = prepare
        self.folder = (root or cache_root() / "features") / config_key
        make_dirs(self.folder)
        if description is not None and not (self.folder / "config.json").exists():
            atomic_write_json(self.folder / "config.json", description)
        self._shards: list[Shard] = []
        self._index: dict[str, int] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read the sidecars; a key in several shards is read from the first (by name)."""
        names = sorted(entry.name for entry in os.scandir(self.folder)
                       if entry.name.startswith("shard-") and entry.name.endswith(".json"))
        self._shards = [shard for shard in map(self._read_sidecar, (self.folder / name for name in names)) if shard]
        self._index = {}
        for number in reversed(range(len(self._shards))):
            self._index.update(zip(self._shards[number].keys, _placements(number, len(self._shards[number].keys))))

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The keys not stored, each once, in order."""
        if all(map(self._index.__contains__, keys)):
            return []
        return [key for key in dict.fromkeys(keys) if key not in self._index]

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of this store for extracting into it; the index is re-read once it is ours."""
        with file_lock(self.folder / ".lock",
                       waiting=f"waiting for another extraction into {self.folder} to finish"):
            self.refresh()
            yield

    def known_failures(self) -> set[str]:
        """Content keys that failed to decode before (their files are re-tried on extraction)."""
        try:
            failures = read_json(self.folder / "failures.json")
        except (FileNotFoundError, CacheError):
            return set()
        return {key for key in failures if isinstance(key, str)} if isinstance(failures, list) else set()

    def remember_failures(self, failures: dict[str, str]) -> None:
        if failures:
            atomic_write_json(self.folder / "failures.json", sorted(self.known_failures() | set(failures)))

    def add_new(self, keys: Sequence[str], rows: np.ndarray) -> None:
        """``add`` the rows whose keys are not stored yet, each key once (byproducts computed elsewhere may
        repeat posters)."""
        first = {key: i for i, key in reversed(list(enumerate(keys)))}
        new = sorted(i for key, i in first.items() if key not in self)
        if new:
            self.add([keys[i] for i in new], np.asarray(rows)[new])

    def add(self, keys: Sequence[str], rows: np.ndarray) -> None:
        """Store one batch as a new shard (data first, then its sidecar)."""
        rows = np.asarray(rows, dtype=np.uint8 if self.dtype == "uint8" else np.float32)
        if self.prepare is not None:
            rows = self.prepare(rows)
        if rows.shape != (len(keys), self.dim):
            raise CacheError(f"feature batch has shape {rows.shape}, expected {(len(keys), self.dim)}")
        if self.dtype == "float16":
            rows = np.clip(rows, -FLOAT16_MAX, FLOAT16_MAX)
        name = f"shard-{uuid.uuid4().hex}"
        data = npy_bytes(np.ascontiguousarray(rows, dtype=self.dtype))
        atomic_write_bytes(self.folder / f"{name}.npy", data)
        sidecar = {"keys": list(keys), "rows": len(keys), "dim": self.dim, "dtype": self.dtype,
                   "bytes": len(data), "sha256": bytes_sha256(data)}
        atomic_write_json(self.folder / f"{name}.json", sidecar)
        self._shards.append(Shard(self.folder / f"{name}.npy", tuple(keys), sidecar["sha256"]))
        for key, placement in zip(keys, _placements(len(self._shards) - 1, len(keys))):
            self._index.setdefault(key, placement)

    def open(self, keys: Sequence[str]) -> ShardedRows:
        """The rows of ``keys`` in order, by reference to the shards (``KeyError`` for a key not stored)."""
        placement = np.fromiter((self._index[key] for key in keys), dtype=np.int64, count=len(keys))
        return ShardedRows(self, list(self._shards), placement >> _ROW_BITS, placement & (1 << _ROW_BITS) - 1)

    def gather(self, keys: Sequence[str]) -> np.ndarray:
        """The rows for ``keys`` in order as one float32 array, every shard checked.

        A shard that fails its check is deleted and ``CacheError`` says its posters must be recomputed.
        """
        return np.asarray(self.open(keys))

    def intact_rows(self, keys: Sequence[str], dtype=np.float32) -> tuple[list[str], np.ndarray]:
        """The stored ones of ``keys`` (each once, in order) whose shard passes its check, and their rows.

        For a cache whose rows can be made again: a damaged shard is removed (``read_shard``) and its keys
        are left out, so the caller remakes them instead of failing; a shard the system refuses to read
        still raises ``CacheUnreadableError``.
        """
        present = [key for key in dict.fromkeys(keys) if key in self._index]
        shards = list(self._shards)
        placement = np.fromiter((self._index[key] for key in present), dtype=np.int64, count=len(present))
        shard_of, row_of = placement >> _ROW_BITS, placement & (1 << _ROW_BITS) - 1
        rows = np.empty((len(present), self.dim), dtype=dtype)
        intact = np.ones(len(present), dtype=bool)
        order = np.argsort(shard_of, kind="stable")
        for here in np.split(order, np.flatnonzero(np.diff(shard_of[order])) + 1):
            if not len(here):
                continue
            try:
                rows[here] = self.read_shard(shards[int(shard_of[here[0]])])[row_of[here]]
            except CacheUnreadableError:
                raise
            except CacheError:
                intact[here] = False
        return [key for key, ok in zip(present, intact) if ok], rows[intact]

    def matrix_key(self, keys: Sequence[str]) -> str:
        """Identifies the matrix of exactly these posters' rows in this configuration."""
        return stable_hash({"config": self.config_key, "keys": list(keys)})

    def _read_sidecar(self, sidecar: Path) -> Shard | None:
        data_path = sidecar.with_suffix(".npy")
        try:
            meta = read_json(sidecar)
            keys = tuple(meta["keys"])
            if meta["rows"] != len(keys) or meta["dim"] != self.dim or meta.get("dtype", "float32") != self.dtype:
                raise CacheError(f"{sidecar} does not describe {self.dtype} rows of {self.dim} values")
            size = data_path.stat().st_size
            if meta.get("bytes", size) != size:
                removed = self._discard(data_path)
                raise CacheError(f"{data_path.name} holds {size} bytes, its sidecar says {meta['bytes']}; "
                                 f"{removed}")
            return Shard(data_path, keys, str(meta["sha256"]))
        except (CacheError, KeyError, TypeError, FileNotFoundError) as err:
            log.warning("ignoring feature shard %s: %s", sidecar.name, err)
            return None

    def read_shard(self, shard: Shard) -> np.ndarray:
        """A shard's rows, memory-mapped after ``load_npy``'s checks; a damaged shard is removed."""
        try:
            return load_npy(shard.path, shape=(len(shard.keys), self.dim), dtype=self.dtype, sha256=shard.sha256)
        except CacheUnreadableError:
            raise
        except CacheError as err:
            log.warning("corrupt feature shard %s: %s", shard.path.name, err)
            removed = self._discard(shard.path)
            self.refresh()
            raise CacheError(f"feature shard {shard.path.name} in {self.folder} was damaged and has been {removed} "
                             f"({err})", f"extract the features again: its {len(shard.keys)} posters are "
                                         "computed again") from err

    def _discard(self, data_path: Path) -> str:
        """Remove a damaged shard (sidecars are written last, so a complete one never changes size); says
        whether it was removed."""
        try:
            data_path.unlink(missing_ok=True)
            data_path.with_suffix(".json").unlink(missing_ok=True)
        except OSError as err:
            return f"left in place (it cannot be removed: {err.strerror or err})"
        return "removed"


def verify_stores(root: Path | None = None) -> tuple[int, list[tuple[Path, str]]]:
    """Re-hash every shard of every store under ``root`` (default: the cache's ``features/``) against its
    sidecar; returns how many were checked and (path, reason) for each damaged one. Nothing is removed."""
    root = root or cache_root() / "features"
    checked, damaged = 0, []
    for sidecar in sorted(root.glob("*/shard-*.json")):
        data_path = sidecar.with_suffix(".npy")
        checked += 1
        try:
            meta = read_json(sidecar)
            reason = recheck_file(data_path, str(meta["sha256"]), meta.get("bytes"))
        except (CacheError, KeyError, TypeError, AttributeError) as err:
            data_path, reason = sidecar, f"sidecar unreadable ({err})"
        except OSError as err:
            data_path, reason = sidecar, f"sidecar cannot be read: {err.strerror or err}"
        if reason:
            damaged.append((data_path, reason))
    return checked, damaged


class ShardedRows:
    """A read-only ``(posters, columns)`` matrix whose rows stay in a store's shards.

    It answers ``shape``, ``len`` and indexing like an array: ``m[i]``, ``m[a:b]``, ``m[index_array]``,
    ``m[rows, columns]`` and ``np.asarray(m)`` return float32 arrays read from the shards, while
    ``m[:, columns]`` is another ``ShardedRows`` over fewer columns (nothing read). ``dtype`` is the
    dtype on disk, so code that converts with ``astype(np.float32)`` gets a real array.
    """

    ndim = 2

    def __init__(self, store: FeatureStore, shards: list[Shard], shard_of: np.ndarray, row_of: np.ndarray,
                 columns: range | None = None, _open: dict[int, np.ndarray] | None = None) -> None:
        self._store = store
        self._shards = shards
        self._shard_of = shard_of
        self._row_of = row_of
        self._columns = columns if columns is not None else range(store.dim)
        self._open = _open if _open is not None else {}

    @property
    def shape(self) -> tuple[int, int]:
        return len(self._shard_of), len(self._columns)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._store.dtype)

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def shards(self) -> int:
        """How many shards hold these rows."""
        return len(np.unique(self._shard_of))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ShardedRows(shape={self.shape}, dtype={self.dtype}, shards={self.shards}, folder={self._store.folder})"

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._read(np.arange(len(self)), _as_slice(self._columns))
        return out if dtype is None else out.astype(dtype, copy=False)

    def astype(self, dtype, copy: bool = True) -> np.ndarray:
        return np.asarray(self, dtype=dtype)

    def __getitem__(self, item) -> np.ndarray | ShardedRows:
        rows, columns = item if isinstance(item, tuple) and len(item) == 2 else (item, slice(None))
        if isinstance(rows, slice) and rows == slice(None) and isinstance(columns, slice):
            return ShardedRows(self._store, self._shards, self._shard_of, self._row_of, self._columns[columns],
                               self._open)
        index = np.arange(len(self))[rows]
        if isinstance(columns, slice):
            out = self._read(np.atleast_1d(index), _as_slice(self._columns[columns]))
        else:
            out = self._read(np.atleast_1d(index), _as_slice(self._columns))[:, columns]
        return out[0] if np.ndim(index) == 0 else out

    def _read(self, index: np.ndarray, columns: slice | np.ndarray) -> np.ndarray:
        width = len(range(self._store.dim)[columns]) if isinstance(columns, slice) else len(columns)
        out = np.empty((len(index), width), dtype=np.float32)
        shard_of, row_of = self._shard_of[index], self._row_of[index]
        order = np.argsort(shard_of, kind="stable")
        starts = np.flatnonzero(np.diff(shard_of[order], prepend=-1))
        for group in np.split(order, starts[1:]):
            if len(group):
                data = self._data(int(shard_of[group[0]]))
                out[_run_or_index(group)] = data[_run_or_index(row_of[group])][:, columns]
        return out

    def _data(self, number: int) -> np.ndarray:
        if number not in self._open:
            self._open[number] = self._store.read_shard(self._shards[number])
        return self._open[number]


def _as_slice(columns: range) -> slice | np.ndarray:
    return slice(columns.start, columns.stop) if columns.step == 1 else np.asarray(columns)


def _placements(number: int, rows: int) -> range:
    """Where the rows of shard ``number`` live, one int each (shard number in the high bits, row in the low)."""
    return range(number << _ROW_BITS, (number << _ROW_BITS) + rows)


def _run_or_index(index: np.ndarray) -> slice | np.ndarray:
    """A slice for consecutive indices (the usual case: datasets list posters in extraction order), so
    the read is one view and one float16 → float32 conversion instead of a gather and a scatter."""
    first, last = int(index[0]), int(index[-1])
    consecutive = last - first == len(index) - 1 and (len(index) < 3 or bool(np.all(np.diff(index) == 1)))
    return slice(first, last + 1) if consecutive else index
