"""Labels read as a person means them (issue 20, class 5), each case with one exact outcome and the
user's folder unchanged (``folder_hashes``):

- genres joined by ``,`` or ``, `` (quoted, with no ``|`` anywhere, or beside rows that use ``|`` and
  name the parts as genres) are refused with the lines and "replace ',' with '|'"; a genre name
  holding a comma in a file that uses ``|`` is kept; a row with more non-empty fields than the header
  (an unquoted comma) is refused with its line; trailing empty fields are ignored.
- Unicode: "Comédie" composed and decomposed is one genre, named in composed form (NFC), and the
  merge is reported with the decomposed spelling escaped; a file wholly decomposed is read composed.
- control characters in genres (NUL, the unit separator ``\\x1f``) are refused with their lines and
  code points; a tab is whitespace, folded like a space.
- genres named ``NA``, ``None``, ``nan``, ``null`` stay names, in the dataset and in a saved run's
  per-genre table read back.
- encodings: UTF-16 (either byte order) and UTF-32 with a byte-order mark are read; UTF-16 without
  one is read with a note naming it; text that is not UTF-8 is read as cp1252 with a note naming the
  byte and line (printed by the CLI); a byte-order mark followed by invalid text is refused; the
  dataset list counts the rows of a UTF-16 labels.csv.
- downloads: genre names with a line break, NUL or ``|`` from a source (TMDB, a URL table, the
  builder itself) are cleaned and each is noted, so the folder loads; a URL table whose genres look
  joined by ``,`` under the ``|`` separator is refused before any download, and reads with
  ``genre_separator=","``; a cp1252 URL table is noted in the result.
"""
from __future__ import annotations

import codecs
import csv
import io
from dataclasses import replace
from pathlib import Path

import pytest

from core.data.datasets import load_dataset
from core.errors import DatasetError
from core.sources.builder import DatasetFolder, PosterItem, build_dataset
from core.sources.http import HttpConfig
from core.sources.tmdb import TmdbConfig, TmdbCredentials, download_tmdb
from core.sources.url_table import UrlTableConfig, download_url_table
from tests.fake_tmdb import API_KEY, GENRES, FakeTmdb, make_movies
from tests.test_hostile_inputs import JPEG, assert_refused, folder_hashes, make_folder, run_cli

FAST = HttpConfig(requests_per_second=1000, timeout=0.3, max_retries=1, backoff_base=0.01)
NFC, NFD = "Com\u00e9die", "Come\u0301die"


def _open(tmp_path: Path, raw: bytes, ids: str = "abcd"):
    """Load a folder whose labels.csv holds ``raw``; returns the outcome and checks nothing changed."""
    root = make_folder(tmp_path / "ds", "", {f"{i}.jpg": JPEG for i in ids})
    (root / "labels.csv").write_bytes(raw)
    before = folder_hashes(root)
    try:
        return load_dataset(root)
    finally:
        assert folder_hashes(root) == before


def _refused(tmp_path: Path, raw: bytes) -> DatasetError:
    with pytest.raises(DatasetError) as caught:
        _open(tmp_path, raw)
    return caught.value


def _genres(dataset) -> dict[str, tuple[str, ...]]:
    return {poster.id: poster.genres for poster in dataset.posters}


# Genres joined by commas -------------------------------------------------------------------------

COMMA_REFUSED = {
    "quoted, no | anywhere": (
        'id,title,genres\na,A,"Drama,Romance"\nb,B,Drama\nc,C,"Comedy, Drama"\n',
        "lines 2 and 4: genres look joined by ',' (line 2: 'Drama,Romance' would be read as one genre)",
        "genres are joined by |: replace ',' with '|' (line 2: 'Drama|Romance')"),
    "', ' beside rows that use |": (
        'id,title,genres\na,A,"Drama, Romance"\nb,B,Drama|Romance\nc,C,Comedy\n',
        "line 2: genres look joined by ',' (line 2: 'Drama, Romance' would be read as one genre)",
        "genres are joined by |: replace ',' with '|' (line 2: 'Drama|Romance')"),
    "unquoted: more fields than the header": (
        "id,title,genres\na,A,Drama,Romance\nb,B,Drama\nc,Hello, World,Comedy\n",
        "lines 2 and 4: more fields than the header's 3 (line 2 goes on with 'Romance')",
        "genres are joined by |: replace ',' with '|'; a title holding ',' goes in double quotes"),
}


