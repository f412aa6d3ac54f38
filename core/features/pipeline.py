"""Posters on disk → cached VGG16 features, as the tutorial computed them but batched and resumable."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from core.cache import memo_file_sha256, stable_hash
from core.data.datasets import Dataset, Skipped
from core.errors import CacheError, ImageError
from core.features.extractor import FEATURE_DIM, ROW_DIM, get_extractor, resolve_precision
from core.features.store import FeatureStore
from core.features.views import feature_view
from core.data.images import RESAMPLING, load_pixels
from core.features.weights import Weights, resolve_weights

PIPELINE_VERSION = "vgg16-block5pool-flatten+block4pool-avg-2"


@dataclass(frozen=True)
class FeatureConfig:
    weights: str = "imagenet"
    precision: str = "auto"
    image_size: int = 224
    resize: str = "bilinear"
    batch_size: int = 32


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    per_second: float
    seconds_left: float | None
    failed: int = 0

    def line(self) -> str:
        eta = "" if self.seconds_left is None else f", {self.seconds_left:.0f}s left"
        failed = f", {self.failed} failed" if self.failed else ""
        return f"[{self.done}/{self.total}] {self.per_second:.1f} posters/s{eta}{failed}"


ProgressFn = Callable[[Progress], None]
Engine = Callable[[FeatureStore, list[tuple[Path, str]], FeatureConfig, Weights, str, ProgressFn | None],
                  dict[str, str]]
"""Computes the missing rows into the store and returns the reason for each undecodable poster.

The in-process default is ``_compute``; ``core.features.ray_engine.RayEngine`` runs on a Ray cluster.
"""


@dataclass
class FeatureSet:
    """Feature rows (see ``core.features.extractor``) of a dataset's usable posters, row ``i`` of ``ids[i]``."""

    rows: np.ndarray
    ids: list[str]
    keys: list[str]
    weights: Weights
    precision: str
    config: FeatureConfig
    key: str
    failed: list[Skipped] = field(default_factory=list)
    n_computed: int = 0
    n_cached: int = 0
    seconds: float = 0.0

    @property
    def features(self) -> np.ndarray:
        """The tutorial's flattened 25,088-d vectors (a view of ``rows``, nothing copied)."""
        return self.rows[:, :FEATURE_DIM]

    def view(self, name: str = "flatten") -> np.ndarray:
        return feature_view(self.rows, name, cache_key=self.key)

    def view_key(self, name: str) -> str:
        return f"{self.key}-{name}"


def content_keys(paths: Sequence[Path]) -> list[str]:
    """sha256 of each file's bytes (memoised per process, so unchanged posters are read once)."""
    return [memo_file_sha256(path) for path in paths]


def store_for(config: FeatureConfig, weights: Weights | None = None) -> tuple[FeatureStore, Weights, str]:
    """The cache of one configuration: keyed by everything that changes the features."""
    import keras

    weights = weights or resolve_weights(config.weights)
    precision = resolve_precision(config.precision)
    description = {
        "weights": weights.identity,
        "weights_label": weights.label,
        "image_size": config.image_size,
        "resize": config.resize,
        "precision": precision,
        "keras": keras.__version__,
        "pipeline": PIPELINE_VERSION,
    }
    return FeatureStore(stable_hash(description), ROW_DIM, description), weights, precision


def cached_features(dataset: Dataset, config: FeatureConfig = FeatureConfig()) -> FeatureSet | None:
    """The dataset's features if they are all cached already, else ``None`` (computes nothing).

    Posters that failed to decode are not remembered, so they count as missing only when they are
    the sole missing ones; a dataset with undecodable posters returns after one extraction pass.
    """
    store, _, _ = store_for(config)
    keys = content_keys(dataset.paths)
    if store.missing(keys) and not _only_known_failures(store, keys):
        return None
    return extract_features(dataset, config)


def cache_status(dataset: Dataset, config: FeatureConfig = FeatureConfig()) -> tuple[int, int]:
    """``(cached, total)`` posters of ``dataset`` for this configuration."""
    store, _, _ = store_for(config)
    keys = content_keys(dataset.paths)
    return sum(key in store for key in keys), len(keys)


def _only_known_failures(store: FeatureStore, keys: list[str]) -> bool:
    return set(store.missing(keys)) <= store.known_failures()


