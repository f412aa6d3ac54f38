"""Rows of a version-2 cache (float32, same layout) are carried into the float16 store, not recomputed.

Locks in: ``cached_features`` on a dataset whose rows only a version-2 store of the same configuration
holds returns them (float16 rounding) without running VGG16, for full and pooled storage; a version-2
store of other weights is not used; the previous store is left as it was; rows the previous store
lacks are still extracted.
"""
from __future__ import annotations

import numpy as np
import pytest

from core.cache import read_json
from core.data.datasets import load_dataset
from core.features import pipeline
from core.features.extractor import ROW_DIM
from core.features.migrate import PREVIOUS_PIPELINES, carry_over
from core.features.pipeline import FeatureConfig, cached_features, content_keys, extract_features, store_for
from core.features.store import FeatureStore
from core.features.views import pooled_rows


def _version_2_store(config: FeatureConfig, keys: list[str], rows: np.ndarray, **changes) -> FeatureStore:
    """A store as pipeline version 2 wrote it: float32 rows, no dtype or storage in its description."""
    current, _, _ = store_for(config)
    description = {key: value for key, value in read_json(current.folder / "config.json").items()
                   if key not in ("dtype", "storage")}
    description.update(pipeline=PREVIOUS_PIPELINES[0], **changes)
    old = FeatureStore("v2-" + "-".join(changes) or "v2", ROW_DIM, description,
                       root=current.folder.parent, dtype="float32")
    old.add(keys, rows)
    return old


@pytest.fixture
def no_vgg16(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("VGG16 ran although the rows were cached by the previous version")

    monkeypatch.setattr(pipeline, "get_extractor", refuse)


@pytest.fixture
def dataset(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(tmp_path / "cache"))
    return load_dataset(tiny_dataset)[0]


def _rows(n: int) -> np.ndarray:
    return np.random.default_rng(0).gamma(1.0, 2.0, size=(n, ROW_DIM)).astype(np.float32)


def _float16(rows: np.ndarray) -> np.ndarray:
    return rows.astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("storage", ["full", "pooled"])
def test_version_2_rows_are_carried_over_without_vgg16(dataset, no_vgg16, storage):
    config = FeatureConfig(weights="none", storage=storage)
    keys = content_keys(dataset.paths)
    rows = _rows(len(keys))
    old = _version_2_store(config, keys, rows)
    before = sorted(path.name for path in old.folder.iterdir())
    features = cached_features(dataset, config)
    assert features is not None and features.keys == keys
    expected = rows if storage == "full" else pooled_rows(rows)
    np.testing.assert_array_equal(np.asarray(features.rows), _float16(expected))
    assert sorted(path.name for path in old.folder.iterdir()) == before
    assert carry_over(store_for(config)[0], keys) == 0


def test_a_previous_store_of_other_weights_is_not_used(dataset, no_vgg16):
    config = FeatureConfig(weights="none")
    keys = content_keys(dataset.paths)
    _version_2_store(config, keys, _rows(len(keys)), weights="file:sha256:other")
    assert cached_features(dataset, config) is None


def test_posters_the_previous_store_lacks_are_extracted(dataset):
    config = FeatureConfig(weights="none")
    keys = content_keys(dataset.paths)
    rows = _rows(len(keys))
    _version_2_store(config, keys[:30], rows[:30])
    features = extract_features(dataset, config)
    assert (features.n_computed, features.n_cached) == (len(keys) - 30, 30)
    np.testing.assert_array_equal(np.asarray(features.rows[:30]), _float16(rows[:30]))
