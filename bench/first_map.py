"""Where the Clusters page's first UMAP map goes, in a fresh process: imports, reading the rows, PCA,
neighbours, the UMAP fit (and its parts), numba, the plotly figure; then a second map in the same process.

    python -m bench.first_map [--view flatten|avg45] [--dataset DIR] [--weights PATH]

"cold" is the first map of this process (the maps' disk cache is an empty temporary folder; numba's
disk cache is the product's, filled by an earlier run or the server's warm-up), "warm" a second map in
the same process with another seed (a server that has drawn a map before). The CPU is shared: read
the parts against the total of the same run.
"""
from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import cProfile  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

from bench import _common  # noqa: E402

PARTS = {
    "read rows (float16 -> float32)": ("store.py", "__array__"),
    "PCA": ("maps.py", "reduce_pca"),
    "exact neighbours": ("maps.py", "exact_neighbours"),
    "UMAP fit": ("umap_.py", "fit"),
    "  fuzzy graph": ("umap_.py", "fuzzy_simplicial_set"),
    "  spectral init": ("spectral.py", "spectral_layout"),
    "  layout epochs": ("layouts.py", "optimize_layout_euclidean"),
    "numba compile/load (any)": ("dispatcher.py", "_compile_for_args"),
    "import umap (whole)": ("umap/__init__.py", "<module>"),
    "  of which tensorflow": ("tensorflow/__init__.py", "<module>"),
    "import sklearn PCA": ("sklearn/decomposition/__init__.py", "<module>"),
}


def _part_seconds(profile: cProfile.Profile) -> dict[str, float]:
    stats = pstats.Stats(profile).stats
    found = {}
    for label, (file, name) in PARTS.items():
        found[label] = sum(row[3] for (path, _, function), row in stats.items()
                           if function == name and path.endswith(file))
    return found


def _figure_seconds(coords, n_groups: int = 24) -> float:
    """The page's map figure (one Scattergl trace per colour) built and serialised as Streamlit does."""
    import numpy as np
    import plotly.graph_objects as go
    import plotly.io

    started = time.perf_counter()
    groups = np.arange(len(coords)) % n_groups
    hover = np.array([f"<b>poster {i}</b><br>Drama, Comedy" for i in range(len(coords))], dtype=object)
    fig = go.Figure([go.Scattergl(x=coords[inside, 0], y=coords[inside, 1], mode="markers", name=str(g),
                                  customdata=np.flatnonzero(inside)[:, None], hovertext=hover[inside],
                                  hoverinfo="text", marker={"size": 6, "opacity": 0.8})
                     for g in range(n_groups) for inside in [groups == g]])
    fig.update_layout(height=620)
    plotly.io.to_json(fig, validate=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=_common.DEV_SET)
    parser.add_argument("--weights", default=_common.default_weights())
    parser.add_argument("--view", default="flatten")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: the parts in this process's CPU seconds (all its threads), which the other "
                             "jobs on a shared machine do not inflate; a one-thread part takes as long on an idle core")
    parser.add_argument("--top", type=int, default=0, help="also print the cold map's N costliest functions")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"load average at the start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")

    started = time.perf_counter()
    from core.analysis.maps import UmapConfig, compute_umap
    from core.data.datasets import load_dataset
    from core.features.pipeline import FeatureConfig, cached_features
    print(f"python start + import core: {started - STARTED + time.perf_counter() - started:.2f}s")

    started = time.perf_counter()
    dataset, _ = load_dataset(args.dataset)
    features = cached_features(dataset, FeatureConfig(weights=args.weights))
    if features is None:
        raise SystemExit(f"extract features first: python -m core extract --dataset {args.dataset}")
    X = features.view(args.view)
    print(f"open the features ({args.view}, {X.shape[0]:,} x {X.shape[1]:,}; the page's prerequisite): "
          f"{time.perf_counter() - started:.2f}s")

    config = UmapConfig()
    for label, seed in (("cold", config.seed), ("warm", config.seed + 1)):
        with tempfile.TemporaryDirectory() as folder:
            profile = cProfile.Profile(clock)
            started, wall = clock(), time.perf_counter()
            profile.enable()
            embedding = compute_umap(X, replace(config, seed=seed), features_key=features.view_key(args.view),
                                     cache_dir=Path(folder))
            profile.disable()
            total, wall = clock() - started, time.perf_counter() - wall
        figure = _figure_seconds(embedding.coords)
        print(f"{label} map ({args.view}): {wall:.2f}s wall ({args.clock} clock below: {total:.2f}s) "
              f"+ figure {figure:.2f}s wall")
        for part, seconds in _part_seconds(profile).items():
            print(f"    {part:32s} {seconds:6.2f}s  {seconds / total:5.0%}")
        if label == "cold" and args.top:
            pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
