"""Feature extraction on a Ray cluster (Ray Data), writing into the same feature store as in-process.

The pipeline, for the posters the store does not hold yet:

    (key, path) rows ─► decode + resize (CPU tasks) ─► VGG16 (actor pool, one model per actor) ─► driver

The decoding tasks also make each poster's mosaic thumbnail and visual descriptors from the decoded image
(``core.features.byproducts``), as in-process extraction does; they travel with the rows and the driver
caches them. The driver writes each batch to the ``FeatureStore`` as it comes back (``iter_batches``), so a killed
job keeps every shard written so far and the next run sends only what is still missing. Workers read
the posters and build their model from the weights *spec* (checking its identity against the driver's),
so every node must see the dataset folder and the weights file at the same paths: a shared filesystem.
Only the driver writes the cache, so ``POSTER_GENRE_CACHE`` may be local, or shared to let several
drivers reuse each other's rows.

``precision`` is the one the store is keyed by (``auto`` is resolved where the command runs), so rows
from the cluster and from this process are interchangeable. Ray is optional:
``pip install -r requirements-scale.txt``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.analysis.mosaic import THUMB_HEIGHT, THUMB_WIDTH
from core.errors import EngineError, WeightsError
from core.features import byproducts as extras
from core.features.descriptors import NAMES
from core.features.extractor import ROW_DIM, get_extractor
from core.features.pipeline import FeatureConfig, _decode_batch
from core.features.store import FeatureStore
from core.features.weights import Weights, resolve_weights
from core.progress import ProgressFn, ProgressTracker

ENGINES = ("local", "ray")
RAY_ADDRESS_ENV = "RAY_ADDRESS"
INSTALL_HINT = "install the optional extra: python -m pip install -r requirements-scale.txt"
BATCHES_PER_BLOCK = 4
"""Posters per Ray block, in extraction batches: enough blocks for parallel decoding, few enough tasks."""
DECODE_CPUS = 0.5
"""CPUs reserved per decoding task. Differing from the actors' keeps decoding in its own tasks (Ray fuses
stages with equal resources into the actor, which would decode and infer one after the other)."""
_WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def import_ray():
    """The ``ray`` module with Ray Data, or ``EngineError`` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise EngineError(f"the Ray engine needs Ray Data, which is not installed ({err})", INSTALL_HINT) from err
    return ray


def configured_address() -> str | None:
    """The cluster named by ``RAY_ADDRESS`` (``auto``, ``HOST:6379`` or ``ray://HOST:10001``), if any."""
    return os.environ.get(RAY_ADDRESS_ENV, "").strip() or None


