"""Posters fetched one by one into a standard dataset folder, and the poster-URL table front end.

``build_dataset`` is the engine every source uses (TMDB, URL tables, the tutorial's own files): it
reuses posters already present and decodable, fetches the rest on a small thread pool, saves only
verified images (atomically, named by id), and rewrites ``labels.csv``/``metadata.csv`` atomically
after every batch and when interrupted, listing only movies whose poster is saved. So a killed run
loses nothing and a rerun fetches only what is missing.
"""
from __future__ import annotations

import csv
import io
import re
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from core.cache import atomic_write_bytes, atomic_write_text
from core.data.datasets import (GENRE_SEPARATOR, METADATA_FILE, POSTERS_DIR, Skipped, read_info,
                           write_info, write_labels)
from core.errors import DatasetError, ImageError, PosterGenreError
from core.sources.http import HttpClient, HttpConfig
from core.data.images import IMAGE_EXTENSIONS, check_image_bytes, open_rgb

Progress = Callable[[int, int, str], None]
"""``progress(done, total, message)``, called from the caller's thread."""

FAILURES_FILE = "failures.csv"
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
FORMAT_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp"}

COLUMN_ALIASES = {
    "id": ("imdbid", "tmdbid", "id", "movieid"),
    "title": ("title", "name", "movietitle", "originaltitle"),
    "genres": ("genre", "genres"),
    "url": ("poster", "posterurl", "posterlink", "url", "imageurl", "image"),
}


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
    out: Path
    source: str
    n_candidates: int = 0
    n_saved: int = 0
    n_downloaded: int = 0
    n_reused: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unknown_genres: dict[int, str] = field(default_factory=dict)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        return (f"{self.n_saved} posters in {self.out} ({self.n_downloaded} fetched, "
                f"{self.n_reused} already present), {self.n_skipped} skipped")

    def lines(self) -> list[str]:
        return [f"{item.id}: {item.reason}" for item in self.skipped]


@dataclass(frozen=True)
class UrlTableConfig:
    id_column: str | None = None
    title_column: str | None = None
    genres_column: str | None = None
    url_column: str | None = None
    genre_separator: str = GENRE_SEPARATOR
    max_rows: int | None = None
    workers: int = 4
    requests_per_second: float = 10.0
    batch_size: int = 20


def safe_id(text: str) -> str | None:
    """``text`` stripped if it is usable as a file name (letters, digits, ``-``, ``_``), else None."""
    text = (text or "").strip()
    return text if SAFE_ID.match(text) else None


def poster_bytes(data: bytes, name: str) -> tuple[bytes, str]:
    """Verified image bytes and their extension; formats outside jpg/png/webp are re-saved as PNG."""
    image_format = check_image_bytes(data, name)
    extension = FORMAT_EXTENSIONS.get(image_format)
    if extension:
        return data, extension
    buffer = io.BytesIO()
    open_rgb(data, name=name).save(buffer, "PNG")
    return buffer.getvalue(), ".png"


def reusable_poster(posters_dir: Path, id_: str) -> str | None:
    """The file name of a decodable poster for ``id_``; undecodable ones are deleted so they get refetched."""
    found = None
    for extension in IMAGE_EXTENSIONS:
        path = posters_dir / f"{id_}{extension}"
        if not path.is_file():
            continue
        try:
            open_rgb(path)
        except ImageError:
            path.unlink(missing_ok=True)
            continue
        found = found or path.name
    return found


def build_dataset(items: Sequence[PosterItem], out: str | Path, fetch: Callable[[PosterItem], bytes],
                  *, source: str, info: Mapping[str, Any], skipped: Iterable[Skipped] = (),
                  workers: int = 4, batch_size: int = 20,
                  progress: Progress | None = None) -> AcquireResult:
    """Fill ``out`` with the posters of ``items`` (``fetch`` returns an item's raw bytes).

    ``fetch`` runs on worker threads and reports a bad item by raising ``PosterGenreError``; the
    item is then listed in ``result.skipped`` with the reason and nothing is saved for it.
    """
    folder = _Folder(Path(out).expanduser(), source, info, list(skipped))
    items = folder.unique(items)
    folder.result.n_candidates = len(items) + len(folder.result.skipped)
    ticker = _Ticker(len(items), folder, progress)
    todo = []
    for item in items:
        existing = reusable_poster(folder.posters_dir, item.id)
        if existing:
            folder.saved[item.id] = existing
            folder.result.n_reused += 1
            ticker.tick()
        else:
            todo.append(item)
    try:
        _fetch_all(todo, fetch, folder, ticker, workers, batch_size)
    finally:
        folder.write_tables()
    return folder.result


