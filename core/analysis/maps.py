"""Do similar posters cluster? A 2-D UMAP map of the features (UMAP of PCA scores, cached on disk).

``X`` is an ``(n, d)`` float32 feature matrix that may be a read-only memmap (d = 25,088 for flattened
VGG16 features); nothing here writes to it.

UMAP's numba kernels are compiled on first use, which costs more than a map of a few thousand
posters; ``import_umap`` (``core.analysis.numba_cache``) keeps umap's and pynndescent's compiled code
under the product's cache, so the compilation is paid once per install, and leaves out the TensorFlow
import umap makes for ParametricUMAP; ``warm_up`` (run by the server once no page is running) loads
the rest before anyone asks for a map. ``warm_up_at_low_priority`` does the bulk of the first
compilation (pynndescent's kernels, compiled when ``umap`` is first imported: ~20 s here) in a separate
process at the lowest CPU priority, so it fills the disk cache without taking the server's GIL.

Above ``SAMPLE_THRESHOLD`` posters the map is fitted on a seeded random sample of ``SAMPLE_SIZE``
(PCA and UMAP both) and every other poster is placed with UMAP's ``transform`` against the sample's
exact neighbours: at 100,000 posters a full fit would hold a 10 GB copy of the flattened features
and take far longer than a user waits.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np

from core.analysis.neighbours import as_bool_labels, check_matrix
from core.analysis.numba_cache import configure_numba_cache, import_umap
from core.cache import atomic_save_npy, cache_root, load_npy, stable_hash
from core.errors import CacheError, PosterGenreError

log = logging.getLogger(__name__)

EMBEDDING_VERSION = 2  # 2: exact neighbour graph handed to UMAP
METRICS = ("cosine", "euclidean", "correlation")
MIN_POSTERS = 5
RANDOMIZED_PCA_MIN_DIM = 2048
# 3 power iterations instead of scikit-learn's 7: on 1,500 real posters the 50 components keep 25.6%
# of the variance instead of 26.0% (the leading ones are unchanged) in less than half the time.
RANDOMIZED_PCA_POWER_ITERATIONS = 3
RANDOMIZED_PCA_OVERSAMPLES = 10  # scikit-learn's default
NO_GENRE = "(none)"
WARM_UP_POSTERS = 200
PR_SET_PDEATHSIG = 1  # linux/prctl.h
KNN_BLOCK_ROWS = 1024
SAMPLE_THRESHOLD = 20_000
SAMPLE_SIZE = 20_000
PLACE_BLOCK_ROWS = 16_384
PCA_TRANSFORM_ROWS = 2048


def warm_up(seed: int = 0) -> float:
    """Compile UMAP's kernels with a throwaway map of ``WARM_UP_POSTERS`` random points; returns seconds."""
    started = time.perf_counter()
    points = np.random.default_rng(seed).normal(size=(WARM_UP_POSTERS, UmapConfig().pca_components))
    for metric in METRICS:
        _umap_of(points.astype(np.float32), UmapConfig(metric=metric))
    return time.perf_counter() - started


def warm_up_at_low_priority() -> subprocess.Popen:
    """Run ``warm_up`` in a child process at the lowest CPU priority; its compiled kernels land in the
    shared numba disk cache (the child inherits ``NUMBA_CACHE_DIR`` and ``POSTER_GENRE_CACHE``)."""
    configure_numba_cache()
    code = "from core.analysis.maps import _warm_up_niced; _warm_up_niced()"
    return subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _warm_up_niced() -> None:
    _die_with_parent()
    if hasattr(os, "nice"):
        os.nice(19)
    warm_up()


