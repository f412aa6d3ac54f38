"""Labelled poster folders: ``posters/<id>.<ext>`` plus ``labels.csv`` (``id,title,genres``).

``load_dataset`` validates the folder and returns the usable posters together with a report that
lists every skipped item and why, so nothing disappears silently. Genre names are compared with case
and whitespace folded and Unicode composed (``genre_key``); each genre gets one spelling, in composed
form (NFC), and the report lists the merges. labels.csv is decoded as it was saved (``core.data.text``);
genres with control characters, or that look joined by ``,`` rather than ``|``, are refused with their
line numbers, since no reading of them is what the person meant.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from core.cache import (atomic_write_json, atomic_write_text, file_facts, file_sha256, folder_file_facts,
                        stale_file_facts)
from core.errors import DatasetError, ImageError
from core.data.images import IMAGE_EXTENSIONS, check_image_header
from core.data.snapshot import forget_snapshot, read_snapshot, take_stamp, write_snapshot
from core.data.text import clean_label, control_characters, decode_table, quote_label

LABELS_FILE = "labels.csv"
POSTERS_DIR = "posters"
INFO_FILE = "dataset.json"
METADATA_FILE = "metadata.csv"
REQUIRED_COLUMNS = ("id", "title", "genres")
GENRE_SEPARATOR = "|"


@dataclass(frozen=True)
class Skipped:
    """One poster or label row left out, with the reason."""

    id: str
    reason: str
    path: str | None = None


def _first(names: list[str], most: int) -> str:
    more = len(names) - most
    return ", ".join(names[:most]) + (f" and {more} more" if more > 0 else "")


@dataclass
class LoadReport:
    n_rows: int = 0
    n_images: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    genre_merges: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Each genre written several ways: the spelling used → the other spellings merged into it."""
    notes: list[str] = field(default_factory=list)
    """How the file was read where it was not plain UTF-8 (the encoding inferred)."""

    def add(self, id: str, reason: str, path: Path | None = None) -> None:
        self.skipped.append(Skipped(id=id, reason=reason, path=str(path) if path else None))

    def lines(self) -> list[str]:
        return [f"{item.id}: {item.reason}" for item in self.skipped]

    def reasons_text(self, most: int = 8) -> str:
        """The skipped items on one line, grouped by reason: ``a, b: empty file (0 bytes); c: ...``."""
        by_reason: dict[str, list[str]] = {}
        for item in self.skipped:
            by_reason.setdefault(item.reason, []).append(item.id)
        groups = [f"{_first(ids, most)}: {reason}" for reason, ids in list(by_reason.items())[:most]]
        more = len(by_reason) - most
        return "; ".join(groups) + (f"; and {more} other reasons" if more > 0 else "")

    def merge_lines(self) -> list[str]:
        return [f"genre {name!r} also written as {', '.join(map(quote_label, others))}; merged into {name!r}"
                for name, others in self.genre_merges.items()]


@dataclass(frozen=True)
class Poster:
    """One usable poster. Its path is made on first use: building 100,000 ``Path`` objects would take
    a large part of opening a big dataset, and most pages never look at most posters' files."""

    id: str
    title: str
    genres: tuple[str, ...]
    folder: Path
    filename: str
    key: str | None = field(default=None, repr=False, compare=False)
    """The sha256 of the file when the open hashed it (``load_dataset`` checking images): its feature cache key."""

    @functools.cached_property
    def path(self) -> Path:
        return self.folder / self.filename


