"""Behaviours locked in for ``core.data.demo``, the generated default dataset.

- The same config gives byte-identical files; another seed gives other posters; no two posters match.
- The folder loads with ``load_dataset`` with nothing skipped, and dataset.json says it is synthetic.
- Every genre appears, several posters carry more than one genre, and genres are imbalanced.
- Genre styles differ measurably (Horror is darker than Comedy, Sci-Fi bluer than Western).
- The grain is Gaussian: per pixel a value shared by the channels (sigma) plus one per channel (sigma / 3).
- Progress is reported for every poster.
- ``ensure_demo_dataset`` reuses a complete folder untouched, regenerates a missing, incomplete or
  outdated one, and keeps a complete folder that another caller installed meanwhile.
- ``make_demo_dataset`` replaces an earlier demo without leftovers, refuses a foreign non-empty folder
  and rejects an unusable config.
"""
from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.datasets import load_dataset, read_info
from core.data.demo import (
    DEMO_GENRES,
    GENERATOR_VERSION,
    DemoConfig,
    _grain,
    _sample_labels,
    demo_dataset_dir,
    ensure_demo_dataset,
    make_demo_dataset,
)
from core.errors import DatasetError
from core.progress import Progress

SMALL = DemoConfig(n_posters=40)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "set", SMALL)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _mean_colour(paths: list[Path]) -> np.ndarray:
    assert paths, "no single-genre poster of this genre"
    return np.mean([np.asarray(Image.open(p), dtype=np.float64).mean(axis=(0, 1)) for p in paths], axis=0)


def _single_genre_paths(root: Path, genre: str) -> list[Path]:
    dataset, _ = load_dataset(root)
    return [poster.path for poster in dataset.posters if poster.genres == (genre,)]


def test_same_seed_gives_byte_identical_files(demo, tmp_path):
    again = make_demo_dataset(tmp_path / "again", SMALL)
    assert _files(again) == _files(demo)


def test_other_seed_gives_other_posters(demo, tmp_path):
    other = make_demo_dataset(tmp_path / "other", DemoConfig(n_posters=40, seed=1))
    posters, other_posters = _files(demo / "posters"), _files(other / "posters")
    assert posters.keys() == other_posters.keys()
    assert all(posters[name] != other_posters[name] for name in posters)


def test_no_two_posters_are_identical(demo):
    assert len(set(_files(demo / "posters").values())) == SMALL.n_posters


def test_loads_with_nothing_skipped(demo):
    dataset, report = load_dataset(demo)
    assert len(dataset) == SMALL.n_posters
    assert report.skipped == []
    assert dataset.ids[0] == "demo-0001"
    assert dataset.titles[0] == "Synthetic poster 0001"
    with Image.open(dataset.paths[0]) as image:
        assert (image.format, image.size, image.mode) == ("JPEG", (182, 268), "RGB")


def test_info_says_synthetic_and_how_it_was_made(demo):
    dataset, _ = load_dataset(demo)
    info = read_info(demo)
    assert dataset.synthetic is True
    assert dataset.name == "Synthetic demo posters (generated)"
    assert info["source"] == "python -m core demo"
    assert (info["seed"], info["n_posters"], info["generator_version"]) == (0, 40, GENERATOR_VERSION)


def test_every_genre_appears_and_some_posters_have_several(demo):
    dataset, _ = load_dataset(demo)
    assert set(dataset.genre_counts()) == set(DEMO_GENRES)
    sizes = Counter(len(genres) for genres in dataset.labels)
    assert sizes[1] > 0 and sizes[2] + sizes[3] > 0
    assert set(sizes) <= {1, 2, 3}


def test_genres_are_imbalanced_with_drama_most_frequent():
    counts = Counter(g for genres in _sample_labels(2000, np.random.default_rng(0)) for g in genres)
    assert counts.most_common(1)[0][0] == "Drama"
    assert counts["Drama"] > 4 * counts["Western"]


def test_genre_styles_differ_measurably(demo):
    horror = _mean_colour(_single_genre_paths(demo, "Horror"))
    comedy = _mean_colour(_single_genre_paths(demo, "Comedy"))
    scifi = _mean_colour(_single_genre_paths(demo, "Sci-Fi"))
    western = _mean_colour(_single_genre_paths(demo, "Western"))
    assert comedy.mean() - horror.mean() > 80
    assert scifi[2] - scifi[0] > 30 > western[2] - western[0]


