"""TMDB, the source the tutorial used: credentials, a small API client and the poster download.

``download_tmdb`` pages through a movie list (popular, top rated or discover), names genres from
``/genre/movie/list`` (ids TMDB no longer lists, such as the retired 10769, are kept under a clear
name and reported), and hands the movies to ``core.sources.builder.build_dataset``, which saves the
verified posters by TMDB id and resumes an interrupted run. The fetched list is kept in
``progress.json`` so a rerun with the same arguments makes no API calls for it.

Credentials come from ``TMDB_API_KEY`` (v3, sent as the ``api_key`` query parameter to the API host
only) or ``TMDB_READ_TOKEN`` (v4, sent as ``Authorization: Bearer`` to the API host only), from the
environment or ``.streamlit/secrets.toml``. They never reach the image host, a file or a message.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from core.cache import atomic_write_json, read_json
from core.data.datasets import Skipped
from core.errors import AuthError, CacheError, DownloadError, PosterGenreError
from core.sources.http import HttpClient, HttpConfig, redact
from core.progress import ProgressFn, ProgressTracker
from core.sources.builder import AcquireResult, DatasetFolder, PosterItem, build_dataset

API_BASE_ENV = "TMDB_API_BASE"
IMAGE_BASE_ENV = "TMDB_IMAGE_BASE"
DEFAULT_API_BASE = "https://api.themoviedb.org/3"
DEFAULT_IMAGE_BASE = "https://image.tmdb.org/t/p"
LISTS = {"popular": "/movie/popular", "top_rated": "/movie/top_rated", "discover": "/discover/movie"}
MAX_PAGE = 500
RETIRED_GENRES = {10769: "Foreign"}
SOURCE = "tmdb"
STATE_FILE = "progress.json"
STATE_VERSION = 1
KEY_HELP = ("get a free API key at https://www.themoviedb.org/settings/api, then set TMDB_API_KEY "
            "(v3 API key) or TMDB_READ_TOKEN (v4 API read access token) in the environment or in "
            ".streamlit/secrets.toml")
AUTH_HINT = "check TMDB_API_KEY / TMDB_READ_TOKEN; a v4 read token goes in TMDB_READ_TOKEN"
METADATA_FIELDS = ("tmdb_id", "title", "original_title", "release_date", "year", "genre_ids", "genres",
                   "overview", "popularity", "vote_average", "vote_count", "original_language",
                   "poster_path", "poster_url")
_MOVIE_FIELDS = ("id", "title", "original_title", "release_date", "genre_ids", "overview", "popularity",
                 "vote_average", "vote_count", "original_language", "poster_path")


@dataclass(frozen=True)
class TmdbCredentials:
    api_key: str | None = field(default=None, repr=False)
    read_token: str | None = field(default=None, repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.api_key, self.read_token) if s)


@dataclass(frozen=True)
class TmdbConfig:
    max_movies: int = 500
    list_name: str = "popular"
    years: tuple[int, int] | None = None
    genres: tuple[str, ...] = ()
    poster_size: str = "w342"
    language: str = "en-US"
    workers: int = 4
    batch_size: int = 20
    requests_per_second: float = 20.0


@dataclass
class MovieList:
    movies: list[dict[str, Any]]
    genre_names: dict[int, str]
    skipped: list[Skipped] = field(default_factory=list)
    duplicates: int = 0


def secrets_paths() -> list[Path]:
    return [Path.cwd() / ".streamlit" / "secrets.toml", Path.home() / ".streamlit" / "secrets.toml"]


def load_credentials(environ: Mapping[str, str] | None = None,
                     paths: list[Path] | None = None) -> TmdbCredentials:
    """Credentials from the environment, else the first ``secrets.toml`` that has them."""
    environ = os.environ if environ is None else environ
    found = _pick(environ.get("TMDB_API_KEY"), environ.get("TMDB_READ_TOKEN"))
    for path in secrets_paths() if paths is None else paths:
        if found.secrets:
            break
        if Path(path).is_file():
            found = _pick(*_from_toml(Path(path)))
    if not found.secrets:
        raise AuthError("no TMDB credentials found (TMDB_API_KEY or TMDB_READ_TOKEN)", KEY_HELP)
    return found


def parse_years(text: str) -> tuple[int, int]:
    """``"1990-2017"`` or ``"2001"`` as an inclusive (first, last) pair."""
    match = re.fullmatch(r"\s*(\d{4})\s*(?:-\s*(\d{4})\s*)?", text or "")
    if not match:
        raise PosterGenreError(f"years {text!r} are not like 1990-2017", "give YYYY or YYYY-YYYY")
    first, last = int(match.group(1)), int(match.group(2) or match.group(1))
    if first > last:
        raise PosterGenreError(f"years {text!r} run backwards", f"did you mean {last}-{first}?")
    return first, last


def config_from_text(max_movies: int, list_name: str | None = None, years: str = "", genres: str = "",
                     **options: Any) -> TmdbConfig:
    """A ``TmdbConfig`` from typed text: ``years`` like ``1990-2017``, ``genres`` comma-separated;
    with no ``list_name`` the list is discover when years or genres are given, else popular."""
    wanted = tuple(g.strip() for g in (genres or "").split(",") if g.strip())
    span = parse_years(years) if (years or "").strip() else None
    list_name = list_name or ("discover" if span or wanted else "popular")
    return TmdbConfig(max_movies=max_movies, list_name=list_name, years=span, genres=wanted, **options)


_GENRE_ID = re.compile(r"\s*[0-9]+\s*")
"""ASCII digits only: ``"²"`` is a digit to ``str.isdigit`` but not a number to ``int``."""


def parse_genre_id(value: Any) -> int | None:
    """A genre id as TMDB and the tutorial's pickles write it (``28`` or ``"28"``); ``None`` for anything
    else (``"abc"``, ``"²"``, ``True``, ``2.5``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and _GENRE_ID.fullmatch(value) else None


def genre_ids_problem(value: Any) -> str | None:
    """Why a movie's ``genre_ids`` is not a list of genre ids, naming the bad value; ``None`` when it is."""
    if not isinstance(value, (list, tuple)):
        return f"genre_ids {str(value)[:40]!r} is not a list of genre ids"
    bad = [g for g in value if parse_genre_id(g) is None]
    return f"genre id {str(bad[0])[:40]!r} is not a whole number" if bad else None


def genre_name(genre_id: int, names: Mapping[int, str]) -> str:
    if genre_id in names:
        return names[genre_id]
    if genre_id in RETIRED_GENRES:
        return f"{RETIRED_GENRES[genre_id]} ({genre_id})"
    return f"Unknown genre {genre_id}"


class TmdbClient:
    """The TMDB v3 API with credentials attached to API requests only."""

    def __init__(self, credentials: TmdbCredentials, *, api_base: str | None = None,
                 image_base: str | None = None, http_config: HttpConfig | None = None) -> None:
        self.credentials = credentials
        self.api_base = (api_base or os.environ.get(API_BASE_ENV) or DEFAULT_API_BASE).rstrip("/")
        self.image_base = (image_base or os.environ.get(IMAGE_BASE_ENV)
                           or DEFAULT_IMAGE_BASE).rstrip("/")
        self.http = HttpClient(http_config, secrets=credentials.secrets)

    def __enter__(self) -> "TmdbClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.http.close()

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        params, headers = dict(params or {}), {"Accept": "application/json"}
        if self.credentials.read_token:
            headers["Authorization"] = f"Bearer {self.credentials.read_token}"
        else:
            params["api_key"] = self.credentials.api_key
        rejected = False
        try:
            data = self.http.get_json(f"{self.api_base}{path}", params=params, headers=headers)
        except AuthError:
            rejected = True
        if rejected:
            raise AuthError("TMDB rejected the API key (401)", AUTH_HINT)
        if not isinstance(data, dict):
            raise DownloadError(f"TMDB answered {path} with {type(data).__name__}, not a JSON object",
                                "check TMDB_API_BASE points at the TMDB v3 API")
        return data

    def genre_names(self, language: str = "en-US") -> dict[int, str]:
        data = self.get("/genre/movie/list", {"language": language})
        names = {}
        for genre in data.get("genres") or []:
            if isinstance(genre, dict) and "id" in genre and "name" in genre:
                id_ = parse_genre_id(genre["id"])
                if id_ is None:
                    raise DownloadError(f"TMDB's genre list gives genre {str(genre['name'])[:40]!r} the id "
                                        f"{str(genre['id'])[:40]!r}, which is not a whole number",
                                        "check TMDB_API_BASE points at the TMDB v3 API")
                names[id_] = str(genre["name"])
        return names

    def poster_url(self, poster_path: str, size: str) -> str:
        return f"{self.image_base}/{size}/{poster_path.lstrip('/')}"

    def poster(self, url: str) -> bytes:
        """Poster bytes from the image host, which gets no credentials."""
        return self.http.get_bytes(url)


def list_movies(client: TmdbClient, config: TmdbConfig,
                progress: ProgressFn | None = None) -> MovieList:
    """Page through the chosen list until ``max_movies`` usable movies (poster and genres) or its end."""
    names = client.genre_names(config.language)
    params = _list_params(config, names)
    listing = MovieList(movies=[], genre_names=names)
    seen: set[int] = set()
    page, last_page = 1, 1
    tracker = ProgressTracker(config.max_movies, "movies", progress)
    while page <= last_page and len(listing.movies) < config.max_movies:
        data = client.get(LISTS[config.list_name], {**params, "page": page})
        last_page = min(_int(data.get("total_pages")), MAX_PAGE)
        for movie in data.get("results") or []:
            if len(listing.movies) >= config.max_movies:
                break
            _take(movie, listing, seen)
        tracker.update(len(listing.movies), message=f"list page {page} of {last_page}")
        page += 1
    return listing


def download_tmdb(out: str | Path, config: TmdbConfig = TmdbConfig(), *,
                  credentials: TmdbCredentials | None = None, api_base: str | None = None,
                  image_base: str | None = None, http_config: HttpConfig | None = None,
                  progress: ProgressFn | None = None) -> AcquireResult:
    """Download up to ``config.max_movies`` posters with genres into ``out``; resumes a stopped run."""
    _check_config(config)
    credentials = credentials or load_credentials()
    folder = DatasetFolder.open(out, SOURCE)
    http_config = http_config or HttpConfig(requests_per_second=config.requests_per_second)
    with TmdbClient(credentials, api_base=api_base, image_base=image_base,
                    http_config=http_config) as client:
        query = _query(config, client)
        listing = _saved_listing(folder, query) or list_movies(client, config, progress)
        _save_listing(folder, query, listing)
        items = [_item(movie, listing.genre_names, client, config.poster_size)
                 for movie in listing.movies]
        info = {"parameters": {**query, "poster_size": config.poster_size},
                "unknown_genres": unknown_genres(listing.movies, listing.genre_names)}
        result = build_dataset(items, folder, lambda item: client.poster(item.source), info=info,
                               skipped=listing.skipped, workers=config.workers,
                               batch_size=config.batch_size, progress=progress)
    note_unknown_genres(result, listing.movies, listing.genre_names)
    if listing.duplicates:
        result.notes.append(f"{listing.duplicates} movie(s) listed twice across pages were counted once")
    return result


def movie_metadata(movie: Mapping[str, Any], names: Mapping[int, str],
                   poster_url: str | None = None) -> dict[str, Any]:
    """The metadata.csv row of a TMDB movie dict (as the API, or the tutorial's pickle, has it)."""
    genre_ids = [_int(g) for g in movie.get("genre_ids") or []]
    release = str(movie.get("release_date") or "")
    return {
        "tmdb_id": movie.get("id"), "title": movie.get("title"),
        "original_title": movie.get("original_title"), "release_date": release,
        "year": release[:4] if re.match(r"\d{4}", release) else "",
        "genre_ids": genre_ids, "genres": [genre_name(g, names) for g in genre_ids],
        "overview": movie.get("overview"), "popularity": movie.get("popularity"),
        "vote_average": movie.get("vote_average"), "vote_count": movie.get("vote_count"),
        "original_language": movie.get("original_language"),
        "poster_path": movie.get("poster_path"), "poster_url": poster_url,
    }


def _pick(api_key: str | None, read_token: str | None) -> TmdbCredentials:
    api_key, read_token = (api_key or "").strip() or None, (read_token or "").strip() or None
    if api_key and not read_token and _looks_like_read_token(api_key):
        return TmdbCredentials(read_token=api_key)
    return TmdbCredentials(api_key=api_key, read_token=read_token)


def _looks_like_read_token(value: str) -> bool:
    return value.startswith("eyJ") and value.count(".") == 2


def _from_toml(path: Path) -> tuple[str | None, str | None]:
    problem = None
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as err:
        problem = f"{type(err).__name__}: {getattr(err, 'strerror', None) or err}"
    if problem:
        raise AuthError(f"cannot read TMDB credentials from {path} ({problem})",
                        "fix the file's TOML syntax, or set TMDB_API_KEY in the environment")
    section = data.get("tmdb") if isinstance(data.get("tmdb"), dict) else {}
    key = data.get("TMDB_API_KEY") or section.get("api_key") or section.get("TMDB_API_KEY")
    token = data.get("TMDB_READ_TOKEN") or section.get("read_token") or section.get("TMDB_READ_TOKEN")
    return (key if isinstance(key, str) else None), (token if isinstance(token, str) else None)


def _check_config(config: TmdbConfig) -> None:
    if config.list_name not in LISTS:
        raise PosterGenreError(f"unknown TMDB list {config.list_name!r}",
                               f"choose one of {', '.join(LISTS)}")
    if (config.years or config.genres) and config.list_name != "discover":
        raise PosterGenreError(f"years and genres filter only the discover list, not {config.list_name!r}",
                               "use --list discover")
    if config.max_movies < 1:
        raise PosterGenreError(f"max movies must be at least 1, got {config.max_movies}")
    if not re.fullmatch(r"w\d+|original", config.poster_size):
        raise PosterGenreError(f"poster size {config.poster_size!r} is not a TMDB size",
                               "use w92, w154, w185, w342, w500, w780 or original")


def _list_params(config: TmdbConfig, names: Mapping[int, str]) -> dict[str, Any]:
    params: dict[str, Any] = {"language": config.language}
    if config.list_name != "discover":
        return params
    params["sort_by"] = "popularity.desc"
    if config.years:
        params["primary_release_date.gte"] = f"{config.years[0]}-01-01"
        params["primary_release_date.lte"] = f"{config.years[1]}-12-31"
    if config.genres:
        params["with_genres"] = "|".join(str(i) for i in _genre_ids(config.genres, names))
    return params


def _genre_ids(wanted: tuple[str, ...], names: Mapping[int, str]) -> list[int]:
    by_name = {name.casefold(): id_ for id_, name in names.items()}
    unknown = [name for name in wanted if name.strip().casefold() not in by_name]
    if unknown:
        raise PosterGenreError(f"TMDB has no genre named {', '.join(map(repr, unknown))}",
                               f"choose from: {', '.join(sorted(names.values()))}")
    return [by_name[name.strip().casefold()] for name in wanted]


def _take(movie: Any, listing: MovieList, seen: set[int]) -> None:
    if not isinstance(movie, dict) or _int(movie.get("id")) <= 0:
        listing.skipped.append(Skipped("?", f"list entry without a valid id: {str(movie)[:80]}"))
        return
    id_ = _int(movie["id"])
    if id_ in seen:
        listing.duplicates += 1
        return
    seen.add(id_)
    title = str(movie.get("title") or movie.get("original_title") or id_)
    if not movie.get("poster_path"):
        listing.skipped.append(Skipped(str(id_), f"{title!r} has no poster on TMDB"))
    elif not movie.get("genre_ids"):
        listing.skipped.append(Skipped(str(id_), f"{title!r} has no genres on TMDB"))
    elif problem := genre_ids_problem(movie["genre_ids"]):
        listing.skipped.append(Skipped(str(id_), f"{title!r}: {problem}"))
    else:
        listing.movies.append({key: movie.get(key) for key in _MOVIE_FIELDS})


def _item(movie: dict[str, Any], names: Mapping[int, str], client: TmdbClient,
          size: str) -> PosterItem:
    url = client.poster_url(str(movie["poster_path"]), size)
    metadata = movie_metadata(movie, names, url)
    title = str(movie.get("title") or movie.get("original_title") or movie["id"])
    return PosterItem(id=str(movie["id"]), title=title, genres=tuple(dict.fromkeys(metadata["genres"])),
                      source=url, metadata=metadata)


def _query(config: TmdbConfig, client: TmdbClient) -> dict[str, Any]:
    """What decides the movie list; a saved list is reused only when this matches."""
    return {"list": config.list_name, "years": list(config.years) if config.years else None,
            "genres": list(config.genres), "max_movies": config.max_movies,
            "language": config.language,
            "api_base": redact(client.api_base, client.credentials.secrets)}


def _saved_listing(folder: DatasetFolder, query: dict[str, Any]) -> MovieList | None:
    if not folder.owns(STATE_FILE):
        return None
    try:
        state = read_json(folder.root / STATE_FILE)
    except (FileNotFoundError, CacheError):
        return None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION \
            or state.get("query") != query:
        return None
    return MovieList(movies=state["movies"],
                     genre_names={int(k): v for k, v in state["genre_names"].items()},
                     skipped=[Skipped(*item) for item in state["skipped"]],
                     duplicates=state["duplicates"])


def _save_listing(folder: DatasetFolder, query: dict[str, Any], listing: MovieList) -> None:
    atomic_write_json(folder.path_for(STATE_FILE), {
        "version": STATE_VERSION, "query": query, "movies": listing.movies,
        "genre_names": {str(k): v for k, v in listing.genre_names.items()},
        "skipped": [[s.id, s.reason] for s in listing.skipped], "duplicates": listing.duplicates})


def unknown_genres(movies: list[Mapping[str, Any]], names: Mapping[int, str]) -> dict[int, str]:
    """The genre ids ``movies`` use that ``names`` lacks, with the name they are kept under."""
    ids = {_int(g) for movie in movies for g in movie.get("genre_ids") or []}
    return {g: genre_name(g, names) for g in sorted(ids - set(names))}


def note_unknown_genres(result: AcquireResult, movies: list[Mapping[str, Any]],
                        names: Mapping[int, str]) -> None:
    for genre_id, name in unknown_genres(movies, names).items():
        count = sum(genre_id in map(_int, m.get("genre_ids") or []) for m in movies)
        result.unknown_genres[genre_id] = name
        result.notes.append(f"genre id {genre_id} is not in TMDB's genre list; kept as {name!r} "
                            f"({count} movie{'' if count == 1 else 's'})")


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
