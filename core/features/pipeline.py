"""Posters on disk → cached backbone features (VGG16's as the tutorial computed them), batched and resumable."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from core.cache import file_facts, file_sha256, stable_hash
from core.data.datasets import Dataset, Skipped
from core.errors import ConfigError, ImageError
from core.features.backbones import (BACKBONES, DEFAULT_BACKBONE, DEFAULT_GEOMETRY, GEOMETRIES, describe, has_flatten,
                                     input_size)
from core.features.extractor import PRECISIONS, get_extractor, resolve_precision
from core.features.migrate import carry_over
from core.features.store import FeatureStore, ShardedRows
from core.features.views import FLATTEN_UNAVAILABLE, STORAGES, STORED_DIMS, feature_view, pooled_rows, view_labels
from core.data.images import RESAMPLING, load_pixels, open_rgb, resize_pixels
from core.features import byproducts as extras
from core.features.weights import Weights, resolve_weights
from core.progress import ProgressFn, ProgressTracker

PIPELINE_VERSION = "vgg16-block5pool-flatten+block4pool-avg-3"
"""Part of every feature cache key; 3: rows kept as float16 (float32 caches of 2 are extracted again)."""
STORE_DTYPE = "float16"
MIN_IMAGE_SIZE = 32
"""The smallest input VGG16's five poolings accept."""
MAX_IMAGE_SIZE = 1024
"""The largest input width accepted: VGG16 learnt at 224, and at 1024 its first layer alone already holds
1024 x 1536 x 64 float32 activations per poster of the poster geometry (0.4 GB; 13 GB for a batch of 32)."""


@dataclass(frozen=True)
class FeatureConfig:
    weights: str = "imagenet"
    precision: str = "auto"
    image_size: int = 0
    """The input width; 0 (unset) becomes the backbone's native size (224; EfficientNet-Lite2: 260)."""
    resize: str = "bilinear"
    batch_size: int = 32
    storage: str = "full"
    """``core.features.views.STORAGES``: full rows, or pooled views only for very large sets."""
    geometry: str = DEFAULT_GEOMETRY
    """``core.features.backbones.GEOMETRIES``: the tutorial's square squash, or the poster's own 2:3 shape."""
    backbone: str = DEFAULT_BACKBONE
    """``core.features.backbones.BACKBONES``."""

    def __post_init__(self) -> None:
        if self.image_size == 0 and not isinstance(self.image_size, bool):
            native = BACKBONES[self.backbone].default_image_size if self.backbone in BACKBONES else 224
            object.__setattr__(self, "image_size", native)

    @property
    def stored(self) -> str:
        """The rows the store keeps: full only for VGG16 on the tutorial geometry, else pooled-only."""
        return self.storage if has_flatten(self.backbone, self.geometry) else "pooled"

    @property
    def input_size(self) -> tuple[int, int]:
        """``(width, height)`` of the network's input."""
        return input_size(self.geometry, self.image_size)

    @property
    def label(self) -> str:
        """E.g. "VGG16, tutorial 224x224": the backbone and geometry, as pages and run tables show them."""
        return describe(self.backbone, self.geometry, self.image_size)

    def flatten_unavailable(self) -> str:
        """Why this configuration has no 25,088-d flatten view."""
        if self.backbone != "vgg16":
            return (f"the tutorial's 25,088-d view is not available for {BACKBONES[self.backbone].label} "
                    "features: it is VGG16's flattened block5_pool on the 224x224 squash; "
                    f"{BACKBONES[self.backbone].label} gives pooled views only")
        if self.geometry != "tutorial":
            width, height = self.input_size
            return (f"the tutorial's 25,088-d view is not available for features of the {self.geometry} geometry "
                    f"({width}x{height}): it always comes from the tutorial's 224x224 squash, so this extraction "
                    "keeps pooled views only")
        return FLATTEN_UNAVAILABLE


