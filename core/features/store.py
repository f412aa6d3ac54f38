"""The per-image feature cache and the per-dataset feature matrices built from it.

Layout under ``cache_root()/features/<config key>/``:

- ``shard-*.npy`` + ``shard-*.json``: features of one extraction batch, rows keyed by the sha256 of
  each image file's bytes. The .json is written after the .npy and names its row count and checksum,
  so a shard without a readable, matching sidecar is ignored and its images are extracted again.
- ``matrices/<key>.npy`` + ``.json`` + ``.npy.sha256``: the rows of one dataset in dataset order,
  memory-mapped on load after its checksum is verified; a damaged matrix is rebuilt from the shards.
- ``.lock``: held while posters are extracted into the store, so a second extraction of the same
  posters waits and then finds them cached instead of computing them twice.

Everything is written atomically, so killing an extraction loses at most the batch in flight.
"""
from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from core.cache import (atomic_save_npy, atomic_write_bytes, atomic_write_json, bytes_sha256, cache_root, file_lock,
                        load_npy, npy_bytes, read_json, stable_hash)
from core.errors import CacheError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    path: Path
    keys: tuple[str, ...]
    sha256: str


class FeatureStore:
    """Cached feature rows for one extraction configuration (weights, size, resize, precision...)."""

    def __init__(self, config_key: str, dim: int, description: dict | None = None,
                 root: Path | None = None) -> None:
        self.config_key = config_key
        self.dim = dim
        self.folder = (root or cache_root() / "features") / config_key
        self.folder.mkdir(parents=True, exist_ok=True)
        if description is not None and not (self.folder / "config.json").exists():
            atomic_write_json(self.folder / "config.json", description)
        self._index: dict[str, tuple[Shard, int]] = {}
        self.refresh()

    def refresh(self) -> None:
        self._index = {}
        for sidecar in sorted(self.folder.glob("shard-*.json")):
            shard = self._read_sidecar(sidecar)
            if shard is None:
                continue
            for row, key in enumerate(shard.keys):
                self._index.setdefault(key, (shard, row))

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def missing(self, keys: Sequence[str]) -> list[str]:
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

    def add(self, keys: Sequence[str], rows: np.ndarray) -> None:
        """Store one batch as a new shard (data first, then its sidecar)."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.shape != (len(keys), self.dim):
            raise CacheError(f"feature batch has shape {rows.shape}, expected {(len(keys), self.dim)}")
        name = f"shard-{uuid.uuid4().hex}"
        data = npy_bytes(rows)
        atomic_write_bytes(self.folder / f"{name}.npy", data)
        sidecar = {"keys": list(keys), "rows": len(keys), "dim": self.dim, "sha256": bytes_sha256(data)}
        atomic_write_json(self.folder / f"{name}.json", sidecar)
        shard = Shard(self.folder / f"{name}.npy", tuple(keys), sidecar["sha256"])
        for row, key in enumerate(keys):
            self._index.setdefault(key, (shard, row))

    def gather(self, keys: Sequence[str]) -> np.ndarray:
        """The rows for ``keys`` in order, after checking each shard's checksum.

        A shard that fails its check is deleted and ``CacheError`` lists what must be recomputed.
        """
        out = np.empty((len(keys), self.dim), dtype=np.float32)
        by_shard: dict[Shard, list[tuple[int, int]]] = {}
        for position, key in enumerate(keys):
            shard, row = self._index[key]
            by_shard.setdefault(shard, []).append((position, row))
        bad: list[Shard] = []
        for shard, pairs in by_shard.items():
            rows = self._read_shard(shard)
            if rows is None:
                bad.append(shard)
                continue
            positions, indices = zip(*pairs)
            out[list(positions)] = rows[list(indices)]
        if bad:
            for shard in bad:
                self._discard(shard)
            self.refresh()
            raise CacheError(f"{len(bad)} corrupt feature shard(s) removed from {self.folder}",
                             "their posters are extracted again")
        return out

    def _read_sidecar(self, sidecar: Path) -> Shard | None:
        data_path = sidecar.with_suffix(".npy")
        try:
            meta = read_json(sidecar)
            keys = tuple(meta["keys"])
            if meta["rows"] != len(keys) or meta["dim"] != self.dim or not data_path.exists():
                raise CacheError(f"{sidecar} does not match its data file")
            return Shard(data_path, keys, str(meta["sha256"]))
        except (CacheError, KeyError, TypeError, FileNotFoundError) as err:
            log.warning("ignoring feature shard %s: %s", sidecar.name, err)
            return None

    def _read_shard(self, shard: Shard) -> np.ndarray | None:
        try:
            return load_npy(shard.path, shape=(len(shard.keys), self.dim), dtype="float32", mmap=False,
                            sha256=shard.sha256)
        except (CacheError, OSError) as err:
            log.warning("corrupt feature shard %s: %s", shard.path.name, err)
            return None

    def _discard(self, shard: Shard) -> None:
        shard.path.unlink(missing_ok=True)
        shard.path.with_suffix(".json").unlink(missing_ok=True)

    # Dataset matrices -----------------------------------------------------------------------

    def matrix_key(self, keys: Sequence[str]) -> str:
        return stable_hash({"config": self.config_key, "keys": list(keys)})

    def open_matrix(self, keys: Sequence[str]) -> np.ndarray | None:
        """The memory-mapped matrix for exactly these keys, or ``None`` if absent or damaged."""
        key = self.matrix_key(keys)
        path = self.folder / "matrices" / f"{key}.npy"
        try:
            meta = read_json(path.with_suffix(".json"))
            if meta.get("keys_hash") != stable_hash(list(keys)):
                raise CacheError(f"{path} was built for other posters")
            return load_npy(path, shape=(len(keys), self.dim), dtype="float32", mmap=True)
        except FileNotFoundError:
            return None
        except CacheError as err:
            log.warning("%s; rebuilding the feature matrix from its shards", err)
            return None

    def build_matrix(self, keys: Sequence[str]) -> np.ndarray:
        key = self.matrix_key(keys)
        path = self.folder / "matrices" / f"{key}.npy"
        atomic_save_npy(path, self.gather(keys))
        atomic_write_json(path.with_suffix(".json"), {"keys_hash": stable_hash(list(keys)),
                                                      "rows": len(keys), "dim": self.dim})
        return load_npy(path, shape=(len(keys), self.dim), dtype="float32", mmap=True)
