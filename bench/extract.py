"""Feature extraction speed: the tutorial's per-image loop, the model alone, the product from files.

All three run in this process on the same posters, so the ratios compare like with like:
product / model-alone (target ≥ 0.85) and product / tutorial loop (target ≥ 4x).

    python -m bench.extract [--dataset DIR] [--weights PATH|imagenet] [--n 320] [--precision auto]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench import _common
import numpy as np


def tutorial_loop(paths: list[Path], weights: str) -> float:
    """The tutorial's code: one image at a time, load_img → preprocess_input → model.predict."""
    import keras
    from keras.applications.vgg16 import preprocess_input
    from keras.utils import img_to_array, load_img

    model = keras.applications.VGG16(weights=None if weights != "imagenet" else "imagenet", include_top=False)
    if weights != "imagenet":
        model.load_weights(weights)
    model.predict(np.zeros((1, 224, 224, 3), np.float32), verbose=0)
    started = time.perf_counter()
    for path in paths:
        x = np.expand_dims(img_to_array(load_img(path, target_size=(224, 224))), axis=0)
        model.predict(preprocess_input(x), verbose=0).flatten()
    return len(paths) / (time.perf_counter() - started)


def model_alone(paths: list[Path], weights: str, precision: str, batch_size: int) -> float:
    """The product's compiled VGG16 on pre-decoded tensors: the ceiling for extraction from files."""
    from core.features.extractor import get_extractor
    from core.data.images import load_pixels
    from core.features.weights import resolve_weights

    extractor = get_extractor(resolve_weights(weights), precision)
    pixels = np.stack([load_pixels(path) for path in paths])
    extractor(pixels[:batch_size])
    started = time.perf_counter()
    for start in range(0, len(pixels), batch_size):
        extractor(pixels[start:start + batch_size])
    return len(paths) / (time.perf_counter() - started)


def product(dataset, weights: str, precision: str, batch_size: int) -> tuple[float, int]:
    """``extract_features`` from files into an empty cache (decode, hash, infer, write shards + matrix)."""
    from core.features.pipeline import FeatureConfig, extract_features

    with tempfile.TemporaryDirectory() as cache:
        os.environ["POSTER_GENRE_CACHE"] = cache
        started = time.perf_counter()
        result = extract_features(dataset, FeatureConfig(weights=weights, precision=precision,
                                                         batch_size=batch_size))
        seconds = time.perf_counter() - started
    return len(result.ids) / seconds, result.n_computed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=_common.DEV_SET)
    parser.add_argument("--weights", default=_common.default_weights())
    parser.add_argument("--n", type=int, default=320, help="posters for the model and the product")
    parser.add_argument("--n-tutorial", type=int, default=64, help="posters for the slow tutorial loop")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from core.data.datasets import Dataset, load_dataset
    from core.features.extractor import resolve_precision
    from core.features.pipeline import FeatureConfig  # noqa: F401  (import TF before timing)

    _common.print_machine()
    full, _ = load_dataset(args.dataset)
    subset = Dataset(full.root, full.posters[: args.n], full.name)
    paths = subset.paths
    precision = resolve_precision(args.precision)
    print(f"posters: {len(paths)} from {args.dataset} (tutorial loop: {args.n_tutorial}); weights {args.weights}; "
          f"product precision {precision}, batch {args.batch_size}")

    tutorial = tutorial_loop(paths[: args.n_tutorial], args.weights)
    print(f"tutorial loop (float32, one image per predict): {tutorial:6.1f} posters/s")
    alone = model_alone(paths, args.weights, precision, args.batch_size)
    print(f"model alone ({precision}, pre-decoded batches):   {alone:6.1f} posters/s")
    ours, computed = product(subset, args.weights, precision, args.batch_size)
    print(f"product extraction from files ({computed} computed):  {ours:6.1f} posters/s")
    print(f"ratio product / model alone: {ours / alone:.2f}  (target >= 0.85)")
    print(f"ratio product / tutorial:    {ours / tutorial:.1f}x (target >= 4x)")


if __name__ == "__main__":
    main()
