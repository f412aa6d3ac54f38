"""Poster-URL tables (an id, a title, genres and a poster URL per row) into dataset folders.

``read_url_table`` finds the columns (common names, case-insensitively, or the ones given), decodes
the file (``core.data.text.decode_table``: a byte-order mark, else UTF-8, else cp1252, with a note) and
turns each row into a ``PosterItem`` or a reason it was refused; ``download_url_table`` hands them to
``core.sources.builder``, which cleans the genre names. Genres that look joined by ``,`` while the
separator is another are refused before any download, as the dataset would refuse them.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from core.data.datasets import GENRE_SEPARATOR, Skipped, comma_joined, format_lines
from core.data.text import decode_table
from core.errors import DatasetError
from core.progress import ProgressFn
from core.sources.builder import AcquireResult, DatasetFolder, PosterItem, build_dataset, safe_id
from core.sources.http import HttpClient, HttpConfig

SOURCE = "urls"

COLUMN_ALIASES = {
    "id": ("imdbid", "tmdbid", "id", "movieid"),
    "title": ("title", "name", "movietitle", "originaltitle"),
    "genres": ("genre", "genres"),
    "url": ("poster", "posterurl", "posterlink", "url", "imageurl", "image"),
}


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


@dataclass
class UrlTable:
    items: list[PosterItem]
    skipped: list[Skipped]
    columns: dict[str, str]
    """The column used for each role (id, title, genres, url)."""
    note: str | None = None
    """How the file was decoded, when its encoding was inferred."""


def read_url_table(csv_path: str | Path, config: UrlTableConfig = UrlTableConfig()) -> UrlTable:
    """The rows of a poster-URL table as items, the rows refused (with reasons), and the columns used."""
    path = Path(csv_path).expanduser()
    header, rows, note = _read_csv(path, config.max_rows)
    columns = _pick_columns(header, config, path)
    _check_separator(path, rows, columns["genres"], config.genre_separator)
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
    return UrlTable(items, skipped, columns, note)


def download_url_table(csv_path: str | Path, out: str | Path,
                       config: UrlTableConfig = UrlTableConfig(), *,
                       http_config: HttpConfig | None = None,
                       progress: ProgressFn | None = None) -> AcquireResult:
    """Add the posters of a URL table to the dataset folder ``out`` (new, empty, or made by this)."""
    table = read_url_table(csv_path, config)
    folder = DatasetFolder.open(out, SOURCE)
    http_config = http_config or HttpConfig(requests_per_second=config.requests_per_second)
    parameters = {"csv": str(Path(csv_path).expanduser()), "columns": table.columns,
                  "genre_separator": config.genre_separator, "max_rows": config.max_rows}
    with HttpClient(http_config) as client:
        result = build_dataset(table.items, folder, lambda item: client.get_bytes(item.source),
                               info={"parameters": parameters}, skipped=table.skipped, workers=config.workers,
                               batch_size=config.batch_size, progress=progress)
    if table.note:
        result.notes.insert(0, table.note)
    return result


def _read_csv(path: Path, max_rows: int | None
              ) -> tuple[list[str], list[tuple[int, dict[str, str]]], str | None]:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read the poster table {path}: {err.strerror}") from err
    decoded = decode_table(raw, str(path))
    try:
        reader = csv.DictReader(io.StringIO(decoded.text))
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
    return header, rows, decoded.note


def _check_separator(path: Path, rows: list[tuple[int, dict[str, str]]], column: str, separator: str) -> None:
    joined = comma_joined([(number, row.get(column, "")) for number, row in rows], separator)
    if joined:
        line, cell = joined[0]
        raise DatasetError(f"{path}, {format_lines([number for number, _ in joined])}: genres look joined by "
                           f"',' rather than {separator!r} (line {line}: {cell!r})",
                           "give the separator the table uses: --genre-separator ',' (Genre separator on "
                           "the Data page)")


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
    genres = tuple(dict.fromkeys(g.strip() for g in row.get(columns["genres"], "").split(separator) if g.strip()))
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