@pytest.mark.parametrize("case", list(COMMA_REFUSED))
def test_comma_joined_genres_are_refused_with_the_fix(case, tmp_path):
    text, message, hint = COMMA_REFUSED[case]
    error = _refused(tmp_path, text.encode())
    assert error.message == f"{tmp_path / 'ds' / 'labels.csv'}, {message}"
    assert error.hint == hint


def test_a_genre_name_with_a_comma_is_kept_where_the_file_uses_pipes(tmp_path):
    dataset, report = _open(tmp_path, b'id,title,genres\na,A,"Kids, Family"\nb,B,Drama|Romance\nc,C,Drama\n',
                            "abc")
    assert _genres(dataset) == {"a": ("Kids, Family",), "b": ("Drama", "Romance"), "c": ("Drama",)}
    assert report.skipped == [] and report.notes == []


def test_trailing_empty_fields_are_ignored(tmp_path):
    dataset, report = _open(tmp_path, b"id,title,genres\na,A,Drama,,\nb,B,Comedy, \n", "ab")
    assert _genres(dataset) == {"a": ("Drama",), "b": ("Comedy",)} and report.skipped == []


# Unicode forms and control characters ------------------------------------------------------------


def test_composed_and_decomposed_spellings_are_one_genre_in_composed_form(tmp_path):
    text = f"id,title,genres\na,A,{NFC}\nb,B,{NFD}|Drama\nc,C,{NFD}\nd,D,{NFC}|{NFD}\n"
    dataset, report = _open(tmp_path, text.encode())
    assert _genres(dataset) == {"a": (NFC,), "b": (NFC, "Drama"), "c": (NFC,), "d": (NFC,)}
    assert dataset.genre_counts() == {NFC: 4, "Drama": 1}
    assert report.genre_merges == {NFC: (NFD,)}
    assert report.merge_lines() == ["genre 'Comédie' also written as 'Come\\u0301die'; merged into 'Comédie'"]


def test_a_wholly_decomposed_file_is_read_in_composed_form_and_says_so(tmp_path):
    dataset, report = _open(tmp_path, f"id,title,genres\na,A,{NFD}\nb,B,{NFD}\n".encode(), "ab")
    assert _genres(dataset) == {"a": (NFC,), "b": (NFC,)}
    assert report.merge_lines() == ["genre 'Comédie' also written as 'Come\\u0301die'; merged into 'Comédie'"]


def test_control_characters_in_genres_are_refused_with_their_lines(tmp_path):
    error = _refused(tmp_path, b"id,title,genres\na,A,Dra\x00ma\nb,B,Drama\nc,C,Drama\x1fComedy\n")
    assert error.message == (f"{tmp_path / 'ds' / 'labels.csv'}, lines 2 and 4: genres hold control characters "
                             "(line 2: 'Dra\\x00ma' has U+0000)")
    assert error.hint == "remove them: a genre is plain text, and genres are joined by |"


def test_a_tab_in_a_genre_is_whitespace(tmp_path):
    dataset, _ = _open(tmp_path, b"id,title,genres\na,A,Science\tFiction\nb,B,science fiction\n", "ab")
    assert _genres(dataset) == {"a": ("Science Fiction",), "b": ("Science Fiction",)}


def test_genres_named_like_missing_values_stay_names(tmp_path):
    dataset, report = _open(tmp_path, b"id,title,genres\na,A,NA\nb,B,None|null\nc,C,nan\nd,D,N/A\n")
    assert _genres(dataset) == {"a": ("NA",), "b": ("None", "null"), "c": ("nan",), "d": ("N/A",)}
    assert report.skipped == []


def test_a_saved_runs_per_genre_table_keeps_genres_named_like_missing_values(tiny_features, tmp_path):
    from core.model.config import TrainConfig
    from core.model.experiment import run_experiment
    from core.model.runs import load_run, save_run

    dataset, features = tiny_features
    names = dict(zip(sorted(dataset.genre_counts()), ["NA", "None", "nan", "null", "1"]))
    renamed = replace(dataset, posters=[replace(p, genres=tuple(names.get(g, g) for g in p.genres))
                                        for p in dataset.posters])
    config = TrainConfig(feature_view="avg", hidden=(8,), learning_rate=1e-2, optimizer="adam", epochs=1,
                         batch_size=8, k=3, seed=1)
    run = load_run(save_run(run_experiment(renamed, features, config), tmp_path / "run"))
    table = run.per_genre()
    assert table["genre"].tolist() == list(run.vocabulary.genres)
    assert {"NA", "None", "nan", "null", "1"} <= set(table["genre"])
    assert table["support"].dtype.kind == "i" and table["average_precision"].dtype.kind == "f"


