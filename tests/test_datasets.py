"""Behaviours locked in for ``core.data.datasets``, labelled poster folders.

- ``load_dataset`` keeps the usable posters in labels.csv order and reports, each by id with its
  reason: rows without an image, images without a row, duplicate ids (the first row is kept), empty
  genre lists, unreadable images (non-image bytes named .jpg, zero-byte files), and a second image
  file for the same id; no skipped item is among the posters.
- A missing folder, a missing labels.csv, a CSV without a ``genres`` column and a folder whose rows
  match no image raise ``DatasetError`` naming the problem.
- Genre splitting strips and collapses whitespace, drops empty parts and dedupes in order, ignoring case.
- Genres written with other case or spacing become one genre in its most frequent spelling, and the
  report lists the merge; a quoted field spanning lines is refused with its line numbers.
- ``dataset.json`` gives the name and the synthetic flag.
- ``GenreVocabulary`` round-trips encode/decode, its column order is the vocabulary's, unknown genres
  and duplicate vocabularies are refused.
- ``write_labels`` round-trips titles with commas, quotes and non-ASCII characters.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.datasets import (GenreVocabulary, canonical_genres, genre_key, load_dataset, split_genres, write_info,
                                write_labels)
from core.errors import DatasetError


def _jpeg(colour=(10, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 30), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _folder(root: Path, csv_text: str, images: dict[str, bytes]) -> Path:
    (root / "posters").mkdir(parents=True)
    (root / "labels.csv").write_text(csv_text, encoding="utf-8")
    for name, data in images.items():
        (root / "posters" / name).write_bytes(data)
    return root


@pytest.fixture
def messy(tmp_path) -> Path:
    csv_text = (
        "id,title,genres\n"
        "m1,First,Drama|Comedy\n"
        "m2,No image,Drama\n"
        "m3,Duplicate first,Horror\n"
        "m3,Duplicate second,Comedy\n"
        "m4,No genres,\n"
        "m5,Broken,Drama\n"
        "m6,Empty file,Drama\n"
        "m7, Spaced , Action | Drama |Action|\n"
        "m8,Two files,Drama\n"
    )
    images = {"m1.jpg": _jpeg(), "m3.png": _jpeg(), "m4.jpg": _jpeg(), "m5.jpg": b"<html>not an image</html>",
              "m6.jpg": b"", "m7.jpeg": _jpeg(), "m8.jpg": _jpeg(), "m8.png": _jpeg((0, 0, 0)),
              "orphan.webp": _jpeg(), "readme.txt": b"ignored, not an image extension"}
    return _folder(tmp_path / "messy", csv_text, images)


def test_usable_posters_keep_csv_order_and_clean_fields(messy):
    dataset, _ = load_dataset(messy)
    assert dataset.ids == ["m1", "m3", "m7", "m8"]
    poster = dataset.posters[2]
    assert poster.title == "Spaced" and poster.genres == ("Action", "Drama")
    assert poster.path == messy / "posters" / "m7.jpeg"
    assert dataset.posters[1].title == "Duplicate first"


@pytest.mark.parametrize("id_, reason", [
    ("m2", "no image"),
    ("orphan", "without a row"),
    ("m3", "duplicate id"),
    ("m4", "empty genre list"),
    ("m5", "not an image"),
    ("m6", "empty file"),
])
def test_report_lists_each_problem_by_id_with_reason(messy, id_, reason):
    dataset, report = load_dataset(messy)
    reasons = [item.reason for item in report.skipped if item.id == id_]
    assert len(reasons) == 1 and reason in reasons[0], report.lines()
    assert any(line.startswith(f"{id_}: ") for line in report.lines())


def test_skipped_ids_are_not_among_posters_except_the_kept_duplicate(messy):
    dataset, report = load_dataset(messy)
    skipped = {item.id for item in report.skipped} - {"m3", "m8"}
    assert skipped and not skipped & set(dataset.ids)
    assert dataset.ids.count("m3") == 1
    assert report.n_rows == 9


def test_second_image_file_for_the_same_id_is_reported_not_silently_dropped(messy):
    dataset, report = load_dataset(messy)
    used = dataset.posters[dataset.ids.index("m8")].path.name
    ignored = {"m8.jpg", "m8.png"} - {used}
    assert any(item.id == "m8" and item.path and Path(item.path).name in ignored for item in report.skipped), \
        f"{ignored} disappeared silently: {report.lines()}"


def test_unreadable_image_skip_is_optional(messy):
    dataset, report = load_dataset(messy, check_images=False)
    assert "m5" in dataset.ids
    assert not any("not an image" in item.reason for item in report.skipped)


def test_missing_folder_raises(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_missing_labels_csv_raises(tmp_path):
    (tmp_path / "posters").mkdir()
    with pytest.raises(DatasetError, match=r"labels\.csv is missing"):
        load_dataset(tmp_path)


def test_csv_without_genres_column_names_the_column(tmp_path):
    root = _folder(tmp_path / "d", "id,title,tags\na,A,Drama\n", {"a.jpg": _jpeg()})
    with pytest.raises(DatasetError, match=r"lacks column\(s\) genres") as caught:
        load_dataset(root)
    assert "id,title,genres" in caught.value.hint


def test_labels_without_matching_images_raise(tmp_path):
    root = _folder(tmp_path / "d", "id,title,genres\na,A,Drama\n", {})
    with pytest.raises(DatasetError, match="no usable posters"):
        load_dataset(root)


def test_bom_and_padded_header_are_accepted(tmp_path):
    root = _folder(tmp_path / "d", "\ufeffid , title ,genres\na,A,Drama\n", {"a.jpg": _jpeg()})
    dataset, _ = load_dataset(root)
    assert dataset.ids == ["a"]


def test_dataset_json_gives_name_and_synthetic_flag(tmp_path):
    root = _folder(tmp_path / "d", "id,title,genres\na,A,Drama\n", {"a.jpg": _jpeg()})
    assert load_dataset(root)[0].name == "d"
    write_info(root, name="Tiny", synthetic=True, source="test")
    dataset, _ = load_dataset(root)
    assert (dataset.name, dataset.synthetic, dataset.source) == ("Tiny", True, "test")


@pytest.mark.parametrize("text, expected", [
    ("Drama|Comedy", ("Drama", "Comedy")),
    (" Drama | Comedy |Drama| ", ("Drama", "Comedy")),
    ("||", ()),
    ("", ()),
    ("Sci-Fi", ("Sci-Fi",)),
    ("Drama|drama|DRAMA ", ("Drama",)),
    (" Science \t Fiction|science fiction", ("Science Fiction",)),
])
def test_split_genres_strips_and_dedupes(text, expected):
    assert split_genres(text) == expected


def test_vocabulary_round_trip_and_fixed_column_order():
    vocabulary = GenreVocabulary(["Western", "Drama", "Comedy"])
    labels = [("Drama",), ("Comedy", "Western"), ()]
    encoded = vocabulary.encode(labels)
    np.testing.assert_array_equal(encoded, [[0, 1, 0], [1, 0, 1], [0, 0, 0]])
    assert encoded.dtype == np.float32
    assert vocabulary.decode(encoded) == [("Drama",), ("Western", "Comedy"), ()]


def test_vocabulary_from_labels_is_sorted_and_equal_by_order():
    vocabulary = GenreVocabulary.from_labels([("Drama", "Action"), ("Comedy",)])
    assert vocabulary.genres == ("Action", "Comedy", "Drama") and len(vocabulary) == 3
    assert vocabulary == GenreVocabulary(["Action", "Comedy", "Drama"])
    assert vocabulary != GenreVocabulary(["Drama", "Comedy", "Action"])


def test_vocabulary_refuses_unknown_genre_and_duplicates():
    with pytest.raises(DatasetError, match="Horror"):
        GenreVocabulary(["Drama"]).encode([("Drama", "Horror")])
    with pytest.raises(DatasetError, match="duplicates"):
        GenreVocabulary(["Drama", "Drama"])


def test_write_labels_round_trips_awkward_titles(tmp_path):
    rows = [("a", 'Crouching Tiger, Hidden "Dragon"', ("Action", "Drama")),
            ("b", "Amélie — Le fabuleux destin, 2001", ("Comedy", "Romance")),
            ("c", "千と千尋の神隠し", ("Animation",))]
    (tmp_path / "posters").mkdir()
    for id_, _, _ in rows:
        (tmp_path / "posters" / f"{id_}.jpg").write_bytes(_jpeg())
    write_labels(tmp_path, rows)
    dataset, report = load_dataset(tmp_path)
    assert not report.skipped
    assert [(p.id, p.title, p.genres) for p in dataset.posters] == rows
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_genre_counts_sorted_by_frequency(tmp_path):
    rows = [("a", "A", ("Drama",)), ("b", "B", ("Drama", "Comedy")), ("c", "C", ("Action",))]
    (tmp_path / "posters").mkdir()
    for id_, _, _ in rows:
        (tmp_path / "posters" / f"{id_}.jpg").write_bytes(_jpeg())
    write_labels(tmp_path, rows)
    dataset, _ = load_dataset(tmp_path)
    assert list(dataset.genre_counts().items()) == [("Drama", 2), ("Action", 1), ("Comedy", 1)]
    assert list(dataset.to_frame().columns) == ["id", "title", "genres", "path"]


def test_genre_key_folds_case_and_whitespace():
    assert genre_key(" Science \t FICTION ") == genre_key("science fiction") == "science fiction"
    assert genre_key("Sci-Fi") != genre_key("SciFi")


def test_canonical_genres_picks_the_most_frequent_spelling_then_the_first():
    spelling, merges = canonical_genres([("drama",), ("Drama", "Comedy"), ("Drama",), ("comedy",)])
    assert spelling == {"drama": "Drama", "Drama": "Drama", "Comedy": "Comedy", "comedy": "Comedy"}
    assert merges == {"Drama": ("drama",), "Comedy": ("comedy",)}


def test_dataset_uses_one_spelling_per_genre_and_reports_the_merge(tmp_path):
    root = _folder(tmp_path / "d", "id,title,genres\na,A,Drama|drama\nb,B,DRAMA \nc,C,drama|Comedy\n",
                   {f"{i}.jpg": _jpeg() for i in "abc"})
    dataset, report = load_dataset(root)
    assert dataset.labels == [("Drama",), ("Drama",), ("Drama", "Comedy")]
    assert dataset.genre_counts() == {"Drama": 3, "Comedy": 1}
    assert report.merge_lines() == ["genre 'Drama' also written as 'DRAMA', 'drama'; merged into 'Drama'"]


def test_unbalanced_quote_is_refused_with_its_line(tmp_path):
    root = _folder(tmp_path / "d", 'id,title,genres\na,A,Drama\nb,"Oops,Comedy\nc,C,Drama\n',
                   {f"{i}.jpg": _jpeg() for i in "abc"})
    with pytest.raises(DatasetError, match=r"labels\.csv, line 3: a quoted field runs over lines 3-4") as caught:
        load_dataset(root)
    assert "never closed" in caught.value.hint


def test_write_labels_keeps_each_row_on_one_line(tmp_path):
    (tmp_path / "posters").mkdir()
    (tmp_path / "posters" / "a.jpg").write_bytes(_jpeg())
    write_labels(tmp_path, [("a", "Two\nLines  Title", ("Drama",))])
    dataset, _ = load_dataset(tmp_path)
    assert dataset.titles == ["Two Lines Title"]
