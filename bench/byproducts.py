"""Extraction with and without the thumbnails and visual descriptors made from its decoded images (issue 23).

Both variants run in this process on the same posters, each into an empty cache, alternating (off, on,
off, on, ...) so a shared machine's load falls on both alike; the report is the ratio of the medians
(target ≤ 1.10x).

    python -m bench.byproducts [--dataset DIR] [--n 300] [--backbone efficientnet-lite2] [--weights imagenet]
                               [--repeats 3]
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench import _common


def one_run(dataset, config, byproducts: bool) -> tuple[float, float]:
    """Wall and CPU (this process, all threads) seconds of ``extract_features`` from files into an empty cache.

    On a shared machine the CPU seconds vary far less than the wall time."""
    from core.features.pipeline import _compute, extract_features

    with tempfile.TemporaryDirectory() as cache:
        os.environ["POSTER_GENRE_CACHE"] = cache
        started, cpu = time.perf_counter(), time.process_time()
        result = extract_features(dataset, config, engine=functools.partial(_compute, byproducts=byproducts))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert result.n_computed == len(result.ids), "the cache was not empty"
    return seconds, cpu


def per_poster(paths: list[Path]) -> tuple[float, float]:
    """Milliseconds per poster, one thread: decode + resize for the network, and the byproducts added to it
    (a figure less at the mercy of a shared machine than the end-to-end timings)."""
    from core.data.images import open_rgb, resize_pixels
    from core.features.byproducts import Byproducts

    images = []
    started = time.process_time()
    for path in paths:
        images.append(open_rgb(path))
        resize_pixels(images[-1], (260, 260))
    decode = time.process_time() - started
    made = Byproducts()
    started = time.process_time()
    for number, image in enumerate(images):
        made.add(str(number), image)
    return 1000 * decode / len(paths), 1000 * (time.process_time() - started) / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=_common.DEV_SET)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--backbone", default="efficientnet-lite2")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from core.data.datasets import Dataset, load_dataset
    from core.features.pipeline import FeatureConfig, extractor_for, store_for

    _common.print_machine()
    full, _ = load_dataset(args.dataset)
    subset = Dataset(full.root, full.posters[: args.n], full.name)
    config = FeatureConfig(weights=args.weights, backbone=args.backbone)
    _, weights, precision = store_for(config)
    extractor_for(config, weights, precision)  # build the model once, outside the timings
    print(f"posters: {len(subset)} from {args.dataset}; {config.label}, weights {weights.label}, {precision}")
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for repeat in range(args.repeats):
        for byproducts in (False, True):
            times[byproducts].append(one_run(subset, config, byproducts))
            wall, cpu = times[byproducts][-1]
            print(f"run {repeat + 1} {'with' if byproducts else 'without'} thumbnails+descriptors: "
                  f"{wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    decode, extra = per_poster(subset.paths[:100])
    print(f"CPU per poster (100 posters, one thread): decode+resize {decode:.1f} ms, thumbnail+descriptors "
          f"{extra:.1f} ms")
    for index, kind in enumerate(("wall", "CPU")):
        off = statistics.median(run[index] for run in times[False])
        on = statistics.median(run[index] for run in times[True])
        print(f"median {kind} without {off:.2f} s, with {on:.2f} s: ratio {on / off:.3f}x (target <= 1.10x)")


if __name__ == "__main__":
    main()