def test_grain_is_gaussian_with_a_shared_and_a_per_channel_part():
    noise = _grain(np.full((300, 200, 3), 128.0, dtype=np.float32), np.random.default_rng(0), 6.0) - 128.0
    assert noise.dtype == np.float32
    assert abs(noise.mean()) < 0.05
    assert noise.std() == pytest.approx(np.hypot(6.0, 2.0), rel=0.02)
    assert np.mean(np.abs(noise) < noise.std()) == pytest.approx(0.6827, abs=0.01)
    assert np.corrcoef(noise[..., 0].ravel(), noise[..., 1].ravel())[0, 1] == pytest.approx(36 / 40, abs=0.01)


def test_progress_is_reported_for_every_poster(tmp_path):
    calls: list[tuple[int, int, str]] = []
    make_demo_dataset(tmp_path / "set", DemoConfig(n_posters=9),
                      lambda p: calls.append((p.done, p.total, p.phase)))
    assert calls == [(i, 9, "posters") for i in range(1, 10)]


def test_ensure_generates_into_the_cache(cache):
    root = ensure_demo_dataset(SMALL)
    assert root == demo_dataset_dir()
    assert root.is_relative_to(cache)
    dataset, report = load_dataset(root)
    assert len(dataset) == SMALL.n_posters and report.skipped == []


def test_ensure_reuses_a_complete_folder_without_rewriting(cache):
    root = ensure_demo_dataset(SMALL)
    before = _mtimes(root)
    calls: list[Progress] = []
    assert ensure_demo_dataset(SMALL, progress=calls.append) == root
    assert _mtimes(root) == before
    assert calls == []


@pytest.mark.parametrize("damage", ["labels", "info", "poster", "version"])
def test_ensure_regenerates_an_incomplete_or_outdated_folder(cache, damage):
    root = ensure_demo_dataset(SMALL)
    expected = _files(root)
    if damage == "labels":
        (root / "labels.csv").unlink()
    elif damage == "info":
        (root / "dataset.json").unlink()
    elif damage == "poster":
        (root / "posters" / "demo-0007.jpg").unlink()
    else:
        info = read_info(root)
        (root / "dataset.json").write_text(json.dumps({**info, "generator_version": 0}))
    assert ensure_demo_dataset(SMALL) == root
    assert _files(root) == expected


def test_ensure_keeps_a_complete_folder_installed_meanwhile(cache):
    config = DemoConfig(n_posters=10)
    installed: dict[str, int] = {}

    def another_session_finishes_first(progress: Progress) -> None:
        if not installed:
            installed.update(_mtimes(make_demo_dataset(demo_dataset_dir(), config)))

    root = ensure_demo_dataset(config, progress=another_session_finishes_first)
    assert _mtimes(root) == installed
    assert [p.name for p in root.parent.iterdir()] == [root.name]


def test_concurrent_ensure_calls_leave_one_clean_folder(cache):
    config = DemoConfig(n_posters=20)
    results: list[Path] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(ensure_demo_dataset(config))
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [demo_dataset_dir()] * 3
    dataset, report = load_dataset(demo_dataset_dir())
    assert len(dataset) == 20 and report.skipped == []
    assert [p.name for p in demo_dataset_dir().parent.iterdir()] == [demo_dataset_dir().name]


def test_make_replaces_an_earlier_demo_without_leftovers(tmp_path):
    out = make_demo_dataset(tmp_path / "set", DemoConfig(n_posters=12))
    make_demo_dataset(out, DemoConfig(n_posters=5))
    dataset, report = load_dataset(out)
    assert len(dataset) == 5 and report.skipped == []


def test_make_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match=r"is not empty and is not a demo folder \(it holds mine.txt\)"):
        make_demo_dataset(tmp_path, DemoConfig(n_posters=3))
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    assert list(tmp_path.parent.glob(f".{tmp_path.name}.*")) == []


def test_make_fills_an_empty_folder(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    make_demo_dataset(out, DemoConfig(n_posters=3))
    assert len(load_dataset(out)[0]) == 3


@pytest.mark.parametrize("config, message", [
    (DemoConfig(n_posters=0), "n_posters must be at least 1, got 0"),
    (DemoConfig(n_posters=3, width=10), "10x268 is too small"),
])
def test_unusable_config_is_rejected(tmp_path, config, message):
    with pytest.raises(DatasetError, match=message):
        make_demo_dataset(tmp_path / "set", config)
    assert not (tmp_path / "set").exists()
