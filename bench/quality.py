"""Quality of both presets on the real IMDb dev posters: top-3 precision/recall against the frequency
prior, over 3 random 80/20 splits, with training times.

    python -m bench.quality [--dataset DIR] [--weights PATH] [--seeds 0,1,2] [--presets tutorial,recommended]

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
    parser.add_argument("--presets", default="tutorial,recommended")
    parser.add_argument("--retrain", action="store_true", help="ignore runs already saved")
    args = parser.parse_args()

    from core.data.datasets import load_dataset
    from core.model.experiment import run_experiment
    from core.features.pipeline import FeatureConfig, extract_features
    from core.model.runs import find_run, load_run, save_run
    from core.model.config import PRESETS

    _common.print_machine()
    dataset, _ = load_dataset(args.dataset)
    features = extract_features(dataset, FeatureConfig(weights=args.weights))
    print(f"dataset: {dataset.name}, {len(features.ids)} posters, weights {features.weights.label}")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    rows: dict[str, list[dict]] = {}
    for preset in args.presets.split(","):
        for seed in seeds:
            config = replace(PRESETS[preset], seed=seed)
            run = None if args.retrain else find_run(features, config)
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
    if {"tutorial", "recommended"} <= summary.keys():
        tut, rec = summary["tutorial"], summary["recommended"]
        print(f"recommended - tutorial: P@3 {rec['precision_at_k'] - tut['precision_at_k']:+.3f} "
              f"(target >= +0.02); recommended - prior: "
              f"{rec['precision_at_k'] - rec['prior_precision_at_k']:+.3f} (must stay >= +0.048); "
              f"training speed-up {tut['train_seconds'] / rec['train_seconds']:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
