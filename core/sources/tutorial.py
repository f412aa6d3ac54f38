"""The tutorial's own files into a standard dataset folder.

The tutorial pickled its TMDB movie dicts (``poster_movies.pckl``) and genre names
(``Genredict.pckl``) and saved each poster as ``<title>.jpg`` with some characters stripped. Posters
are matched to movies by title (then original title): the exact file name first, then a normalised
form (accents dropped, casefolded, only letters and digits) and an ASCII-only form, so names the
tutorial sanitised still match. A file two movies claim (remakes share titles, and the tutorial
overwrote one with the other) is not guessed at: those movies are reported, as are movies without a
file and files without a movie. Pickles are read with ``core.safe_pickle`` so nothing in them runs.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from core.data.datasets import Skipped
from core.errors import DatasetError
from core.data.images import IMAGE_EXTENSIONS
from core.safe_pickle import load_plain_pickle
from core.sources.tmdb import (genre_ids_problem, genre_name, movie_metadata, note_unknown_genres, parse_genre_id,
                               unknown_genres)
from core.progress import ProgressFn
from core.sources.builder import AcquireResult, DatasetFolder, PosterItem, build_dataset


SOURCE = "tutorial"


@dataclass
class PosterMatch:
    matched: dict[int, Path] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)


def title_key(text: str) -> str:
    """Accents dropped, casefolded, letters and digits only: ``"Amélie: Le/Film"`` → ``"ameliefilm"``."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed.casefold() if c.isalnum() and not unicodedata.combining(c))


def ascii_key(text: str) -> str:
    """Only ASCII letters and digits, as a Python 2 ``encode('ascii', 'ignore')`` would leave them."""
    return re.sub(r"[^0-9a-z]", "", text.casefold())


def read_movies(path: str | Path) -> list[dict[str, Any]]:
    data = load_plain_pickle(path)
    movies = list(data.values()) if isinstance(data, dict) else data
    if not isinstance(movies, (list, tuple)) or not any(isinstance(m, dict) for m in movies):
        raise DatasetError(f"{path} holds {type(data).__name__}, not a list of TMDB movie dicts",
                           "give the poster_movies.pckl the tutorial saved")
    return list(movies)


def read_genre_names(path: str | Path) -> dict[int, str]:
    """Genre id → name from ``Genredict.pckl`` (a dict) or a TMDB-style list of {id, name}."""
    data = load_plain_pickle(path)
    if isinstance(data, dict) and isinstance(data.get("genres"), list):
        data = data["genres"]
    if isinstance(data, list):
        data = {g.get("id"): g.get("name") for g in data if isinstance(g, dict)}
    if not isinstance(data, dict):
        raise DatasetError(f"{path} holds {type(data).__name__}, not a dict of genre id → name",
                           "give the Genredict.pckl the tutorial saved")
    names = {}
    for key, name in data.items():
        if not isinstance(name, str) or not name.strip():
            continue
        id_ = parse_genre_id(key)
        if id_ is None:
            raise DatasetError(f"{path}: genre {name.strip()[:40]!r} has the id {str(key)[:40]!r}, which is not "
                               "a whole number", "Genredict.pckl maps TMDB's integer genre ids to names; fix or "
                                                 "remove that entry")
        names[id_] = name.strip()
    return names


def match_posters(movies: list[dict[str, Any]], posters_dir: str | Path) -> PosterMatch:
    folder = Path(posters_dir).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"poster folder {folder} does not exist",
                           "give the folder where the tutorial saved <title>.jpg posters")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    lookups = [_index(files, lambda p: p.stem), _index(files, lambda p: title_key(p.stem)),
               _index(files, lambda p: ascii_key(p.stem))]
    keys: list[Callable[[str], str]] = [lambda t: t, title_key, ascii_key]
    result, claims = PosterMatch(), {}
    for movie in movies:
        found = _find(movie, lookups, keys)
        if isinstance(found, str):
            result.skipped.append(Skipped(str(movie["id"]), found))
        else:
            claims.setdefault(found, []).append(movie)
    for path, claimants in claims.items():
        if len(claimants) == 1:
            result.matched[claimants[0]["id"]] = path
            continue
        ids = ", ".join(str(m["id"]) for m in claimants)
        for movie in claimants:
            result.skipped.append(Skipped(str(movie["id"]), f"poster file {path.name!r} matches several "
                                          f"movies (ids {ids}); cannot tell whose poster it is", str(path)))
    for path in files:
        if path not in claims:
            result.skipped.append(Skipped(path.name, "poster file without a movie in the pickle",
                                          str(path)))
    return result


