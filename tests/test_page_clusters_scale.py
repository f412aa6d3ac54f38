"""AppTest of the Clusters page above its size thresholds (lowered to fit 40 synthetic posters).

Behaviours locked in:
- above the map's sample threshold the page says, before and after computing, that the map is fitted
  on a sample and how many posters that sample holds;
- above the neighbour threshold the page says the neighbour statistics are approximate;
- below both thresholds it says neither;
- from the freezing threshold on, a dataset's posters are frozen out of the garbage collector's passes
  (Streamlit runs two full passes after every rerun); below it they are not.
"""
from __future__ import annotations

import gc
import shutil

import pytest

from core.analysis import maps, neighbours
from core.data.datasets import Poster
from tests.test_page_clusters import open_page, show_map, texts


@pytest.fixture
def lowered(monkeypatch):
    monkeypatch.setattr(maps, "SAMPLE_THRESHOLD", 30)
    monkeypatch.setattr(maps, "SAMPLE_SIZE", 25)
    monkeypatch.setattr(maps, "PLACE_BLOCK_ROWS", 10)
    monkeypatch.setattr(neighbours, "APPROXIMATE_THRESHOLD", 30)
    # the page's wording is under test, not pynndescent (tests/test_embeddings.py runs it)
    monkeypatch.setattr(neighbours, "approximate_knn_indices", lambda X, k: neighbours._knn_from_gram(
        neighbours._as_float32(X), k))


def test_page_says_the_map_is_fitted_on_a_sample_and_neighbours_are_approximate(lowered, tiny_features,
                                                                              tiny_dataset):
    at = open_page(tiny_dataset)
    at.slider(key="umap_min_dist").set_value(0.23).run()
    assert "fitted on a random sample of 25 posters" in texts(at)
    show_map(at)
    assert "Fitted on a sample of 25 of the 40 posters" in texts(at)
    assert "Neighbours are approximate above 30 posters" in texts(at)
    assert at.dataframe, "the agreement table is not shown"


def test_page_says_neither_below_the_thresholds(tiny_features, tiny_dataset):
    at = show_map(open_page(tiny_dataset))
    assert "sample" not in texts(at).lower()
    assert "approximate" not in texts(at).lower()


@pytest.mark.parametrize("threshold, frozen", [(40, True), (41, False)])
def test_a_large_datasets_posters_are_kept_out_of_the_collectors_passes(threshold, frozen, monkeypatch, tiny_features,
                                                                        tiny_dataset, tmp_path):
    copy = shutil.copytree(tiny_dataset, tmp_path / "copy")  # a new folder: loaded afresh, features from the cache
    monkeypatch.setattr("pages._shared.GC_FREEZE_MIN_POSTERS", threshold)
    try:
        open_page(copy)
        # type(), not isinstance(): a dead weakref proxy among the objects raises ReferenceError on the latter
        tracked = sum(type(o) is Poster and o.folder.parent == copy for o in gc.get_objects())
    finally:
        gc.unfreeze()
    assert tracked == (0 if frozen else 40)
