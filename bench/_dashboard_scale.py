"""The dashboard at N posters (``python -m bench.scale --posters N``): build a synthetic dataset, time each step.

The dataset is one the product opens normally: ``posters/`` holds N tiny distinct PNG files and
``labels.csv`` their genres, and the feature store under ``<build dir>/cache`` (the run's
``POSTER_GENRE_CACHE``) holds one row per poster keyed by the file's content hash, written through
``FeatureStore.add`` as an extraction would. Each row is a real dev-set row (read from the shared
cache: the product's current store for the weights, else an older one with the same weights and row
layout) times independent log-normal noise per value, so zeros stay zeros (block5_pool is post-ReLU)
and the posters keep their source's genres: the structure of real posters, at N.
"""
from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import _common

NOISE_SIGMA = 0.25
BATCH = 1000
SEED = 0
POSTER_SIDE = (12, 18)
REPEAT = 3


@dataclass
class Row:
    step: str
    measured: str
    target: str
    met: bool | None
    how: str

    def line(self) -> str:
        verdict = {True: "met", False: "NOT met", None: "n/a"}[self.met]
        return f"| {self.step} | {self.measured} | {self.target} | {verdict} | {self.how} |"


# ---- building ------------------------------------------------------------------------------------

def source_rows(weights: str):
    """The dev set's cached rows (float32) and their posters, from the shared cache (never extracted here)."""
    from core.cache import cache_root
    from core.data.datasets import load_dataset
    from core.features.extractor import ROW_DIM
    from core.features.pipeline import FeatureConfig, content_keys, store_for
    from core.features.store import FeatureStore
    from core.features.weights import resolve_weights

    dev, _ = load_dataset(_common.DEV_SET, check_images=False)
    keys = content_keys(dev.paths)
    identity = resolve_weights(weights).identity
    stores = [store_for(FeatureConfig(weights=weights))[0]]
    for config_file in sorted((cache_root() / "features").glob("*/config.json")):
        config = json.loads(config_file.read_text())
        sidecars = sorted(config_file.parent.glob("shard-*.json"))
        if config.get("weights") != identity or config.get("image_size") != 224 or not sidecars:
            continue
        if json.loads(sidecars[0].read_text()).get("dim") == ROW_DIM:
            stores.append(FeatureStore(config_file.parent.name, ROW_DIM, root=config_file.parent.parent,
                                       dtype=config.get("dtype", "float32")))
    store = max(stores, key=lambda s: sum(key in s for key in keys))
    kept = [i for i, key in enumerate(keys) if key in store]
    if len(kept) < 100:
        sys.exit(f"only {len(kept)} dev-set posters are cached for weights {weights}: extract them first "
                 f"(python -m core extract --dataset {_common.DEV_SET} --weights {weights})")
    print(f"source: {len(kept)} of {len(keys)} dev-set posters cached in {store.folder}")
    return store.gather([keys[i] for i in kept]), [dev.posters[i] for i in kept]


