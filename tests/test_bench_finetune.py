"""The pure helpers of bench/finetune.py: map augmentation, build order and the map cache's key."""
import numpy as np

from bench.finetune import build_order, maps_dir, random_crops
from core.features.weights import resolve_weights


def _windows(maps: np.ndarray, size: int) -> list[np.ndarray]:
    height, width = maps.shape[:2]
    return [maps[top:top + size, left:left + size] for top in range(height - size + 1)
            for left in range(width - size + 1)]


def test_random_crops_are_windows_of_their_own_map_some_flipped():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(40, 5, 5, 3)).astype(np.float16)
    crops = random_crops(maps, 3, np.random.default_rng(1))
    assert crops.shape == (40, 3, 3, 3) and crops.dtype == np.float32
    flipped = 0
    for crop, source in zip(crops, maps):
        windows = _windows(source.astype(np.float32), 3)
        plain = any(np.array_equal(crop, window) for window in windows)
        mirrored = any(np.array_equal(crop, window[:, ::-1]) for window in windows)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 5 < flipped < 35


def test_random_crops_without_flip_are_never_mirrored():
    maps = np.random.default_rng(2).normal(size=(20, 4, 4, 2)).astype(np.float16)
    crops = random_crops(maps, 2, np.random.default_rng(3), flip=False)
    for crop, source in zip(crops, maps):
        assert any(np.array_equal(crop, window) for window in _windows(source.astype(np.float32), 2))


def test_build_order_is_a_fixed_permutation():
    order = build_order(50)
    assert sorted(order) == list(range(50))
    assert np.array_equal(order, build_order(50))
    assert not np.array_equal(order, np.arange(50))


def test_map_cache_is_keyed_by_layer_and_geometry():
    weights = resolve_weights("none")
    conv2 = maps_dir(weights, "block5_conv2")
    assert conv2 == maps_dir(weights, "block5_conv2")
    assert conv2 != maps_dir(weights, "block4_pool")
    assert conv2 != maps_dir(weights, "block5_conv2", image_size=256)
    assert (conv2 / "description.json").is_file()


def test_load_maps_reads_what_was_cached_and_drops_a_damaged_map():
    import pytest

    from bench.finetune import MAP_SHAPE, is_cached, load_maps, map_path
    from core.cache import atomic_save_npy
    from core.errors import CacheError

    folder = maps_dir(resolve_weights("none"), "block5_conv2")
    rng = np.random.default_rng(4)
    for key in ("a", "b"):
        atomic_save_npy(map_path(folder, key), rng.normal(size=MAP_SHAPE).astype(np.float16))
        atomic_save_npy(map_path(folder, key, "block4"), rng.normal(size=512).astype(np.float32))
    maps, block4 = load_maps(folder, ["b", "a"])
    assert maps.shape == (2, *MAP_SHAPE) and block4.shape == (2, 512)
    assert np.array_equal(maps[1], np.load(map_path(folder, "a")))
    damaged = map_path(folder, "b")
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="again"):
        load_maps(folder, ["a", "b"])
    assert is_cached(folder, "a") and not is_cached(folder, "b")