@dataclass
class Dataset:
    """The usable posters of a folder, in labels.csv order."""

    root: Path
    posters: list[Poster]
    name: str
    synthetic: bool = False
    source: str = "folder"

    def __len__(self) -> int:
        return len(self.posters)

    @property
    def ids(self) -> list[str]:
        return [poster.id for poster in self.posters]

    @property
    def titles(self) -> list[str]:
        return [poster.title for poster in self.posters]

    @property
    def labels(self) -> list[tuple[str, ...]]:
        return [poster.genres for poster in self.posters]

    @property
    def paths(self) -> list[Path]:
        return [poster.path for poster in self.posters]

    def content_keys(self) -> list[str]:
        """The sha256 of each poster file as of the open: each poster's key in the feature cache (hashed by
        ``load_dataset``, else now; remembered across processes by ``file_facts``)."""
        if all(poster.key is not None for poster in self.posters):
            return [poster.key for poster in self.posters]
        return file_facts(self.paths, "sha256", file_sha256)

    def genre_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for genres in self.labels:
            for genre in genres:
                counts[genre] = counts.get(genre, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({
            "id": self.ids,
            "title": self.titles,
            "genres": [GENRE_SEPARATOR.join(g) for g in self.labels],
            "path": [str(p) for p in self.paths],
        })


class GenreVocabulary:
    """A fixed genre order for multi-hot labels, saved with every model.

    Wraps scikit-learn's ``MultiLabelBinarizer`` with the classes given explicitly, so the column
    order is part of the saved run and a model can never be scored against another order.
    """

    def __init__(self, genres: Sequence[str]) -> None:
        if len(set(genres)) != len(genres):
            raise DatasetError(f"genre vocabulary has duplicates: {list(genres)}")
        self.genres = tuple(genres)

    @classmethod
    def from_labels(cls, labels: Iterable[Iterable[str]]) -> "GenreVocabulary":
        return cls(sorted({genre for genres in labels for genre in genres}))

    def encode(self, labels: Iterable[Iterable[str]]) -> np.ndarray:
        from sklearn.preprocessing import MultiLabelBinarizer

        labels = [tuple(genres) for genres in labels]
        unknown = sorted({g for genres in labels for g in genres} - set(self.genres))
        if unknown:
            raise DatasetError(f"labels use genres missing from the vocabulary: {unknown}")
        binarizer = MultiLabelBinarizer(classes=list(self.genres))
        return binarizer.fit_transform(labels).astype(np.float32)

    def decode(self, rows: np.ndarray) -> list[tuple[str, ...]]:
        return [tuple(g for g, on in zip(self.genres, row) if on) for row in np.asarray(rows) > 0.5]

    def __len__(self) -> int:
        return len(self.genres)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GenreVocabulary) and other.genres == self.genres

    def __repr__(self) -> str:
        return f"GenreVocabulary({list(self.genres)!r})"


@functools.lru_cache(maxsize=1 << 16)
def genre_key(name: str) -> str:
    """What makes two genre names the same genre: case, runs of whitespace and the Unicode form
    ("é" as one character or as "e" and an accent) do not count."""
    return " ".join(unicodedata.normalize("NFC", name).split()).casefold()


@functools.lru_cache(maxsize=1 << 16)
def split_genres(text: str) -> tuple[str, ...]:
    """The genres of one ``a|b|c`` cell, whitespace collapsed, each genre once (first spelling kept)."""
    seen: dict[str, str] = {}
    for part in (text or "").split(GENRE_SEPARATOR):
        name = " ".join(part.split())
        if name:
            seen.setdefault(genre_key(name), name)
    return tuple(seen.values())


def canonical_genres(labels: Sequence[Sequence[str]]) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """One spelling per genre: the most frequent one (the first seen on a tie), in composed form (NFC).

    Returns the spelling of every name in ``labels`` and, for genres written several ways, the
    others merged into it.
    """
    totals: dict[str, int] = {}
    for genres in labels:
        for name in genres:
            totals[name] = totals.get(name, 0) + 1
    counts: dict[str, dict[str, int]] = {}
    for name, total in totals.items():
        counts.setdefault(genre_key(name), {})[name] = total
    spelling: dict[str, str] = {}
    merges: dict[str, tuple[str, ...]] = {}
    for spellings in counts.values():
        chosen = unicodedata.normalize("NFC", max(spellings, key=spellings.__getitem__))
        spelling.update({name: chosen for name in spellings})
        if set(spellings) != {chosen}:
            merges[chosen] = tuple(name for name in spellings if name != chosen)
    return spelling, merges


