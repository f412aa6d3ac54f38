"""The data-acquisition subcommands: ``download-tmdb``, ``import-tutorial`` and ``download-urls``.

``add_commands`` registers them on the main CLI's subparsers. Each handler turns its arguments into
a library call, shows a one-line progress on stderr, then prints a summary with every skipped item
and its reason. Expected failures are raised as ``PosterGenreError`` for the main CLI to print.
Credentials are read from the environment or secrets.toml only, never from the command line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, TextIO

from core.errors import DownloadError
from core.progress import ProgressLine
from core.sources.tmdb import LISTS, config_from_text, download_tmdb
from core.sources.tutorial import import_tutorial
from core.sources.builder import AcquireResult
from core.sources.url_table import UrlTableConfig, download_url_table

INTERRUPTED_EXIT = 130
OUT_HELP = ("dataset folder: new, empty, or one this command made earlier (its rows are kept and new "
            "ones added); `python -m core datasets` shows where the app looks for datasets")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    _add_tmdb(subparsers)
    _add_tutorial(subparsers)
    _add_urls(subparsers)


def run_download_tmdb(args: argparse.Namespace) -> int:
    config = config_from_text(args.max_movies, args.list_name, args.years, args.genres,
                              poster_size=args.poster_size, language=args.language,
                              workers=args.workers, requests_per_second=args.rate)
    return _run(args.out, lambda progress: download_tmdb(args.out, config, progress=progress))


def run_import_tutorial(args: argparse.Namespace) -> int:
    return _run(args.out, lambda progress: import_tutorial(
        args.movies, args.genres, args.posters, args.out, progress=progress))


def run_download_urls(args: argparse.Namespace) -> int:
    config = UrlTableConfig(id_column=args.id_column, title_column=args.title_column,
                            genres_column=args.genres_column, url_column=args.url_column,
                            genre_separator=args.genre_separator, max_rows=args.max_rows,
                            workers=args.workers, requests_per_second=args.rate)
    return _run(args.out, lambda progress: download_url_table(args.csv, args.out, config,
                                                              progress=progress))


def print_result(result: AcquireResult, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    print(f"saved {result.summary()}", file=stream)
    for note in result.notes:
        print(f"note: {note}", file=stream)
    if result.skipped:
        print(f"skipped or failed ({result.n_skipped}):", file=stream)
        for line in result.lines():
            print(f"  {line}", file=stream)


def _run(out: Path, call: Callable[[ProgressLine], AcquireResult]) -> int:
    progress = ProgressLine()
    try:
        result = call(progress)
    except KeyboardInterrupt:
        progress.close()
        saved = _count_posters(Path(out))
        print(f"interrupted: {saved} posters are saved in {out}; run the same command again to "
              "resume", file=sys.stderr)
        return INTERRUPTED_EXIT
    finally:
        progress.close()
    print_result(result)
    if result.n_saved == 0:
        raise DownloadError(f"no posters were saved in {out}",
                            "see the reasons listed above (also in failures.csv)")
    return 0


def _count_posters(out: Path) -> int:
    folder = out.expanduser() / "posters"
    return sum(1 for p in folder.iterdir() if p.suffix != ".tmp") if folder.is_dir() else 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


def _add_tmdb(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download-tmdb", help="download posters and genres from TMDB into a dataset folder",
        description="Download movie posters and genres from TMDB (as the tutorial did). Needs "
                    "TMDB_API_KEY or TMDB_READ_TOKEN in the environment or .streamlit/secrets.toml. "
                    "An interrupted run resumes when the same command is run again.")
    parser.add_argument("--out", type=Path, required=True, help=OUT_HELP)
    parser.add_argument("--max-movies", type=_positive_int, required=True)
    parser.add_argument("--list", dest="list_name", choices=list(LISTS), default=None,
                        help="movie list (default popular; discover when --years/--genres are given)")
    parser.add_argument("--years", help="release years for --list discover, e.g. 1990-2017")
    parser.add_argument("--genres", help="genre names for --list discover, e.g. Action,Horror (any of)")
    parser.add_argument("--poster-size", default="w342", help="TMDB image size (default w342)")
    parser.add_argument("--language", default="en-US")
    parser.add_argument("--workers", type=_positive_int, default=4)
    parser.add_argument("--rate", type=_positive_float, default=20.0,
                        help="requests per second (default 20)")
    parser.set_defaults(func=run_download_tmdb)


def _add_tutorial(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-tutorial", help="turn the tutorial's pickles and title-named posters into a dataset",
        description="Import poster_movies.pckl, Genredict.pckl and the folder of <title>.jpg posters "
                    "the tutorial saved. Pickles are read safely: anything but plain data is refused.")
    parser.add_argument("--movies", type=Path, required=True, help="poster_movies.pckl")
    parser.add_argument("--genres", type=Path, required=True, help="Genredict.pckl")
    parser.add_argument("--posters", type=Path, required=True, help="folder of <title>.jpg posters")
    parser.add_argument("--out", type=Path, required=True, help=OUT_HELP)
    parser.set_defaults(func=run_import_tutorial)


def _add_urls(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download-urls", help="download posters listed in a CSV (id, title, genres, poster URL)",
        description="Download the posters of a table with an id, a title, genres and a poster URL "
                    "per row (e.g. the 'Movie Genre from its Poster' MovieGenre.csv, detected "
                    "without options). Resumes; failures are listed and saved to failures.csv.")
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help=OUT_HELP)
    parser.add_argument("--id-column")
    parser.add_argument("--title-column")
    parser.add_argument("--genres-column")
    parser.add_argument("--url-column")
    parser.add_argument("--genre-separator", default="|")
    parser.add_argument("--max-rows", type=_positive_int)
    parser.add_argument("--workers", type=_positive_int, default=4)
    parser.add_argument("--rate", type=_positive_float, default=10.0,
                        help="requests per second (default 10)")
    parser.set_defaults(func=run_download_urls)
