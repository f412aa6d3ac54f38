"""The fast loop, each step against a baseline measured in the same run (the CPU is shared: read ratios).

    python -m bench.loop [--dataset DIR] [--weights PATH] [--skip paint,demo,recommended,tutorial,umap,knn]
                         [--sequential]

- paint: a cold ``streamlit run app.py`` (demo already generated) until Home is drawn, against a
  one-line Streamlit app;
- demo: the one-click start (demo features + ``recommended``) in an empty cache;
- recommended: the preset trained as one stacked model (and, with --sequential, its members one by one,
  the original path), against the ``fast`` preset (the kernel head on the same features), seeds 0-5;
- tutorial: 1,200 posters, XLA-compiled against not compiled (same recipe, same metric);
- umap: the first map of the 25,088-d features with a cold numba cache, then with a warm one, then
  read from the disk cache; then, in one process, PCA and the UMAP fit with UMAP's own neighbour
  search (the previous path) against the exact graph handed in (``python -m bench.first_map`` breaks
  the first map down: imports, reading the rows, PCA, neighbours, the fit's parts, the figure);
- knn: exact neighbour statistics (k=50) over all posters.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench import _common
from bench.dashboard import browser, start_server, time_page

STEPS = ("paint", "demo", "recommended", "tutorial", "umap", "knn")
TUTORIAL_POSTERS = 1200


def bench_paint(port: int) -> None:
    cache = Path(tempfile.mkdtemp(prefix="pge-loop-paint-"))
    env = {**os.environ, "POSTER_GENRE_CACHE": str(cache), "POSTER_GENRE_WEIGHTS": "none"}
    baseline_script = cache / "baseline_app.py"
    baseline_script.write_text('import streamlit as st\nst.title("Baseline")\n')
    subprocess.run([sys.executable, "-c", "from core.data.demo import ensure_demo_dataset; ensure_demo_dataset()"],
                   cwd=_common.ROOT, env=env, check=True)  # generating the demo once is not the paint
    driver = browser()
    try:
        for label, script, at in (("one-line app", baseline_script, port + 1), ("app.py Home", _common.ROOT / "app.py", port)):
            started = time.perf_counter()
            server = start_server(script, at, env)
            try:
                up = time.perf_counter() - started
                painted = time_page(driver, f"http://127.0.0.1:{at}/") + up
                print(f"paint: cold {label}: first paint {painted:.2f}s after the server start", flush=True)
            finally:
                server.terminate()
    finally:
        driver.quit()


def bench_demo(weights: str) -> None:
    code = (
        "import time, sys; from core.data.datasets import load_dataset; from core.data.demo import ensure_demo_dataset\n"
        "from core.features.pipeline import FeatureConfig; from core.model.quickstart import quick_start\n"
        "t = time.perf_counter(); dataset, _ = load_dataset(ensure_demo_dataset())\n"
        f"start = quick_start(dataset, FeatureConfig(weights={weights!r}))\n"
        "print(f'demo: one-click start {time.perf_counter() - t:.1f}s ({len(start.features.ids)} posters, "
        "extraction {start.features.seconds:.1f}s)')\n")
    env = {**os.environ, "POSTER_GENRE_CACHE": tempfile.mkdtemp(prefix="pge-loop-demo-")}
    subprocess.run([sys.executable, "-c", code], cwd=_common.ROOT, env=env, check=True)


def bench_recommended(dataset, features, sequential: bool) -> None:
    from core.model.config import PRESETS
    from core.model.experiment import run_experiment

    seconds = {}
    for mode in ("sequential", "stacked") if sequential else ("stacked",):
        result = run_experiment(dataset, features, replace(PRESETS["recommended"], member_mode=mode))
        e, seconds[mode] = result.evaluation, result.seconds
        print(f"recommended ({mode:10s}): {result.seconds:5.1f}s, P@3 {e.precision_at_k.value:.3f} "
              f"(prior {e.prior_precision_at_k.value:.3f}), {len(result.history)} member-epochs", flush=True)
    fast = [run_experiment(dataset, features, replace(PRESETS["fast"], seed=seed)) for seed in range(6)]
    for seed, result in enumerate(fast):
        e = result.evaluation
        print(f"fast (kernel head), seed {seed}: {result.seconds:5.2f}s, P@3 {e.precision_at_k.value:.3f} "
              f"(prior {e.prior_precision_at_k.value:.3f})", flush=True)
    median = sorted(result.seconds for result in fast)[len(fast) // 2]
    print(f"fast: median {median:.2f}s a training (target <= 5 s); {seconds['stacked'] / median:.0f}x faster than "
          f"recommended stacked")


def bench_tutorial(dataset, features) -> None:
    from core.features.pipeline import FeatureSet
    from core.model import classifier
    from core.model.config import PRESETS
    from core.model.experiment import run_experiment

    keep = slice(0, TUTORIAL_POSTERS)
    subset = FeatureSet(rows=features.rows[keep], ids=features.ids[keep], keys=features.keys[keep],
                        weights=features.weights, precision=features.precision, config=features.config,
                        key=f"{features.key}-first{TUTORIAL_POSTERS}")
    seconds = {}
    for jit in (False, True):
        classifier.JIT_COMPILE = jit
        result = run_experiment(dataset, subset, PRESETS["tutorial"])
        seconds[jit] = result.seconds
        print(f"tutorial on {TUTORIAL_POSTERS} posters, jit_compile={jit}: {result.seconds:.1f}s, "
              f"P@3 {result.evaluation.precision_at_k.value:.3f}", flush=True)
    classifier.JIT_COMPILE = True
    print(f"tutorial speed-up from XLA: {seconds[False] / seconds[True]:.2f}x")


def bench_umap(dataset_dir: Path, weights: str) -> None:
    code = (
        "import sys; from bench.dashboard import umap_timing\n"
        f"first, cached = umap_timing(__import__('pathlib').Path({str(dataset_dir)!r}), {weights!r})\n"
        "print(f'{sys.argv[1]}: first map {first:.1f}s, read from the disk cache {cached:.3f}s', flush=True)\n")
    numba = tempfile.mkdtemp(prefix="pge-loop-numba-")
    for label in ("umap, cold numba cache", "umap, numba cache warm"):
        subprocess.run([sys.executable, "-c", code, label], cwd=_common.ROOT, check=True,
                       env={**os.environ, "NUMBA_CACHE_DIR": numba})


def bench_umap_search(features) -> None:
    """Where the first map's time goes, and UMAP's own neighbour search against the exact graph."""
    from core.analysis.maps import UmapConfig, _umap_of, reduce_pca

    config = UmapConfig()
    started = time.perf_counter()
    scores = reduce_pca(features.features, config.pca_components, seed=config.seed)
    print(f"umap: PCA of {features.features.shape[0]:,} x {features.features.shape[1]:,} to "
          f"{scores.shape[1]}: {time.perf_counter() - started:.1f}s", flush=True)
    seconds = {}
    for search in ("umap", "exact"):
        _umap_of(scores[:300], config, neighbour_search=search)
        started = time.perf_counter()
        _umap_of(scores, config, neighbour_search=search)
        seconds[search] = time.perf_counter() - started
        print(f"umap: fit with neighbour_search={search!r} (compiled by a 300-point map first): "
              f"{seconds[search]:.1f}s", flush=True)
    print(f"umap: fit speed-up from the exact graph: {seconds['umap'] / seconds['exact']:.2f}x")


def bench_knn(features) -> None:
    from core.analysis.neighbours import knn_indices

    X = features.features
    started = time.perf_counter()
    knn_indices(X, k=50)
    print(f"knn: exact k=50 neighbours of {X.shape[0]:,} x {X.shape[1]:,}: {time.perf_counter() - started:.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=_common.DEV_SET)
    parser.add_argument("--weights", default=_common.default_weights())
    parser.add_argument("--port", type=int, default=8597)
    parser.add_argument("--skip", default="", help=f"comma-separated steps to skip, of {', '.join(STEPS)}")
    parser.add_argument("--sequential", action="store_true",
                        help="also train recommended's members one by one (the original path; many minutes)")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    _common.print_machine()
    print(f"load average at the start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
    if "paint" not in skip:
        bench_paint(args.port)
    if "demo" not in skip:
        bench_demo(args.weights)
    if skip >= {"recommended", "tutorial", "knn"} and "umap" in skip:
        return
    from core.data.datasets import load_dataset
    from core.features.pipeline import FeatureConfig, extract_features

    dataset, _ = load_dataset(args.dataset)
    features = extract_features(dataset, FeatureConfig(weights=args.weights))
    print(f"dataset: {dataset.name}, {len(features.ids)} posters, weights {features.weights.label}", flush=True)
    if "recommended" not in skip:
        bench_recommended(dataset, features, args.sequential)
    if "tutorial" not in skip:
        bench_tutorial(dataset, features)
    if "umap" not in skip:
        bench_umap(args.dataset, args.weights)
        bench_umap_search(features)
    if "knn" not in skip:
        bench_knn(features)


if __name__ == "__main__":
    main()