def check_feature_config(config: FeatureConfig) -> None:
    """Refuse options that would crash deep inside extraction or mean nothing."""
    problems = []
    if isinstance(config.batch_size, bool) or not isinstance(config.batch_size, int) or config.batch_size < 1:
        problems.append(f"batch size for extraction must be a whole number ≥ 1, got {config.batch_size!r}")
    if isinstance(config.image_size, bool) or not isinstance(config.image_size, int) \
            or not MIN_IMAGE_SIZE <= config.image_size <= MAX_IMAGE_SIZE:
        problems.append(f"image size must be a whole number between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} (VGG16 "
                        f"learnt at 224; larger inputs do not fit in memory), got {config.image_size!r}")
    if config.resize not in RESAMPLING:
        problems.append(f"resize must be one of {', '.join(RESAMPLING)}, got {config.resize!r}")
    if config.precision not in PRECISIONS:
        problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}")
    if config.storage not in STORAGES:
        problems.append(f"storage must be one of {', '.join(STORAGES)}, got {config.storage!r}")
    if config.geometry not in GEOMETRIES:
        problems.append(f"geometry must be one of {', '.join(GEOMETRIES)}, got {config.geometry!r}")
    if config.backbone not in BACKBONES:
        problems.append(f"backbone must be one of {', '.join(BACKBONES)}, got {config.backbone!r}")
    if problems:
        default = FeatureConfig()
        raise ConfigError("invalid feature options: " + "; ".join(problems),
                          f"the defaults are batch size {default.batch_size}, image size {default.image_size}, "
                          f"resize {default.resize}, precision {default.precision}, storage {default.storage}, "
                          f"geometry {default.geometry}, backbone {default.backbone}")


Engine = Callable[[FeatureStore, list[tuple[Path, str]], FeatureConfig, Weights, str, ProgressFn | None],
                  dict[str, str]]
"""Computes the missing rows into the store and returns the reason for each undecodable poster.

The in-process default is ``_compute``; ``core.features.ray_engine.RayEngine`` runs on a Ray cluster.
"""


@dataclass
class FeatureSet:
    """Feature rows of a dataset's usable posters, row ``i`` of ``ids[i]``.

    ``rows`` reads float32 from the float16 shards of the store (``ShardedRows``); each row is the
    extractor's (``core.features.extractor``), or its pooled part when ``config.stored`` is "pooled".
    """

    rows: ShardedRows
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
    def features(self) -> ShardedRows:
        """The tutorial's flattened 25,088-d vectors (columns of ``rows``, nothing read or copied)."""
        return self.view("flatten")

    def view(self, name: str = "flatten") -> np.ndarray | ShardedRows:
        """One of ``FEATURE_VIEWS``; ``ConfigError`` for "flatten" on pooled-only features."""
        return feature_view(self.rows, name, cache_key=self.key, storage=self.config.stored,
                            unavailable=self.config.flatten_unavailable())

    def views(self) -> dict[str, str]:
        """The views these features have (``flatten`` only for VGG16's full rows), each with what it is."""
        return view_labels(self.config.backbone, self.config.stored)

    def view_key(self, name: str) -> str:
        return f"{self.key}-{name}"


def content_keys(paths: Sequence[Path]) -> list[str]:
    """sha256 of each file's bytes (memoised per process, so unchanged posters are read once)."""
    return file_facts(paths, "sha256", file_sha256)


