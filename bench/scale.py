"""Extraction on Ray against in-process, what 1M posters would take on N actors, and the dashboard
at 100,000 posters.

Both engines extract the same posters into empty caches in this run, so their throughputs compare like
with like: local Ray / in-process (target >= 0.8: Ray's overhead stays small). "Steady" rates leave out
the first batch (model build, actor start), which a long job pays once. The projection for 1M posters
is linear in actors from the measured per-actor rate, plus the measured start-up; where the actor ran
on a CPU the GPU figures are projected from ``--gpu-actor-rate`` or, failing that, the CPU rate.

    python -m bench.scale [--dataset DIR] [--weights PATH|imagenet] [--n 256] [--gpu-actor-rate R]

With ``--posters N`` it measures the dashboard instead (``bench/_dashboard_scale.py``): a synthetic
dataset of N posters whose cached rows are the dev set's real features resampled with noise, built
once into ``--build-dir`` and reused, then every step a user takes timed against its target.

    python -m bench.scale --posters 100000 [--build-dir /tmp/poster-genre-scale] [--skip train,map]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import _common

MILLION = 1_000_000
ACTOR_COUNTS = (1, 4, 8, 16, 64, 256)


@dataclass(frozen=True)
class Timing:
    posters: int
    seconds: float
    first_batch_seconds: float
    steady_rate: float

    @property
    def rate(self) -> float:
        return self.posters / self.seconds


def timed_extraction(dataset, config, engine=None) -> Timing:
    """Extract into an empty cache; the steady rate runs from the first batch's return to the last's."""
    from core.features.pipeline import extract_features

    stamps: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ["POSTER_GENRE_CACHE"] = cache
        started = time.perf_counter()
        result = extract_features(dataset, config, engine=engine,
                                  progress=lambda p: stamps.append((time.perf_counter(), p.done)))
        seconds = time.perf_counter() - started
    (first_at, first_done), (last_at, last_done) = stamps[0], stamps[-1]
    steady = (last_done - first_done) / (last_at - first_at) if last_at > first_at else float("nan")
    return Timing(result.n_computed, seconds, first_at - started, steady)


def decode_rate(paths: list[Path], config) -> float:
    """Posters decoded and resized per second on one core (what feeds the actors)."""
    from core.data.images import load_pixels

    started = time.perf_counter()
    for path in paths:
        load_pixels(path, config.image_size, config.resize)
    return len(paths) / (time.perf_counter() - started)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:6.2f} h" if seconds >= 3600 else f"{seconds / 60:6.1f} min"


def projection(actor_rate: float, startup: float, decode_per_core: float, label: str) -> str:
    lines = [f"1M posters on N actors at {actor_rate:.1f} posters/s each ({label}), + {startup:.0f}s start-up:",
             f"{'actors':>8} {'posters/s':>10} {'time for 1M':>12} {'decode cores needed':>20}"]
    for actors in ACTOR_COUNTS:
        rate = actors * actor_rate
        lines.append(f"{actors:>8} {rate:>10.0f} {hours(startup + MILLION / rate):>12} "
                     f"{rate / decode_per_core:>20.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=_common.DEV_SET)
    parser.add_argument("--weights", default=_common.default_weights())
    parser.add_argument("--n", type=int, default=256, help="posters per engine")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--actors", type=int, default=None, help="local Ray actors (default: the engine's plan)")
    parser.add_argument("--gpu-actor-rate", type=float, default=None,
                        help="posters/s of one GPU actor measured elsewhere, for the GPU projection")
    parser.add_argument("--posters", type=int, default=None,
                        help="measure the dashboard on a synthetic dataset of this many posters instead")
    parser.add_argument("--build-dir", type=Path, default=None,
                        help="where the synthetic dataset and its feature cache are built (reused when built)")
    parser.add_argument("--skip", default="", help="dashboard steps to leave out, comma-separated "
                        "(open, map, neighbours, train, memory)")
    parser.add_argument("--train-preset", default="fast", help="preset of the timed training (fast or recommended)")
    parser.add_argument("--map-view", default="flatten", help="feature view of the timed map (the page's default)")
    args = parser.parse_args()
    if args.posters:
        from bench import _dashboard_scale

        _dashboard_scale.run(args)
        return
    extraction_bench(args)


def extraction_bench(args) -> None:
    from core.data.datasets import Dataset, load_dataset
    from core.features.extractor import resolve_precision
    from core.features.pipeline import FeatureConfig
    from core.features.ray_engine import RayEngine, connect

    _common.print_machine()
    full, _ = load_dataset(args.dataset)
    config = FeatureConfig(weights=args.weights, precision=args.precision, batch_size=args.batch_size)
    local_set = Dataset(full.root, full.posters[: args.n], full.name)
    ray_set = Dataset(full.root, full.posters[args.n: 2 * args.n], full.name)
    print(f"posters: {args.n} per engine from {args.dataset}; weights {args.weights}; "
          f"precision {resolve_precision(args.precision)}, batch {args.batch_size}")

    local = timed_extraction(local_set, config)
    started = time.perf_counter()
    ray = connect(num_cpus=os.cpu_count(), object_store_memory=1 << 30)
    ray_start = time.perf_counter() - started
    gpus = ray.cluster_resources().get("GPU", 0.0)
    engine = RayEngine(actors=args.actors)
    distributed = timed_extraction(ray_set, config, engine)
    actors = args.actors or 1
    ray.shutdown()
    per_core = decode_rate(ray_set.paths[:64], config)

    print(f"{'engine':<12} {'posters/s':>10} {'steady/s':>9} {'first batch':>12}")
    print(f"{'in-process':<12} {local.rate:>10.1f} {local.steady_rate:>9.1f} {local.first_batch_seconds:>11.1f}s")
    print(f"{'local Ray':<12} {distributed.rate:>10.1f} {distributed.steady_rate:>9.1f} "
          f"{distributed.first_batch_seconds:>11.1f}s  ({actors} actor(s), {gpus:g} GPUs; Ray start {ray_start:.1f}s)")
    print(f"ratio local Ray / in-process: steady {distributed.steady_rate / local.steady_rate:.2f} (target >= 0.8), "
          f"end to end {distributed.rate / local.rate:.2f}")
    print(f"decoding: {per_core:.1f} posters/s per core")
    startup = ray_start + distributed.first_batch_seconds
    per_actor = distributed.steady_rate / actors
    print()
    print(projection(per_actor, startup, per_core, "measured here" + (" on GPU" if gpus else " on CPU")))
    if not gpus:
        print()
        if args.gpu_actor_rate:
            print(projection(args.gpu_actor_rate, startup, per_core, "GPU actor rate given, PROJECTED"))
        print("No GPU here: GPU figures are PROJECTED, not measured. Run this on a GPU node (the engine puts one "
              "actor per GPU) for a measured GPU actor rate, or pass --gpu-actor-rate.")


if __name__ == "__main__":
    main()
