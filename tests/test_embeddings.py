"""core.analysis.maps and core.analysis.neighbours: the UMAP map and the cosine-neighbour statistics behind the Clusters page.

Behaviours locked in:
- compute_umap returns finite (n, 2) float32 coordinates in which well-separated blobs stay separated;
- a second call with the same inputs is a cache hit with identical coordinates; a truncated cache file
  is recomputed and overwritten; another features_key does not hit the cache; fewer than 5 posters is
  a PosterGenreError;
- reduce_pca caps the component count at min(n, d) - 1 and never writes to its input;
- knn_indices equals brute-force cosine neighbours on both paths (one Gram matrix, or bounded-memory
  blocks) and whatever the chunk size;
- knn_genre_agreement gives the same table from precomputed neighbours and refuses too few columns;
- nearest_neighbors excludes the poster itself, returns same-blob posters first, similarities sorted
  descending and ~1 for a duplicate; read from a neighbour index (indexed_neighbors) they are the same
  posters with the same similarities, and more than the index holds is refused; nearest_to_vector finds the vector's own row, refuses a wrong width;
- knn_genre_agreement: observed ~1, chance ~ base rate and lift > 1 on separated blobs; lift ~1 on
  random labels; overall row first, then genres by support; read-only inputs are left untouched;
- exact_neighbours (the graph handed to UMAP) equals brute-force neighbours for every metric, the
  point itself first at distance 0, with umap's distance definitions;
- primary_genre picks each poster's least frequent genre; genre_membership picks one column.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.analysis import neighbours
from core.analysis.maps import (NO_GENRE, UmapConfig, compute_umap, exact_neighbours, genre_membership,
                                primary_genre, reduce_pca)
from core.analysis.neighbours import (OVERALL, indexed_neighbors, knn_genre_agreement, knn_indices,
                                      nearest_neighbors, nearest_to_vector)
from core.cache import load_npy
from core.errors import PosterGenreError

GENRES = ("Action", "Comedy", "Drama")
BLOB_SIZES = (40, 50, 60)
CONFIG = UmapConfig(n_neighbors=10, pca_components=20, seed=7)


def make_blobs(seed: int = 0, dims: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three blobs pointing in different directions (so cosine separates them), one genre each."""
    rng = np.random.default_rng(seed)
    blob = np.repeat(np.arange(3), BLOB_SIZES)
    centres = np.zeros((3, dims), dtype=np.float32)
    for b in range(3):
        centres[b, b * 10:(b + 1) * 10] = 5.0
    X = centres[blob] + rng.normal(scale=0.5, size=(len(blob), dims)).astype(np.float32)
    Y = np.eye(3, dtype=np.float32)[blob]
    return X.astype(np.float32), Y, blob