# Encodings ---------------------------------------------------------------------------------------

TEXT = f"id,title,genres\na,Amélie,{NFC}|Drama\nb,B,Drama\n"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"])
def test_text_with_a_byte_order_mark_is_read_as_it_says(encoding, tmp_path):
    mark = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE}.get(encoding, b"")
    dataset, report = _open(tmp_path, mark + TEXT.encode(encoding), "ab")
    assert _genres(dataset) == {"a": (NFC, "Drama"), "b": ("Drama",)} and dataset.titles[0] == "Amélie"
    assert report.notes == []


def test_utf16_without_a_byte_order_mark_is_read_and_named(tmp_path):
    dataset, report = _open(tmp_path, TEXT.encode("utf-16-le"), "ab")
    assert _genres(dataset) == {"a": (NFC, "Drama"), "b": ("Drama",)}
    assert report.notes == [f"{tmp_path / 'ds' / 'labels.csv'} has no byte-order mark; its bytes look like "
                            "UTF-16 (little-endian), so it was read as such"]


def test_cp1252_text_is_read_as_cp1252_with_a_note(tmp_path):
    dataset, report = _open(tmp_path, "id,title,genres\na,It\u2019s,Drama\nb,B,Com\u00e9die\n".encode("cp1252"), "ab")
    assert dataset.titles == ["It\u2019s", "B"] and _genres(dataset)["b"] == (NFC,)
    assert report.notes == [f"{tmp_path / 'ds' / 'labels.csv'} is not valid UTF-8 (byte 0x92 on line 2); "
                            "read as cp1252 (Windows Western)"]


def test_a_byte_order_mark_before_invalid_text_is_refused(tmp_path):
    error = _refused(tmp_path, codecs.BOM_UTF16_LE + "id,title,genres\n".encode("utf-16-le") + b"\x00\xdc\x41")
    assert error.message == (f"{tmp_path / 'ds' / 'labels.csv'} starts as UTF-16 but byte 34 is not valid UTF-16")
    assert error.hint == "save the file again, as UTF-8"


def test_the_cli_prints_the_encoding_note(tmp_path, capsys):
    root = make_folder(tmp_path / "ds", "id,title,genres\na,Caf\u00e9,Drama\nb,B,Drama\n",
                       {f"{i}.jpg": JPEG for i in "ab"}, encoding="cp1252")
    before = folder_hashes(root)
    code, out, err = run_cli(capsys, ["extract", "--dataset", root, "--weights", "none"])
    assert code == 0, err
    assert f"{root / 'labels.csv'} is not valid UTF-8 (byte 0xe9 on line 2); read as cp1252 (Windows Western)" in err
    assert folder_hashes(root) == before


def test_the_cli_refuses_comma_joined_genres_in_one_line(tmp_path, capsys):
    root = make_folder(tmp_path / "ds", 'id,title,genres\na,A,"Drama,Romance"\n', {"a.jpg": JPEG})
    before = folder_hashes(root)
    code, _, err = run_cli(capsys, ["extract", "--dataset", root, "--weights", "none"])
    assert_refused(code, err, "line 2: genres look joined by ','")
    assert "hint: genres are joined by |: replace ',' with '|' (line 2: 'Drama|Romance')" in err
    assert folder_hashes(root) == before


# Downloads ---------------------------------------------------------------------------------------


def _labels_csv(root: Path) -> dict[str, str]:
    with open(root / "labels.csv", encoding="utf-8", newline="") as handle:
        return {row["id"]: row["genres"] for row in csv.DictReader(handle)}


def test_the_builder_cleans_genre_names_and_notes_each(tmp_path):
    items = [PosterItem("a", "A", ("Drama\nRomance", "Sci\x00Fi"), "a"),
             PosterItem("b", "B\nline", ("Drama\nRomance", "Action|Adventure", NFD), "b"),
             PosterItem("c", "C", ("\x00", "\n"), "c")]
    result = build_dataset(items, DatasetFolder.open(tmp_path / "out", "urls"), lambda item: JPEG, info={})
    assert result.notes == [
        "genre 'Drama\\nRomance' (2 movies) saved as 'Drama Romance': labels.csv holds no control characters, "
        "and '|' joins genres there",
        "genre 'Sci\\x00Fi' (1 movie) saved as 'SciFi': labels.csv holds no control characters, "
        "and '|' joins genres there",
        "genre 'Action|Adventure' (1 movie) saved as 'Action/Adventure': labels.csv holds no control "
        "characters, and '|' joins genres there",
        "genre 'Come\\u0301die' (1 movie) saved as 'Comédie': labels.csv holds no control characters, "
        "and '|' joins genres there",
    ]
    assert [(s.id, s.reason) for s in result.skipped] == [("c", "no genre names once cleaned")]
    dataset, report = load_dataset(tmp_path / "out")
    assert _genres(dataset) == {"a": ("Drama Romance", "SciFi"), "b": ("Drama Romance", "Action/Adventure", NFC)}
    assert dataset.titles == ["A", "B line"] and report.skipped == []


