"""Behaviours locked in for ``core.data.snapshot``, the remembered result of opening a dataset folder.

- A second open of an unchanged folder gives back the same posters, titles, genres, paths, content keys
  and report (skipped items with reasons and paths, genre merges) without reading labels.csv again.
- Any change is seen: a poster rewritten in place with other bytes (new content key), a label edited,
  a poster added or removed, a damaged saved file; each makes the next open read the folder again.
- A saved open whose columns differ in length is not used (zip would silently drop posters).
- Each poster carries its own content key, so a subset of a dataset's posters keeps the right keys.
- Content keys are the sha256 of each file's bytes, as the feature cache expects; an open that skips the
  image check saves nothing and hashes on demand.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

import core.data.datasets as datasets
from core.data.datasets import load_dataset
from core.data.snapshot import SNAPSHOT_DIR
from core.cache import CACHE_ENV, cache_root


def _jpeg(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 30), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "set"
    (root / "posters").mkdir(parents=True)
    (root / "labels.csv").write_text("id,title,genres\na,Alpha,Drama|comedy\nb,Beta,Comedy\nc,Gamma,Horror|Comedy\n"
                                     "d,No image,Drama\n", encoding="utf-8")
    for number, id_ in enumerate("abc"):
        (root / "posters" / f"{id_}.jpg").write_bytes(_jpeg((40 * number, 80, 120)))
    (root / "posters" / "e.png").write_bytes(b"not an image")
    return root


def _state(dataset, report):
    return ([(p.id, p.title, p.genres, p.path) for p in dataset.posters], dataset.content_keys(),
            report.n_rows, report.n_images, report.skipped, report.genre_merges)


def _reading_labels_fails(monkeypatch):
    def refuse(path):
        raise AssertionError("labels.csv was read again")
    monkeypatch.setattr(datasets, "_read_labels", refuse)


def test_second_open_gives_the_same_dataset_without_reading_the_folder(folder, monkeypatch):
    first = _state(*load_dataset(folder))
    assert first[0][0] == ("a", "Alpha", ("Drama", "Comedy"), folder / "posters" / "a.jpg")
    assert first[1] == [hashlib.sha256((folder / "posters" / f"{i}.jpg").read_bytes()).hexdigest() for i in "abc"]
    assert {s.id for s in first[4]} == {"d", "e"} and first[5] == {"Comedy": ("comedy",)}
    _reading_labels_fails(monkeypatch)
    assert _state(*load_dataset(folder)) == first


def test_a_poster_rewritten_in_place_gets_its_new_content_key(folder):
    before = load_dataset(folder)[0].content_keys()
    poster = folder / "posters" / "b.jpg"
    poster.write_bytes(_jpeg((255, 0, 0)))
    os.utime(poster, ns=(1, 1))  # another mtime than before, whatever the clock's resolution
    after = load_dataset(folder)[0].content_keys()
    assert after[1] == hashlib.sha256(poster.read_bytes()).hexdigest() != before[1]
    assert after[0] == before[0] and after[2] == before[2]


@pytest.mark.parametrize("change, ids", [
    (lambda root: (root / "labels.csv").write_text("id,title,genres\na,Alpha,Drama\nc,Gamma,Horror|Drama\n"),
     ["a", "c"]),
    (lambda root: (root / "posters" / "d.jpg").write_bytes(_jpeg((1, 2, 3))), ["a", "b", "c", "d"]),
    (lambda root: (root / "posters" / "a.jpg").unlink(), ["b", "c"]),
    (lambda root: (root / "posters" / "c.jpg").rename(root / "posters" / "f.jpg"), ["a", "b"]),
])
def test_a_changed_folder_is_read_again(folder, change, ids):
    load_dataset(folder)
    change(folder)
    dataset, report = load_dataset(folder)
    assert dataset.ids == ids
    assert _state(dataset, report) == _state(*load_dataset(folder))


def test_a_damaged_saved_open_is_ignored_and_replaced(folder, monkeypatch):
    first = _state(*load_dataset(folder))
    [saved] = (cache_root() / SNAPSHOT_DIR).glob("*.json")
    saved.write_text(saved.read_text()[:40])
    assert _state(*load_dataset(folder)) == first
    _reading_labels_fails(monkeypatch)
    assert _state(*load_dataset(folder)) == first


def test_a_saved_open_with_columns_of_different_lengths_is_not_used(folder):
    first = _state(*load_dataset(folder))
    [saved] = (cache_root() / SNAPSHOT_DIR).glob("*.json")
    document = json.loads(saved.read_text())
    document["content"]["id"].pop()
    saved.write_text(json.dumps(document))
    assert _state(*load_dataset(folder)) == first


def test_an_unchecked_open_saves_nothing_and_hashes_on_demand(folder):
    dataset, _ = load_dataset(folder, check_images=False)
    assert all(p.key is None for p in dataset.posters) and not (cache_root() / SNAPSHOT_DIR).exists()
    assert dataset.content_keys() == load_dataset(folder)[0].content_keys()


def test_a_subset_of_the_posters_keeps_each_posters_own_key(folder):
    dataset, _ = load_dataset(folder)
    keys = dataset.content_keys()
    assert dataclasses.replace(dataset, posters=dataset.posters[1:]).content_keys() == keys[1:]