def read_only(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array.flags.writeable = False
    return array


@pytest.fixture(scope="module")
def blobs():
    return make_blobs()


@pytest.fixture(scope="module")
def memmapped(blobs, tmp_path_factory):
    path = tmp_path_factory.mktemp("features") / "X.npy"
    np.save(path, blobs[0])
    return np.load(path, mmap_mode="r")


@pytest.fixture(scope="module")
def umap_runs(memmapped, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("umap")
    first = compute_umap(memmapped, CONFIG, features_key="blobs", cache_dir=cache_dir)
    second = compute_umap(memmapped, CONFIG, features_key="blobs", cache_dir=cache_dir)
    return first, second, cache_dir


def test_umap_coords_are_finite_2d_float32(umap_runs, blobs):
    first, _, _ = umap_runs
    assert first.coords.shape == (len(blobs[0]), 2)
    assert first.coords.dtype == np.float32
    assert np.isfinite(first.coords).all()
    assert first.config == CONFIG and first.features_key == "blobs"


def test_umap_keeps_separated_blobs_apart(umap_runs, blobs):
    from sklearn.metrics import silhouette_score

    assert silhouette_score(umap_runs[0].coords, blobs[2]) > 0.6


def test_umap_second_call_is_a_cache_hit_with_identical_coords(umap_runs):
    first, second, cache_dir = umap_runs
    assert not first.from_cache
    assert second.from_cache
    np.testing.assert_array_equal(first.coords, second.coords)
    assert len(list(cache_dir.glob("*.npy"))) == 1


def test_umap_does_not_write_to_a_read_only_memmap(umap_runs, memmapped, blobs):
    assert not memmapped.flags.writeable
    np.testing.assert_array_equal(np.asarray(memmapped), blobs[0])


def test_truncated_umap_cache_is_recomputed_and_overwritten(umap_runs, memmapped, tmp_path):
    first, _, cache_dir = umap_runs
    (cached,) = cache_dir.glob("*.npy")
    broken = tmp_path / cached.name
    broken.write_bytes(cached.read_bytes()[:200])

    again = compute_umap(memmapped, CONFIG, features_key="blobs", cache_dir=tmp_path)

    assert not again.from_cache
    np.testing.assert_allclose(again.coords, first.coords, atol=1e-4)
    np.testing.assert_array_equal(load_npy(broken, shape=(len(memmapped), 2)), again.coords)


def test_other_features_key_misses_the_cache(umap_runs, memmapped):
    _, _, cache_dir = umap_runs
    other = compute_umap(memmapped[:30], CONFIG, features_key="other", cache_dir=cache_dir)
    assert not other.from_cache
    assert other.coords.shape == (30, 2)
    assert len(list(cache_dir.glob("*.npy"))) == 2


def test_umap_refuses_fewer_than_five_posters(tmp_path):
    with pytest.raises(PosterGenreError, match="at least 5 posters, got 4"):
        compute_umap(np.ones((4, 8), dtype=np.float32), CONFIG, features_key="tiny",
                     cache_dir=tmp_path)


def test_umap_refuses_unknown_metric(blobs, tmp_path):
    with pytest.raises(PosterGenreError, match="unknown UMAP metric 'manhattan'"):
        compute_umap(blobs[0], UmapConfig(metric="manhattan"), features_key="x", cache_dir=tmp_path)


def test_reduce_pca_caps_components_and_leaves_input_alone(blobs):
    X = read_only(blobs[0][:10])
    reduced = reduce_pca(X, n_components=50)
    assert reduced.shape == (10, 9)
    assert reduced.dtype == np.float32
    np.testing.assert_array_equal(X, blobs[0][:10])
    assert reduce_pca(blobs[0], n_components=5).shape == (len(blobs[0]), 5)


@pytest.mark.parametrize("gram_max_bytes", [0, 2**20], ids=["blocked", "gram"])
@pytest.mark.parametrize("chunk_rows", [7, 512])
def test_knn_indices_match_brute_force_cosine(monkeypatch, chunk_rows, gram_max_bytes):
    monkeypatch.setattr(neighbours, "CHUNK_ROWS", chunk_rows)
    monkeypatch.setattr(neighbours, "GRAM_MAX_BYTES", gram_max_bytes)
    X = np.random.default_rng(3).normal(size=(45, 16)).astype(np.float32)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    expected = np.argsort(-similarity, axis=1)[:, :5]

    np.testing.assert_array_equal(knn_indices(X, k=5), expected)


def test_nearest_neighbors_are_same_blob_and_exclude_self(blobs):
    X, _, blob = blobs
    indices, similarities = nearest_neighbors(read_only(X), 3, n=8)
    assert len(indices) == 8
    assert 3 not in indices
    assert (blob[indices] == blob[3]).all()
    assert (np.diff(similarities) <= 0).all()


def test_neighbours_read_from_the_index_equal_a_search_against_every_row(blobs):
    X = read_only(blobs[0])
    index = knn_indices(X, k=10)
    for row in (0, 3, len(X) - 1):
        expected_order, expected_similarity = nearest_neighbors(X, row, n=6)
        order, similarity = indexed_neighbors(X, index, row, n=6)
        np.testing.assert_array_equal(order, expected_order)
        np.testing.assert_allclose(similarity, expected_similarity, rtol=1e-5, atol=1e-6)
    with pytest.raises(PosterGenreError, match="outside the neighbour index"):
        indexed_neighbors(X, index, 0, n=11)


def test_duplicate_poster_is_the_nearest_with_similarity_one(blobs):
    X = np.vstack([blobs[0], blobs[0][5:6]])
    indices, similarities = nearest_neighbors(X, 5, n=3)
    assert indices[0] == len(X) - 1
    assert similarities[0] == pytest.approx(1.0, abs=1e-5)


def test_nearest_to_vector_finds_its_own_row_first(blobs):
    X = blobs[0]
    indices, similarities = nearest_to_vector(X, X[7] * 3.0, n=4)
    assert indices[0] == 7
    assert similarities[0] == pytest.approx(1.0, abs=1e-5)
    assert (np.diff(similarities) <= 0).all()


def test_nearest_to_vector_refuses_other_width(blobs):
    with pytest.raises(PosterGenreError, match="query vector has 10 features but the dataset has 64"):
        nearest_to_vector(blobs[0], np.ones(10, dtype=np.float32))


def test_nearest_neighbors_refuses_out_of_range_index(blobs):
    with pytest.raises(PosterGenreError, match="index 150 is out of range for 150 posters"):
        nearest_neighbors(blobs[0], 150)


def test_knn_agreement_on_separated_blobs_is_far_above_chance(blobs, memmapped):
    X, Y, _ = blobs
    Y_ro = read_only(Y)

    table = knn_genre_agreement(memmapped, Y_ro, GENRES, k=10, n_shuffles=5, seed=0)

    assert list(table.columns) == ["genre", "support", "observed", "chance", "lift"]
    assert list(table["genre"]) == [OVERALL, "Drama", "Comedy", "Action"]
    assert list(table["support"]) == [150, 60, 50, 40]
    genre_rows = table.iloc[1:]
    assert (genre_rows["observed"] > 0.99).all()
    base_rate = genre_rows["support"] / 150
    assert np.allclose(genre_rows["chance"], base_rate, atol=0.08)
    assert (table["lift"] > 2).all()
    np.testing.assert_array_equal(np.asarray(memmapped), X)
    np.testing.assert_array_equal(Y_ro, Y)


def test_knn_agreement_on_random_labels_has_lift_near_one():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 32)).astype(np.float32)
    Y = (rng.random((300, 4)) < 0.35).astype(np.float32)

    table = knn_genre_agreement(X, Y, ("A", "B", "C", "D"), k=10, n_shuffles=5, seed=2)

    assert table["lift"].between(0.75, 1.25).all()


