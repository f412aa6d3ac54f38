"""What opening a dataset folder found, remembered until the folder changes.

Opening a folder of 100,000 posters reads labels.csv, lists ``posters/``, and looks up each file's
header check and content hash (``file_facts``): several seconds. The result depends only on a
``Stamp``: labels.csv's size and mtime, the image-named entries of ``posters/`` and the size, mtime,
ctime and inode of each poster file (``cp -p`` keeps size and mtime, not ctime). While the stamp is the same, ``read`` returns the saved result, which costs one
directory listing, one ``stat`` per file and one JSON file; any change (a file rewritten, added,
removed or renamed, a label edited) misses, and the folder is read again. The saved result is plain
JSON under the cache, written atomically; a damaged or foreign one is ignored.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from core.cache import atomic_write_text, cache_root, read_json, stable_hash
from core.errors import CacheError, CacheUnwritableError

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 2
SNAPSHOT_DIR = "opened"


@dataclass(frozen=True)
class Stamp:
    """Everything the opened dataset depends on besides ``dataset.json`` (read on every open)."""

    labels: tuple[int, int]
    files: tuple[str, ...]
    """The image-named regular files of ``posters/``, sorted."""
    others: tuple[str, ...]
    """Image-named entries that are not regular files (folders, broken links), sorted."""
    stats: tuple[int, ...]
    """Size, mtime (ns), ctime (ns) and inode of each file, in order (``file_version``)."""


def take_stamp(labels_path: Path, folder: Path, files: list[str], others: list[str]) -> Stamp:
    labels = os.stat(labels_path)
    prefix = os.path.join(os.fspath(folder), "")
    stats: list[int] = []
    for name in files:
        stat = os.stat(prefix + name)
        stats += (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    return Stamp((labels.st_size, labels.st_mtime_ns), tuple(files), tuple(others), tuple(stats))


def read_snapshot(root: Path, stamp: Stamp) -> dict[str, Any] | None:
    """The result saved for ``root`` under exactly this stamp, else ``None``."""
    try:
        saved = read_json(_path(root))
        if (saved.get("version") != SNAPSHOT_VERSION or saved.get("root") != _key(root)
                or saved.get("stamp") != _jsonable(stamp)):
            return None
        return saved["content"]
    except (FileNotFoundError, CacheError, AttributeError, KeyError):
        return None


def write_snapshot(root: Path, stamp: Stamp, content: dict[str, Any]) -> None:
    """Save what was found; a cache that cannot be written only costs the next open its time (a warning)."""
    document = {"version": SNAPSHOT_VERSION, "root": _key(root), "stamp": _jsonable(stamp), "content": content}
    try:
        atomic_write_text(_path(root), json.dumps(document, separators=(",", ":")))
    except CacheUnwritableError as err:
        log.warning("the open of %s is not remembered (%s)", root, err)


def forget_snapshot(root: Path) -> None:
    """Drop what was remembered of opening ``root`` (after its posters' facts were found stale)."""
    _path(root).unlink(missing_ok=True)


def _jsonable(stamp: Stamp) -> dict[str, list]:
    """The stamp as ``read_json`` gives it back (lists, not tuples), so the two compare equal."""
    return {field.name: list(getattr(stamp, field.name)) for field in fields(stamp)}


def _key(root: Path) -> str:
    return os.path.abspath(root)


def _path(root: Path) -> Path:
    return cache_root() / SNAPSHOT_DIR / f"{stable_hash(_key(root))}.json"
