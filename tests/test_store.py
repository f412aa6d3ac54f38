"""The compact feature store (``core.features.store``) on tiny hand-made rows, no VGG16.

Locks in:
- a float16 store keeps float32 input as float16 shards (2 bytes a value plus the .npy header),
  clipped to ±65,504 so nothing becomes infinite, and reads back float32 equal to float16 rounding;
  a float32 store (descriptors) keeps float32 bit for bit and ``gather`` gives a writable array;
- ``open`` assembles a dataset's rows by reference across shards, in the dataset's order, reading no
  shard: int, negative, slice, index array, boolean mask, ``(rows, columns)`` and ``np.asarray``
  agree with the same indexing of the in-memory matrix; ``m[:, columns]`` is another lazy matrix;
  ``astype(np.float32)`` gives a real array; a key never stored is a ``KeyError``;
- a shard is checked when its rows are first read: changed bytes raise ``CacheError`` (message names
  the shard, hint says to extract again), the shard and its sidecar are removed and its keys are
  missing; rows of intact shards still read;
- a sidecar naming another dtype or dimension, or a data file of another size than its sidecar says,
  is not used (the latter is removed);
- ``prepare`` maps the extractor's rows to what is kept: a pooled-only store pools full rows into
  ``[block4 avg | block5 avg | block5 max]`` and the views read those columns.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import CacheError
from core.features.extractor import FEATURE_DIM, ROW_DIM
from core.features.store import FLOAT16_MAX, FeatureStore, ShardedRows
from core.features.views import POOLED_DIM, feature_view, pool_features, pooled_rows

DIM = 6


def _keys(n: int, prefix: str = "k") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


@pytest.fixture
def store(tmp_path) -> FeatureStore:
    return FeatureStore("test", DIM, {"what": "test"}, root=tmp_path, dtype="float16")


@pytest.fixture
def filled(store) -> tuple[FeatureStore, np.ndarray]:
    """Ten rows in shards of 4, 4 and 2."""
    values = np.random.default_rng(0).normal(scale=3, size=(10, DIM)).astype(np.float32)
    keys = _keys(10)
    for start in (0, 4, 8):
        store.add(keys[start:start + 4], values[start:start + 4])
    return store, values.astype(np.float16).astype(np.float32)


def test_float16_store_keeps_half_the_bytes_and_clips_to_the_float16_range(store):
    rows = np.array([[1.0, 1 / 3, 1e6, -1e6, 0.0, 2.5]] * 3, dtype=np.float32)
    store.add(_keys(3), rows)
    (shard,) = store.folder.glob("shard-*.npy")
    on_disk = np.load(shard)
    assert on_disk.dtype == np.float16 and shard.stat().st_size == 3 * DIM * 2 + 128
    read = store.gather(_keys(3))
    assert read.dtype == np.float32 and np.isfinite(read).all()
    np.testing.assert_array_equal(read[0], [1.0, np.float16(1 / 3), FLOAT16_MAX, -FLOAT16_MAX, 0.0, 2.5])
    assert json.loads(shard.with_suffix(".json").read_text())["dtype"] == "float16"


def test_float32_store_is_unchanged_and_gather_is_writable(tmp_path):
    store = FeatureStore("descriptors", 3, root=tmp_path)
    rows = np.array([[1 / 3, 1e6, -1.0], [0.1, 0.2, 0.3]], dtype=np.float32)
    store.add(["a", "b"], rows)
    values = store.gather(["b", "a"])
    np.testing.assert_array_equal(values, rows[[1, 0]])
    values[0, 0] = np.nan
    assert np.load(next(tmp_path.glob("descriptors/shard-*.npy"))).dtype == np.float32


def test_open_indexes_across_shards_like_the_matrix(filled):
    store, values = filled
    order = [7, 0, 9, 3, 4, 8, 1]
    matrix = store.open([f"k{i:03d}" for i in order])
    expected = values[order]
    assert isinstance(matrix, ShardedRows) and matrix.shape == (7, DIM) and len(matrix) == 7
    assert matrix.dtype == np.float16 and matrix.shards == 3
    np.testing.assert_array_equal(np.asarray(matrix), expected)
    np.testing.assert_array_equal(matrix[2], expected[2])
    np.testing.assert_array_equal(matrix[-1], expected[-1])
    np.testing.assert_array_equal(matrix[1:5], expected[1:5])
    np.testing.assert_array_equal(matrix[::3], expected[::3])
    np.testing.assert_array_equal(matrix[np.array([6, 0, 6])], expected[[6, 0, 6]])
    np.testing.assert_array_equal(matrix[expected[:, 0] > 0], expected[expected[:, 0] > 0])
    np.testing.assert_array_equal(matrix[[1, 2], 1:4], expected[[1, 2], 1:4])
    np.testing.assert_array_equal(matrix[3, [0, 5]], expected[3, [0, 5]])
    assert matrix[1:5].dtype == np.float32 and matrix.astype(np.float32).dtype == np.float32
    with pytest.raises(IndexError):
        matrix[7]


def test_column_slices_stay_lazy_and_compose(filled):
    store, values = filled
    matrix = store.open(_keys(10))
    middle = matrix[:, 1:5]
    assert isinstance(middle, ShardedRows) and middle.shape == (10, 4)
    inner = middle[:, 2:]
    assert isinstance(inner, ShardedRows) and inner.shape == (10, 2)
    np.testing.assert_array_equal(np.asarray(inner), values[:, 3:5])
    np.testing.assert_array_equal(inner[4:6], values[4:6, 3:5])


def test_open_reads_no_shard_and_a_changed_shard_fails_when_read(filled, caplog):
    store, values = filled
    shard = sorted(store.folder.glob("shard-*.npy"), key=lambda p: json.loads(
        p.with_suffix(".json").read_text())["keys"][0])[1]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.unlink()
    shard.write_bytes(bytes(data))
    matrix = store.open(_keys(10))
    np.testing.assert_array_equal(matrix[:4], values[:4])
    with pytest.raises(CacheError, match=f"feature shard {shard.name} .* was damaged and has been removed") as caught:
        matrix[5]
    assert "fails its checksum" in str(caught.value)
    assert caught.value.hint == "extract the features again: its 4 posters are computed again"
    assert not shard.exists() and not shard.with_suffix(".json").exists()
    assert store.missing(_keys(10)) == _keys(10)[4:8]
    np.testing.assert_array_equal(matrix[8:], values[8:])
    with pytest.raises(KeyError):
        store.open(_keys(10))


@pytest.mark.parametrize("change, removed", [({"dtype": "float32"}, False), ({"dim": DIM + 1}, False),
                                             ({"bytes": 12}, True)])
def test_shard_whose_sidecar_does_not_match_is_not_used(filled, change, removed, caplog):
    store, _ = filled
    sidecar = sorted(store.folder.glob("shard-*.json"))[0]
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, **change}))
    store.refresh()
    assert len(store) == 10 - len(meta["keys"]) and set(store.missing(_keys(10))) == set(meta["keys"])
    assert "ignoring feature shard" in caplog.text
    assert sidecar.with_suffix(".npy").exists() is not removed


def test_pooled_store_keeps_the_pooled_columns_of_full_rows(tmp_path):
    full = np.abs(np.random.default_rng(1).normal(size=(5, ROW_DIM))).astype(np.float32)
    store = FeatureStore("pooled", POOLED_DIM, root=tmp_path, dtype="float16", prepare=pooled_rows)
    store.add(_keys(5), full)
    rows = store.open(_keys(5))
    assert rows.shape == (5, 1536)
    for name in ("avg", "max", "avg45"):
        expected = pool_features(full, name)
        np.testing.assert_allclose(feature_view(rows, name, storage="pooled"), expected, rtol=1e-3)
    np.testing.assert_array_equal(pooled_rows(full)[:, 512:1024], pool_features(full, "avg"))
    assert np.asarray(rows).shape[1] < FEATURE_DIM
