"""The dataset builder every source uses (TMDB, URL tables, the tutorial's own files).

A source opens its output with ``DatasetFolder.open`` before any network work: only a new or empty
folder, or one whose ``dataset.json`` says the same source of this product made it, is accepted.
The folder lists every file the builder wrote in ``manifest.json``, and the builder never deletes or
overwrites a file that is not listed there, so a user's own files always survive.

``build_dataset`` reuses posters already present and decodable, fetches the rest on a small thread
pool, saves only verified images (atomically, named by id), and rewrites ``labels.csv`` and
``metadata.csv`` atomically after every batch and when interrupted. Rows from earlier runs are kept
and this run's rows merged in, listing only movies whose poster is saved, so a killed run loses
nothing, a rerun fetches only what is missing, and a second table adds to the dataset. Genre names
are cleaned on the way in (``clean_genre``: control characters such as a line break or NUL would make
a labels.csv every later command refuses) and each one changed is noted in the result.
"""
from __future__ import annotations

import csv
import io
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from core.cache import atomic_write_bytes, atomic_write_json, atomic_write_text
from core.data.datasets import (GENRE_SEPARATOR, INFO_FILE, LABELS_FILE, METADATA_FILE, POSTERS_DIR,
                                Skipped, read_info, split_genres, write_labels)
from core.data.images import IMAGE_EXTENSIONS, check_image_bytes, open_rgb
from core.data.text import clean_label, quote_label
from core.errors import DatasetError, ImageError, PosterGenreError
from core.outputs import MADE_BY, MANIFEST_FILE, read_manifest, write_manifest
from core.progress import ProgressFn, ProgressTracker

FAILURES_FILE = "failures.csv"
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
FORMAT_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp"}


@dataclass(frozen=True)
class PosterItem:
    """One movie to put in the dataset; ``source`` is a poster URL or a local file path."""

    id: str
    title: str
    genres: tuple[str, ...]
    source: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class AcquireResult:
    """What one run did: ``n_saved`` of its items have a poster; ``n_total`` rows are in the folder."""

    out: Path
    source: str
    n_candidates: int = 0
    n_saved: int = 0
    n_downloaded: int = 0
    n_reused: int = 0
    n_total: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unknown_genres: dict[int, str] = field(default_factory=dict)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        earlier = self.n_total - self.n_saved
        kept = f", {earlier} kept from earlier runs" if earlier > 0 else ""
        return (f"{self.n_saved} posters in {self.out} ({self.n_downloaded} fetched, "
                f"{self.n_reused} already present{kept}), {self.n_skipped} skipped")

    def lines(self) -> list[str]:
        return [f"{item.id}: {item.reason}" for item in self.skipped]


def safe_id(text: str) -> str | None:
    """``text`` stripped if it is usable as a file name (letters, digits, ``-``, ``_``), else None."""
    text = (text or "").strip()
    return text if SAFE_ID.match(text) else None


def clean_genre(name: str) -> str:
    """A source's genre name as labels.csv can hold it: ``clean_label`` (composed Unicode, no control
    characters, whitespace collapsed), and ``|``, which joins genres there, written ``/``."""
    return clean_label(name).replace(GENRE_SEPARATOR, "/")


def poster_bytes(data: bytes, name: str) -> tuple[bytes, str]:
    """Verified image bytes and their extension; formats outside jpg/png/webp are re-saved as PNG."""
    image_format = check_image_bytes(data, name)
    extension = FORMAT_EXTENSIONS.get(image_format)
    if extension:
        return data, extension
    buffer = io.BytesIO()
    open_rgb(data, name=name).save(buffer, "PNG")
    return buffer.getvalue(), ".png"


