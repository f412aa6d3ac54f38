"""Visual descriptors (core.features.descriptors).

Locks in: the descriptors of solid-colour and black/white images are the hand-computed values; the
aspect ratio is the original file's; a dataset's descriptors are computed once and read back from the
cache (also for the same poster under another name), undecodable posters are reported; the neighbour
predictability is 1 for a map that sorts a column and about 0 for a shuffled one; map_structure ranks
descriptors and genres in one table.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.data.datasets import load_dataset, write_labels
from core.features.descriptors import (NAMES, dataset_descriptors, descriptors_cached, image_descriptors,
                                       map_neighbours, map_structure, neighbour_predictability, pixel_descriptors)


def solid(colour, side=16):
    return np.full((1, side, side, 3), colour, dtype=np.uint8)


def test_solid_red_has_the_hand_computed_descriptors():
    values = dict(zip(NAMES, pixel_descriptors(solid((255, 0, 0)))[0]))
    assert values["brightness"] == pytest.approx(0.299, abs=1e-6)
    assert values["contrast"] == pytest.approx(0.0, abs=1e-6)
    assert values["saturation"] == pytest.approx(1.0)
    # rg = 255, yb = 127.5, no spread: 0.3 * sqrt(255² + 127.5²)
    assert values["colourfulness"] == pytest.approx(0.3 * np.hypot(255, 127.5), rel=1e-5)
    assert values["grey_share"] == 0.0
    assert values["dominant_hue"] == 15.0
    assert values["edge_density"] == 0.0


def test_solid_grey_and_half_black_half_white():
    grey = dict(zip(NAMES, pixel_descriptors(solid((128, 128, 128)))[0]))
    assert grey["saturation"] == 0.0 and grey["colourfulness"] == 0.0 and grey["grey_share"] == 1.0
    assert np.isnan(grey["dominant_hue"])
    halves = np.zeros((1, 16, 16, 3), dtype=np.uint8)
    halves[:, :, 8:] = 255
    split = dict(zip(NAMES, pixel_descriptors(halves)[0]))
    assert split["brightness"] == pytest.approx(0.5) and split["contrast"] == pytest.approx(0.5)
    assert split["edge_density"] == pytest.approx(2 / 16)


def test_blue_and_green_hues():
    assert pixel_descriptors(solid((0, 0, 255)))[0][NAMES.index("dominant_hue")] == 255.0
    assert pixel_descriptors(solid((0, 255, 0)))[0][NAMES.index("dominant_hue")] == 135.0


def test_aspect_ratio_is_the_original_files(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (300, 200), (0, 0, 0)).save(path)
    values = dict(zip(NAMES, image_descriptors(path)))
    assert values["aspect_ratio"] == pytest.approx(1.5)
    assert values["brightness"] == 0.0


def test_dataset_descriptors_are_computed_once_and_cached(tmp_path):
    root = tmp_path / "set"
    (root / "posters").mkdir(parents=True)
    Image.new("RGB", (20, 30), (255, 0, 0)).save(root / "posters" / "a.png")
    Image.new("RGB", (20, 30), (255, 0, 0)).save(root / "posters" / "b.png")
    Image.new("RGB", (20, 30), (0, 0, 255)).save(root / "posters" / "c.png")
    write_labels(root, [("a", "A", ("X",)), ("b", "B", ("Y",)), ("c", "C", ("X",))])
    dataset, _ = load_dataset(root)
    cache = tmp_path / "cache"
    assert not descriptors_cached(dataset, root=cache)
    first = dataset_descriptors(dataset, root=cache)
    assert first.n_computed == 2 and first.ids == ["a", "b", "c"]
    assert first.values[:, NAMES.index("dominant_hue")].tolist() == [15.0, 15.0, 255.0]
    assert descriptors_cached(dataset, root=cache)
    again = dataset_descriptors(dataset, root=cache)
    assert again.n_computed == 0
    np.testing.assert_array_equal(again.values, first.values)
    assert np.isnan(again.for_ids(["c", "zzz"])[1]).all()


def test_undecodable_posters_are_reported(tmp_path):
    root = tmp_path / "set"
    (root / "posters").mkdir(parents=True)
    Image.new("RGB", (20, 30), (10, 10, 10)).save(root / "posters" / "a.png")
    (root / "posters" / "b.png").write_bytes(Image.new("RGB", (20, 30)).tobytes()[:50])
    write_labels(root, [("a", "A", ("X",)), ("b", "B", ("Y",))])
    dataset, _ = load_dataset(root, check_images=False)
    result = dataset_descriptors(dataset, root=tmp_path / "cache")
    assert result.ids == ["a"] and [item.id for item in result.failed] == ["b"]


def test_neighbour_predictability_of_sorted_and_shuffled_columns():
    n = 400
    coords = np.column_stack([np.arange(n, dtype=float), np.zeros(n)])
    sorted_column = np.repeat([0.0, 1.0], n // 2)
    shuffled = np.random.default_rng(0).permutation(sorted_column)
    scores = neighbour_predictability(np.column_stack([sorted_column, shuffled]), map_neighbours(coords, k=4))
    assert scores[0] > 0.95
    assert abs(scores[1]) < 0.1


def test_map_structure_ranks_descriptors_and_genres_together():
    rng = np.random.default_rng(1)
    coords = rng.uniform(size=(300, 2))
    values = rng.normal(size=(300, len(NAMES)))
    values[:, 0] = coords[:, 0]
    Y = (rng.random((300, 2)) < 0.4).astype(float)
    table = map_structure(map_neighbours(coords, 8), values, Y, ["Drama", "Horror"])
    assert len(table) == len(NAMES) + 2 and set(table["kind"]) == {"descriptor", "genre"}
    assert table.iloc[0]["name"] == "brightness" and table.iloc[0]["explained"] > 0.9