def store_for(config: FeatureConfig, weights: Weights | None = None) -> tuple[FeatureStore, Weights, str]:
    """The cache of one configuration: keyed by everything that changes the features.

    The Keras version is read from the package metadata (the same string as ``keras.__version__``),
    so a page that only checks the cache does not import TensorFlow. Geometry and backbone enter the
    description only away from their defaults, so caches extracted before they existed stay valid; a
    backbone other than VGG16 also enters with the layers of its multi-level view, so a changed row layout
    is extracted again rather than read under the old one."""
    from importlib import metadata

    weights = weights or resolve_weights(config.weights, config.backbone)
    precision = resolve_precision(config.precision, config.backbone)
    description = {
        "weights": weights.identity,
        "weights_label": weights.label,
        "image_size": config.image_size,
        "resize": config.resize,
        "precision": precision,
        "keras": metadata.version("keras"),
        "pipeline": PIPELINE_VERSION,
        "dtype": STORE_DTYPE,
        "storage": config.stored,
    }
    if config.geometry != DEFAULT_GEOMETRY:
        description["geometry"] = config.geometry
    if config.backbone != DEFAULT_BACKBONE:
        description["backbone"] = config.backbone
        description["mid_layers"] = list(BACKBONES[config.backbone].mid_layers)
    full_extractor = has_flatten(config.backbone, config.geometry)
    dim = STORED_DIMS[config.stored] if full_extractor else BACKBONES[config.backbone].pooled_dim
    store = FeatureStore(stable_hash(description), dim, description, dtype=STORE_DTYPE,
                         prepare=pooled_rows if full_extractor and config.stored == "pooled" else None)
    return store, weights, precision


def cached_features(dataset: Dataset, config: FeatureConfig = FeatureConfig()) -> FeatureSet | None:
    """The dataset's features if they are all cached already, else ``None`` (computes nothing).

    Posters that failed to decode are not remembered, so they count as missing only when they are
    the sole missing ones; a dataset with undecodable posters returns after one extraction pass.
    """
    check_feature_config(config)
    started = time.perf_counter()
    store, weights, precision = store_for(config)
    keys = dataset.content_keys()
    if store.missing(keys):
        carry_over(store, keys)
    if store.missing(keys) and not _only_known_failures(store, keys):
        return None
    return _extract(dataset, config, store, weights, precision, keys, None, None, started)


def cache_status(dataset: Dataset, config: FeatureConfig = FeatureConfig()) -> tuple[int, int]:
    """``(cached, total)`` posters of ``dataset`` for this configuration."""
    store, _, _ = store_for(config)
    keys = dataset.content_keys()
    return sum(key in store for key in keys), len(keys)


def _only_known_failures(store: FeatureStore, keys: list[str]) -> bool:
    return set(store.missing(keys)) <= store.known_failures()


def extract_features(dataset: Dataset, config: FeatureConfig = FeatureConfig(), *,
                     progress: ProgressFn | None = None, engine: Engine | None = None) -> FeatureSet:
    """Features for every decodable poster of ``dataset``; only what is not cached is computed.

    Computing happens under the store's lock, after re-reading the store: a second extraction of the
    same posters (another process or dashboard session) waits for the first and reuses its rows.
    The rows are opened by reference to the shards (nothing is read here); a shard whose sidecar or
    size is wrong counts as missing and is extracted again, one whose bytes changed is found and
    removed when first read (``core.features.store``), and the next extraction recomputes it.
    """
    check_feature_config(config)
    started = time.perf_counter()
    store, weights, precision = store_for(config)
    return _extract(dataset, config, store, weights, precision, dataset.content_keys(), progress, engine,
                    started)


def _extract(dataset: Dataset, config: FeatureConfig, store: FeatureStore, weights: Weights, precision: str,
             keys: list[str], progress: ProgressFn | None, engine: Engine | None, started: float) -> FeatureSet:
    failed: dict[str, str] = {}
    computed: set[str] = set()
    if store.missing(keys):
        carry_over(store, keys)
    if store.missing(keys):
        with store.locked():
            path_of = dict(zip(keys, dataset.paths))
            todo = [(path_of[key], key) for key in store.missing(keys)]
            failed = (engine or _compute)(store, todo, config, weights, precision, progress)
            store.remember_failures(failed)
        computed = {key for _, key in todo if key not in failed}
    kept = [i for i, key in enumerate(keys) if key not in failed]
    kept_keys = [keys[i] for i in kept]
    posters = dataset.posters
    return FeatureSet(
        rows=store.open(kept_keys), ids=[posters[i].id for i in kept], keys=kept_keys, weights=weights,
        precision=precision, config=config, key=store.matrix_key(kept_keys),
        failed=[Skipped(p.id, failed[k], str(p.path)) for p, k in zip(posters, keys) if k in failed],
        n_computed=len(computed), n_cached=len(set(kept_keys) - computed),
        seconds=time.perf_counter() - started)


