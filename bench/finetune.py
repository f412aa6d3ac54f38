"""Does fine-tuning VGG16's last conv layer(s) pay on the IMDb dev posters, against `recommended`?

    python -m bench.finetune [--dataset DIR] [--weights PATH] [--seeds 0] [--trainable conv3|block5]
                             [--posters N] [--maps-only] [--epochs 6] [--time-budget-s 1800] ...

The input maps of the trainable part (``TRAINABLE``: block5_conv2's output to train block5_conv3, the
default; block4_pool to train all of block5) are computed once per poster, with the block4_pool average
(the fixed half of the avg45 view), and cached as float16 under the product cache, keyed by weights,
layer and input geometry. Posters are mapped in a fixed random order, so ``--posters N`` (a random
sample) can run while the rest are still being mapped. Per seed, on the product's own split
(``make_split``, 80/20) of the posters used:

- ``recommended``: the preset, trained by ``run_experiment`` on the frozen avg45 view (computed here from
  the cached maps through the ImageNet layers, so the product's feature cache is not needed);
- ``frozen 1 net``: the same head as one network, early-stopped on a validation slice of the training
  posters;
- ``fine-tuned``: that network behind the trainable conv layer(s), initialised from ImageNet, trained
  together on random crops and flips of the cached maps with small learning rates, early-stopped on the
  same validation slice with its best weights kept (epoch 0, the frozen start, included);
- ``rec. on ft feats``: the preset's 8 networks trained on the fine-tuned layers' avg45 features.

Every row is scored on the same test posters with the product's ``evaluate``, against the same frequency
prior (of all the training posters).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench import _common
from core.cache import atomic_save_npy, atomic_write_json, cache_root, file_lock, load_npy, read_json, stable_hash
from core.errors import CacheError, ImageError

TRAINABLE = {"conv3": ("block5_conv2", ("block5_conv3",)),
             "block5": ("block4_pool", ("block5_conv1", "block5_conv2", "block5_conv3"))}
"""Option → (cached input layer, layers trained)."""
MAP_SHAPE = (14, 14, 512)
MAP_DTYPE = "float16"
SQRT_FLOOR = 1e-8
"""Pooled values are floored here: the head's signed square root has a NaN gradient at exactly 0 (a
channel silent over a whole crop), which would poison the conv weights."""
MAPS_VERSION = 1


@dataclass(frozen=True)
class FinetuneConfig:
    trainable: str = "conv3"
    crop: int = 12
    flip: bool = True
    conv_learning_rate: float = 1e-4
    head_learning_rate: float = 2e-4
    batch_size: int = 32
    epochs: int = 6
    patience: int = 2
    validation_split: float = 0.1
    time_budget_s: float = 1800.0
    """Per seed: training stops after the epoch that crosses it (best weights kept)."""


# ---------------------------------------------------------------- map cache


def maps_dir(weights, layer: str, image_size: int = 224, resize: str = "bilinear") -> Path:
    from importlib import metadata

    from core.features.weights import canonical_identity

    description = {"weights": canonical_identity(weights.identity), "layer": layer, "image_size": image_size,
                   "resize": resize, "precision": "float32", "keras": metadata.version("keras"),
                   "dtype": MAP_DTYPE, "version": MAPS_VERSION}
    folder = cache_root() / "maps" / stable_hash(description)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "description.json").exists():
        atomic_write_json(folder / "description.json", description)
    return folder


def map_path(folder: Path, key: str, part: str = "map") -> Path:
    return folder / (f"{key}.npy" if part == "map" else f"{key}-{part}.npy")


def build_order(n: int) -> np.ndarray:
    """Posters are mapped in this fixed random order, so the posters cached at any moment (and those
    ``--posters N`` selects) are a random sample of the dataset, not its oldest films."""
    return np.random.default_rng(0).permutation(n)


def is_cached(folder: Path, key: str) -> bool:
    return map_path(folder, key).exists() and map_path(folder, key, "block4").exists()


def build_maps(folder: Path, paths: list[Path], keys: list[str], weights, layer: str,
               batch_size: int = 16) -> tuple[int, float]:
    """Compute the maps (and block4_pool averages, the fixed half of avg45) not cached yet; returns
    (computed, seconds). Resumable: files per poster, each written atomically."""
    if all(is_cached(folder, key) for key in keys):
        return 0, 0.0
    with file_lock(folder / ".lock", waiting=f"another process is building {folder}; waiting"):
        todo = [(path, key) for path, key in zip(paths, keys) if not is_cached(folder, key)]
        started = time.perf_counter()
        function = _map_function(weights, layer)
        from core.data.images import load_pixels
        from core.features.extractor import preprocess

        for start in range(0, len(todo), batch_size):
            batch_started = time.perf_counter()
            batch, arrays = [], []
            for path, key in todo[start:start + batch_size]:
                try:
                    arrays.append(load_pixels(path, 224, "bilinear"))
                    batch.append((path, key))
                except ImageError as err:
                    print(f"  skipped: {err}", flush=True)
            if not batch:
                continue
            pixels = np.stack(arrays)
            maps, block4 = (np.asarray(out) for out in function(preprocess(pixels)))
            for index, (_, key) in enumerate(batch):
                atomic_save_npy(map_path(folder, key), np.clip(maps[index], -65504, 65504).astype(MAP_DTYPE))
                atomic_save_npy(map_path(folder, key, "block4"), block4[index].astype(np.float32))
            _record_build(folder, len(batch), time.perf_counter() - batch_started)
            done = min(start + batch_size, len(todo))
            if start // batch_size % 10 == 0 or done == len(todo):
                print(f"  maps {done}/{len(todo)} ({done / (time.perf_counter() - started):.2f} posters/s)",
                      flush=True)
        return len(todo), time.perf_counter() - started


def _record_build(folder: Path, computed: int, seconds: float) -> None:
    log = folder / "build.json"
    try:
        record = read_json(log)
    except (FileNotFoundError, CacheError):
        record = {"posters": 0, "seconds": 0.0}
    atomic_write_json(log, {"posters": record["posters"] + computed, "seconds": record["seconds"] + seconds})


def build_record(folder: Path) -> dict | None:
    try:
        return read_json(folder / "build.json")
    except (FileNotFoundError, CacheError):
        return None


def _map_function(weights, layer: str):
    import keras
    import tensorflow as tf

    from core.features.extractor import load_base

    base = load_base(weights, 224)
    base.trainable = False
    both = keras.Model(base.inputs, [base.get_layer(layer).output, base.get_layer("block4_pool").output])

    def run(x):
        maps, block4 = both(x, training=False)
        return maps, tf.reduce_mean(block4, axis=[1, 2])

    return tf.function(run, reduce_retracing=True)


def load_maps(folder: Path, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(maps, block4 averages) of ``keys``, as cached."""
    maps = np.empty((len(keys), *MAP_SHAPE), dtype=MAP_DTYPE)
    block4 = np.empty((len(keys), 512), dtype=np.float32)
    for index, key in enumerate(keys):
        try:
            maps[index] = load_npy(map_path(folder, key), shape=MAP_SHAPE, dtype=MAP_DTYPE, mmap=False)
            block4[index] = load_npy(map_path(folder, key, "block4"), shape=(512,), dtype="float32", mmap=False)
        except CacheError as err:
            for part in ("map", "block4"):
                map_path(folder, key, part).unlink(missing_ok=True)
            raise CacheError(f"{err}; removed it", "run the benchmark again: the map is computed again") from err
    return maps, block4


