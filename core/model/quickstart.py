"""The one-click start: extract a dataset's features and train the ``fast`` preset, with progress.

What a newcomer's first click on Home runs (and ``bench.loop`` times), so that every page has
features and a saved run to show. Cached features and a run saved before on the same features and
labels are reused. On the synthetic demo it extracts with EfficientNet-Lite2 when the package with its
ImageNet weights is installed (``first_touch_features``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from core.data.datasets import Dataset
from core.features import efficientnet_lite
from core.features.pipeline import FeatureConfig, FeatureSet, extract_features
from core.features.weights import weights_kind
from core.model.classifier import BatchFn, EpochFn
from core.model.config import PRESETS, TrainConfig
from core.progress import ProgressFn

QUICK_START_PRESET = "fast"
"""The preset made for the first touch and for sliders: on the dev posters 0.003 below ``recommended``'s
top-3 precision at about 1/60 of its training time (on the 500-poster demo 26 s against 2.6 s, under load)."""
FIRST_TOUCH_BACKBONE = "efficientnet-lite2"


def first_touch_features(dataset: Dataset, config: FeatureConfig) -> FeatureConfig:
    """What the one-click start extracts for the chosen ``config``.

    On the synthetic demo, VGG16 with ImageNet weights becomes EfficientNet-Lite2 with ImageNet weights when
    the package that ships them is installed: real pretrained features with nothing to download, several
    times faster on a CPU (the page says so). Any other dataset, backbone or weights choice is kept.
    """
    if not (dataset.synthetic and config.backbone == "vgg16" and weights_kind(config.weights) == "imagenet"):
        return config
    if not efficientnet_lite.package_installed():
        return config
    return replace(config, backbone=FIRST_TOUCH_BACKBONE, image_size=0)


@dataclass(frozen=True)
class QuickStart:
    features: FeatureSet
    run_folder: Path
    trained: bool
    """False when a saved run for these features, these labels and this preset already existed."""


def quick_start(dataset: Dataset, feature_config: FeatureConfig = FeatureConfig(), *,
                config: TrainConfig = PRESETS[QUICK_START_PRESET], on_extract: ProgressFn | None = None,
                on_epoch: EpochFn | None = None, on_batch: BatchFn | None = None,
                runs_folder: Path | None = None) -> QuickStart:
    """Features (computing only what is missing), then a saved run of ``config`` unless one exists."""
    from core.model.experiment import labels_info, run_experiment, run_key
    from core.model.runs import find_run, save_run

    features = extract_features(dataset, feature_config, progress=on_extract)
    labels = labels_info(dataset, features.ids)
    existing = find_run(features, config, labels, runs_folder)
    if existing is not None:
        return QuickStart(features, existing.folder, trained=False)
    result = run_experiment(dataset, features, config, on_epoch=on_epoch, on_batch=on_batch)
    folder = runs_folder / run_key(features, config, labels) if runs_folder is not None else None
    return QuickStart(features, save_run(result, folder), trained=True)

