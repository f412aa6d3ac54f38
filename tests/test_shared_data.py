"""Checks on the real material in ../shared (developer machines and CI only; skipped elsewhere,
saying why).

- The IMDb dev set loads completely: 4,596 posters, 23 genres, nothing skipped, Drama the most
  frequent genre.
- The shared ImageNet weights go through the product's "local weights file" option: their identity
  is the file's sha256, and their features of real posters are post-ReLU (non-negative, partly
  zero), differ from random-weight features, and rank a poster's own mirror image as far more similar
  than another film's poster.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from core.data.datasets import load_dataset
from core.features.extractor import FEATURE_DIM, ROW_DIM, get_extractor
from core.data.images import load_pixels
from core.features.weights import resolve_weights

IMAGENET_SHA256 = "a2f51117308129c3de9a523c91d35160eb75a6a9e5db1e2afb4f48e48dfb733a"


def test_dev_set_loads_completely(imdb_dev):
    dataset, report = load_dataset(imdb_dev)
    assert len(dataset) == 4596 and report.skipped == []
    counts = dataset.genre_counts()
    assert len(counts) == 23 and next(iter(counts)) == "Drama"


def test_local_imagenet_weights_give_real_features(imdb_dev, imagenet_weights):
    weights = resolve_weights(str(imagenet_weights))
    assert weights.kind == "file" and weights.identity == f"file:sha256:{IMAGENET_SHA256}"
    dataset, _ = load_dataset(imdb_dev)
    paths = dataset.paths[:3]
    pixels = np.stack([load_pixels(path) for path in paths]
                      + [np.asarray(ImageOps.mirror(Image.fromarray(load_pixels(paths[0]))))])
    rows = get_extractor(weights, "float32")(pixels)
    assert rows.shape == (4, ROW_DIM) and (rows >= 0).all()
    features = rows[:, :FEATURE_DIM]
    assert 0.2 < (features == 0).mean() < 0.99
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    mirror, other = unit[0] @ unit[3], max(unit[0] @ unit[1], unit[0] @ unit[2])
    assert mirror > other + 0.1, (mirror, other)
    random = get_extractor(resolve_weights("none"), "float32")(pixels[:1])
    assert not np.allclose(random, rows[:1])