# ---------------------------------------------------------------- augmentation


def random_crops(maps: np.ndarray, size: int, rng: np.random.Generator, flip: bool = True) -> np.ndarray:
    """A ``size``x``size`` crop of each map at a random place, each flipped left-right with chance 1/2."""
    n, height, width = maps.shape[:3]
    tops = rng.integers(0, height - size + 1, n)
    lefts = rng.integers(0, width - size + 1, n)
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
    out = np.empty((n, size, size, maps.shape[3]), dtype=np.float32)
    for index in range(n):
        crop = maps[index, tops[index]:tops[index] + size, lefts[index]:lefts[index] + size]
        out[index] = crop[:, ::-1] if flips[index] else crop
    return out


# ---------------------------------------------------------------- training


@dataclass
class Row:
    name: str
    precision: float
    recall: float
    prior_precision: float
    prior_recall: float
    seconds: float
    note: str = ""


class FinetuneNetwork:
    """Trainable conv layer(s) from ImageNet → block5_pool → global average, beside the fixed block4
    average (the avg45 view), into a fitted product head (a Keras model on avg45 features)."""

    def __init__(self, imagenet: dict[str, list[np.ndarray]], config: FinetuneConfig, head=None) -> None:
        import keras
        from keras import layers

        self.convs = []
        for name, values in imagenet.items():
            conv = layers.Conv2D(512, 3, padding="same", activation="relu", name=name)
            conv.build((None, None, None, 512))
            conv.set_weights(values)
            self.convs.append(conv)
        self.pool = layers.MaxPooling2D(2, name="block5_pool")
        self.head, self.config = head, config
        self.conv_optimizer = keras.optimizers.Adam(config.conv_learning_rate)
        self.head_optimizer = keras.optimizers.Adam(config.head_learning_rate)
        self._step = self._pooled_fn = None

    @property
    def conv_variables(self) -> list:
        return [variable for conv in self.convs for variable in conv.trainable_variables]

    def pooled(self, maps, training: bool = False):
        import tensorflow as tf

        x = maps
        for conv in self.convs:
            x = conv(x, training=training)
        return tf.maximum(tf.reduce_mean(self.pool(x), axis=[1, 2]), SQRT_FLOOR)

    def train_step(self, maps: np.ndarray, block4: np.ndarray, labels: np.ndarray) -> float:
        import keras
        import tensorflow as tf

        if self._step is None:
            @tf.function(reduce_retracing=True, autograph=False)
            def step(maps, block4, labels):
                with tf.GradientTape() as tape:
                    scores = self.head(tf.concat([block4, self.pooled(maps, True)], axis=1), training=True)
                    loss = tf.reduce_mean(keras.losses.binary_crossentropy(labels, scores))
                conv_vars, head_vars = self.conv_variables, self.head.trainable_variables
                grads = tape.gradient(loss, conv_vars + head_vars)
                self.conv_optimizer.apply_gradients(zip(grads[:len(conv_vars)], conv_vars))
                self.head_optimizer.apply_gradients(zip(grads[len(conv_vars):], head_vars))
                return loss
            self._step = step
        return float(self._step(maps, block4, labels))

    def avg45(self, maps: np.ndarray, block4: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """The avg45 view with this network's block5 average (full maps, no augmentation)."""
        import tensorflow as tf

        if self._pooled_fn is None:
            self._pooled_fn = tf.function(lambda x: self.pooled(x, False), reduce_retracing=True, autograph=False)
        out = [np.asarray(self._pooled_fn(np.asarray(maps[start:start + batch_size], np.float32)))
               for start in range(0, len(maps), batch_size)]
        return np.hstack([block4, np.concatenate(out)]).astype(np.float32)

    def scores(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.head.predict(features, batch_size=256, verbose=0))

    def get_weights(self) -> list:
        return [conv.get_weights() for conv in self.convs] + [self.head.get_weights()]

    def set_weights(self, weights: list) -> None:
        for conv, values in zip(self.convs, weights[:-1]):
            conv.set_weights(values)
        self.head.set_weights(weights[-1])


def imagenet_weights(weights, trained: tuple[str, ...]) -> dict[str, list[np.ndarray]]:
    from core.features.extractor import load_base

    base = load_base(weights, 224)
    return {name: base.get_layer(name).get_weights() for name in trained}


@dataclass
class ViewOnly:
    """What ``run_experiment`` reads of a ``FeatureSet``: the ids and the avg45 view (computed here from
    the cached maps, so the run does not need the product's feature cache)."""

    ids: list[str]
    avg45: np.ndarray

    def view(self, name: str) -> np.ndarray:
        if name != "avg45":
            raise ValueError(f"only the avg45 view is computed here, not {name!r}")
        return self.avg45


def mean_loss(labels: np.ndarray, scores: np.ndarray) -> float:
    from core.analysis.metrics import binary_cross_entropy_per_poster

    return float(binary_cross_entropy_per_poster(labels, scores).mean())


def finetune(network: FinetuneNetwork, maps: np.ndarray, block4: np.ndarray, Y: np.ndarray,
             train: np.ndarray, validation: np.ndarray, seed: int) -> tuple[list[dict], float]:
    """Early-stopped training on augmented maps; the network ends with its best weights (epoch 0: the
    frozen network it started from). Returns the epoch log and the training seconds."""
    config, rng = network.config, np.random.default_rng(seed)
    started = time.perf_counter()

    def validation_loss() -> float:
        return mean_loss(Y[validation], network.scores(network.avg45(maps[validation], block4[validation])))

    best, best_weights, wait = validation_loss(), network.get_weights(), 0
    log = [{"epoch": 0, "loss": float("nan"), "val_loss": best, "seconds": time.perf_counter() - started}]
    print(f"    epoch 0 (frozen start): val loss {best:.4f}", flush=True)
    for epoch in range(1, config.epochs + 1):
        epoch_started, losses = time.perf_counter(), []
        order = rng.permutation(train)
        for start in range(0, len(order), config.batch_size):
            rows = np.sort(order[start:start + config.batch_size])
            crops = random_crops(maps[rows], config.crop, rng, config.flip)
            losses.append(network.train_step(crops, block4[rows], Y[rows].astype(np.float32)))
            if not np.isfinite(losses[-1]):
                print(f"    epoch {epoch}: loss {losses[-1]} at batch {start // config.batch_size}; stopped "
                      f"with the best weights", flush=True)
                network.set_weights(best_weights)
                return log, time.perf_counter() - started
        val_loss = validation_loss()
        seconds = time.perf_counter() - epoch_started
        log.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_loss": val_loss, "seconds": seconds})
        print(f"    epoch {epoch}: loss {np.mean(losses):.4f} val loss {val_loss:.4f} ({seconds:.0f} s)", flush=True)
        if val_loss < best:
            best, best_weights, wait = val_loss, network.get_weights(), 0
        else:
            wait += 1
        if wait >= config.patience or time.perf_counter() - started > config.time_budget_s:
            break
    network.set_weights(best_weights)
    return log, time.perf_counter() - started


def run_seed(dataset, frozen_features: ViewOnly, maps: np.ndarray, block4: np.ndarray,
             imagenet: dict[str, list[np.ndarray]], seed: int, config: FinetuneConfig) -> list[Row]:
    from core.analysis.metrics import evaluate
    from core.model.classifier import GenreClassifier, make_split
    from core.model.config import PRESETS
    from core.model.experiment import genre_labels, run_experiment

    recommended = replace(PRESETS["recommended"], seed=seed)
    single = replace(recommended, ensemble=1, validation_split=config.validation_split)
    truth = genre_labels(dataset, frozen_features.ids)
    Y, genres = truth.Y, truth.vocabulary.genres
    outer, split = make_split(len(Y), recommended), make_split(len(Y), single)
    if not np.array_equal(outer.test, split.test):
        raise RuntimeError("the validation slice changed the test split; make_split no longer nests them")
    test, fit = outer.test, outer.train

    def row(name: str, scores: np.ndarray, seconds: float, note: str = "") -> Row:
        e = evaluate(Y[test], scores, Y[fit], genres, k=recommended.k, threshold=recommended.threshold, seed=seed)
        result = Row(name, e.precision_at_k.value, e.recall_at_k.value, e.prior_precision_at_k.value,
                     e.prior_recall_at_k.value, seconds, note)
        print(f"{name:16s} seed {seed}: P@3 {result.precision:.3f} R@3 {result.recall:.3f} | prior P@3 "
              f"{result.prior_precision:.3f} R@3 {result.prior_recall:.3f} | lift "
              f"{result.precision - result.prior_precision:+.3f} | {seconds:.0f} s ({note})", flush=True)
        return result

    preset = run_experiment(dataset, frozen_features, recommended)
    rows = [row("recommended", preset.test_scores, preset.seconds,
                f"the preset: 8 nets on frozen avg45, {preset.classifier.epochs_run_} epochs (first net)")]
    frozen = run_experiment(dataset, frozen_features, single)
    rows.append(row("frozen 1 net", frozen.test_scores, frozen.seconds,
                    f"recommended head as 1 net, {frozen.classifier.epochs_run_} epochs"))
    network = FinetuneNetwork(imagenet, config, head=frozen.classifier.model_)
    log, train_seconds = finetune(network, maps, block4, Y, split.train, split.validation, seed)
    best = min(log, key=lambda entry: entry["val_loss"])["epoch"]
    started = time.perf_counter()
    tuned = network.avg45(maps, block4)
    pass_seconds = time.perf_counter() - started
    epochs = [entry for entry in log if entry["epoch"] > 0]
    per_epoch = float(np.mean([entry["seconds"] for entry in epochs])) if epochs else float("nan")
    rows.append(row("fine-tuned", network.scores(tuned[test]), train_seconds,
                    f"conv + head, {len(epochs)} epochs, best epoch {best}, {per_epoch:.0f} s/epoch"))

    started = time.perf_counter()
    ensemble = GenreClassifier(recommended).fit(tuned[fit], Y[fit])
    rows.append(row("rec. on ft feats", ensemble.predict_proba(tuned[test]), time.perf_counter() - started,
                    "the preset's 8 nets on the fine-tuned avg45"))
    print(f"  seed {seed}: fine-tuning {train_seconds:.0f} s on {len(split.train)} posters "
          f"({train_seconds / len(split.train) * 1000:.0f} s per 1,000 training posters), "
          f"{per_epoch:.0f} s/epoch ({per_epoch / len(split.train) * 1000:.0f} s per 1,000 posters an epoch); "
          f"fine-tuned feature pass {pass_seconds:.0f} s ({pass_seconds / len(Y) * 1000:.0f} s per 1,000 posters)",
          flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=_common.DEV_SET)
    parser.add_argument("--weights", default=_common.default_weights())
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--trainable", choices=tuple(TRAINABLE), default=FinetuneConfig.trainable)
    parser.add_argument("--posters", type=int, default=0,
                        help="use only this many posters, a fixed random sample (the first ones mapped)")
    parser.add_argument("--maps-only", action="store_true", help="build the map cache and stop")
    defaults = FinetuneConfig()
    for name in ("crop", "conv_learning_rate", "head_learning_rate", "batch_size", "epochs", "patience",
                 "validation_split", "time_budget_s"):
        parser.add_argument("--" + name.replace("_", "-"), type=type(getattr(defaults, name)),
                            default=getattr(defaults, name))
    parser.add_argument("--no-flip", action="store_true")
    args = parser.parse_args()

    from core.data.datasets import load_dataset
    from core.features.pipeline import content_keys
    from core.features.weights import resolve_weights

    _common.print_machine()
    dataset, _ = load_dataset(args.dataset)
    order = build_order(len(dataset))
    posters = [dataset.posters[i] for i in order[:args.posters or len(dataset)]]
    paths = [poster.path for poster in posters]
    keys = content_keys(paths)
    weights = resolve_weights(args.weights)
    layer, trained = TRAINABLE[args.trainable]
    folder = maps_dir(weights, layer)
    computed, seconds = build_maps(folder, paths, keys, weights, layer)
    print(f"maps of {layer}: {computed} computed now in {seconds:.0f} s; cache {folder}")
    if args.maps_only:
        return
    posters, keys = zip(*[(poster, key) for poster, key in zip(posters, keys) if is_cached(folder, key)])
    posters, keys = list(posters), list(keys)
    config = FinetuneConfig(trainable=args.trainable, crop=args.crop, flip=not args.no_flip,
                            conv_learning_rate=args.conv_learning_rate, head_learning_rate=args.head_learning_rate,
                            batch_size=args.batch_size, epochs=args.epochs, patience=args.patience,
                            validation_split=args.validation_split, time_budget_s=args.time_budget_s)
    print(f"dataset: {dataset.name}, {len(posters)} of {len(dataset)} posters, weights {weights.label}")
    print(f"fine-tuning {', '.join(trained)} from cached {layer} maps: {config}")
    record = build_record(folder)
    if record:
        print(f"map cache build: {record['posters']} posters in {record['seconds']:.0f} s in all, this run and "
              f"earlier ones ({record['seconds'] / record['posters'] * 1000:.0f} s per 1,000 posters, VGG16 up to "
              f"{layer} and the block4_pool average)")
    started = time.perf_counter()
    maps, block4 = load_maps(folder, keys)
    print(f"maps loaded: {maps.shape} {maps.dtype}, {maps.nbytes / 2**30:.2f} GiB in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    imagenet = imagenet_weights(weights, trained)
    started = time.perf_counter()
    frozen = ViewOnly([poster.id for poster in posters], FinetuneNetwork(imagenet, config).avg45(maps, block4))
    print(f"frozen avg45 from the maps: {time.perf_counter() - started:.0f} s", flush=True)
    sample = replace(dataset, posters=posters)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    table: dict[str, list[Row]] = {}
    for seed in seeds:
        for row in run_seed(sample, frozen, maps, block4, imagenet, seed, config):
            table.setdefault(row.name, []).append(row)
    print(f"\nmean over seeds {seeds}")
    lift = {}
    for name, rows in table.items():
        mean = {key: float(np.mean([getattr(r, key) for r in rows]))
                for key in ("precision", "recall", "prior_precision", "prior_recall", "seconds")}
        lift[name] = mean["precision"] - mean["prior_precision"]
        print(f"{name:16s} P@3 {mean['precision']:.3f} (prior {mean['prior_precision']:.3f}, {lift[name]:+.3f})  "
              f"R@3 {mean['recall']:.3f} (prior {mean['prior_recall']:.3f})  train {mean['seconds']:.0f} s")
    for name in ("fine-tuned", "rec. on ft feats"):
        print(f"{name} - recommended: lift {lift[name] - lift['recommended']:+.3f} (pays if >= +0.010)")


if __name__ == "__main__":
    main()