def load_dataset(root: str | Path, *, check_images: bool = True) -> tuple[Dataset, LoadReport]:
    """Read and validate a dataset folder.

    ``check_images`` opens each image header (fast, no decoding) so files that are not images are
    reported here, and hashes each file's bytes (the posters' feature cache keys) in the same read;
    decoding errors of files with a valid header surface during extraction. Folders and broken links
    named like posters are skipped either way, as nothing downstream can read them. A checked open is
    remembered until the folder changes (``core.data.snapshot``).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist",
                           "give a folder holding posters/ and labels.csv")
    labels_path = root / LABELS_FILE
    if not labels_path.is_file():
        raise DatasetError(f"{labels_path} is missing",
                           "a dataset folder needs labels.csv with columns id,title,genres")
    folder = root / POSTERS_DIR
    files, others = _list_images(folder)
    stamp = take_stamp(labels_path, folder, files, others) if check_images else None
    opened = _from_snapshot(folder, read_snapshot(root, stamp)) if stamp else None
    if opened:
        posters, report = opened
    else:
        posters, report = _read_folder(labels_path, folder, _index_images(files, others), check_images)
        if stamp and posters:
            write_snapshot(root, stamp, _to_snapshot(posters, report))
    if not posters:
        raise DatasetError(f"no usable posters in {root}: {report.n_rows} label rows, {report.n_images} images"
                           + (f"; skipped {report.reasons_text()}" if report.skipped else ""),
                           "check that posters/ holds <id>.jpg files named like the ids in labels.csv")
    info = read_info(root)
    dataset = Dataset(root=root, posters=posters, name=info.get("name", root.name),
                      synthetic=bool(info.get("synthetic", False)), source=info.get("source", "folder"))
    return dataset, report


def _read_folder(labels_path: Path, folder: Path, index: tuple[dict[str, str], list[str], set[str]],
                 check_images: bool) -> tuple[list[Poster], LoadReport]:
    rows, note = _read_labels(labels_path)
    images, extras, files = index
    report = LoadReport(n_rows=len(rows), n_images=len(images) + len(extras), notes=[note] if note else [])
    for name in extras:
        stem = os.path.splitext(name)[0]
        report.add(stem, f"second image for this id ({name}); {images[stem]} is used", folder / name)
    checked = [id_ for id_ in images if id_ in files] if check_images else []
    facts = dict(zip(checked, folder_file_facts(folder, [images[id_] for id_ in checked],
                                                ("header_problem", "sha256"), _inspect)))
    posters = _canonical(_match(rows, folder, images, files, facts, report), report)
    _report_orphans(folder, images, {p.id for p in posters} | {s.id for s in report.skipped}, report)
    return posters, report


def stale_poster_hashes(root: str | Path) -> tuple[int, list[tuple[Path, str]]]:
    """Posters of ``root`` whose remembered sha256 no longer matches their bytes (``python -m core verify``),
    after how many remembered hashes were checked.

    Each is forgotten with the folder's remembered open, so the next open hashes it again.
    """
    folder = Path(root).expanduser() / POSTERS_DIR
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {root} has no {POSTERS_DIR}/ folder", "give a folder holding posters/")
    checked, stale = stale_file_facts(folder, "sha256", file_sha256)
    if stale:
        forget_snapshot(Path(root).expanduser())
    return checked, [(folder / name, reason) for name, reason in stale]


def _to_snapshot(posters: list[Poster], report: LoadReport) -> dict:
    return {"id": [p.id for p in posters], "title": [p.title for p in posters],
            "genres": [GENRE_SEPARATOR.join(p.genres) for p in posters], "filename": [p.filename for p in posters],
            "sha256": [p.key for p in posters], "n_rows": report.n_rows, "n_images": report.n_images,
            "skipped": [[s.id, s.reason, s.path] for s in report.skipped],
            "genre_merges": {name: list(others) for name, others in report.genre_merges.items()},
            "notes": report.notes}


def _from_snapshot(folder: Path, saved: dict | None) -> tuple[list[Poster], LoadReport] | None:
    """The posters and report of a remembered open; ``None`` when there is none or it is malformed."""
    try:
        columns = [saved[name] for name in ("id", "title", "genres", "filename", "sha256")]
        if len({len(column) for column in columns}) != 1 or not all(isinstance(key, str) for key in columns[4]):
            return None
        genres: dict[str, tuple[str, ...]] = {}
        posters = [Poster(id=id_, title=title, genres=genres.get(text) or genres.setdefault(
                       text, tuple(text.split(GENRE_SEPARATOR))), folder=folder, filename=filename, key=key)
                   for id_, title, text, filename, key in zip(*columns)]
        report = LoadReport(n_rows=saved["n_rows"], n_images=saved["n_images"],
                            skipped=[Skipped(*item) for item in saved["skipped"]],
                            genre_merges={name: tuple(others) for name, others in saved["genre_merges"].items()},
                            notes=[str(note) for note in saved["notes"]])
    except (KeyError, TypeError, AttributeError, ValueError):
        return None
    return posters, report


def read_info(root: Path) -> dict:
    path = Path(root) / INFO_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def write_info(root: Path, **info) -> None:
    atomic_write_json(Path(root) / INFO_FILE, info)


def write_labels(root: Path, rows: Iterable[tuple[str, str, Sequence[str]]]) -> None:
    """Atomically (re)write ``labels.csv`` from ``(id, title, genres)`` rows.

    Titles are cleaned (``clean_label``): a line break would make a field span lines, which
    ``load_dataset`` refuses. Genres are written as given: sources clean them first and report it.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REQUIRED_COLUMNS)
    for id_, title, genres in rows:
        writer.writerow([id_, clean_label(title), GENRE_SEPARATOR.join(genres)])
    atomic_write_text(Path(root) / LABELS_FILE, buffer.getvalue())