def _die_with_parent() -> None:
    """Linux: end this child when the thread that started it ends (the server's warm-up thread, which waits
    for it). The server stops the child (SIGSTOP) while a page runs; a server killed meanwhile must not
    leave it stopped for good."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent ended before the request
        os._exit(0)


@dataclass(frozen=True)
class UmapConfig:
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"
    pca_components: int = 50
    seed: int = 42


@dataclass
class Embedding:
    coords: np.ndarray
    config: UmapConfig
    features_key: str
    from_cache: bool
    seconds: float
    fitted_on: int | None = None
    """How many posters UMAP was fitted on when it was fitted on a sample (the rest were placed with
    ``transform``); ``None`` when fitted on all of them."""


def map_sample(n: int, seed: int) -> np.ndarray | None:
    """Sorted row indices the map of ``n`` posters is fitted on, or ``None`` to fit on all of them."""
    if n <= SAMPLE_THRESHOLD:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=min(SAMPLE_SIZE, n), replace=False))


def _sample_size(n: int) -> int | None:
    return min(SAMPLE_SIZE, n) if n > SAMPLE_THRESHOLD else None


def reduce_pca(X: np.ndarray, n_components: int = 50, seed: int = 0, *,
               fit_rows: np.ndarray | None = None) -> np.ndarray:
    """PCA scores ``(n, k)`` float32 with ``k = min(n_components, min(n, d) - 1)``.

    Centring needs one writable copy of ``X``; it is made here once and centred in place (a read-only
    memmap would otherwise be copied twice: once to make it writable, once to centre it). Above
    ``RANDOMIZED_PCA_MIN_DIM`` columns the scores are scikit-learn's randomized PCA computed here
    (``_randomized_pca_scores``); below, scikit-learn's PCA runs on one BLAS thread (its products are
    small and its factorisations, threaded, wait on a shared machine's busy cores: 2.6 s instead of
    0.2 s for 4,596 x 1,024). With ``fit_rows`` only those rows are copied and fitted on, and every
    row is projected ``PCA_TRANSFORM_ROWS`` at a time.
    """
    X = check_matrix(X)
    n, d = X.shape
    if fit_rows is not None:
        return _reduce_pca_fitted_on(X, np.asarray(fit_rows), n_components, seed)
    k = min(int(n_components), min(n, d) - 1)
    if k < 1:
        raise PosterGenreError(f"PCA needs at least 2 posters and 2 features, got a {n} x {d} matrix",
                               "compute features for more posters")
    work = np.array(X, dtype=np.float32, order="C", copy=True)
    if d > RANDOMIZED_PCA_MIN_DIM:
        return _randomized_pca_scores(work, k, seed)
    _check_finite(work.sum(dtype=np.float64))
    with _one_blas_thread():  # narrow: scikit-learn's products are small, its factorisations many
        return np.ascontiguousarray(_pca(k, d, seed).fit_transform(work), dtype=np.float32)


def _randomized_pca_scores(work: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The scores of scikit-learn's ``PCA(svd_solver="randomized", iterated_power=RANDOMIZED_PCA_POWER_ITERATIONS)``
    (its centring, its range finder with LU normalisation, its sign convention), centring ``work`` in place.

    Two things it does are left out. Its four other passes over the matrix (a finiteness check, the
    copy check, the total variance, which the map never reads): a NaN or infinity shows in its
    column's mean. And its small factorisations (LU and QR of ``(d, k + 10)`` blocks, the SVD of a
    ``(k + 10, n)`` one) run on one BLAS thread, the products over the whole matrix on all: threaded,
    each factorisation waits on its threads dozens of times, and on a shared 2-core machine a QR that
    takes 3 ms on one thread took 0.9 s on two.
    """
    from scipy import linalg
    from sklearn.utils.extmath import svd_flip

    mean = work.mean(axis=0)
    _check_finite(mean)
    work -= mean
    transpose = work.shape[0] < work.shape[1]
    M = work.T if transpose else work
    Q = np.random.RandomState(seed).normal(size=(M.shape[1], k + RANDOMIZED_PCA_OVERSAMPLES)).astype(np.float32)
    one_thread = _one_blas_thread_factory()
    for _ in range(RANDOMIZED_PCA_POWER_ITERATIONS):
        for product in (M, M.T):
            Y = product @ Q
            with one_thread():
                Q, _ = linalg.lu(Y, permute_l=True, check_finite=False)
    Y = M @ Q
    with one_thread():
        Q, _ = linalg.qr(Y, mode="economic", check_finite=False)
    B = Q.T @ M
    with one_thread():
        Uhat, S, Vt = linalg.svd(B, full_matrices=False, lapack_driver="gesdd")
    U = Q @ Uhat
    U, Vt = (Vt[:k].T, U[:, :k].T) if transpose else (U[:, :k], Vt[:k])
    U, _ = svd_flip(U, Vt, u_based_decision=False)
    U *= S[:k]
    return np.ascontiguousarray(U, dtype=np.float32)


def _one_blas_thread_factory():
    """Makes context managers that cap BLAS at one thread and restore the counts on exit; the loaded
    libraries are looked up once, here, not on every use."""
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    return lambda: controller.limit(limits=1, user_api="blas")


