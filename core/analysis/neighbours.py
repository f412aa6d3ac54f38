"""Cosine neighbours in the real feature space, and how often neighbours share genres.

``X`` is an ``(n, d)`` float32 feature matrix that may be a read-only memmap (d = 25,088 for flattened
VGG16 features); nothing here writes to it. Neighbours are exact cosine neighbours: matrix products
against the raw matrix divided by the row norms, so no normalised copy of ``X`` is ever made.

``knn_indices`` of more than ``APPROXIMATE_THRESHOLD`` posters is approximate instead: an NN-descent
graph (pynndescent, which umap-learn brings), since the exact all-pairs search grows as n² (100,000
posters of 1,024-d: about 20 minutes on 2 cores). ``knn_recall`` measures what that costs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from core.analysis.numba_cache import configure_numba_cache
from core.cache import atomic_save_npy, cache_root, load_npy, stable_hash
from core.errors import CacheError, PosterGenreError

CHUNK_ROWS = 512
APPROXIMATE_THRESHOLD = 20_000
APPROXIMATE_SEED = 0
GRAM_MAX_BYTES = 512 * 2**20
OVERALL = "overall"


def nearest_neighbors(X: np.ndarray, index: int, *, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` posters most cosine-similar to poster ``index`` (itself excluded), most similar first."""
    X = check_matrix(X)
    rows = X.shape[0]
    if not 0 <= int(index) < rows:
        raise PosterGenreError(f"poster index {index} is out of range for {rows} posters",
                               f"pick an index from 0 to {rows - 1}")
    similarities = _cosine_to(X, np.asarray(X[int(index)], dtype=np.float32))
    similarities[int(index)] = -np.inf
    return _top(similarities, min(n, rows - 1))