def _compute(store: FeatureStore, todo: list[tuple[Path, str]], config: FeatureConfig, weights: Weights,
             precision: str, progress: ProgressFn | None, *, byproducts: bool = True) -> dict[str, str]:
    """Extract ``todo`` in batches, decoding the next batch while the model runs on this one.

    With ``byproducts``, each poster that has no thumbnail or visual descriptors yet gets them from the
    image decoded here (``core.features.byproducts``). Returns the reason for each content key whose
    image could not be decoded.
    """
    failed: dict[str, str] = {}
    if not todo:
        return failed
    extractor = extractor_for(config, weights, precision)
    tracker = ProgressTracker(len(todo), "posters", progress)
    wanted = frozenset(extras.missing([key for _, key in todo])) if byproducts else frozenset()
    into = extras.caches() if wanted else None
    saving = None
    with ThreadPoolExecutor(max_workers=2) as pool:
        for batch_keys, pixels, errors, made in _decoded_batches(pool, todo, config, wanted):
            for key, reason in errors:
                failed[key] = reason
            if made.keys:  # written while the model runs, one batch at a time
                if saving:
                    saving.result()
                saving = pool.submit(made.save, into)
            if batch_keys:
                store.add(batch_keys, extractor(pixels))
            tracker.update(tracker.done + len(batch_keys) + len(errors), failed=len(failed))
        if saving:
            saving.result()
    if byproducts:
        extras.remember_failures(failed)
    return failed


def _decoded_batches(pool: ThreadPoolExecutor, todo: list[tuple[Path, str]], config: FeatureConfig,
                     wanted: frozenset[str]) -> Iterator[tuple[list[str], np.ndarray, list, extras.Byproducts]]:
    batches = [todo[i:i + config.batch_size] for i in range(0, len(todo), config.batch_size)]
    pending = pool.submit(_decode_batch, batches[0], config, wanted) if batches else None
    for index in range(len(batches)):
        current = pending.result()
        pending = pool.submit(_decode_batch, batches[index + 1], config, wanted) \
            if index + 1 < len(batches) else None
        yield current


def _decode_batch(batch: list[tuple[Path, str]], config: FeatureConfig, wanted: frozenset[str] = frozenset()):
    """``(keys, pixels, errors, byproducts)``: the network's input of each decodable poster, and the
    thumbnail and descriptors of those in ``wanted``, made from the same full decoded image."""
    keys, arrays, errors, made = [], [], [], extras.Byproducts()
    for path, key in batch:
        try:
            image = open_rgb(path)
        except ImageError as err:
            errors.append((key, str(err)))
            continue
        arrays.append(resize_pixels(image, config.input_size, config.resize))
        keys.append(key)
        if key in wanted:
            made.add(key, image)
    width, height = config.input_size
    pixels = np.stack(arrays) if arrays else np.empty((0, height, width, 3), np.uint8)
    return keys, pixels, errors, made


def extractor_for(config: FeatureConfig, weights: Weights, precision: str):
    return get_extractor(weights, precision, config.image_size, backbone=config.backbone, geometry=config.geometry)


def extract_one(source, config: FeatureConfig = FeatureConfig(), weights: Weights | None = None) -> np.ndarray:
    """The feature row of one image (an upload), as the extractor gives it: ``(ROW_DIM,)`` for VGG16 on the
    tutorial geometry, else the backbone's pooled row; not cached."""
    weights = weights or resolve_weights(config.weights, config.backbone)
    extractor = extractor_for(config, weights, resolve_precision(config.precision, config.backbone))
    pixels = load_pixels(source, config.input_size, config.resize)
    return extractor(pixels[None])[0]
