"""core.sources.url_table (with core.sources.builder): poster-URL tables into dataset folders, against
real HTTP on 127.0.0.1.

Locks in: the "Movie Genre from its Poster" table (latin-1, ``imdbId,...,Genre,Poster``) works
without options and loads with zero skipped items; common column names are found case-insensitively
and explicit columns/separators work; a missing column names the columns and the option; empty,
unsafe and duplicate ids, rows without genres or an http(s) URL are reported; 404, truncated,
non-image and too-slow posters are reported (result, failures.csv) and not saved; other columns go
to metadata.csv; an interrupted run resumes without refetching; --max-rows limits rows; odd image
formats are re-saved as PNG; the CLI prints every failure.
"""
from __future__ import annotations

import argparse
import csv
import io
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from core.cli.acquire import add_commands
from core.data.datasets import load_dataset
from core.errors import DatasetError
from core.progress import Progress
from core.sources.http import HttpConfig
from core.sources.builder import poster_bytes, safe_id
from core.sources.url_table import UrlTableConfig, download_url_table
from tests.fake_tmdb import FakeTmdb

FAST = HttpConfig(requests_per_second=1000, timeout=0.3, max_retries=1, backoff_base=0.01)
HEADER = ["imdbId", "Imdb Link", "Title", "IMDB Score", "Genre", "Poster"]
BAD = {200: "404", 201: "truncated", 202: "not_image", 203: "slow"}


@pytest.fixture
def fake():
    server = FakeTmdb(bad_posters=dict(BAD), slow_seconds=1.0).start()
    yield server
    server.stop()


def _good_rows(fake) -> list[list[str]]:
    rows = [[f"{1000 + i}", f"http://www.imdb.com/title/tt{1000 + i}", f"Movie {i}", "7.5",
             "Animation|Comedy" if i % 2 else "Drama", fake.poster_url(100 + i)] for i in range(12)]
    rows[3][2] = "Amélie"
    return rows


def _bad_rows(fake) -> list[list[str]]:
    return [
        ["2000", "", "Gone", "5", "Drama", fake.poster_url(200)],
        ["2001", "", "Half", "5", "Drama", fake.poster_url(201)],
        ["2002", "", "Html", "5", "Drama", fake.poster_url(202)],
        ["2003", "", "Slow", "5", "Drama", fake.poster_url(203)],
        ["", "", "No id", "5", "Drama", fake.poster_url(120)],
        ["../etc", "", "Unsafe", "5", "Drama", fake.poster_url(121)],
        ["1000", "", "Duplicate", "5", "Drama", fake.poster_url(122)],
        ["2004", "", "No genres", "5", "", fake.poster_url(123)],
        ["2005", "", "Ftp", "5", "Drama", "ftp://example.org/p.jpg"],
    ]


def _write_table(path: Path, rows: list[list[str]], header=HEADER, encoding="latin-1") -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(buffer.getvalue().encode(encoding))
    return path


def _download(table: Path, out: Path, progress=None, http_config=FAST, **config):
    return download_url_table(table, out, UrlTableConfig(**config), http_config=http_config,
                              progress=progress)


def test_movie_genre_table_works_without_options(fake, tmp_path):
    table = _write_table(tmp_path / "MovieGenre.csv", _good_rows(fake) + _bad_rows(fake))
    result = _download(table, tmp_path / "out")
    dataset, report = load_dataset(tmp_path / "out")
    assert report.skipped == [] and result.n_saved == len(dataset) == 12
    assert set(dataset.ids) == {f"{1000 + i}" for i in range(12)}
    posters = {p.id: p for p in dataset.posters}
    assert posters["1003"].title == "Amélie" and posters["1001"].genres == ("Animation", "Comedy")
    with open(tmp_path / "out" / "metadata.csv", encoding="utf-8") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    assert rows["1001"]["IMDB Score"] == "7.5" and rows["1001"]["Imdb Link"].endswith("tt1001")
    assert rows["1001"]["Poster"] == fake.poster_url(101)