def extract_features(dataset: Dataset, config: FeatureConfig = FeatureConfig(), *,
                     progress: ProgressFn | None = None, engine: Engine | None = None) -> FeatureSet:
    """Features for every decodable poster of ``dataset``; only what is not cached is computed."""
    if config.resize not in RESAMPLING:
        raise ValueError(f"unknown resize method {config.resize!r}; choose from {sorted(RESAMPLING)}")
    started = time.perf_counter()
    store, weights, precision = store_for(config)
    keys = content_keys(dataset.paths)
    path_of = dict(zip(keys, dataset.paths))
    failed: dict[str, str] = {}
    n_computed = 0
    for attempt in range(2):
        todo = [(path_of[key], key) for key in store.missing(keys) if key not in failed]
        new_failures = (engine or _compute)(store, todo, config, weights, precision, progress)
        failed.update(new_failures)
        store.remember_failures(new_failures)
        n_computed += len(todo) - len(new_failures)
        kept = [i for i, key in enumerate(keys) if key not in failed]
        kept_keys = [keys[i] for i in kept]
        try:
            matrix = store.open_matrix(kept_keys)
            if matrix is None:
                matrix = store.build_matrix(kept_keys)
            break
        except CacheError:
            if attempt:
                raise
    posters = dataset.posters
    return FeatureSet(
        rows=matrix, ids=[posters[i].id for i in kept], keys=kept_keys, weights=weights,
        precision=precision, config=config, key=store.matrix_key(kept_keys),
        failed=[Skipped(p.id, failed[k], str(p.path)) for p, k in zip(posters, keys) if k in failed],
        n_computed=n_computed, n_cached=len(set(kept_keys)) - n_computed,
        seconds=time.perf_counter() - started)


def _compute(store: FeatureStore, todo: list[tuple[Path, str]], config: FeatureConfig, weights: Weights,
             precision: str, progress: ProgressFn | None) -> dict[str, str]:
    """Extract ``todo`` in batches, decoding the next batch while the model runs on this one.

    Returns the reason for each content key whose image could not be decoded.
    """
    failed: dict[str, str] = {}
    if not todo:
        return failed
    extractor = get_extractor(weights, precision, config.image_size)
    started, done = time.perf_counter(), 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        for batch_keys, pixels, errors in _decoded_batches(pool, todo, config):
            for key, reason in errors:
                failed[key] = reason
            if batch_keys:
                store.add(batch_keys, extractor(pixels))
            done += len(batch_keys) + len(errors)
            if progress:
                elapsed = time.perf_counter() - started
                rate = done / elapsed if elapsed > 0 else 0.0
                left = (len(todo) - done) / rate if rate > 0 else None
                progress(Progress(done, len(todo), rate, left, len(failed)))
    return failed


def _decoded_batches(pool: ThreadPoolExecutor, todo: list[tuple[Path, str]],
                     config: FeatureConfig) -> Iterator[tuple[list[str], np.ndarray, list]]:
    batches = [todo[i:i + config.batch_size] for i in range(0, len(todo), config.batch_size)]
    pending = pool.submit(_decode_batch, batches[0], config) if batches else None
    for index in range(len(batches)):
        current = pending.result()
        pending = pool.submit(_decode_batch, batches[index + 1], config) if index + 1 < len(batches) else None
        yield current


def _decode_batch(batch: list[tuple[Path, str]], config: FeatureConfig):
    keys, arrays, errors = [], [], []
    for path, key in batch:
        try:
            arrays.append(load_pixels(path, config.image_size, config.resize))
            keys.append(key)
        except ImageError as err:
            errors.append((key, str(err)))
    pixels = np.stack(arrays) if arrays else np.empty((0, config.image_size, config.image_size, 3), np.uint8)
    return keys, pixels, errors


def extract_one(source, config: FeatureConfig = FeatureConfig(), weights: Weights | None = None) -> np.ndarray:
    """The feature row of one image (an upload), shape ``(ROW_DIM,)``; not cached."""
    weights = weights or resolve_weights(config.weights)
    extractor = get_extractor(weights, resolve_precision(config.precision), config.image_size)
    pixels = load_pixels(source, config.image_size, config.resize)
    return extractor(pixels[None])[0]