def indexed_neighbors(X: np.ndarray, neighbours: np.ndarray, index: int, *, n: int = 8
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``nearest_neighbors`` read from a neighbour index (``knn_indices``, nearest first) for ``n`` up to its
    width: the cosine similarity is computed for those ``n`` posters only, not against every row."""
    X = check_matrix(X)
    if not 0 <= int(index) < X.shape[0] or n > neighbours.shape[1]:
        raise PosterGenreError(f"poster {index} and {n} neighbours are outside the neighbour index "
                               f"({neighbours.shape[0]} posters x {neighbours.shape[1]})",
                               "use nearest_neighbors for more neighbours than the index holds")
    order = np.asarray(neighbours[int(index), :n], dtype=np.int64)
    rows = np.asarray(X[order], dtype=np.float32)
    query = np.asarray(X[int(index)], dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1) * float(np.linalg.norm(query))
    similarities = (rows @ query) / np.maximum(norms, np.finfo(np.float32).tiny)
    return order, similarities.astype(np.float32)


def nearest_to_vector(X: np.ndarray, vector: np.ndarray, *, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` posters most cosine-similar to an outside feature vector (e.g. an uploaded poster)."""
    X = check_matrix(X)
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vector.shape[0] != X.shape[1]:
        raise PosterGenreError(
            f"the query vector has {vector.shape[0]} features but the dataset has {X.shape[1]}",
            "extract the uploaded poster's features with the same weights and view as the dataset")
    return _top(_cosine_to(X, vector), min(n, X.shape[0]))


def approximate(n: int) -> bool:
    """Whether ``knn_indices`` of ``n`` posters is approximate (NN-descent) rather than exact."""
    return n > APPROXIMATE_THRESHOLD


def knn_indices(X: np.ndarray, *, k: int = 10, features_key: str | None = None) -> np.ndarray:
    """``(n, k)`` indices of each poster's ``k`` cosine neighbours (itself excluded), nearest first;
    approximate above ``APPROXIMATE_THRESHOLD`` posters (``approximate``).

    With ``features_key`` the result is cached on disk: exact neighbours over 25,088-d features
    take tens of seconds on a laptop, and they never change for the same features.
    """
    if features_key is not None:
        cached = cached_knn_indices(features_key, k=k, n=len(X))
        if cached is not None:
            return cached
        neighbours = knn_indices(X, k=k).astype(np.int64)
        atomic_save_npy(_knn_path(features_key, k, len(X)), neighbours)
        return neighbours
    X = check_matrix(X)
    rows = X.shape[0]
    if k < 1:
        raise PosterGenreError(f"k must be at least 1 neighbour, got {k}")
    if rows < 2:
        raise PosterGenreError(f"neighbours need at least 2 posters, got {rows}",
                               "compute features for more posters")
    k = min(int(k), rows - 1)
    if approximate(rows):
        return approximate_knn_indices(X, k=k)
    data = _as_float32(X)
    if rows * rows * 4 <= GRAM_MAX_BYTES:
        return _knn_from_gram(data, k)
    return _knn_blocked(data, k)


def cached_knn_indices(features_key: str, *, k: int, n: int) -> np.ndarray | None:
    """Neighbour indices saved by ``knn_indices(..., features_key=...)``, or ``None``."""
    try:
        return np.asarray(load_npy(_knn_path(features_key, k, n), shape=(n, min(int(k), n - 1)),
                                   dtype="int64", mmap=False))
    except (CacheError, FileNotFoundError):
        return None


def _knn_path(features_key: str, k: int, n: int) -> Path:
    fields = {"features_key": features_key, "k": int(k), "n": n}
    if approximate(n):
        fields["approximate"] = f"nndescent-seed{APPROXIMATE_SEED}"
    return cache_root() / "knn" / f"{stable_hash(fields)}.npy"


def approximate_knn_indices(X: np.ndarray, *, k: int = 10) -> np.ndarray:
    """``(n, k)`` approximate cosine neighbours (itself excluded), nearest first, from pynndescent's
    NN-descent graph of ``k + 1`` neighbours (a poster is normally its own first neighbour)."""
    configure_numba_cache()
    from pynndescent import NNDescent

    data = np.ascontiguousarray(X, dtype=np.float32)
    rows = data.shape[0]
    index = NNDescent(data, metric="cosine", n_neighbors=min(k + 1, rows), random_state=APPROXIMATE_SEED,
                      low_memory=True, compressed=True)
    found = index.neighbor_graph[0]
    itself = found == np.arange(rows)[:, None]
    keep = np.where(itself.any(axis=1)[:, None], ~itself, np.arange(found.shape[1]) < k)
    return found[keep].reshape(rows, -1)[:, :k].astype(np.int64)


def exact_knn_of(X: np.ndarray, rows: np.ndarray, *, k: int = 10) -> np.ndarray:
    """``(len(rows), k)`` exact cosine neighbours among all posters of the posters ``rows`` (each
    excluding itself), nearest first: the reference ``knn_recall`` compares against."""
    X = check_matrix(X)
    rows = np.asarray(rows, dtype=np.int64)
    norms = _row_norms(X)
    queries = np.asarray(X[rows], dtype=np.float32) / norms[rows, None]
    best = _TopK(len(rows), k)
    for start in range(0, X.shape[0], CHUNK_ROWS * 8):
        chunk = np.asarray(X[start:start + CHUNK_ROWS * 8], dtype=np.float32)
        scores = queries @ chunk.T / norms[None, start:start + len(chunk)]
        scores[(rows[:, None] == np.arange(start, start + len(chunk))[None, :])] = -np.inf
        best.merge(slice(None), scores, first_column=start)
    return best.sorted_indices()


def knn_recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each poster's exact neighbours that ``found`` lists too (same shape, any order)."""
    found, exact = np.asarray(found), np.asarray(exact)
    if found.shape != exact.shape:
        raise PosterGenreError(f"neighbour lists of shapes {found.shape} and {exact.shape} cannot be compared",
                               "give both the same posters and the same k")
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(found, exact))
    return hits / exact.size


