"""core.sources.tutorial on tutorial-shaped pickles and a folder of title-named posters.

Locks in: the import writes the standard layout (posters copied byte for byte, verified, named by
TMDB id; labels with genre names; metadata.csv; dataset.json with source "tutorial") that loads
with zero skipped items; titles the tutorial sanitised (``/``, ``:``, spaces, accents) still match;
movies without a file, files without a movie, two movies sharing one file, an unreadable poster and
a movie without genres are reported; genre 10769 is kept as "Foreign (10769)"; genre dicts with
string keys work; a rerun copies nothing; a pickle that would run code or holds numpy arrays is
refused before anything is written; the CLI prints every skipped item.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.cli.acquire import add_commands
from core.data.datasets import load_dataset
from core.errors import DatasetError, UnsafePickleError
from core.sources.tutorial import ascii_key, import_tutorial, title_key

GENRES = {28: "Action", 12: "Adventure", 35: "Comedy", 18: "Drama", 27: "Horror", 878: "Science Fiction"}


def _movie(id_: int, title: str, genre_ids: list[int]) -> dict:
    return {"id": id_, "title": title, "original_title": title, "genre_ids": genre_ids,
            "release_date": "1997-06-27", "poster_path": f"/p{id_}.jpg", "overview": "...",
            "popularity": 10.5, "vote_average": 6.7, "vote_count": 3000, "original_language": "en"}


MOVIES = [
    _movie(348, "Alien", [27, 878]),
    _movie(754, "Face/Off", [28, 18]),
    _movie(954, "Mission: Impossible", [12, 28]),
    _movie(194, "Amélie", [35]),
    _movie(948, "Halloween", [27]),
    _movie(424139, "Halloween", [27]),
    _movie(11, "Lost Poster", [18]),
    _movie(12, "Broken", [18]),
    _movie(13, "No Genres", []),
    _movie(14, "Retired", [10769, 18]),
]
FILES = {"Alien.jpg": 1, "FaceOff.jpg": 2, "Mission_Impossible.jpg": 3, "Amlie.jpg": 4,
         "Halloween.jpg": 5, "Retired.jpg": 6, "Extra Movie.jpg": 7}


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 18), (seed * 40 % 256, 90, 160)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def tutorial(tmp_path) -> dict[str, Path]:
    posters = tmp_path / "posters_final"
    posters.mkdir()
    for name, seed in FILES.items():
        (posters / name).write_bytes(_jpeg(seed))
    (posters / "Broken.jpg").write_bytes(_jpeg(8)[:60])
    movies, genres = tmp_path / "poster_movies.pckl", tmp_path / "Genredict.pckl"
    movies.write_bytes(pickle.dumps(MOVIES, protocol=2))
    genres.write_bytes(pickle.dumps(GENRES, protocol=2))
    return {"movies": movies, "genres": genres, "posters": posters, "out": tmp_path / "dataset"}


def _import(paths: dict[str, Path]):
    return import_tutorial(paths["movies"], paths["genres"], paths["posters"], paths["out"])


def test_import_writes_the_standard_layout_named_by_id(tutorial):
    result = _import(tutorial)
    dataset, report = load_dataset(tutorial["out"])
    assert report.skipped == [] and result.n_saved == len(dataset) == 5
    posters = {p.id: p for p in dataset.posters}
    assert set(posters) == {"348", "754", "954", "194", "14"}
    assert posters["348"].genres == ("Horror", "Science Fiction")
    assert posters["754"].title == "Face/Off"
    assert (tutorial["out"] / "posters" / "754.jpg").read_bytes() == _jpeg(2)
    assert json.loads((tutorial["out"] / "dataset.json").read_text())["source"] == "tutorial"


def test_metadata_keeps_the_tmdb_fields_and_the_original_file(tutorial):
    _import(tutorial)
    with open(tutorial["out"] / "metadata.csv", encoding="utf-8") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    assert rows["954"]["poster_file"] == "Mission_Impossible.jpg"
    assert (rows["954"]["tmdb_id"], rows["954"]["year"], rows["954"]["genres"]) == \
        ("954", "1997", "Adventure|Action")


def test_retired_genre_is_kept_under_a_clear_name(tutorial):
    result = _import(tutorial)
    dataset, _ = load_dataset(tutorial["out"])
    assert {p.id: p.genres for p in dataset.posters}["14"] == ("Foreign (10769)", "Drama")
    assert result.unknown_genres == {10769: "Foreign (10769)"}


def test_unmatched_ambiguous_broken_and_genreless_items_are_reported(tutorial):
    result = _import(tutorial)
    reasons = {s.id: s.reason for s in result.skipped}
    assert "no poster file for 'Lost Poster'" in reasons["11"]
    assert "matches several movies (ids 948, 424139)" in reasons["948"]
    assert reasons["424139"] == reasons["948"]
    assert "without a movie" in reasons["Extra Movie.jpg"]
    assert "truncated" in reasons["12"] or "corrupt" in reasons["12"]
    assert "no (integer) genre ids" in reasons["13"]
    assert not (tutorial["out"] / "posters" / "12.jpg").exists()


def test_genre_dict_with_string_keys_works(tutorial):
    tutorial["genres"].write_bytes(pickle.dumps({str(k): v for k, v in GENRES.items()}))
    _import(tutorial)
    dataset, _ = load_dataset(tutorial["out"])
    assert {p.id: p.genres for p in dataset.posters}["348"] == ("Horror", "Science Fiction")


def test_rerun_copies_nothing(tutorial):
    _import(tutorial)
    result = _import(tutorial)
    assert result.n_downloaded == 0 and result.n_reused == 5


def test_pickle_that_would_run_code_is_refused_before_anything_is_written(tutorial):
    marker = tutorial["out"].parent / "ran"

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    tutorial["movies"].write_bytes(pickle.dumps(MOVIES + [RunsCode()]))
    with pytest.raises(UnsafePickleError, match="refused global"):
        _import(tutorial)
    assert not marker.exists() and not tutorial["out"].exists()


def test_numpy_pickles_are_refused_with_a_hint(tutorial):
    movies = [{**MOVIES[0], "genre_ids": np.array([27, 878])}]
    tutorial["movies"].write_bytes(pickle.dumps(movies))
    with pytest.raises(UnsafePickleError, match="numpy") as caught:
        _import(tutorial)
    assert "tolist" in caught.value.hint


def test_wrong_pickle_content_gives_a_clear_error(tutorial):
    tutorial["movies"].write_bytes(pickle.dumps({"not": "movies"}))
    with pytest.raises(DatasetError, match="not a list of TMDB movie dicts"):
        _import(tutorial)


def test_title_keys_tolerate_what_the_tutorial_stripped():
    assert title_key("Face/Off") == title_key("FaceOff") == "faceoff"
    assert title_key("Mission: Impossible") == title_key("Mission_Impossible")
    assert title_key("Amélie") == "amelie" and ascii_key("Amélie") == ascii_key("Amlie") == "amlie"


def test_cli_import_tutorial_prints_every_skipped_item(tutorial, capsys):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["import-tutorial", "--movies", str(tutorial["movies"]),
                              "--genres", str(tutorial["genres"]), "--posters",
                              str(tutorial["posters"]), "--out", str(tutorial["out"])])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "saved 5 posters" in out and "skipped or failed (6)" in out
    assert "Extra Movie.jpg: poster file without a movie" in out
