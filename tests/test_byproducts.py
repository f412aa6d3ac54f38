"""Thumbnails and visual descriptors made from the image extraction decodes (``core.features.byproducts``).

Locks in:
- an in-process extraction writes, for every decodable poster, a thumbnail and a descriptor row into the
  content-keyed caches, exactly equal (bit for bit) to what the standalone paths compute from the file
  (``poster_thumbnail``, ``image_descriptors``), including a non-RGB, non-2:3 PNG;
- the thumbnails of an extraction batch go into one shard (one .npy per batch, not per poster);
- after it, the atlas and ``dataset_descriptors`` decode no poster (Pillow's ``Image.open`` never called);
- an undecodable poster gets neither, is still reported by extraction, and is remembered so that neither
  ``backfill`` nor ``descriptors_cached`` waits for it again;
- extraction with ``byproducts=False`` writes neither (the bench's baseline), and a later extraction
  (another configuration) does not remake byproducts that are cached;
- ``backfill`` decodes each poster lacking either exactly once, reports progress to the total, gives the
  same values, and a second call decodes nothing.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from core.analysis.mosaic import (cached_thumbnails, missing_thumbnails, poster_thumbnail, thumbnail_atlas,
                                  thumbnail_store)
from core.cache import cache_root, read_json
from core.data.datasets import load_dataset
from core.data.demo import DemoConfig, make_demo_dataset
from core.errors import ImageError
from core.features.byproducts import backfill, missing
from core.features.descriptors import (dataset_descriptors, image_descriptors, missing_descriptors,
                                       undecodable)
from core.features.pipeline import FeatureConfig, _compute, extract_features

CONFIG = FeatureConfig(weights="none", batch_size=4)


@pytest.fixture(scope="module")
def posters(tmp_path_factory) -> Path:
    """Six demo posters, one replaced by a palette PNG of another shape and one by a non-image."""
    root = make_demo_dataset(tmp_path_factory.mktemp("byproducts") / "set", DemoConfig(n_posters=6, seed=11))
    dataset, _ = load_dataset(root)
    odd = PIL.Image.new("RGB", (50, 40), (200, 30, 60)).convert("P")
    with open(dataset.paths[1], "wb") as handle:
        odd.save(handle, format="PNG")
    dataset.paths[2].write_bytes(b"not an image at all")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Every ``PIL.Image.open`` from now on (a full decode starts with one)."""
    calls: list[str] = []
    original = PIL.Image.open

    def counting(fp, *args, **kwargs):
        calls.append(str(getattr(fp, "name", fp)))
        return original(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", counting)
    return calls


def _standalone(dataset, tmp_path: Path) -> tuple[dict, dict]:
    """Thumbnails and descriptors as the pages computed them before, in a separate thumbnail folder."""
    thumbs, rows = {}, {}
    for path, key in zip(dataset.paths, dataset.content_keys()):
        try:
            thumbs[key] = poster_thumbnail(path, root=tmp_path / "standalone")
            rows[key] = image_descriptors(path)
        except ImageError:
            continue
    return thumbs, rows


def _assert_equal_to_standalone(dataset, tmp_path: Path) -> None:
    thumbs, rows = _standalone(dataset, tmp_path)
    keys = dataset.content_keys()
    assert len(thumbs) == len(rows) == len(keys) - 1  # the non-image has neither
    assert missing_thumbnails(keys) == [keys[2]] and missing_descriptors(keys) == [] and missing(keys) == []
    assert undecodable() == {keys[2]}
    cached = cached_thumbnails(keys)
    assert sorted(cached) == sorted(thumbs)
    for key, thumb in thumbs.items():
        np.testing.assert_array_equal(cached[key], thumb)
    result = dataset_descriptors(dataset)
    assert result.n_computed == 0
    expected = np.stack([rows[key] for key in keys if key in rows])
    np.testing.assert_array_equal(result.values, expected)


def test_extraction_writes_thumbnails_and_descriptors_equal_to_the_standalone_ones(posters, cache, tmp_path):
    dataset, _ = load_dataset(posters, check_images=False)
    features = extract_features(dataset, CONFIG)
    assert [skipped.id for skipped in features.failed] == [dataset.posters[2].id]
    _assert_equal_to_standalone(dataset, tmp_path)


def shard_holding(key: str) -> Path:
    """The thumbnail shard (.npy) whose sidecar lists ``key``."""
    return next(sidecar.with_suffix(".npy") for sidecar in thumbnail_store().folder.glob("shard-*.json")
                if key in read_json(sidecar)["keys"])


def test_extraction_writes_one_thumbnail_file_per_batch_not_per_poster(posters, cache):
    dataset, _ = load_dataset(posters, check_images=False)
    extract_features(dataset, CONFIG)  # batches of 4: posters 0-3 (2 does not decode) and 4-5
    folder = thumbnail_store().folder
    assert sorted(len(read_json(sidecar)["keys"]) for sidecar in folder.glob("shard-*.json")) == [2, 3]
    assert len(list(cache.rglob("thumbnails/**/*.npy"))) == 2


def test_after_extraction_the_atlas_and_descriptors_decode_nothing(posters, cache, monkeypatch):
    dataset, _ = load_dataset(posters, check_images=False)
    extract_features(dataset, CONFIG)
    keys = dataset.content_keys()
    calls: list = []
    original = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: calls.append(a) or original(*a, **k))
    decodable = [i for i in range(len(keys)) if i != 2]
    atlas = thumbnail_atlas([dataset.paths[i] for i in decodable], keys=[keys[i] for i in decodable])
    result = dataset_descriptors(dataset)
    assert calls == []
    assert atlas.shape == (5, 48, 32, 3) and result.n_computed == 0 and len(result.ids) == 5


def test_extraction_without_byproducts_writes_neither_and_cached_ones_are_not_remade(posters, cache, monkeypatch):
    dataset, _ = load_dataset(posters, check_images=False)
    keys = dataset.content_keys()
    extract_features(dataset, CONFIG, engine=functools.partial(_compute, byproducts=False))
    assert missing(keys) == keys
    assert not (cache_root() / "thumbnails").exists() or missing_thumbnails(keys) == keys
    backfill(dataset.paths, keys)
    made: list = []
    monkeypatch.setattr("core.features.byproducts.Byproducts.add", lambda self, key, image: made.append(key))
    extract_features(dataset, FeatureConfig(weights="none", batch_size=4, storage="pooled"))
    assert made == []


def test_backfill_decodes_each_missing_poster_once_then_never(posters, cache, tmp_path, decodes):
    dataset, _ = load_dataset(posters, check_images=False)
    keys = dataset.content_keys()
    reports: list = []
    failed = backfill(dataset.paths, keys, progress=reports.append, batch_size=4)
    assert sorted(decodes) == sorted(str(path) for path in dataset.paths)
    assert list(failed) == [keys[2]] and "not an image" in failed[keys[2]]
    assert reports[-1].done == reports[-1].total == 6 and reports[-1].failed == 1
    decodes.clear()
    assert backfill(dataset.paths, keys) == {}
    assert decodes == []
    _assert_equal_to_standalone(dataset, tmp_path)


def test_backfill_after_a_lost_thumbnail_decodes_only_that_poster(posters, cache, decodes):
    dataset, _ = load_dataset(posters, check_images=False)
    keys = dataset.content_keys()
    backfill(dataset.paths, keys, batch_size=1)
    shard_holding(keys[0]).unlink()
    decodes.clear()
    backfill(dataset.paths, keys)
    assert decodes == [str(dataset.paths[0])]
    assert missing_thumbnails(keys) == [keys[2]]