def knn_genre_agreement(X: np.ndarray, Y: np.ndarray, genres: Sequence[str], *, k: int = 10,
                        n_shuffles: int = 5, seed: int = 0,
                        neighbours: np.ndarray | None = None) -> pd.DataFrame:
    """How often a poster's nearest neighbours share its genres, against a label-shuffled baseline.

    Per genre: among posters with the genre, the mean fraction of their ``k`` neighbours that have it
    too ("observed"); "chance" is the same figure with label rows permuted across posters (neighbours
    fixed, mean over ``n_shuffles`` permutations); "lift" = observed / chance. The "overall" row is the
    mean fraction of neighbours sharing at least one genre with the poster.

    The neighbour search dominates the cost (seconds for thousands of 25,088-d rows); pass
    ``neighbours=knn_indices(X, k=k_max)`` computed once to re-run for any ``k <= k_max`` in
    milliseconds.
    """
    labels = _check_labels(X, Y, genres)
    if n_shuffles < 1:
        raise PosterGenreError(f"n_shuffles must be at least 1, got {n_shuffles}",
                               "the chance level is the mean over label shuffles")
    neighbours = _neighbours_for(X, k, neighbours)
    observed = _agreement(labels, neighbours)
    rng = np.random.default_rng(seed)
    chance = np.mean([_agreement(labels[rng.permutation(len(labels))], neighbours)
                      for _ in range(n_shuffles)], axis=0)
    support = np.concatenate([[len(labels)], labels.sum(axis=0)])
    frame = pd.DataFrame({
        "genre": [OVERALL, *genres],
        "support": support.astype(np.int64),
        "observed": observed,
        "chance": chance,
        "lift": np.divide(observed, chance, out=np.full_like(observed, np.nan), where=chance > 0),
    })
    order = np.concatenate([[0], 1 + np.argsort(-support[1:], kind="stable")])
    return frame.iloc[order].reset_index(drop=True)


def check_matrix(X: np.ndarray) -> np.ndarray:
    if getattr(X, "ndim", None) != 2:
        raise PosterGenreError(f"features must be a 2-D (posters, features) matrix, got shape "
                               f"{getattr(X, 'shape', None)}", "pass the feature matrix, not one row")
    return X


def _as_float32(X: np.ndarray) -> np.ndarray:
    return X if X.dtype == np.float32 else X.astype(np.float32)


def _row_norms(X: np.ndarray) -> np.ndarray:
    """L2 norm per row, zero rows counted as 1 so their similarity to everything is 0."""
    norms = np.empty(X.shape[0], dtype=np.float32)
    for start in range(0, X.shape[0], CHUNK_ROWS):
        chunk = np.asarray(X[start:start + CHUNK_ROWS], dtype=np.float32)
        norms[start:start + CHUNK_ROWS] = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
    norms[norms == 0] = 1.0
    return norms