def test_knn_agreement_refuses_mismatched_labels(blobs):
    with pytest.raises(PosterGenreError, match="149 label rows for 150 feature rows"):
        knn_genre_agreement(blobs[0], blobs[1][:149], GENRES)


def test_primary_genre_is_the_least_frequent_of_the_posters_genres():
    Y = np.array([[1, 0, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]])
    assert primary_genre(Y, ("A", "B", "C")) == ["C", "B", "A", NO_GENRE, "B"]


def test_genre_membership_returns_one_column_and_refuses_unknown_genre():
    Y = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    np.testing.assert_array_equal(genre_membership(Y, ("A", "B"), "B"), [False, True, True])
    with pytest.raises(PosterGenreError, match="unknown genre 'Z'"):
        genre_membership(Y, ("A", "B"), "Z")


def test_knn_agreement_reuses_precomputed_neighbours(blobs):
    X, Y, _ = blobs
    neighbours = knn_indices(X, k=20)
    direct = knn_genre_agreement(X, Y, GENRES, k=10, seed=4)
    reused = knn_genre_agreement(X, Y, GENRES, k=10, seed=4, neighbours=neighbours)
    pd.testing.assert_frame_equal(direct, reused)
    with pytest.raises(PosterGenreError, match=r"shape \(150, 20\) do not cover k=30"):
        knn_genre_agreement(X, Y, GENRES, k=30, neighbours=neighbours)


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "correlation"])
def test_exact_neighbours_match_brute_force_with_self_first(monkeypatch, metric):
    from scipy.spatial.distance import cdist

    monkeypatch.setattr("core.analysis.maps.KNN_BLOCK_ROWS", 16)
    points = np.random.default_rng(5).normal(size=(60, 7)).astype(np.float32)
    expected = cdist(points.astype(np.float64), points.astype(np.float64), metric=metric)
    np.fill_diagonal(expected, -1.0)

    indices, distances = exact_neighbours(points, 6, metric)

    np.testing.assert_array_equal(indices[:, 0], np.arange(60))
    np.testing.assert_array_equal(indices, np.argsort(expected, axis=1, kind="stable")[:, :6])
    np.testing.assert_allclose(distances[:, 1:], np.sort(expected, axis=1)[:, 1:6], atol=1e-5)
    assert (distances[:, 0] == 0).all() and distances.dtype == np.float32