def test_bad_rows_and_failed_downloads_are_reported_not_saved(fake, tmp_path):
    table = _write_table(tmp_path / "MovieGenre.csv", _good_rows(fake) + _bad_rows(fake))
    result = _download(table, tmp_path / "out")
    reasons = {s.id: s.reason for s in result.skipped}
    assert "404" in reasons["2000"] and "truncated" in reasons["2001"]
    assert "not an image" in reasons["2002"] and "timed out" in reasons["2003"]
    assert "empty id" in reasons["line 18"] and "unsafe id '../etc'" in reasons["line 19"]
    assert "duplicate id" in reasons["1000"] and "no genres" in reasons["2004"]
    assert "not http" in reasons["2005"]
    assert not any((tmp_path / "out" / "posters").glob("200*"))
    with open(tmp_path / "out" / "failures.csv", encoding="utf-8") as handle:
        failures = {row["id"]: row["reason"] for row in csv.DictReader(handle)}
    assert set(failures) == set(reasons)


def test_interrupted_run_resumes_without_refetching(fake, tmp_path):
    table = _write_table(tmp_path / "MovieGenre.csv", _good_rows(fake))
    out = tmp_path / "out"

    def kill_after_five(progress: Progress) -> None:
        if progress.done >= 5:
            raise KeyboardInterrupt

    paced = HttpConfig(requests_per_second=50, timeout=0.3, max_retries=1, backoff_base=0.01)
    with pytest.raises(KeyboardInterrupt):
        _download(table, out, progress=kill_after_five, http_config=paced, workers=2, batch_size=2)
    partial, report = load_dataset(out)
    assert report.skipped == [] and 5 <= len(partial) < 12
    result = _download(table, out, workers=2)
    assert max(Counter(fake.poster_fetches()).values()) == 1
    assert result.n_reused == len(partial) and result.n_saved == 12


def test_common_column_names_are_found_case_insensitively(fake, tmp_path):
    table = _write_table(tmp_path / "t.csv", [["603", "The Matrix", "Action|Science Fiction",
                                              fake.poster_url(100)]],
                         header=["TMDB_ID", "Name", "GENRES", "poster_url"], encoding="utf-8")
    result = _download(table, tmp_path / "out")
    dataset, _ = load_dataset(tmp_path / "out")
    assert result.n_saved == 1 and dataset.posters[0].title == "The Matrix"
    assert dataset.posters[0].genres == ("Action", "Science Fiction")


def test_explicit_columns_and_separator(fake, tmp_path):
    table = _write_table(tmp_path / "t.csv", [["a1", "First", "Drama; Horror", fake.poster_url(100)]],
                         header=["key", "label", "kinds", "link"], encoding="utf-8")
    _download(table, tmp_path / "out", id_column="key", title_column="label",
              genres_column="kinds", url_column="link", genre_separator=";")
    dataset, report = load_dataset(tmp_path / "out")
    assert report.skipped == [] and dataset.posters[0].genres == ("Drama", "Horror")


def test_missing_column_names_the_columns_and_the_option(fake, tmp_path):
    table = _write_table(tmp_path / "t.csv", [["1", "x", "Drama"]], header=["id", "title", "genres"])
    with pytest.raises(DatasetError, match="which column holds the url") as caught:
        _download(table, tmp_path / "out")
    assert "--url-column" in caught.value.hint and "'genres'" in caught.value.message


def test_max_rows_limits_the_rows_read(fake, tmp_path):
    table = _write_table(tmp_path / "MovieGenre.csv", _good_rows(fake))
    result = _download(table, tmp_path / "out", max_rows=3)
    assert result.n_saved == 3 and len(fake.poster_fetches()) == 3


def test_safe_id_accepts_file_name_safe_ids_only():
    assert safe_id(" tt0114709 ") == "tt0114709" and safe_id("a_b-1") == "a_b-1"
    assert safe_id("../x") is None and safe_id("") is None and safe_id("a/b") is None
    assert safe_id(".hidden") is None and safe_id("a b") is None


def test_odd_image_formats_are_saved_as_png():
    buffer = io.BytesIO()
    Image.new("P", (4, 4)).save(buffer, "GIF")
    data, extension = poster_bytes(buffer.getvalue(), "x.gif")
    assert extension == ".png" and Image.open(io.BytesIO(data)).format == "PNG"


def test_cli_download_urls_prints_every_failure(fake, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("core.sources.url_table.HttpConfig",
                        lambda requests_per_second: FAST)
    table = _write_table(tmp_path / "MovieGenre.csv", _good_rows(fake) + _bad_rows(fake))
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["download-urls", "--csv", str(table), "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "saved 12 posters" in out and "skipped or failed (9)" in out
    assert "2000: HTTP 404" in out and "line 19: unsafe id" in out