def read_url_table(csv_path: str | Path, config: UrlTableConfig = UrlTableConfig()
                   ) -> tuple[list[PosterItem], list[Skipped], dict[str, str]]:
    """The rows of a poster-URL table as items, the rows refused (with reasons), and the columns used."""
    path = Path(csv_path).expanduser()
    header, rows = _read_csv(path, config.max_rows)
    columns = _pick_columns(header, config, path)
    items, skipped, seen = [], [], set()
    for number, row in rows:
        item, reason = _row_item(row, columns, config.genre_separator)
        if item is not None and item.id in seen:
            item, reason = None, f"duplicate id {item.id!r}; the first row is kept"
        if item is None:
            label = safe_id(row.get(columns["id"], ""))
            skipped.append(Skipped(id=label, reason=f"line {number}: {reason}") if label
                           else Skipped(id=f"line {number}", reason=reason))
            continue
        seen.add(item.id)
        items.append(item)
    return items, skipped, columns


def download_url_table(csv_path: str | Path, out: str | Path,
                       config: UrlTableConfig = UrlTableConfig(), *,
                       http_config: HttpConfig | None = None,
                       progress: Progress | None = None) -> AcquireResult:
    items, skipped, columns = read_url_table(csv_path, config)
    http_config = http_config or HttpConfig(requests_per_second=config.requests_per_second)
    out = Path(out).expanduser()
    parameters = {"csv": str(Path(csv_path).expanduser()), "columns": columns,
                  "genre_separator": config.genre_separator, "max_rows": config.max_rows}
    with HttpClient(http_config) as client:
        return build_dataset(items, out, lambda item: client.get_bytes(item.source),
                             source="urls", info={"name": out.name, "parameters": parameters},
                             skipped=skipped, workers=config.workers,
                             batch_size=config.batch_size, progress=progress)


class _Folder:
    """The output folder and what is known to be saved in it."""

    def __init__(self, out: Path, source: str, info: Mapping[str, Any], skipped: list[Skipped]):
        self.out = out
        self.posters_dir = out / POSTERS_DIR
        self.posters_dir.mkdir(parents=True, exist_ok=True)
        self.info = dict(info)
        self.items: list[PosterItem] = []
        self.saved: dict[str, str] = {}
        self.result = AcquireResult(out=out, source=source, skipped=skipped)

    def unique(self, items: Iterable[PosterItem]) -> list[PosterItem]:
        seen: set[str] = set()
        for item in items:
            if safe_id(item.id) != item.id:
                self.result.skipped.append(Skipped(item.id, "unsafe id for a file name"))
            elif item.id in seen:
                self.result.skipped.append(Skipped(item.id, "duplicate id; the first is kept"))
            else:
                seen.add(item.id)
                self.items.append(item)
        return self.items

    def record(self, item: PosterItem, file_name: str | None, reason: str | None) -> None:
        if file_name:
            self.saved[item.id] = file_name
            self.result.n_downloaded += 1
        else:
            self.result.skipped.append(Skipped(item.id, reason or "unknown failure", item.source))

    def write_tables(self) -> None:
        done = [item for item in self.items if item.id in self.saved]
        write_labels(self.out, [(item.id, item.title, item.genres) for item in done])
        _write_csv(self.out / METADATA_FILE, [{"id": item.id, **item.metadata} for item in done])
        self._write_failures()
        self.result.n_saved = len(done)
        self._write_info()

    def _write_failures(self) -> None:
        path = self.out / FAILURES_FILE
        if not self.result.skipped:
            path.unlink(missing_ok=True)
            return
        _write_csv(path, [{"id": s.id, "reason": s.reason, "source": s.path or ""}
                          for s in self.result.skipped])

    def _write_info(self) -> None:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        created = read_info(self.out).get("created", now)
        write_info(self.out, **{"name": self.out.name, **self.info, "source": self.result.source,
                                "synthetic": False, "created": created, "updated": now,
                                "n_posters": self.result.n_saved,
                                "n_skipped": self.result.n_skipped})