def test_a_tmdb_genre_name_with_a_line_break_gives_a_folder_that_loads(tmp_path):
    genres = {**GENRES, 18: "Drama\n", 35: "Com\x00edy"}
    server = FakeTmdb(movies=make_movies(6), genres=genres).start()
    try:
        result = download_tmdb(tmp_path / "tmdb", TmdbConfig(max_movies=6), credentials=TmdbCredentials(API_KEY),
                               api_base=server.api_base, image_base=server.image_base, http_config=FAST)
    finally:
        server.stop()
    dataset, report = load_dataset(tmp_path / "tmdb")
    assert len(dataset) == 6 and report.skipped == []
    assert {"Drama", "Comedy"} <= set(dataset.genre_counts())
    assert any(note.startswith("genre 'Drama\\n' (") and "saved as 'Drama'" in note for note in result.notes)
    assert any(note.startswith("genre 'Com\\x00edy' (") and "saved as 'Comedy'" in note for note in result.notes)


@pytest.fixture
def fake():
    server = FakeTmdb().start()
    yield server
    server.stop()


def _table(path: Path, rows: list[list[str]], encoding: str = "utf-8") -> Path:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([["imdbId", "Title", "Genre", "Poster"], *rows])
    path.write_bytes(buffer.getvalue().encode(encoding))
    return path


def test_a_url_table_with_comma_joined_genres_is_refused_before_any_download(fake, tmp_path):
    table = _table(tmp_path / "t.csv", [["1", "A", "Drama, Romance", fake.poster_url(101)],
                                        ["2", "B", "Drama", fake.poster_url(102)]])
    before = folder_hashes(tmp_path)
    with pytest.raises(DatasetError) as caught:
        download_url_table(table, tmp_path / "out", http_config=FAST)
    assert caught.value.message == f"{table}, line 2: genres look joined by ',' rather than '|' (line 2: 'Drama, Romance')"
    assert caught.value.hint == "give the separator the table uses: --genre-separator ',' (Genre separator on the Data page)"
    assert folder_hashes(tmp_path) == before and not fake.requests
    download_url_table(table, tmp_path / "out", UrlTableConfig(genre_separator=","), http_config=FAST)
    assert _labels_csv(tmp_path / "out") == {"1": "Drama|Romance", "2": "Drama"}


def test_a_url_table_genre_with_a_line_break_is_cleaned_and_cp1252_is_noted(fake, tmp_path):
    table = _table(tmp_path / "t.csv", [["1", "Caf\u00e9", "Drama\nRomance|Comedy", fake.poster_url(101)],
                                        ["2", "B", "Drama", fake.poster_url(102)]], encoding="cp1252")
    result = download_url_table(table, tmp_path / "out", http_config=FAST)
    assert result.notes == [
        f"{table} is not valid UTF-8 (byte 0xe9 on line 2); read as cp1252 (Windows Western)",
        "genre 'Drama\\nRomance' (1 movie) saved as 'Drama Romance': labels.csv holds no control characters, "
        "and '|' joins genres there"]
    dataset, report = load_dataset(tmp_path / "out")
    assert _genres(dataset) == {"1": ("Drama Romance", "Comedy"), "2": ("Drama",)} and report.skipped == []
    assert dataset.titles[0] == "Café"


def test_the_library_counts_the_rows_of_a_utf16_labels_file(tmp_path, monkeypatch):
    from core.data.library import datasets_dir, downloaded_datasets

    monkeypatch.setenv("POSTER_GENRE_CACHE", str(tmp_path / "cache"))
    (datasets_dir() / "wide" / "posters").mkdir(parents=True)
    (datasets_dir() / "wide" / "labels.csv").write_bytes(TEXT.encode("utf-16"))
    assert [(e.name, e.n_posters) for e in downloaded_datasets()] == [("wide", 2)]