def connect(address: str | None = None, **local_options: Any):
    """Join the cluster at ``address`` (default ``RAY_ADDRESS``), or start a local Ray with ``local_options``.

    An already initialised Ray (a test's local cluster, a notebook) is reused as it is. Workers get the
    ``core`` package shipped with the job, so a cluster needs no copy of this project.
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray
    address = address or configured_address()
    runtime_env = {"py_modules": [str(Path(__file__).resolve().parents[1])], "env_vars": _WORKER_ENV}
    options = {} if address else {"include_dashboard": False, **local_options}
    try:
        ray.init(address=address, runtime_env=runtime_env, logging_level="WARNING", **options)
    except ConnectionError as err:
        raise EngineError(f"cannot reach the Ray cluster at {address!r} ({err})",
                          "start it with `ray start --head` and pass --ray-address auto, "
                          "or ray://HEAD:10001 from another machine") from err
    return ray


def plan_actors(resources: dict[str, float], nodes: int, actors: int | None = None,
                gpus_per_actor: float | None = None) -> tuple[int, float]:
    """``(actors, gpus per actor)`` for a cluster with these total ``resources`` and ``nodes``.

    By default: one GPU per actor and one actor per GPU when the cluster has GPUs; otherwise one CPU
    actor per node (TensorFlow already uses all of a node's cores for one model).
    """
    total_gpus = float(resources.get("GPU", 0.0))
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if total_gpus >= 1 else 0.0
    if gpus_per_actor < 0:
        raise EngineError(f"--gpus-per-actor {gpus_per_actor} is negative", "use 0 for CPU actors, or e.g. 1")
    if gpus_per_actor > total_gpus:
        raise EngineError(f"--gpus-per-actor {gpus_per_actor:g} but the Ray cluster has {total_gpus:g} GPUs",
                          "use --gpus-per-actor 0 for CPU actors, or add GPU nodes to the cluster")
    if actors is None:
        actors = int(total_gpus // gpus_per_actor) if gpus_per_actor else max(1, nodes)
    if actors < 1:
        raise EngineError(f"--actors {actors} must be at least 1", "omit --actors to use one per GPU or per node")
    return actors, gpus_per_actor


class _FeatureActor:
    """One VGG16 per actor, built once from the weights spec; rows for the decodable posters of a batch."""

    def __init__(self, weights_spec: str, weights_identity: str, precision: str, image_size: int,
                 backbone: str = "vgg16", geometry: str = "tutorial") -> None:
        weights = resolve_weights(weights_spec, backbone)
        if weights.identity != weights_identity:
            raise WeightsError(f"a Ray worker resolved weights {weights_spec!r} to {weights.identity}, "
                               f"the driver to {weights_identity}",
                               "put the same weights file at the same path on every node")
        self.extractor = get_extractor(weights, precision, image_size, backbone=backbone, geometry=geometry)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        decoded = batch["error"] == ""
        rows = np.zeros((len(decoded), self.extractor.dim), np.float32)
        if decoded.any():
            rows[decoded] = self.extractor(batch["pixels"][decoded])
        return {**{name: column for name, column in batch.items() if name != "pixels"}, "row": rows}


def _decode(batch: dict[str, np.ndarray], config: FeatureConfig) -> dict[str, np.ndarray]:
    """The in-process decoder on one batch; undecodable posters stay as rows with a reason and no pixels.

    Posters marked ``want`` also get their thumbnail and descriptors (``made``), for the driver to cache."""
    keys = [str(key) for key in batch["key"]]
    wanted = frozenset(key for key, want in zip(keys, batch["want"]) if want)
    good, pixels, errors, made = _decode_batch(list(zip(map(Path, batch["path"]), keys)), config, wanted)
    width, height = config.input_size
    out = np.zeros((len(keys), height, width, 3), np.uint8)
    position = {key: i for i, key in enumerate(keys)}
    for key, image in zip(good, pixels):
        out[position[key]] = image
    thumbs = np.zeros((len(keys), THUMB_HEIGHT, THUMB_WIDTH, 3), np.uint8)
    descriptors = np.zeros((len(keys), len(NAMES)), np.float32)
    for key, thumb, row in zip(made.keys, made.thumbnails, made.descriptors):
        thumbs[position[key]], descriptors[position[key]] = thumb, row
    reasons = dict(errors)
    return {"key": np.array(keys), "pixels": out, "error": np.array([reasons.get(key, "") for key in keys]),
            "made": np.array([key in set(made.keys) for key in keys]), "thumb": thumbs, "descriptors": descriptors}


@dataclass(frozen=True)
class RayEngine:
    """Computes missing feature rows on a Ray cluster; pass it as ``extract_features(..., engine=)``.

    ``address``: ``None`` uses ``RAY_ADDRESS`` or starts a local Ray. ``actors`` and ``gpus_per_actor``
    default to what ``plan_actors`` chooses for the cluster.
    """

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None

    def __call__(self, store: FeatureStore, todo: list[tuple[Path, str]], config: FeatureConfig,
                 weights: Weights, precision: str, progress: ProgressFn | None) -> dict[str, str]:
        if not todo:
            return {}
        ray = connect(self.address)
        actors, gpus = plan_actors(ray.cluster_resources(), sum(n["Alive"] for n in ray.nodes()),
                                   self.actors, self.gpus_per_actor)
        wanted = frozenset(extras.missing([key for _, key in todo]))
        batches = self.pipeline(ray, todo, config, weights, precision, actors, gpus, wanted).iter_batches(
            batch_size=config.batch_size, batch_format="numpy")
        try:
            failed = self._store_batches(batches, store, len(todo), progress)
            extras.remember_failures(failed)
            return failed
        except ray.exceptions.RayError as err:
            raise EngineError(f"the Ray job failed: {_last_line(err)}",
                              "the workers' traceback is above; every node needs the dataset folder and "
                              "the weights file at the same paths") from err

    @staticmethod
    def _store_batches(batches, store: FeatureStore, total: int, progress: ProgressFn | None) -> dict[str, str]:
        """Write each batch as it arrives; the reasons of the posters that could not be decoded."""
        failed: dict[str, str] = {}
        tracker = ProgressTracker(total, "posters", progress)
        into = extras.caches()
        for batch in batches:
            decoded = batch["error"] == ""
            if decoded.any():
                store.add([str(key) for key in batch["key"][decoded]], batch["row"][decoded])
            if "made" in batch:  # thumbnails and descriptors made on the cluster (``_decode``)
                made = batch["made"]
                extras.Byproducts([str(key) for key in batch["key"][made]], list(batch["thumb"][made]),
                                  list(batch["descriptors"][made])).save(into)
            failed.update((str(key), str(reason)) for key, reason in
                          zip(batch["key"][~decoded], batch["error"][~decoded]))
            tracker.update(tracker.done + len(decoded), failed=len(failed))
        return failed

    @staticmethod
    def pipeline(ray, todo: list[tuple[Path, str]], config: FeatureConfig, weights: Weights, precision: str,
                 actors: int, gpus_per_actor: float, wanted: frozenset[str] = frozenset()):
        """The lazy Ray Dataset of ``{key, row, error, made, thumb, descriptors}`` batches for ``todo``; posters
        in ``wanted`` get their thumbnail and descriptors made from the decoded image."""
        blocks = math.ceil(len(todo) / (config.batch_size * BATCHES_PER_BLOCK))
        context = ray.data.DataContext.get_current()
        # One output block per extraction batch, so the driver stores (and a killed job keeps) each batch.
        context.target_max_block_size = config.batch_size * (ROW_DIM * 4 + THUMB_HEIGHT * THUMB_WIDTH * 3)
        context.enable_progress_bars = context.print_on_execution_start = False
        items = [{"key": key, "path": str(path), "want": key in wanted} for path, key in todo]
        return (ray.data.from_items(items, override_num_blocks=blocks)
                .map_batches(_decode, fn_kwargs={"config": config}, batch_size=config.batch_size,
                             batch_format="numpy", num_cpus=DECODE_CPUS)
                .map_batches(_FeatureActor, batch_size=config.batch_size, batch_format="numpy",
                             fn_constructor_kwargs={"weights_spec": weights.spec,
                                                    "weights_identity": weights.identity,
                                                    "precision": precision, "image_size": config.image_size,
                                                    "backbone": config.backbone, "geometry": config.geometry},
                             compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=gpus_per_actor))


def _last_line(err: Exception) -> str:
    """The worker's own exception line, which Ray puts last after the remote traceback."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def engine_for(name: str = "local", address: str | None = None, actors: int | None = None,
               gpus_per_actor: float | None = None) -> RayEngine | None:
    """The ``engine=`` argument of ``extract_features`` for an engine name (``None`` is in-process).

    Choosing ``ray`` checks at once that Ray is installed, before any poster is read.
    """
    if name not in ENGINES:
        raise EngineError(f"unknown extraction engine {name!r}", f"choose one of {', '.join(ENGINES)}")
    if name == "local":
        return None
    import_ray()
    return RayEngine(address=address, actors=actors, gpus_per_actor=gpus_per_actor)