class _Ticker:
    def __init__(self, total: int, folder: _Folder, progress: Progress | None) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.folder, self.progress = folder, progress

    def tick(self, failed: bool = False) -> None:
        self.done += 1
        self.failed += failed
        if self.progress:
            ok = len(self.folder.saved)
            self.progress(self.done, self.total, f"posters {ok} ok, {self.failed} failed")


def _fetch_all(todo: list[PosterItem], fetch: Callable[[PosterItem], bytes], folder: _Folder,
               ticker: _Ticker, workers: int, batch_size: int) -> None:
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="poster")
    futures = [pool.submit(_save_one, item, fetch, folder.posters_dir) for item in todo]
    recorded: set[Future] = set()
    try:
        for future in as_completed(futures):
            recorded.add(future)
            item, file_name, reason = future.result()
            folder.record(item, file_name, reason)
            ticker.tick(failed=file_name is None)
            if len(recorded) % max(1, batch_size) == 0:
                folder.write_tables()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for future in futures:
            if future not in recorded and future.done() and not future.cancelled() \
                    and future.exception() is None:
                folder.record(*future.result())


def _save_one(item: PosterItem, fetch: Callable[[PosterItem], bytes],
              posters_dir: Path) -> tuple[PosterItem, str | None, str | None]:
    try:
        data, extension = poster_bytes(fetch(item), item.source)
    except PosterGenreError as err:
        return item, None, err.message
    for stale in IMAGE_EXTENSIONS:
        if stale != extension:
            (posters_dir / f"{item.id}{stale}").unlink(missing_ok=True)
    atomic_write_bytes(posters_dir / f"{item.id}{extension}", data)
    return item, f"{item.id}{extension}", None


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


def _read_csv(path: Path, max_rows: int | None) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read the poster table {path}: {err.strerror}") from err
    text = _decode(raw)
    try:
        reader = csv.DictReader(io.StringIO(text))
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        rows = []
        for row in reader:
            if max_rows is not None and len(rows) >= max_rows:
                break
            rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}))
    except csv.Error as err:
        raise DatasetError(f"{path} is not a valid CSV file: {err}") from err
    if not header:
        raise DatasetError(f"{path} is empty", "give a CSV with a header row")
    return header, rows


def _decode(raw: bytes) -> str:
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def _pick_columns(header: list[str], config: UrlTableConfig, path: Path) -> dict[str, str]:
    given = {"id": config.id_column, "title": config.title_column,
             "genres": config.genres_column, "url": config.url_column}
    normalised = {_normalise(name): name for name in reversed(header)}
    columns: dict[str, str] = {}
    for role, name in given.items():
        if name and name not in header:
            raise DatasetError(f"{path} has no column {name!r} (given for the {role}); it has {header}")
        found = name or next((normalised[a] for a in COLUMN_ALIASES[role] if a in normalised), None)
        if not found:
            raise DatasetError(
                f"{path}: cannot tell which column holds the {role}; it has {header}",
                f"name it with --{role}-column")
        columns[role] = found
    return columns


def _normalise(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.casefold())


def _row_item(row: dict[str, str], columns: dict[str, str],
              separator: str) -> tuple[PosterItem | None, str]:
    raw_id = row.get(columns["id"], "")
    id_ = safe_id(raw_id)
    if not raw_id:
        return None, "empty id"
    if id_ is None:
        return None, f"unsafe id {raw_id!r}: ids become file names, so only letters, digits, - and _"
    genres = tuple(dict.fromkeys(g.strip().replace(GENRE_SEPARATOR, "/")
                                 for g in row.get(columns["genres"], "").split(separator) if g.strip()))
    url = row.get(columns["url"], "")
    if not genres:
        return None, "no genres"
    if not url:
        return None, "no poster URL"
    if urlsplit(url).scheme not in ("http", "https"):
        return None, f"poster URL {url!r} is not http(s)"
    used = {columns["id"], columns["title"], columns["genres"]}
    metadata = {("source_id" if k == "id" else k): v for k, v in row.items() if k not in used}
    title = row.get(columns["title"], "") or id_
    return PosterItem(id=id_, title=title, genres=genres, source=url, metadata=metadata), ""
