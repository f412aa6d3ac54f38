"""Do similar posters cluster? A 2-D UMAP map of the features (UMAP of PCA scores, cached on disk).

``X`` is an ``(n, d)`` float32 feature matrix that may be a read-only memmap (d = 25,088 for flattened
VGG16 features); nothing here writes to it.

UMAP's numba kernels are compiled on first use, which costs more than a map of a few thousand
posters; ``configure_numba_cache`` keeps the compiled code under the product's cache, so the
compilation is paid once per install, and ``warm_up`` (run in a background thread at server start)
pays it before anyone asks for a map.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np

from core.analysis.neighbours import as_bool_labels, check_matrix
from core.cache import atomic_save_npy, cache_root, load_npy, stable_hash
from core.errors import CacheError, PosterGenreError

log = logging.getLogger(__name__)

EMBEDDING_VERSION = 1
METRICS = ("cosine", "euclidean", "correlation")
MIN_POSTERS = 5
RANDOMIZED_PCA_MIN_DIM = 2048
NO_GENRE = "(none)"
WARM_UP_POSTERS = 200
NUMBA_CACHE_ENV = "NUMBA_CACHE_DIR"


def configure_numba_cache() -> Path:
    """Point numba's on-disk cache of compiled functions at ``<cache root>/numba`` unless the user
    already chose a folder; must run before ``umap`` (hence numba) is first imported."""
    folder = Path(os.environ.get(NUMBA_CACHE_ENV) or cache_root() / "numba")
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault(NUMBA_CACHE_ENV, str(folder))
    return folder


def warm_up(seed: int = 0) -> float:
    """Compile UMAP's kernels with a throwaway map of ``WARM_UP_POSTERS`` random points; returns seconds."""
    started = time.perf_counter()
    points = np.random.default_rng(seed).normal(size=(WARM_UP_POSTERS, UmapConfig().pca_components))
    for metric in METRICS:
        _umap_of(points.astype(np.float32), UmapConfig(metric=metric))
    return time.perf_counter() - started


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


def reduce_pca(X: np.ndarray, n_components: int = 50, seed: int = 0) -> np.ndarray:
    """PCA scores ``(n, k)`` float32 with ``k = min(n_components, min(n, d) - 1)``.

    Centring needs one writable copy of ``X``; it is made here once and handed to scikit-learn with
    ``copy=False`` (a read-only memmap would otherwise be copied twice: once to make it writable,
    once to centre it).
    """
    X = check_matrix(X)
    n, d = X.shape
    k = min(int(n_components), min(n, d) - 1)
    if k < 1:
        raise PosterGenreError(f"PCA needs at least 2 posters and 2 features, got a {n} x {d} matrix",
                               "compute features for more posters")
    from sklearn.decomposition import PCA

    work = np.array(X, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(work.sum(dtype=np.float64)):
        raise PosterGenreError("the feature matrix holds NaN or infinite values",
                               "the feature cache is probably damaged: recompute the features")
    solver = "randomized" if d > RANDOMIZED_PCA_MIN_DIM else "auto"
    pca = PCA(n_components=k, svd_solver=solver, random_state=seed, copy=False)
    return np.ascontiguousarray(pca.fit_transform(work), dtype=np.float32)


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
    return Embedding(coords=coords, config=config, features_key=features_key,
                     from_cache=from_cache, seconds=time.perf_counter() - started)


def cached_umap(X: np.ndarray, config: UmapConfig, *, features_key: str,
                cache_dir: Path | None = None) -> Embedding | None:
    """The embedding if it is already on disk, else ``None``; computes nothing."""
    started = time.perf_counter()
    coords = _load_cached(_cache_path(X, config, features_key, cache_dir), X.shape[0])
    if coords is None:
        return None
    return Embedding(coords=coords, config=config, features_key=features_key, from_cache=True,
                     seconds=time.perf_counter() - started)


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
    key = stable_hash({"features_key": features_key, "config": asdict(config), "n": X.shape[0],
                       "d": X.shape[1], "version": _generator_version()})
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
    coords = _umap_of(reduce_pca(X, config.pca_components, seed=config.seed), config)
    if not np.isfinite(coords).all():
        raise PosterGenreError("UMAP produced NaN or infinite coordinates",
                               "the features may be constant or duplicated; try another metric")
    return coords


def _umap_of(points: np.ndarray, config: UmapConfig) -> np.ndarray:
    configure_numba_cache()
    import umap

    reducer = umap.UMAP(n_components=2, n_neighbors=min(config.n_neighbors, points.shape[0] - 1),
                        min_dist=config.min_dist, metric=config.metric, random_state=config.seed, n_jobs=1)
    return np.ascontiguousarray(reducer.fit_transform(points), dtype=np.float32)
