"""Poster mosaic (core.analysis.mosaic).

Locks in: the snap layout puts each poster in at most one cell, each occupied cell shows the poster
nearest its centre, and an empty map region stays empty; the assignment layout fills a dense grid with
every poster exactly once; the mosaic image places each thumbnail at its cell; thumbnails are decoded
once per file content and the atlas is read back from disk; an unreadable poster becomes a grey tile;
bad coordinates are refused. Thumbnails are cached many to a shard (one .npy for a batch) and read back bit
for bit by a fresh store; a shard damaged in place or truncated is detected when read, removed, and its
posters decoded again, so the atlas never shows its bytes.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.analysis.mosaic import (ASSIGN_MAX_POSTERS, BACKGROUND, MISSING_GREY, THUMB_HEIGHT, THUMB_SHAPE,
                                  THUMB_WIDTH, assign_layout, atlas_file, cached_thumbnails, cell_at, grid_shape,
                                  missing_thumbnails, mosaic_image, mosaic_layout, poster_thumbnail,
                                  save_thumbnails, snap_layout, thumbnail_atlas, thumbnail_store)
from core.cache import memo_file_sha256, read_json
from core.errors import PosterGenreError


def test_snap_layout_shows_each_poster_at_most_once():
    coords = np.random.default_rng(0).normal(size=(2000, 2))
    layout = snap_layout(coords, columns=30)
    shown = layout.shown()
    assert len(shown) == len(set(shown.tolist())) > 100
    assert layout.shape == (grid_shape(coords, 30)[0], 30)


def test_snap_layout_keeps_the_poster_nearest_the_cell_centre():
    # a 2 x 2 grid over the unit square: cell centres at 0.25 / 0.75
    coords = np.array([[0.0, 0.0], [1.0, 1.0], [0.24, 0.26], [0.1, 0.4], [0.9, 0.1]])
    layout = snap_layout(coords, columns=2, rows=2)
    assert layout.cells.tolist() == [[-1, 1], [2, 4]]
    assert sorted(layout.shown().tolist()) == [1, 2, 4]


def test_snap_layout_leaves_empty_regions_empty():
    coords = np.array([[0.0, 0.0], [0.05, 0.0], [1.0, 0.0], [0.95, 0.0]])
    layout = snap_layout(coords, columns=4, rows=1)
    assert layout.cells.tolist() == [[1, -1, -1, 3]]


def test_grid_rows_follow_the_map_aspect_and_the_cell_shape():
    coords = np.array([[0.0, 0.0], [3.0, 2.0]])
    assert grid_shape(coords, 30) == (round(30 * 2 / 3 * THUMB_WIDTH / THUMB_HEIGHT), 30)


def test_assign_layout_puts_every_poster_in_exactly_one_cell():
    coords = np.random.default_rng(1).uniform(size=(50, 2))
    layout = assign_layout(coords)
    assert sorted(layout.shown().tolist()) == list(range(50))
    assert layout.cells.size >= 50 and (layout.cells >= 0).sum() == 50


def test_assign_layout_keeps_corners_in_corners():
    coords = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    assert assign_layout(coords, columns=2, rows=2).cells.tolist() == [[0, 1], [2, 3]]


def test_assign_layout_refuses_too_many_posters():
    with pytest.raises(PosterGenreError, match="at most"):
        assign_layout(np.zeros((ASSIGN_MAX_POSTERS + 1, 2)))


def test_bad_coordinates_and_layouts_are_refused():
    with pytest.raises(PosterGenreError, match=r"\(n, 2\)"):
        snap_layout(np.zeros((3, 3)))
    with pytest.raises(PosterGenreError, match="NaN"):
        snap_layout(np.array([[0.0, np.nan]]))
    with pytest.raises(PosterGenreError, match="unknown mosaic layout"):
        mosaic_layout(np.zeros((2, 2)), method="spiral")


def test_mosaic_image_places_each_thumbnail_in_its_cell():
    atlas = np.stack([np.full((THUMB_HEIGHT, THUMB_WIDTH, 3), value, np.uint8) for value in (10, 20, 30)])
    coords = np.array([[0.0, 1.0], [1.0, 0.0]])
    layout = snap_layout(coords, columns=2, rows=2)
    image = mosaic_image(layout, atlas, rows=[2, 0])
    assert image.shape == (2 * THUMB_HEIGHT, 2 * THUMB_WIDTH, 3)
    assert image[0, 0, 0] == 30 and image[-1, -1, 0] == 10
    assert image[0, -1, 0] == BACKGROUND and image[-1, 0, 0] == BACKGROUND
    assert cell_at(layout, 5, 5) == 0 and cell_at(layout, THUMB_WIDTH + 1, 0) == -1


def _poster(path, colour):
    Image.new("RGB", (60, 90), colour).save(path)
    return path


def test_thumbnails_are_cached_by_content_and_letterboxed(tmp_path):
    path = _poster(tmp_path / "red.png", (255, 0, 0))
    thumb = poster_thumbnail(path, root=tmp_path / "cache")
    assert thumb.shape == (THUMB_HEIGHT, THUMB_WIDTH, 3)
    assert tuple(thumb[THUMB_HEIGHT // 2, THUMB_WIDTH // 2]) == (255, 0, 0)
    cached = list((tmp_path / "cache").rglob("*.npy"))
    assert len(cached) == 1
    copy = _poster(tmp_path / "same.png", (255, 0, 0))
    poster_thumbnail(copy, root=tmp_path / "cache")
    assert list((tmp_path / "cache").rglob("*.npy")) == cached


def test_atlas_is_read_back_and_an_unreadable_poster_is_grey(tmp_path):
    paths = [_poster(tmp_path / "a.png", (0, 0, 255)), tmp_path / "bad.jpg"]
    paths[1].write_bytes(b"not an image")
    assert not atlas_file(paths, root=tmp_path / "cache").exists()
    atlas = thumbnail_atlas(paths, root=tmp_path / "cache")
    assert atlas_file(paths, root=tmp_path / "cache").is_file()
    assert atlas.shape == (2, THUMB_HEIGHT, THUMB_WIDTH, 3)
    assert (atlas[1] == MISSING_GREY).all()
    shards = list((tmp_path / "cache").rglob("shard-*.npy"))
    assert len(shards) == 1
    shards[0].unlink()
    np.testing.assert_array_equal(thumbnail_atlas(paths, root=tmp_path / "cache"), atlas)


def test_many_thumbnails_go_into_one_shard_and_come_back_bit_for_bit(tmp_path):
    keys = [f"{i:064x}" for i in range(300)]
    tiles = np.random.default_rng(0).integers(0, 256, (300, *THUMB_SHAPE), dtype=np.uint8)
    save_thumbnails(keys, tiles, root=tmp_path)
    assert len(list(tmp_path.rglob("*.npy"))) == 1
    unknown = "f" * 64
    cached = cached_thumbnails([unknown, *reversed(keys)], root=tmp_path)  # a fresh store: reads the sidecar
    assert list(cached) == list(reversed(keys))
    for key, tile in zip(keys, tiles):
        np.testing.assert_array_equal(cached[key], tile)
    assert missing_thumbnails([*keys, unknown], root=tmp_path) == [unknown]
    save_thumbnails(keys[:10], tiles[:10], root=tmp_path)
    assert len(list(tmp_path.rglob("*.npy"))) == 1


@pytest.mark.parametrize("damage", ["bytes changed in place", "truncated"])
def test_a_damaged_shard_is_detected_and_its_posters_are_decoded_again(tmp_path, monkeypatch, damage):
    paths = [_poster(tmp_path / f"p{i}.png", (60 * i, 100, 240 - 60 * i)) for i in range(4)]
    truth = [poster_thumbnail(path, root=tmp_path / "standalone") for path in paths]
    keys = [memo_file_sha256(path) for path in paths]
    cache = tmp_path / "cache"
    save_thumbnails(keys[:2], np.stack(truth[:2]), root=cache)
    save_thumbnails(keys[2:], np.stack(truth[2:]), root=cache)
    folder = thumbnail_store(cache).folder
    shard = next(sidecar.with_suffix(".npy") for sidecar in folder.glob("shard-*.json")
                 if keys[0] in read_json(sidecar)["keys"])
    data = bytearray(shard.read_bytes())
    if damage == "truncated":
        del data[-1]
    else:
        data[-1] ^= 0xFF  # the last pixel of the second poster
    shard.write_bytes(bytes(data))
    decoded: list = []
    import core.data.images

    original = core.data.images.open_rgb
    monkeypatch.setattr(core.data.images, "open_rgb", lambda path: decoded.append(path) or original(path))
    atlas = thumbnail_atlas(paths, keys=keys, root=cache)
    for tile, expected in zip(atlas, truth):
        np.testing.assert_array_equal(tile, expected)
    assert sorted(decoded) == paths[:2]
    assert not shard.exists() and missing_thumbnails(keys, root=cache) == []
    assert len(list(folder.glob("shard-*.npy"))) == 2