def poster_png(number: int, colour: np.ndarray) -> bytes:
    """A tiny PNG unique to ``number`` (its bytes in the first pixels), tinted by its source poster."""
    from PIL import Image

    pixels = np.broadcast_to(colour, (*POSTER_SIDE[::-1], 3)).copy()
    pixels[0, :4, 0] = np.frombuffer(int(number).to_bytes(4, "big"), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def build(folder: Path, n: int, weights: str) -> Path:
    """Build (or find built) the synthetic dataset under ``folder``; returns the dataset root."""
    from core.cache import CACHE_ENV, atomic_write_json, bytes_sha256
    from core.data.datasets import write_info, write_labels
    from core.features.pipeline import FeatureConfig, store_for
    from core.features.weights import resolve_weights

    root, marker = folder / "dataset", folder / "built.json"
    identity = resolve_weights(weights).identity
    expected = {"posters": n, "weights": identity, "noise": NOISE_SIGMA, "seed": SEED}
    if marker.is_file() and json.loads(marker.read_text()) == expected:
        print(f"reusing the synthetic dataset of {n:,} posters in {root}")
        return root
    owner = folder / "bench-scale.json"
    if folder.exists() and any(folder.iterdir()) and not (owner.is_file() or marker.is_file()):
        sys.exit(f"{folder} is not empty and was not made by bench.scale: pass a new or empty --build-dir "
                 "(nothing was written)")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(owner, {"made_by": "bench.scale --posters"})
    started = time.perf_counter()
    rows, sources = source_rows(weights)
    os.environ[CACHE_ENV] = str(folder / "cache")
    store, _, _ = store_for(FeatureConfig(weights=weights))
    (root / "posters").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    picks = rng.integers(len(sources), size=n)
    colours = rng.integers(0, 256, size=(len(sources), 3), dtype=np.uint8)
    labels = []
    for start in range(0, n, BATCH):
        batch = picks[start:start + BATCH]
        keys = []
        for number, source in enumerate(batch, start):
            data = poster_png(number, colours[source])
            poster_id = f"s{number:07d}"
            (root / "posters" / f"{poster_id}.png").write_bytes(data)
            keys.append(bytes_sha256(data))
            labels.append((poster_id, f"{sources[source].title} #{number}", sources[source].genres))
        noise = np.exp(NOISE_SIGMA * rng.standard_normal((len(batch), rows.shape[1]), dtype=np.float32))
        store.add(keys, rows[batch] * noise)
        if (start // BATCH) % 10 == 0:
            print(f"  {start + len(batch):,} posters written ({time.perf_counter() - started:.0f} s)", flush=True)
    write_labels(root, labels)
    write_info(root, name=f"synthetic {n:,} (bench.scale)", source="bench.scale")
    atomic_write_json(marker, expected)
    print(f"built {n:,} posters in {time.perf_counter() - started:.0f} s into {folder}")
    return root


# ---- measuring -----------------------------------------------------------------------------------

def open_features(root: Path, weights: str):
    from core.data.datasets import load_dataset
    from core.features.pipeline import FeatureConfig, cached_features

    dataset, _ = load_dataset(root)
    return dataset, cached_features(dataset, FeatureConfig(weights=weights))


def time_open(root: str, weights: str) -> None:
    """Run in a fresh process: open the dataset and its features, print seconds as JSON."""
    started = time.perf_counter()
    dataset, features = open_features(Path(root), weights)
    print(json.dumps({"seconds": time.perf_counter() - started, "posters": len(dataset),
                      "features": None if features is None else list(features.rows.shape)}))


def measure_open(root: Path, weights: str, repeat: int = 3) -> list[Row]:
    """Fresh processes: the first may read the folder again (after a change, or the first time: the files'
    hashes and header checks, then the remembered open), the others are what every later visit costs."""
    code = f"from bench._dashboard_scale import time_open; time_open({str(root)!r}, {weights!r})"
    seconds = []
    for _ in range(1 + repeat):
        output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=_common.ROOT, env={**os.environ, "PYTHONPATH": str(_common.ROOT)}).stdout
        result = json.loads(output.strip().splitlines()[-1])
        seconds.append(result["seconds"])
    how = f"load_dataset + cached_features: {result['posters']:,} posters, rows {result['features']}"
    later = float(np.median(seconds[1:]))
    return [Row("open dataset + cached features (first fresh process)", f"{seconds[0]:.2f} s", "(no target)", None,
                how + "; reads the folder if it changed since the last open"),
            Row(f"open dataset + cached features (median of {repeat} later fresh processes)",
                f"{later:.2f} s ({', '.join(f'{s:.2f}' for s in seconds[1:])})", "≤ 2 s", later <= 2, how)]


def measure_view(features, view: str) -> Row:
    started = time.perf_counter()
    features.view(view)
    first = time.perf_counter() - started
    started = time.perf_counter()
    features.view(view)
    return Row(f"pooled view {view} (first time, then cached)", f"{first:.1f} s, then {time.perf_counter() - started:.2f} s",
               "(no target)", None, "FeatureSet.view: reads every shard once, saves the view beside the cache")


def measure_train(dataset, features, preset: str = "fast") -> tuple[Row, object]:
    """Train ``preset``: ``fast`` by default (the kernel head, Nyström above 4,000 training posters);
    ``recommended``'s 8 networks take about 30 s per 1,000 training posters on 2 cores, so a 100k set would
    take most of an hour."""
    from core.model.config import PRESETS
    from core.model.experiment import run_experiment
    from core.model.runs import save_run

    started = time.perf_counter()
    result = run_experiment(dataset, features, PRESETS[preset])
    seconds = time.perf_counter() - started
    save_run(result)
    e = result.evaluation
    return Row(f"train `{preset}`", f"{seconds:.0f} s", "≤ 60 s", seconds <= 60,
               f"run_experiment(PRESETS[{preset!r}]), {len(result.split.train):,} training posters, "
               f"P@{result.config.k} {e.precision_at_k.value:.3f} (prior {e.prior_precision_at_k.value:.3f})"), result


def measure_map(features, view: str) -> list[Row]:
    from core.analysis.maps import SAMPLE_SIZE, UmapConfig, compute_umap

    X = features.view(view)
    first = compute_umap(X, UmapConfig(), features_key=features.view_key(view))
    again = compute_umap(X, UmapConfig(), features_key=features.view_key(view))
    return [Row(f"first map ({view} view)", f"{first.seconds:.0f} s", "≤ 180 s", first.seconds <= 180,
                f"compute_umap, fitted on a sample of {first.fitted_on or len(X):,} (SAMPLE_SIZE {SAMPLE_SIZE:,}), "
                f"the rest placed with transform"),
            Row("map again", f"{again.seconds:.2f} s", "from the cache", again.from_cache, "compute_umap, disk cache")]


def measure_neighbours(features, view: str, k: int) -> list[Row]:
    from core.analysis.neighbours import approximate, exact_knn_of, knn_indices, knn_recall

    X = features.view(view)
    started = time.perf_counter()
    found = knn_indices(X, k=k, features_key=features.view_key(view))
    seconds = time.perf_counter() - started
    subset = np.sort(np.random.default_rng(1).choice(len(X), size=min(5000, len(X)), replace=False))
    started = time.perf_counter()
    exact = exact_knn_of(X, subset, k=k)
    exact_seconds = time.perf_counter() - started
    recall = knn_recall(found[subset], exact)
    kind = "NN-descent (pynndescent)" if approximate(len(X)) else "exact"
    return [Row(f"neighbour index, k={k} ({view} view)", f"{seconds:.0f} s", "(no target)", None,
                f"knn_indices: {kind} over {len(X):,} posters, cached on disk afterwards"),
            Row("neighbour recall vs exact on 5k posters", f"{recall:.3f}", "≥ 0.95", recall >= 0.95,
                f"exact_knn_of 5,000 random posters among all {len(X):,} ({exact_seconds:.0f} s) vs the index")]


def rss_mb() -> tuple[float, float]:
    """Current and peak resident memory of this process, in MB."""
    current = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmRSS")) / 1024
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def session(root: Path, weights: str, page: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(_common.ROOT / "app.py"), default_timeout=600)
    at.session_state["settings"] = {"dataset": str(root), "weights": weights, "precision": "auto"}
    at.run()
    at.switch_page(page).run()
    if at.exception:
        raise RuntimeError(f"{page}: {at.exception}")
    return at


def timed(action) -> float:
    started = time.perf_counter()
    at = action()
    if at.exception:
        raise RuntimeError(str(at.exception))
    return time.perf_counter() - started


def measure_sessions(root: Path, weights: str) -> list[Row]:
    """Two AppTest sessions in this process (one Streamlit server's caches), each on Clusters then
    Predictions; then the per-interaction times of a warm session."""
    os.environ["POSTER_GENRE_WARM_UP"] = "0"
    rows = []
    before = rss_mb()[0]
    sessions = []
    for _ in range(2):
        clusters = session(root, weights, "pages/clusters.py")
        predictions = session(root, weights, "pages/predictions.py")
        sessions.append((clusters, predictions))
    current, peak = rss_mb()
    rows.append(Row("server memory, two sessions (Clusters + Predictions each)", f"{current / 1024:.2f} GB "
                    f"(peak {peak / 1024:.2f} GB)", "≤ 6 GB", peak <= 6 * 1024,
                    f"RSS of one process running 2 x 2 AppTest sessions of app.py (before: {before / 1024:.2f} GB)"))
    clusters, predictions = sessions[1]
    genres = [option.removesuffix(": in / out")  # AppTest lists options through their format_func
              for option in clusters.selectbox(key="color_genre").options[1:REPEAT + 1]]

    def page(number: int):
        inputs = [n for n in predictions.number_input if n.key == "page_number"]
        return inputs[0].set_value(number).run()

    interactions = {
        "Clusters rerun (map shown)": [clusters.run] * REPEAT,
        "Clusters: colour by a genre": [lambda g=g: clusters.selectbox(key="color_genre").set_value(g).run()
                                        for g in genres],
        "Predictions rerun": [predictions.run] * REPEAT,
        "Predictions: next gallery page": [lambda n=n: page(n) for n in range(2, REPEAT + 2)],
        "Predictions: hits filter": [lambda o=o: predictions.selectbox(key="filter_hits").select(o).run()
                                     for o in ("no hit", "at least one miss", "all hits")],
        "Predictions: genre filter": [lambda i=i: predictions.selectbox(key="filter_genre").select_index(i).run()
                                      for i in range(1, REPEAT + 1)],
        "Predictions: sort": [lambda i=i: predictions.selectbox(key="sort_by").select_index(i).run()
                              for i in range(2, REPEAT + 2)],
    }
    for label, actions in interactions.items():
        seconds = sorted(timed(action) for action in actions)
        rows.append(Row(label, f"{np.median(seconds):.2f} s (slowest {seconds[-1]:.2f} s)", "≤ 1 s",
                        seconds[-1] <= 1, f"AppTest interaction in a warm session, {len(seconds)} times"))
    return rows


def run(args) -> None:
    folder = args.build_dir or Path(f"/tmp/poster-genre-scale-{args.posters}")
    root = build(folder, args.posters, args.weights)
    from core.cache import CACHE_ENV

    os.environ[CACHE_ENV] = str(folder / "cache")
    skip = set(filter(None, args.skip.split(",")))
    _common.print_machine()
    print(f"dataset: {root} ({args.posters:,} synthetic posters); cache {folder / 'cache'}; weights {args.weights}")
    rows: list[Row] = []

    def step(name, measure):
        if name in skip:
            return
        started = time.perf_counter()
        try:
            rows.extend(measure())
        except Exception as err:  # a failed step is a row of the table, not the end of the run
            rows.append(Row(name, f"FAILED: {type(err).__name__}: {err}"[:160], "", False, ""))
        print(f"[{name}: {time.perf_counter() - started:.0f} s]", flush=True)

    step("open", lambda: measure_open(root, args.weights))
    dataset, features = open_features(root, args.weights)
    step("open", lambda: [measure_view(features, "avg45")])
    step("map", lambda: measure_map(features, args.map_view))
    step("neighbours", lambda: measure_neighbours(features, "avg45", 50))
    step("train", lambda: [measure_train(dataset, features, args.train_preset)[0]])
    step("memory", lambda: measure_sessions(root, args.weights))
    print()
    print("| step | measured | target | met? | how |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(row.line())