def _read_labels(path: Path) -> tuple[list[tuple[int, dict[str, str]]], str | None]:
    """``(line number, row)`` for each data row, and a note when the encoding was inferred.

    Refused where they are, since no reading of them is what the person meant: a quoted field running
    over lines (an unbalanced quote makes the csv module read on to the next quote, swallowing the rows
    between into one field; no real id, title or genre list spans lines), a row with more non-empty
    fields than the header (a ',' outside quotes: genres joined by ',', or a title's comma), control
    characters in genres and genres joined by ','.
    """
    decoded = decode_table(path.read_bytes(), str(path))
    reader = csv.reader(io.StringIO(decoded.text))
    rows: list[tuple[int, dict[str, str]]] = []
    long_rows: list[tuple[int, list[str]]] = []
    try:
        header = next(reader, [])
        columns = [c.strip() for c in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DatasetError(f"{path} lacks column(s) {', '.join(missing)}; it has {columns}",
                               "labels.csv needs the header id,title,genres with genres joined by |")
        end = reader.line_num
        for fields in reader:
            start, end = end + 1, reader.line_num
            if any("\n" in value or "\r" in value for value in fields):
                raise DatasetError(
                    f"{path}, line {start}: a quoted field runs over lines {start}-{end}",
                    "a \" opened in this row is never closed; close it, or double it (\"\") inside a quoted field")
            if len(fields) > len(columns) and (extra := [v for v in fields[len(columns):] if v.strip()]):
                long_rows.append((start, extra))
            if fields:
                rows.append((start, {name: (fields[i] if i < len(fields) else "")
                                     for i, name in enumerate(columns) if name}))
    except csv.Error as err:
        raise DatasetError(f"{path}, line {reader.line_num}: not valid CSV ({err})") from err
    _check_long_rows(path, long_rows, len(columns))
    _check_genre_text(path, [(number, row["genres"]) for number, row in rows])
    return rows, decoded.note


def comma_joined(cells: Sequence[tuple[int, str]], separator: str = GENRE_SEPARATOR) -> list[tuple[int, str]]:
    """The ``(line, genres cell)`` whose genres look joined by ``,`` rather than ``separator``.

    With no ``separator`` in any cell, every cell holding a comma; otherwise the cells with a name
    whose comma-separated parts are all genres named elsewhere ("Drama,Romance" beside "Drama" and
    "Romance"). A genre name holding a comma is kept when other rows show ``separator`` in use.
    """
    if separator == ",":
        return []
    with_comma = [(line, cell) for line, cell in cells if "," in cell]
    if not with_comma or not any(separator in cell for _, cell in cells):
        return with_comma
    known = {genre_key(name) for _, cell in cells for name in cell.split(separator) if "," not in name}
    return [(line, cell) for line, cell in with_comma
            if any(all(genre_key(part) in known for part in name.split(",") if part.strip())
                   for name in cell.split(separator) if "," in name)]


def _check_long_rows(path: Path, long_rows: list[tuple[int, list[str]]], n_columns: int) -> None:
    if long_rows:
        line, extra = long_rows[0]
        raise DatasetError(
            f"{path}, {format_lines([line for line, _ in long_rows])}: more fields than the header's {n_columns} "
            f"(line {line} goes on with {', '.join(map(repr, extra))})",
            "genres are joined by |: replace ',' with '|'; a title holding ',' goes in double quotes")


def _check_genre_text(path: Path, cells: list[tuple[int, str]]) -> None:
    controls = [(line, cell) for line, cell in cells if control_characters(cell)] \
        if control_characters("".join(cell for _, cell in cells)) else []
    if controls:
        line, cell = controls[0]
        raise DatasetError(
            f"{path}, {format_lines([line for line, _ in controls])}: genres hold control characters "
            f"(line {line}: {cell!r} has {', '.join(control_characters(cell))})",
            "remove them: a genre is plain text, and genres are joined by |")
    joined = comma_joined(cells)
    if joined:
        line, cell = joined[0]
        fixed = GENRE_SEPARATOR.join(" ".join(part.split()) for part in cell.split(","))
        raise DatasetError(
            f"{path}, {format_lines([line for line, _ in joined])}: genres look joined by ',' "
            f"(line {line}: {cell!r} would be read as one genre)",
            f"genres are joined by |: replace ',' with '|' (line {line}: {fixed!r})")


def format_lines(numbers: Sequence[int], shown: int = 5) -> str:
    """``line 3``, ``lines 3, 5 and 9``, ``lines 3, 5, 9, 12, 14 and 6 more``."""
    if len(numbers) == 1:
        return f"line {numbers[0]}"
    head = ", ".join(map(str, numbers[:shown]))
    if len(numbers) > shown:
        return f"lines {head} and {len(numbers) - shown} more"
    return f"lines {head.rsplit(', ', 1)[0]} and {numbers[-1]}"


def _list_images(folder: Path) -> tuple[list[str], list[str]]:
    """The names in ``folder`` with an image extension: regular files, then anything else (folders, broken
    links, symlink loops, pipes), each sorted; from the directory listing, with no ``stat`` per file."""
    files: list[str] = []
    others: list[str] = []
    if folder.is_dir():
        with os.scandir(folder) as listing:
            for entry in listing:
                name = entry.name
                # os.path.splitext's extension, faster: the name ends with one and has a dot after its leading dots
                if name.lower().endswith(IMAGE_EXTENSIONS) and "." in name.lstrip("."):
                    (files if _is_file(entry) else others).append(name)
    return sorted(files), sorted(others)


def _is_file(entry: os.DirEntry) -> bool:
    """Whether ``entry`` is a regular file; a symlink loop (``ELOOP``) is not, and its row is skipped with
    that reason instead of stopping the whole dataset."""
    try:
        return entry.is_file()
    except OSError:
        return False


def _index_images(files: list[str], others: list[str]) -> tuple[dict[str, str], list[str], set[str]]:
    """File names by id (file stem), any further ones for an id already seen, and the ids whose entry is
    a regular file (regular files win when an id has several entries).

    Folders and broken links named like images are kept, so their rows are skipped with that reason
    rather than as "no image".
    """
    images: dict[str, str] = {}
    extras: list[str] = []
    for name in [*files, *others]:
        stem = os.path.splitext(name)[0]
        if stem in images:
            extras.append(name)
        else:
            images[stem] = name
    regular = set(files)
    return images, extras, {stem for stem, name in images.items() if name in regular}


def _match(rows: list[tuple[int, dict[str, str]]], folder: Path, images: dict[str, str], files: set[str],
           facts: dict[str, tuple[str | None, str]], report: LoadReport) -> list[Poster]:
    """The posters of ``rows``; ``facts`` holds the header check and sha256 of each checked file."""
    posters: list[Poster] = []
    seen: set[str] = set()
    for number, row in rows:
        id_ = row["id"].strip()
        if not id_:
            report.add(f"line {number}", "empty id")
            continue
        if id_ in seen:
            report.add(id_, f"duplicate id (line {number}); the first row is kept")
            continue
        seen.add(id_)
        genres = split_genres(row["genres"])
        name = images.get(id_)
        if name is None:
            report.add(id_, "no image posters/<id>.jpg|jpeg|png|webp for this row")
        elif not genres:
            report.add(id_, "empty genre list", folder / name)
        elif problem := (facts.get(id_, (None,))[0] if id_ in files else _header_problem(folder / name)):
            report.add(id_, problem, folder / name)
        else:
            posters.append(Poster(id=id_, title=" ".join(row["title"].split()) or id_, genres=genres, folder=folder,
                                  filename=name, key=facts[id_][1] if id_ in facts else None))
    return posters


def _canonical(posters: list[Poster], report: LoadReport) -> list[Poster]:
    """The posters with every genre in its one spelling; the merges go into ``report``."""
    spelling, report.genre_merges = canonical_genres([poster.genres for poster in posters])
    if not report.genre_merges:
        return posters
    return [dataclasses.replace(poster, genres=tuple(spelling[g] for g in poster.genres)) for poster in posters]


def _report_orphans(folder: Path, images: dict[str, str], known: set[str], report: LoadReport) -> None:
    for id_, name in images.items():
        if id_ not in known:
            report.add(id_, "image without a row in labels.csv", folder / name)


def _inspect(path: Path) -> tuple[str | None, str]:
    """The header check and the sha256 of one poster file, read together."""
    return _header_problem(path), file_sha256(path)


def _header_problem(path: Path) -> str | None:
    try:
        check_image_header(path)
    except ImageError as err:
        return f"unreadable image: {err.message.removeprefix(f'{path.name}: ')}"
    return None