# ---- 100,000 posters: a map fitted on a sample, approximate neighbours ------------------------------

@pytest.fixture
def small_sample(monkeypatch):
    """Above 100 posters the map is fitted on 100 of them, the rest placed 30 at a time."""
    from core.analysis import maps

    monkeypatch.setattr(maps, "SAMPLE_THRESHOLD", 100)
    monkeypatch.setattr(maps, "SAMPLE_SIZE", 100)
    monkeypatch.setattr(maps, "PLACE_BLOCK_ROWS", 30)
    fitted = []
    original = maps._fitted_umap
    monkeypatch.setattr(maps, "_fitted_umap", lambda points, config, **kw: fitted.append(len(points))
                        or original(points, config, **kw))
    return fitted


def test_map_above_the_threshold_is_fitted_on_a_seeded_sample_and_places_every_poster(
        small_sample, blobs, tmp_path):
    from sklearn.metrics import silhouette_score

    X, _, blob = blobs
    first = compute_umap(X, CONFIG, features_key="blobs", cache_dir=tmp_path / "a")
    second = compute_umap(X, CONFIG, features_key="blobs", cache_dir=tmp_path / "b")
    assert small_sample == [100, 100]
    assert first.fitted_on == 100 and not first.from_cache
    assert first.coords.shape == (len(X), 2) and np.isfinite(first.coords).all()
    np.testing.assert_array_equal(first.coords, second.coords)
    assert silhouette_score(first.coords, blob) > 0.6
    again = compute_umap(X, CONFIG, features_key="blobs", cache_dir=tmp_path / "a")
    assert again.from_cache and again.fitted_on == 100


def test_map_sample_is_seeded_and_absent_below_the_threshold(small_sample):
    from core.analysis.maps import map_sample

    assert map_sample(100, seed=1) is None
    sample = map_sample(150, seed=1)
    assert len(sample) == 100 == len(np.unique(sample)) and np.all(np.diff(sample) > 0) and sample[-1] < 150
    np.testing.assert_array_equal(sample, map_sample(150, seed=1))
    assert not np.array_equal(sample, map_sample(150, seed=2))


def test_map_below_the_threshold_is_fitted_on_every_poster(umap_runs):
    assert umap_runs[0].fitted_on is None


def test_knn_recall_is_the_share_of_exact_neighbours_found():
    assert neighbours.knn_recall(np.array([[1, 2], [3, 4]]), np.array([[2, 1], [3, 5]])) == 0.75
    with pytest.raises(PosterGenreError, match="cannot be compared"):
        neighbours.knn_recall(np.zeros((2, 3)), np.zeros((2, 2)))


def test_exact_knn_of_some_posters_equals_their_rows_of_the_full_search(blobs):
    X = blobs[0]
    rows = np.array([0, 7, 64, 149])
    np.testing.assert_array_equal(neighbours.exact_knn_of(X, rows, k=6), knn_indices(X, k=6)[rows])


def test_neighbours_above_the_threshold_are_approximate_with_high_recall(monkeypatch):
    """Runs pynndescent for real (its numba compilation costs tens of seconds once per process)."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(20, 32)) * 3
    X = (centres[np.repeat(np.arange(20), 30)] + rng.normal(size=(600, 32))).astype(np.float32)
    exact = knn_indices(X, k=10)
    assert not neighbours.approximate(len(X))
    monkeypatch.setattr(neighbours, "APPROXIMATE_THRESHOLD", 500)
    assert neighbours.approximate(len(X))
    found = knn_indices(X, k=10)
    assert found.shape == (600, 10)
    assert not (found == np.arange(600)[:, None]).any()
    assert neighbours.knn_recall(found, exact) >= 0.95