def import_tutorial(movies_path: str | Path, genres_path: str | Path, posters_dir: str | Path,
                    out: str | Path, *, workers: int = 2, batch_size: int = 50,
                    progress: ProgressFn | None = None) -> AcquireResult:
    """Copy the tutorial's posters, verified and named by TMDB id, into a standard dataset ``out``."""
    names = read_genre_names(genres_path)
    movies, skipped = _usable(read_movies(movies_path))
    match = match_posters(movies, posters_dir)
    items = [_item(movie, names, match.matched[movie["id"]]) for movie in movies
             if movie["id"] in match.matched]
    folder = DatasetFolder.open(out, SOURCE)
    parameters = {"movies": str(Path(movies_path).expanduser()),
                  "genres": str(Path(genres_path).expanduser()),
                  "posters": str(Path(posters_dir).expanduser())}
    info = {"parameters": parameters, "unknown_genres": unknown_genres(movies, names)}
    result = build_dataset(items, folder, _read_file, info=info,
                           skipped=skipped + match.skipped, workers=workers,
                           batch_size=batch_size, progress=progress)
    note_unknown_genres(result, [m for m in movies if m["id"] in match.matched], names)
    return result


def _usable(movies: Iterable[Any]) -> tuple[list[dict[str, Any]], list[Skipped]]:
    usable, skipped, seen = [], [], set()
    for number, movie in enumerate(movies):
        id_ = movie.get("id") if isinstance(movie, dict) else None
        label = str(id_) if id_ is not None else f"entry {number}"
        if not isinstance(movie, dict) or not isinstance(id_, int) or isinstance(id_, bool) or id_ <= 0:
            skipped.append(Skipped(label, "not a movie dict with a positive integer id"))
        elif id_ in seen:
            continue
        elif not isinstance(movie.get("title") or movie.get("original_title"), str):
            skipped.append(Skipped(label, "movie without a title"))
        elif not movie.get("genre_ids"):
            skipped.append(Skipped(label, f"{movie.get('title')!r} has no (integer) genre ids"))
        elif problem := genre_ids_problem(movie.get("genre_ids")):
            skipped.append(Skipped(label, f"{movie.get('title')!r}: {problem}"))
        else:
            seen.add(id_)
            usable.append(movie)
    return usable, skipped


def _genre_ids(value: list) -> list[int]:
    """The ids of a ``genre_ids`` list ``genre_ids_problem`` accepted."""
    return [parse_genre_id(g) for g in value]


def _index(files: list[Path], key: Callable[[Path], str]) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for path in files:
        if key(path):
            index.setdefault(key(path), []).append(path)
    return index


def _find(movie: dict[str, Any], lookups: list[dict[str, list[Path]]],
          keys: list[Callable[[str], str]]) -> Path | str:
    """The one poster file of ``movie``, or the reason there is none."""
    titles = [t for t in (movie.get("title"), movie.get("original_title")) if isinstance(t, str) and t]
    for lookup, key in zip(lookups, keys):
        for title in titles:
            paths = lookup.get(key(title), []) if key(title) else []
            if len(paths) == 1:
                return paths[0]
            if paths:
                return f"several poster files match {title!r}: {', '.join(p.name for p in paths)}"
    return f"no poster file for {titles[0]!r}" if titles else "movie without a title"


def _item(movie: dict[str, Any], names: dict[int, str], path: Path) -> PosterItem:
    metadata = {**movie_metadata(movie, names), "poster_file": path.name}
    metadata.pop("poster_url")
    genres = tuple(dict.fromkeys(genre_name(g, names) for g in _genre_ids(movie["genre_ids"])))
    title = movie.get("title") or movie.get("original_title")
    return PosterItem(id=str(movie["id"]), title=title, genres=genres, source=str(path),
                      metadata=metadata)


def _read_file(item: PosterItem) -> bytes:
    problem = None
    try:
        return Path(item.source).read_bytes()
    except OSError as err:
        problem = err.strerror
    raise DatasetError(f"cannot read {item.source}: {problem}")
