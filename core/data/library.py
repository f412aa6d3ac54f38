"""Where downloaded datasets live, and which are there: the list the Data page and ``python -m core datasets`` show."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from core.cache import cache_root
from core.data.datasets import LABELS_FILE, read_info
from core.data.demo import demo_dataset_dir
from core.data.text import decode_table
from core.errors import DatasetError
from core.sources.builder import safe_id


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset folder: its name, posters listed (from ``dataset.json``, else labels.csv rows), source."""

    name: str
    n_posters: int
    source: str
    path: Path


def datasets_dir() -> Path:
    """The folder whose dataset subfolders the app lists; downloads from the app go here."""
    return (cache_root() / "datasets").resolve()


def dataset_folder(name: str) -> Path:
    """The folder under ``datasets_dir()`` for a dataset called ``name`` (letters, digits, - and _)."""
    folder = safe_id(name)
    if folder is None:
        raise DatasetError(f"dataset name {name!r} is not usable as a folder name",
                           "use letters, digits, - and _ only, e.g. tmdb-popular-500")
    return datasets_dir() / folder


def downloaded_datasets() -> list[DatasetEntry]:
    """Dataset folders (with a labels.csv) under ``datasets_dir()``, by name; the demo's own folder excluded."""
    folder, demo = datasets_dir(), demo_dataset_dir().resolve()
    if not folder.is_dir():
        return []
    return [dataset_entry(path) for path in sorted(folder.iterdir())
            if path.is_dir() and not path.name.startswith(".") and path != demo
            and (path / LABELS_FILE).is_file()]


def dataset_entry(path: Path) -> DatasetEntry:
    info = read_info(path)
    count = info.get("n_posters")
    if not isinstance(count, int) or isinstance(count, bool):
        count = _count_rows(path / LABELS_FILE)
    return DatasetEntry(name=path.name, n_posters=count, source=str(info.get("source") or "folder"), path=path)


def _count_rows(path: Path) -> int:
    try:
        text = decode_table(path.read_bytes(), str(path)).text
    except (OSError, DatasetError):
        return 0
    return max(sum(1 for row in csv.reader(io.StringIO(text)) if row) - 1, 0)