def _cosine_to(X: np.ndarray, vector: np.ndarray) -> np.ndarray:
    similarities = np.empty(X.shape[0], dtype=np.float32)
    for start in range(0, X.shape[0], CHUNK_ROWS):
        chunk = np.asarray(X[start:start + CHUNK_ROWS], dtype=np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
        norms[norms == 0] = 1.0
        similarities[start:start + CHUNK_ROWS] = (chunk @ vector) / norms
    return similarities / max(float(np.linalg.norm(vector)), np.finfo(np.float32).tiny)


def _knn_from_gram(data: np.ndarray, k: int) -> np.ndarray:
    """One ``X @ X.T``, which numpy hands to BLAS ``syrk``: on 2 cores about 1.7x less CPU than the
    same half-product done as block ``gemm`` calls, at the cost of an ``n x n`` float32 matrix."""
    gram = data @ data.T
    norms = np.sqrt(np.clip(np.diagonal(gram), 0, None))
    norms[norms == 0] = 1.0
    gram /= norms[:, None]
    gram /= norms[None, :]
    np.fill_diagonal(gram, -np.inf)
    return np.concatenate([_top_rows(gram[start:start + CHUNK_ROWS], k)
                           for start in range(0, len(gram), CHUNK_ROWS)])


def _knn_blocked(data: np.ndarray, k: int) -> np.ndarray:
    """Exact and symmetric with bounded memory, for ``n`` too large for a Gram matrix: row block ``i``
    is multiplied only with rows ``i:``, and each product updates the running top-k of both sides."""
    rows = data.shape[0]
    norms = _row_norms(data)
    best = _TopK(rows, k)
    for start in range(0, rows, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, rows)
        block = np.asarray(data[start:stop])
        scores = (block @ data[start:].T) / norms[start:stop, None] / norms[None, start:]
        scores[np.arange(stop - start), np.arange(stop - start)] = -np.inf
        best.merge(slice(start, stop), scores, first_column=start)
        best.merge(slice(stop, rows), scores[:, stop - start:].T, first_column=start)
    return best.sorted_indices()


class _TopK:
    """Running ``k`` best (score, column) pairs per row, fed one block of candidate columns at a time."""

    def __init__(self, rows: int, k: int) -> None:
        self.scores = np.full((rows, k), -np.inf, dtype=np.float32)
        self.indices = np.full((rows, k), -1, dtype=np.int64)
        self.k = k

    def merge(self, rows: slice, scores: np.ndarray, *, first_column: int) -> None:
        if scores.size == 0:
            return
        columns = np.arange(first_column, first_column + scores.shape[1], dtype=np.int64)
        pooled = np.concatenate([self.scores[rows], scores], axis=1)
        pooled_indices = np.concatenate(
            [self.indices[rows], np.broadcast_to(columns, scores.shape)], axis=1)
        keep = np.argpartition(-pooled, self.k - 1, axis=1)[:, :self.k]
        self.scores[rows] = np.take_along_axis(pooled, keep, axis=1)
        self.indices[rows] = np.take_along_axis(pooled_indices, keep, axis=1)

    def sorted_indices(self) -> np.ndarray:
        order = np.argsort(-self.scores, axis=1, kind="stable")
        return np.take_along_axis(self.indices, order, axis=1)


def _top(similarities: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = _top_rows(similarities[None, :], max(int(n), 0))[0]
    return order, np.clip(similarities[order], -1.0, 1.0)


def _top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest scores per row, largest first."""
    if k == 0:
        return np.empty((scores.shape[0], 0), dtype=np.int64)
    if k < scores.shape[1]:
        candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        candidates = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    picked = np.take_along_axis(scores, candidates, axis=1)
    return np.take_along_axis(candidates, np.argsort(-picked, axis=1, kind="stable"), axis=1)


def as_bool_labels(Y: np.ndarray, genres: Sequence[str]) -> np.ndarray:
    labels = np.asarray(Y)
    if labels.ndim != 2 or labels.shape[1] != len(genres):
        raise PosterGenreError(f"labels of shape {labels.shape} do not match {len(genres)} genres",
                               "pass the multi-hot label matrix built with the same genre list")
    return labels > 0.5


def _check_labels(X: np.ndarray, Y: np.ndarray, genres: Sequence[str]) -> np.ndarray:
    labels = as_bool_labels(Y, genres)
    X = check_matrix(X)
    if labels.shape[0] != X.shape[0]:
        raise PosterGenreError(f"{labels.shape[0]} label rows for {X.shape[0]} feature rows",
                               "features and labels must come from the same dataset, in the same order")
    return labels


def _neighbours_for(X: np.ndarray, k: int, neighbours: np.ndarray | None) -> np.ndarray:
    if neighbours is None:
        return knn_indices(X, k=k)
    neighbours = np.asarray(neighbours)
    k = min(int(k), X.shape[0] - 1)
    if k < 1:
        raise PosterGenreError(f"k must be at least 1 neighbour, got {k}")
    if neighbours.ndim != 2 or neighbours.shape[0] != X.shape[0] or neighbours.shape[1] < k:
        raise PosterGenreError(f"precomputed neighbours of shape {neighbours.shape} do not cover "
                               f"k={k} for {X.shape[0]} posters",
                               "pass knn_indices(X, k=...) with at least k columns, or neighbours=None")
    return neighbours[:, :k]


def _agreement(labels: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """``[overall, per-genre...]`` neighbour agreement for one assignment of labels to posters."""
    neighbour_labels = labels[neighbours]
    k = neighbours.shape[1]
    shared = (neighbour_labels.sum(axis=1) * labels).sum(axis=0)
    support = labels.sum(axis=0)
    per_genre = np.divide(shared, support * k, out=np.full(labels.shape[1], np.nan),
                          where=support > 0)
    overall = (neighbour_labels & labels[:, None, :]).any(axis=2).mean()
    return np.concatenate([[overall], per_genre])