class DatasetFolder:
    """A dataset folder that one source may write into, and the files it wrote there.

    Made by ``open``, which refuses any other folder. Nothing is written until the first file: then
    ``dataset.json`` (with ``made_by`` and the source) comes first, so an interrupted first run
    leaves a folder the next run recognises as its own.
    """

    def __init__(self, root: Path, source: str, written: Iterable[str] = ()) -> None:
        self.root = root
        self.source = source
        self._written = set(written)
        self._lock = threading.Lock()
        self._claimed = (root / INFO_FILE).is_file()

    @classmethod
    def open(cls, out: str | Path, source: str) -> "DatasetFolder":
        """The folder ``out`` for ``source``, or a ``DatasetError`` if it is not new, empty or its own."""
        root = Path(out).expanduser()
        if root.exists() and not root.is_dir():
            raise DatasetError(f"output {root} is a file, not a folder", "give a folder path for the dataset")
        entries = sorted(path.name for path in root.iterdir()) if root.is_dir() else []
        if entries:
            info = read_info(root)
            if info.get("made_by") != MADE_BY:
                raise DatasetError(
                    f"output folder {root} is not empty ({len(entries)} entries, e.g. {entries[0]!r}) "
                    f"and holds no dataset made by a download of this product; nothing was changed",
                    "give a new or empty folder: a download writes only into a folder it made itself")
            if info.get("source") != source:
                raise DatasetError(
                    f"output folder {root} holds a dataset made by the {info.get('source')!r} source, "
                    f"not {source!r}; nothing was changed",
                    "give a new or empty folder: each source fills its own dataset folder")
        written = (read_manifest(root) or set()) | ({INFO_FILE, MANIFEST_FILE} if entries else set())
        return cls(root, source, written)

    def owns(self, relative: str) -> bool:
        with self._lock:
            return relative in self._written

    def path_for(self, relative: str) -> Path:
        """The path to write ``relative`` (a POSIX path in the folder) to; refused if a file not
        written here is there. The folder is claimed first, and the file counts as written from now.

        A new table or state file enters the manifest before it is written, so a killed run cannot
        leave one the next run would refuse; posters are listed with the tables after each batch (a
        poster a kill left unlisted is still reused, only never deleted).
        """
        path = self.root / relative
        with self._lock:
            if relative in self._written:
                return path
            if path.exists():
                raise DatasetError(f"{path} exists and was not written by this source, so it is left as is",
                                   "move that file away and run again")
            self._claim()
            self._written.add(relative)
            if not relative.startswith(f"{POSTERS_DIR}/"):
                self._write_manifest()
        return path

    def remove(self, relative: str) -> bool:
        """Delete ``relative`` if this folder's source wrote it; True if it is gone now."""
        with self._lock:
            if relative not in self._written:
                return False
            (self.root / relative).unlink(missing_ok=True)
            self._written.discard(relative)
            return True

    def write_info(self, info: Mapping[str, Any]) -> None:
        atomic_write_json(self.path_for(INFO_FILE),
                          {**info, "made_by": MADE_BY, "source": self.source, "synthetic": False})

    def save_manifest(self) -> None:
        with self._lock:
            self._write_manifest()

    def _write_manifest(self) -> None:
        """Called with the lock held."""
        write_manifest(self.root, self._written, source=self.source)

    def _claim(self) -> None:
        """Mark the folder as this source's before its first file (called with the lock held)."""
        if self._claimed:
            return
        (self.root / POSTERS_DIR).mkdir(parents=True, exist_ok=True)
        now = _now()
        atomic_write_json(self.root / INFO_FILE, {"name": self.root.name, "made_by": MADE_BY,
                                                  "source": self.source, "synthetic": False,
                                                  "created": now, "updated": now, "n_posters": 0})
        self._written |= {INFO_FILE, MANIFEST_FILE}
        self._write_manifest()
        self._claimed = True


def build_dataset(items: Sequence[PosterItem], folder: DatasetFolder, fetch: Callable[[PosterItem], bytes],
                  *, info: Mapping[str, Any], skipped: Iterable[Skipped] = (), workers: int = 4,
                  batch_size: int = 20, progress: ProgressFn | None = None) -> AcquireResult:
    """Add the posters of ``items`` to ``folder`` (``fetch`` returns an item's raw bytes).

    ``fetch`` runs on worker threads and reports a bad item by raising ``PosterGenreError``; the
    item is then listed in ``result.skipped`` with the reason and nothing is saved for it.
    """
    run = _Run(folder, info, list(skipped))
    items = run.unique(items)
    run.result.n_candidates = len(items) + len(run.result.skipped)
    tracker = ProgressTracker(len(items), "posters", progress)
    todo = []
    for item in items:
        existing, blocked = existing_poster(folder, item.id)
        if existing:
            run.saved[item.id] = existing
            run.result.n_reused += 1
        elif blocked:
            run.result.skipped.append(Skipped(item.id, blocked, item.source))
        else:
            todo.append(item)
            continue
        tracker.advance(failed=blocked is not None)
    tracker.rebase()
    try:
        _fetch_all(todo, fetch, run, tracker, workers, batch_size)
    finally:
        run.write_tables()
    return run.result


def existing_poster(folder: DatasetFolder, id_: str) -> tuple[str | None, str | None]:
    """``(file name, None)`` of a decodable poster of ``id_``, else ``(None, why it cannot be fetched)``
    when an undecodable file the source did not write holds its place, else ``(None, None)``.

    Undecodable files the source wrote are deleted, so the poster gets fetched again.
    """
    found, blocked = None, None
    for extension in IMAGE_EXTENSIONS:
        relative = f"{POSTERS_DIR}/{id_}{extension}"
        path = folder.root / relative
        if not path.is_file():
            continue
        try:
            open_rgb(path)
        except ImageError as err:
            if not folder.remove(relative):
                blocked = blocked or (f"{relative} is not a usable image ({err.message}) and was not "
                                      "written by this source, so it is left as is; fix or move it to "
                                      "fetch this poster")
            continue
        found = found or path.name
    return found, None if found else blocked


