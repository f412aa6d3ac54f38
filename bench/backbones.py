"""Extraction speed of each backbone, geometry and precision: the product from files into an empty cache.

Every configuration runs in this process on the same posters (the model built and warmed first, so the
figure is decode + hash + inference + shard writes), so read the ratios: the CPU may be shared.

    python -m bench.backbones [--dataset DIR] [--n 128] [--vgg16-weights PATH|imagenet]
                              [--configs vgg16:tutorial:float32,efficientnet-lite2:poster:float32:320,...]

A configuration is ``backbone:geometry:precision``, with an optional ``:width`` (the input width; the
backbone's native one when left out).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench import _common

DEFAULT_CONFIGS = ("vgg16:tutorial:float32", "vgg16:tutorial:auto", "vgg16:poster:float32", "vgg16:poster:auto",
                   "efficientnet-lite2:tutorial:float32", "efficientnet-lite2:tutorial:bfloat16",
                   "efficientnet-lite2:poster:float32", "efficientnet-lite2:poster:auto",
                   "efficientnet-lite2:poster:float32:320")


def posters_per_second(dataset, config, weights) -> float:
    import numpy as np

    from core.data.images import load_pixels
    from core.features.pipeline import extract_features, extractor_for

    extractor = extractor_for(config, weights, weights_precision(config))
    extractor(np.stack([load_pixels(path, config.input_size) for path in dataset.paths[:config.batch_size]]))
    with tempfile.TemporaryDirectory() as cache:
        os.environ["POSTER_GENRE_CACHE"] = cache
        started = time.perf_counter()
        result = extract_features(dataset, config)
        seconds = time.perf_counter() - started
    return result.n_computed / seconds


def weights_precision(config) -> str:
    from core.features.extractor import resolve_precision

    return resolve_precision(config.precision, config.backbone)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=_common.DEV_SET)
    parser.add_argument("--n", type=int, default=128, help="posters per configuration")
    parser.add_argument("--vgg16-weights", default=_common.default_weights())
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="backbone:geometry:precision[:width],...")
    args = parser.parse_args()

    from core.data.datasets import Dataset, load_dataset
    from core.features.pipeline import FeatureConfig
    from core.features.weights import resolve_weights

    os.environ["POSTER_GENRE_CACHE"] = tempfile.mkdtemp(prefix="bench-backbones-")
    _common.print_machine()
    full, _ = load_dataset(args.dataset)
    subset = Dataset(full.root, full.posters[: args.n], full.name)
    print(f"posters: {len(subset)} from {args.dataset}, batch {args.batch_size}")
    print("| backbone, input | precision | posters/s |")
    print("|---|---|---|")
    for item in args.configs.split(","):
        backbone, geometry, precision, *width = item.split(":")
        spec = args.vgg16_weights if backbone == "vgg16" else "imagenet"
        config = FeatureConfig(weights=spec, precision=precision, batch_size=args.batch_size, geometry=geometry,
                               backbone=backbone, storage="pooled", image_size=int(width[0]) if width else 0)
        weights = resolve_weights(spec, backbone)
        rate = posters_per_second(subset, config, weights)
        print(f"| {config.label} | {precision} → {weights_precision(config)} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
