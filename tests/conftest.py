"""Shared fixtures: an isolated cache, random weights, and a tiny generated poster set.

Every test runs with ``POSTER_GENRE_CACHE`` pointing at a fresh session folder and
``POSTER_GENRE_WEIGHTS=none``, so no test reads the user's cache or tries to download ImageNet.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

SESSION_CACHE = Path(tempfile.mkdtemp(prefix="pge-test-cache-"))
os.environ["POSTER_GENRE_CACHE"] = str(SESSION_CACHE)
os.environ["POSTER_GENRE_WEIGHTS"] = "none"
os.environ["POSTER_GENRE_WARM_UP"] = "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = Path(__file__).resolve().parents[2] / "shared"
IMAGENET_FILE = SHARED / "weights" / "vgg16_imagenet_notop.weights.h5"
IMDB_DEV = SHARED / "datasets" / "imdb-posters-dev"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """40 synthetic posters over the 8 demo genres (generated, seeded)."""
    from core.data.demo import DemoConfig, make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("tiny") / "tiny", DemoConfig(n_posters=40, seed=3))


@pytest.fixture(scope="session")
def tiny_features(tiny_dataset):
    """Features of ``tiny_dataset`` with random weights, cached in the session cache."""
    from core.data.datasets import load_dataset
    from core.features.pipeline import FeatureConfig, extract_features

    dataset, _ = load_dataset(tiny_dataset)
    return dataset, extract_features(dataset, FeatureConfig(weights="none"))


@pytest.fixture
def imagenet_weights() -> Path:
    if not IMAGENET_FILE.is_file():
        pytest.skip(f"needs the ImageNet VGG16 weights at {IMAGENET_FILE} (developer machines and CI only)")
    return IMAGENET_FILE


@pytest.fixture
def imdb_dev() -> Path:
    if not (IMDB_DEV / "labels.csv").is_file():
        pytest.skip(f"needs the IMDb dev posters at {IMDB_DEV} (developer machines and CI only)")
    return IMDB_DEV
