"""core.data.library: where downloaded datasets live and which are there; ``python -m core datasets``.

Locks in: ``datasets_dir`` is under the cache; ``downloaded_datasets`` lists folders with a
labels.csv by name, with the poster count from dataset.json (else labels.csv rows) and the source,
leaving out the demo's folder, hidden and label-less folders; ``dataset_folder`` refuses unsafe
names; the CLI prints the list as a table, or where to download to when it is empty.
"""
from __future__ import annotations

import json

import pytest

from core.cache import cache_root
from core.cli.main import main
from core.data.demo import DemoConfig, ensure_demo_dataset
from core.data.library import dataset_folder, datasets_dir, downloaded_datasets
from core.errors import DatasetError


@pytest.fixture
def library(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(tmp_path / "cache"))
    root = datasets_dir()
    for name, rows, info in [("b-urls", 3, {"source": "urls", "n_posters": 2}), ("a-plain", 2, None)]:
        (root / name / "posters").mkdir(parents=True)
        (root / name / "labels.csv").write_text("id,title,genres\n" + "".join(
            f"{i},T{i},Drama\n" for i in range(rows)))
        if info:
            (root / name / "dataset.json").write_text(json.dumps(info))
    (root / "no-labels").mkdir()
    (root / ".hidden").mkdir()
    (root / ".hidden" / "labels.csv").write_text("id,title,genres\n")
    ensure_demo_dataset(DemoConfig(n_posters=4))
    return root


def test_datasets_dir_is_in_the_cache(library):
    assert datasets_dir() == (cache_root() / "datasets").resolve()


def test_downloaded_datasets_lists_named_folders_with_counts_and_sources(library):
    entries = downloaded_datasets()
    assert [(e.name, e.n_posters, e.source) for e in entries] == [("a-plain", 2, "folder"), ("b-urls", 2, "urls")]
    assert entries[0].path == library / "a-plain"


def test_dataset_folder_refuses_unsafe_names(library):
    assert dataset_folder("tmdb-500") == library / "tmdb-500"
    with pytest.raises(DatasetError, match="not usable as a folder name"):
        dataset_folder("../elsewhere")


def test_cli_lists_the_datasets(library, capsys):
    assert main(["datasets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "posters", "source", "path"]
    assert lines[1].split() == ["a-plain", "2", "folder", str(library / "a-plain")]
    assert lines[2].split()[:3] == ["b-urls", "2", "urls"]


def test_cli_says_where_to_download_when_there_is_none(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(tmp_path / "empty"))
    assert main(["datasets"]) == 0
    assert f"no datasets in {datasets_dir()}" in capsys.readouterr().out
