"""Quality of the presets on the real IMDb dev posters: top-3 precision/recall against the frequency
prior, over 3 random 80/20 splits, with training times; per input geometry, with extraction and
training time per 1,000 posters.

    python -m bench.quality [--dataset DIR] [--weights PATH] [--seeds 0,1,2] [--presets tutorial,fast,recommended]
                            [--geometries tutorial,poster] [--image-size 224] [--time-n 96]
                            [--backbone vgg16|resnet50|efficientnet-lite2]

The extraction time is measured in this run on the first --time-n posters into an empty cache, for every
geometry one after the other, so their ratio compares like with like (the full set's features are read
from the product's cache, extracted beforehand with e.g. ``python -m core extract --geometry poster``).
The tutorial preset's 25,088-d flatten view does not exist for the poster geometry; it is skipped there.

Runs are saved in the product's run store, so a repeated benchmark reads finished runs from disk
(their recorded training time is reported) unless --retrain is given.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from bench import _common
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=_common.DEV_SET)
    parser.add_argument("--weights", default=_common.default_weights())
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--presets", default="tutorial,fast,recommended")
    parser.add_argument("--geometries", default="tutorial", help="input geometries to compare, e.g. tutorial,poster")
    parser.add_argument("--image-size", type=int, default=0,
                        help="input width (default: the backbone's native size; the poster geometry is 1.5x as high)")
    parser.add_argument("--backbone", default="vgg16", help="vgg16, resnet50 or efficientnet-lite2")
    parser.add_argument("--time-n", type=int, default=96, help="posters timed per geometry (0: no timing)")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N posters of the dataset (all of them by default)")
    parser.add_argument("--retrain", action="store_true", help="ignore runs already saved")
    args = parser.parse_args()

    from core.data.datasets import load_dataset
    from core.features.pipeline import FeatureConfig, extract_features

    _common.print_machine()
    dataset, _ = load_dataset(args.dataset)
    if args.limit:
        from dataclasses import replace

        dataset = replace(dataset, posters=dataset.posters[:args.limit])
    seeds = [int(seed) for seed in args.seeds.split(",")]
    geometries = args.geometries.split(",")
    weights = args.weights if args.backbone == "vgg16" or args.weights != _common.default_weights() else "imagenet"
    configs = {geometry: FeatureConfig(weights=weights, geometry=geometry, image_size=args.image_size,
                                       backbone=args.backbone)
               for geometry in geometries}
    extract_seconds = {geometry: extraction_seconds_per_1000(dataset, config, args.time_n)
                       for geometry, config in configs.items()} if args.time_n else {}
    summaries = {}
    for geometry, feature_config in configs.items():
        features = extract_features(dataset, feature_config)
        print(f"\n== {feature_config.label}: dataset {dataset.name}, {len(features.ids)} posters, "
              f"weights {features.weights.label}")
        summaries[geometry] = compare_presets(dataset, features, args, seeds)
    print("\nper geometry (mean over seeds; times per 1,000 dataset posters)")
    for geometry, summary in summaries.items():
        extract = extract_seconds.get(geometry)
        for preset, mean in summary.items():
            per_1000 = mean["train_seconds"] * 1000 / len(dataset)
            print(f"{configs[geometry].label:28s} {preset:12s} lift {mean['precision_at_k'] - mean['prior_precision_at_k']:+.4f} "
                  f"(P@3 {mean['precision_at_k']:.4f})  extraction "
                  f"{'-' if extract is None else f'{extract:.1f}'} s  training {per_1000:.1f} s")
    if {"tutorial", "poster"} <= extract_seconds.keys():
        print(f"poster / tutorial extraction time: {extract_seconds['poster'] / extract_seconds['tutorial']:.2f}x "
              "(target <= 2x for the suggested default)")


def extraction_seconds_per_1000(dataset, config, n: int) -> float:
    """Seconds per 1,000 posters for ``extract_features`` of the first ``n`` posters into an empty cache
    (decode, hash, infer, write), after a warm-up on two other posters that builds the model."""
    import os
    import tempfile
    import time

    from dataclasses import replace

    from core.features.pipeline import extract_features

    head = replace(dataset, posters=dataset.posters[:n])
    warm = replace(dataset, posters=dataset.posters[n:n + 2])
    previous = os.environ.get("POSTER_GENRE_CACHE")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["POSTER_GENRE_CACHE"] = cache
        try:
            extract_features(warm, config)
            started = time.perf_counter()
            extract_features(head, config)
            seconds = time.perf_counter() - started
        finally:
            if previous is None:
                os.environ.pop("POSTER_GENRE_CACHE")
            else:
                os.environ["POSTER_GENRE_CACHE"] = previous
    print(f"extraction {config.label}: {seconds * 1000 / n:.1f} s per 1,000 posters ({n} timed)", flush=True)
    return seconds * 1000 / n


def compare_presets(dataset, features, args, seeds) -> dict[str, dict]:
    from core.model.config import PRESETS
    from core.model.experiment import labels_info, run_experiment
    from core.model.runs import find_run, load_run, save_run

    labels = labels_info(dataset, features.ids)
    rows: dict[str, list[dict]] = {}
    for preset in args.presets.split(","):
        if PRESETS[preset].feature_view == "flatten" and features.config.stored == "pooled":
            print(f"{preset:12s} skipped: {features.config.flatten_unavailable()}")
            continue
        for seed in seeds:
            config = replace(PRESETS[preset], seed=seed)
            run = None if args.retrain else find_run(features, config, labels)
            if run is None:
                result = run_experiment(dataset, features, config)
                run = load_run(save_run(result))
            m = run.metrics
            rows.setdefault(preset, []).append(m)
            print(f"{preset:12s} seed {seed}: P@3 {m['precision_at_k']:.3f} R@3 {m['recall_at_k']:.3f} | prior "
                  f"P@3 {m['prior_precision_at_k']:.3f} R@3 {m['prior_recall_at_k']:.3f} | "
                  f"{m['train_seconds']:.1f}s, {m.get('epochs_total', m['epochs_run'])} epochs in all", flush=True)
    print("\nmean over seeds", seeds)
    summary = {}
    for preset, metrics in rows.items():
        mean = {key: float(np.mean([m[key] for m in metrics])) for key in
                ("precision_at_k", "recall_at_k", "prior_precision_at_k", "prior_recall_at_k", "train_seconds")}
        summary[preset] = mean
        print(f"{preset:12s} P@3 {mean['precision_at_k']:.3f} (prior {mean['prior_precision_at_k']:.3f}, "
              f"{mean['precision_at_k'] - mean['prior_precision_at_k']:+.3f})  R@3 {mean['recall_at_k']:.3f} "
              f"(prior {mean['prior_recall_at_k']:.3f})  train {mean['train_seconds']:.1f}s")
    if {"fast", "recommended"} <= summary.keys():
        fast, rec = summary["fast"], summary["recommended"]
        print(f"fast - recommended: P@3 {fast['precision_at_k'] - rec['precision_at_k']:+.4f}; training "
              f"{rec['train_seconds'] / fast['train_seconds']:.0f}x faster ({fast['train_seconds']:.1f}s, target <= 5 s)")
    if {"tutorial", "recommended"} <= summary.keys():
        tut, rec = summary["tutorial"], summary["recommended"]
        print(f"recommended - tutorial: P@3 {rec['precision_at_k'] - tut['precision_at_k']:+.3f} "
              f"(target >= +0.02); recommended - prior: "
              f"{rec['precision_at_k'] - rec['prior_precision_at_k']:+.3f} (must stay >= +0.048); "
              f"training speed-up {tut['train_seconds'] / rec['train_seconds']:.1f}x (target >= 5x)")
    return summary


if __name__ == "__main__":
    main()