def _one_blas_thread():
    return _one_blas_thread_factory()()


def _check_finite(summary: np.ndarray) -> None:
    if not np.isfinite(summary).all():
        raise PosterGenreError("the feature matrix holds NaN or infinite values",
                               "the feature cache is probably damaged: recompute the features")


def _pca(k: int, d: int, seed: int):
    from sklearn.decomposition import PCA

    randomized = d > RANDOMIZED_PCA_MIN_DIM
    return PCA(n_components=k, svd_solver="randomized" if randomized else "auto", random_state=seed, copy=False,
               iterated_power=RANDOMIZED_PCA_POWER_ITERATIONS if randomized else "auto")


def _reduce_pca_fitted_on(X: np.ndarray, fit_rows: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    work = np.ascontiguousarray(X[fit_rows], dtype=np.float32)  # indexing by rows copies already
    k = min(int(n_components), min(work.shape) - 1)
    if k < 1:
        raise PosterGenreError(f"PCA needs at least 2 posters and 2 features, got a {work.shape[0]} x "
                               f"{work.shape[1]} sample", "compute features for more posters")
    _check_finite(work.sum(dtype=np.float64))
    pca = _pca(k, work.shape[1], seed).fit(work)
    del work
    scores = np.empty((X.shape[0], k), dtype=np.float32)
    for start in range(0, X.shape[0], PCA_TRANSFORM_ROWS):
        scores[start:start + PCA_TRANSFORM_ROWS] = pca.transform(np.asarray(X[start:start + PCA_TRANSFORM_ROWS],
                                                                            dtype=np.float32))
    return scores


def compute_umap(X: np.ndarray, config: UmapConfig, *, features_key: str,
                 cache_dir: Path | None = None) -> Embedding:
    """2-D UMAP of ``X`` after PCA, cached on disk under a hash of everything that shapes the result."""
    started = time.perf_counter()
    X = check_matrix(X)
    n = X.shape[0]
    if n < MIN_POSTERS:
        raise PosterGenreError(f"UMAP needs at least {MIN_POSTERS} posters, got {n}",
                               "pick a dataset (or filter) with more posters")
    _check_config(config)
    path = _cache_path(X, config, features_key, cache_dir)
    coords = _load_cached(path, n)
    from_cache = coords is not None
    if not from_cache:
        log.info("computing UMAP of %d x %d features (%s) into %s", n, X.shape[1], config, path)
        coords = _run_umap(X, config)
        atomic_save_npy(path, coords)
    return Embedding(coords=coords, config=config, features_key=features_key, from_cache=from_cache,
                     seconds=time.perf_counter() - started, fitted_on=_sample_size(n))


def cached_umap(X: np.ndarray, config: UmapConfig, *, features_key: str,
                cache_dir: Path | None = None) -> Embedding | None:
    """The embedding if it is already on disk, else ``None``; computes nothing."""
    started = time.perf_counter()
    coords = _load_cached(_cache_path(X, config, features_key, cache_dir), X.shape[0])
    if coords is None:
        return None
    return Embedding(coords=coords, config=config, features_key=features_key, from_cache=True,
                     seconds=time.perf_counter() - started, fitted_on=_sample_size(X.shape[0]))


def primary_genre(Y: np.ndarray, genres: Sequence[str]) -> list[str]:
    """One genre per poster for colouring the map: the poster's least frequent genre in the dataset.

    The most frequent one would be uninformative (nearly every poster would be "Drama"); the rarest
    of a poster's genres is its most distinctive. Ties go to the earlier genre in ``genres``; a poster
    without genres gets ``NO_GENRE``.
    """
    labels = as_bool_labels(Y, genres)
    frequency = labels.sum(axis=0).astype(np.float64)
    ranked = np.where(labels, frequency, np.inf)
    choice = ranked.argmin(axis=1)
    has_genre = labels.any(axis=1)
    return [genres[c] if ok else NO_GENRE for c, ok in zip(choice, has_genre)]


def genre_membership(Y: np.ndarray, genres: Sequence[str], genre: str) -> np.ndarray:
    labels = as_bool_labels(Y, genres)
    if genre not in genres:
        raise PosterGenreError(f"unknown genre {genre!r}", f"pick one of {list(genres)}")
    return labels[:, list(genres).index(genre)].copy()


def _check_config(config: UmapConfig) -> None:
    if config.metric not in METRICS:
        raise PosterGenreError(f"unknown UMAP metric {config.metric!r}", f"use one of {list(METRICS)}")
    if config.n_neighbors < 2:
        raise PosterGenreError(f"UMAP n_neighbors must be at least 2, got {config.n_neighbors}")
    if config.min_dist < 0:
        raise PosterGenreError(f"UMAP min_dist must not be negative, got {config.min_dist}")
    if config.pca_components < 2:
        raise PosterGenreError(f"pca_components must be at least 2, got {config.pca_components}")


def _cache_path(X: np.ndarray, config: UmapConfig, features_key: str, cache_dir: Path | None) -> Path:
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "umap"
    fields = {"features_key": features_key, "config": asdict(config), "n": X.shape[0], "d": X.shape[1],
              "version": _generator_version()}
    if _sample_size(X.shape[0]) is not None:
        fields["fitted_on_sample"] = _sample_size(X.shape[0])
    key = stable_hash(fields)
    return folder / f"{key}.npy"


def _generator_version() -> str:
    try:
        umap_version = metadata.version("umap-learn")
    except metadata.PackageNotFoundError:
        umap_version = "unknown"
    return f"{EMBEDDING_VERSION}/umap-{umap_version}"


def _load_cached(path: Path, n: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        coords = np.array(load_npy(path, shape=(n, 2), dtype="float32"))
        if not np.isfinite(coords).all():
            raise CacheError(f"cache file {path} holds NaN or infinite coordinates")
    except CacheError as err:
        log.warning("%s; recomputing it", err)
        return None
    return coords


def _run_umap(X: np.ndarray, config: UmapConfig) -> np.ndarray:
    sample = map_sample(X.shape[0], config.seed)
    if sample is None:
        coords = _umap_of(reduce_pca(X, config.pca_components, seed=config.seed), config)
    else:
        coords = _umap_placed(reduce_pca(X, config.pca_components, seed=config.seed, fit_rows=sample),
                              sample, config)
    if not np.isfinite(coords).all():
        raise PosterGenreError("UMAP produced NaN or infinite coordinates",
                               "the features may be constant or duplicated; try another metric")
    return coords


def _umap_of(points: np.ndarray, config: UmapConfig, *, neighbour_search: str = "exact") -> np.ndarray:
    return np.ascontiguousarray(_fitted_umap(points, config, neighbour_search=neighbour_search).embedding_,
                                dtype=np.float32)


def _umap_placed(points: np.ndarray, sample: np.ndarray, config: UmapConfig) -> np.ndarray:
    """UMAP fitted on ``points[sample]``; every other point placed by ``transform`` from its exact
    neighbours among the sample, ``PLACE_BLOCK_ROWS`` points at a time."""
    reducer = _fitted_umap(points[sample], config)
    coords = np.empty((len(points), 2), dtype=np.float32)
    coords[sample] = reducer.embedding_
    rest = np.setdiff1d(np.arange(len(points)), sample)
    for start in range(0, len(rest), PLACE_BLOCK_ROWS):
        block = rest[start:start + PLACE_BLOCK_ROWS]
        coords[block] = _transform(reducer, points[block], points[sample], config.metric)
    return coords


def _transform(reducer, queries: np.ndarray, reference: np.ndarray, metric: str) -> np.ndarray:
    """UMAP's ``transform`` of ``queries`` from their exact neighbours among the fitted points.

    A reducer fitted on a precomputed graph has no search index, so its own ``transform`` refuses;
    these are the steps of umap-learn 0.5's ``transform`` after its neighbour search (membership
    strengths, weighted-mean initial placement, the layout against the fixed fitted embedding).
    """
    import scipy.sparse

    import_umap()
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import (compute_membership_strengths, init_graph_transform, make_epochs_per_sample,
                            smooth_knn_dist)

    indices, distances = _nearest(queries, reference, reducer._n_neighbors, metric)
    indices[distances >= reducer._disconnection_distance] = -1
    sigmas, rhos = smooth_knn_dist(distances, float(reducer._n_neighbors),
                                   local_connectivity=max(0.0, reducer.local_connectivity - 1.0))
    rows, cols, vals, _ = compute_membership_strengths(indices, distances, sigmas, rhos, bipartite=True)
    graph = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(len(queries), len(reference)))
    csr = graph.tocsr()
    csr.eliminate_zeros()
    embedding = init_graph_transform(csr, reducer.embedding_)
    n_epochs = 100 if len(queries) <= 10_000 else 30
    graph.data[graph.data < graph.data.max() / n_epochs] = 0.0
    graph.eliminate_zeros()
    rng_state = np.random.RandomState(reducer.transform_seed).randint(np.iinfo(np.int32).min,
                                                                      np.iinfo(np.int32).max, 3).astype(np.int64)
    embedding = optimize_layout_euclidean(
        embedding, reducer.embedding_.astype(np.float32, copy=True), graph.row, graph.col, n_epochs,
        len(reference), make_epochs_per_sample(graph.data, n_epochs), reducer._a, reducer._b, rng_state,
        reducer.repulsion_strength, reducer._initial_alpha / 4.0, reducer.negative_sample_rate, False)
    return np.asarray(embedding, dtype=np.float32)


def _fitted_umap(points: np.ndarray, config: UmapConfig, *, neighbour_search: str = "exact"):
    """UMAP of the PCA scores with the exact neighbour graph handed in (``precomputed_knn``).

    UMAP's own search is an all-pairs distance matrix through a Python-level callable below 4,096
    points (tens of seconds for a thousand posters) and approximate NN-descent above; the same exact
    neighbours by BLAS take well under a second for any dataset the product handles, and below 4,096
    points give the graph UMAP would have built itself. ``neighbour_search="umap"`` leaves the search
    to UMAP (the previous behaviour, kept for the benchmark).
    """
    import warnings

    umap = import_umap()
    n_neighbors = min(config.n_neighbors, points.shape[0] - 1)
    precomputed = (None, None, None)
    if neighbour_search == "exact":
        precomputed = (*exact_neighbours(points, n_neighbors, config.metric), None)
    reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=config.min_dist,
                        metric=config.metric, random_state=config.seed, n_jobs=1, precomputed_knn=precomputed)
    with warnings.catch_warnings(), _one_blas_thread():  # its linear algebra is small (spectral init)
        warnings.filterwarnings("ignore", message=".*precomputed_knn.*")
        return reducer.fit(points)


