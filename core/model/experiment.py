"""One training experiment end to end: features → split → fit → evaluate → a saved run."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from core.cache import stable_hash
from core.data.datasets import Dataset, GenreVocabulary
from core.errors import TrainingError
from core.features.pipeline import FeatureSet
from core.analysis.metrics import Evaluation, evaluate
from core.model.classifier import BatchFn, EpochFn, EpochLog, GenreClassifier, Split, StopFn, make_split
from core.model.config import TrainConfig

RUN_VERSION = 2
"""2: training is XLA-compiled and ensembles train as one stacked model (different numbers than 1)."""


@dataclass
class ExperimentResult:
    config: TrainConfig
    classifier: GenreClassifier
    vocabulary: GenreVocabulary
    split: Split
    ids: list[str]
    evaluation: Evaluation
    test_scores: np.ndarray
    history: list[EpochLog]
    seconds: float
    stopped_by_user: bool
    features: FeatureSet


def labels_for(dataset: Dataset, ids: list[str]) -> list[tuple[str, ...]]:
    genres_of = {poster.id: poster.genres for poster in dataset.posters}
    return [genres_of[id_] for id_ in ids]


def run_key(features: FeatureSet, config: TrainConfig) -> str:
    """Identifies a run by everything that determines its result, so a repeat is read from disk.

    Only fields that differ from ``TrainConfig()`` enter the key, so adding a field with a default
    keeps the keys of earlier runs valid.
    """
    defaults = TrainConfig().to_dict()
    changed = {name: value for name, value in config.to_dict().items() if defaults[name] != value}
    return stable_hash({"features": features.key, "config": changed, "version": RUN_VERSION})


def run_experiment(dataset: Dataset, features: FeatureSet, config: TrainConfig, *,
                   on_epoch: EpochFn | None = None, should_stop: StopFn | None = None,
                   on_batch: BatchFn | None = None) -> ExperimentResult:
    started = time.perf_counter()
    labels = labels_for(dataset, features.ids)
    vocabulary = GenreVocabulary.from_labels(labels)
    Y = vocabulary.encode(labels)
    if len(Y) < 5:
        raise TrainingError(f"only {len(Y)} posters have features; training needs at least 5")
    if config.k > len(vocabulary):
        raise TrainingError(f"k={config.k} but the dataset has only {len(vocabulary)} genres",
                            f"choose k between 1 and {len(vocabulary)}")
    X = features.view(config.feature_view)
    split = make_split(len(Y), config)
    validation = (_rows(X, split.validation), Y[split.validation]) if len(split.validation) else None
    classifier = GenreClassifier(config).fit(_rows(X, split.train), Y[split.train], validation=validation,
                                             on_epoch=on_epoch, should_stop=should_stop, on_batch=on_batch)
    scores = classifier.predict_proba(_rows(X, split.test))
    evaluation = evaluate(Y[split.test], scores, Y[split.train], vocabulary.genres, k=config.k,
                          threshold=config.threshold, seed=config.seed)
    return ExperimentResult(config, classifier, vocabulary, split, features.ids, evaluation, scores,
                            classifier.history_, time.perf_counter() - started,
                            classifier.stopped_by_user_, features)


def _rows(X: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.asarray(X[np.sort(index)], dtype=np.float32) if len(index) else np.empty((0, X.shape[1]), np.float32)