class _Run:
    """One build: this run's items, what is saved, and the tables merged with earlier runs' rows."""

    def __init__(self, folder: DatasetFolder, info: Mapping[str, Any], skipped: list[Skipped]) -> None:
        self.folder = folder
        self.info = dict(info)
        self.items: list[PosterItem] = []
        self.saved: dict[str, str] = {}
        self.labels = {row["id"]: row for row in _read_rows(folder.root / LABELS_FILE)}
        self.metadata = {row["id"]: row for row in _read_rows(folder.root / METADATA_FILE)}
        self.created = read_info(folder.root).get("created") or _now()
        self.result = AcquireResult(out=folder.root, source=folder.source, skipped=skipped)

    def unique(self, items: Iterable[PosterItem]) -> list[PosterItem]:
        seen: set[str] = set()
        changed: dict[str, int] = {}
        for item in items:
            genres = tuple(dict.fromkeys(name for name in map(clean_genre, item.genres) if name))
            if safe_id(item.id) != item.id:
                self.result.skipped.append(Skipped(item.id, "unsafe id for a file name"))
            elif item.id in seen:
                self.result.skipped.append(Skipped(item.id, "duplicate id; the first is kept"))
            elif not genres:
                self.result.skipped.append(Skipped(item.id, "no genre names once cleaned", item.source))
            else:
                seen.add(item.id)
                self.items.append(item if genres == item.genres else replace(item, genres=genres))
                for name in item.genres:
                    if clean_genre(name) != name:
                        changed[name] = changed.get(name, 0) + 1
        self.result.notes += [_cleaned_note(name, count) for name, count in changed.items()]
        return self.items

    def record(self, item: PosterItem, file_name: str | None, reason: str | None) -> None:
        if file_name:
            self.saved[item.id] = file_name
            self.result.n_downloaded += 1
        else:
            self.result.skipped.append(Skipped(item.id, reason or "unknown failure", item.source))

    def write_tables(self) -> None:
        labels, metadata = dict(self.labels), dict(self.metadata)
        for item in self.items:
            if item.id in self.saved:
                labels[item.id] = {"id": item.id, "title": item.title, "genres": item.genres}
                metadata[item.id] = {"id": item.id, **item.metadata}
            else:
                labels.pop(item.id, None)
                metadata.pop(item.id, None)
        folder = self.folder
        folder.path_for(LABELS_FILE)
        write_labels(folder.root, [(row["id"], row["title"], _genres(row["genres"])) for row in labels.values()])
        _write_csv(folder.path_for(METADATA_FILE), list(metadata.values()))
        self._write_failures()
        self.result.n_saved = sum(item.id in self.saved for item in self.items)
        self.result.n_total = len(labels)
        folder.write_info({"name": folder.root.name, **self.info, "created": self.created,
                           "updated": _now(), "n_posters": self.result.n_total,
                           "n_skipped": self.result.n_skipped})
        folder.save_manifest()

    def _write_failures(self) -> None:
        if not self.result.skipped:
            self.folder.remove(FAILURES_FILE)
            return
        _write_csv(self.folder.path_for(FAILURES_FILE),
                   [{"id": s.id, "reason": s.reason, "source": s.path or ""} for s in self.result.skipped])


def _fetch_all(todo: list[PosterItem], fetch: Callable[[PosterItem], bytes], run: _Run,
               tracker: ProgressTracker, workers: int, batch_size: int) -> None:
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="poster")
    futures = [pool.submit(_save_one, item, fetch, run.folder) for item in todo]
    recorded: set[Future] = set()
    try:
        for future in as_completed(futures):
            recorded.add(future)
            item, file_name, reason = future.result()
            run.record(item, file_name, reason)
            tracker.advance(failed=file_name is None, message=f"{len(run.saved)} saved")
            if len(recorded) % max(1, batch_size) == 0:
                run.write_tables()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for future in futures:
            if future not in recorded and future.done() and not future.cancelled() \
                    and future.exception() is None:
                run.record(*future.result())


def _save_one(item: PosterItem, fetch: Callable[[PosterItem], bytes],
              folder: DatasetFolder) -> tuple[PosterItem, str | None, str | None]:
    try:
        data, extension = poster_bytes(fetch(item), item.source)
        name = f"{item.id}{extension}"
        atomic_write_bytes(folder.path_for(f"{POSTERS_DIR}/{name}"), data)
    except PosterGenreError as err:
        return item, None, err.message
    return item, name, None


def _read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV table this builder wrote earlier; none if there is none yet."""
    if not path.is_file():
        return []
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return [row for row in csv.DictReader(handle) if row.get("id")]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"cannot read the earlier rows of {path}: {err}",
                           "fix or remove that file, or give a new folder") from err


def _cleaned_note(name: str, count: int) -> str:
    return (f"genre {quote_label(name)} ({count} movie{'' if count == 1 else 's'}) saved as "
            f"{clean_genre(name)!r}: labels.csv holds no control characters, and '|' joins genres there")


def _genres(value: str | Sequence[str]) -> Sequence[str]:
    return split_genres(value) if isinstance(value, str) else value


def _write_csv(path: Path, rows: list[Mapping[str, Any]]) -> None:
    columns: dict[str, None] = {"id": None}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(value) for key, value in row.items()})
    atomic_write_text(path, buffer.getvalue())


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return GENRE_SEPARATOR.join(str(v) for v in value)
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