def exact_neighbours(points: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``(n, k)`` indices and distances of each point's ``k`` nearest points under ``metric``, the
    point itself first (as UMAP expects), then by distance (equal distances among the ``k`` by index).

    Distances follow umap's definitions (cosine and correlation: 1 - similarity, 0 for two zero
    vectors and 1 for one; euclidean). Rows are computed ``KNN_BLOCK_ROWS`` at a time.
    """
    return _nearest(points, points, k, metric, itself=True)


def _prepared(points: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = np.asarray(points, dtype=np.float64)
    if metric == "correlation":
        data = data - data.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(data, axis=1)
    if metric != "euclidean":
        data = data / np.where(norms == 0, 1.0, norms)[:, None]
    return data, norms == 0, np.einsum("ij,ij->i", data, data)


def _nearest(queries: np.ndarray, reference: np.ndarray, k: int, metric: str, *,
             itself: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest ``reference`` rows of each query row; ``itself``: the queries are the
    reference, and each row's own index comes first."""
    data, zero, squared = _prepared(reference, metric)
    queried, query_zero, query_squared = (data, zero, squared) if itself else _prepared(queries, metric)
    n = queried.shape[0]
    indices = np.empty((n, k), dtype=np.int64)
    distances = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, KNN_BLOCK_ROWS):
        block = queried[start:start + KNN_BLOCK_ROWS]
        products = block @ data.T
        if metric == "euclidean":
            dist = np.sqrt(np.clip(query_squared[start:start + len(block), None] + squared[None, :] - 2 * products,
                                   0, None))
        else:
            dist = 1.0 - products
            block_zero = query_zero[start:start + len(block)]
            dist[:, zero] = 1.0
            dist[block_zero] = 1.0
            dist[np.ix_(block_zero, zero)] = 0.0
        if itself:
            rows = np.arange(len(block))
            dist[rows, start + rows] = -np.inf
        candidates = np.argpartition(dist, k - 1, axis=1)[:, :k]
        picked = np.take_along_axis(dist, candidates, axis=1)
        order = np.lexsort((candidates, picked), axis=1)
        indices[start:start + len(block)] = np.take_along_axis(candidates, order, axis=1)
        distances[start:start + len(block)] = np.maximum(np.take_along_axis(picked, order, axis=1), 0.0)
    return indices, distances
