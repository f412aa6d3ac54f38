"""One training experiment end to end: features → split → fit → evaluate → a saved run."""
from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from core.cache import stable_hash
from core.data.datasets import Dataset, GenreVocabulary
from core.errors import DatasetError, TrainingError
from core.features.pipeline import FeatureSet
from core.analysis.metrics import Evaluation, evaluate
from core.model.classifier import BatchFn, EpochFn, EpochLog, GenreClassifier, Split, StopFn, make_split
from core.model.config import TrainConfig, check_config

RUN_VERSION = 2
"""2: training is XLA-compiled and ensembles train as one stacked model (different numbers than 1)."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a saved run records about the dataset it was trained on (``run.json``'s ``dataset``)."""

    root: str | None = None
    name: str = ""
    synthetic: bool = False
    n_posters: int | None = None

    @classmethod
    def of(cls, dataset: Dataset) -> "DatasetInfo":
        return cls(root=str(Path(dataset.root).resolve()), name=dataset.name, synthetic=dataset.synthetic,
                   n_posters=len(dataset))

    @classmethod
    def from_dict(cls, data: dict | None) -> "DatasetInfo":
        """Tolerates runs saved with fewer keys (older versions, imports)."""
        known = {name: value for name, value in (data or {}).items() if name in cls.__dataclass_fields__}
        return cls(**known)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LabelsInfo:
    """The labels a run is trained and scored on (``run.json``'s ``labels``).

    ``key`` hashes the poster ids in feature order (the split is drawn from their positions), each
    poster's genres as the dataset folds them, and the vocabulary: a run answers for these labels only.
    ``n_posters`` and ``genres`` (the vocabulary) say which labels they were, for people.
    """

    key: str
    n_posters: int
    genres: tuple[str, ...]

    @classmethod
    def of(cls, ids: Sequence[str], labels: Sequence[Sequence[str]], vocabulary: GenreVocabulary) -> "LabelsInfo":
        key = stable_hash({"ids": list(ids), "genres": [list(genres) for genres in labels],
                           "vocabulary": list(vocabulary.genres)})
        return cls(key, len(ids), tuple(vocabulary.genres))

    @classmethod
    def from_dict(cls, data: dict | None) -> "LabelsInfo | None":
        """``None`` for a run saved before runs recorded their labels (or a record of the wrong shape)."""
        if not isinstance(data, dict) or not isinstance(data.get("key"), str):
            return None
        genres = data.get("genres")
        n_posters = data.get("n_posters")
        return cls(data["key"], n_posters if isinstance(n_posters, int) else 0,
                   tuple(str(genre) for genre in genres) if isinstance(genres, list) else ())

    def to_dict(self) -> dict:
        return {"key": self.key, "n_posters": self.n_posters, "genres": list(self.genres)}

    def describe(self, shown: int = 8) -> str:
        """``40 posters, 8 genres (Action, Comedy, …)``."""
        names = ", ".join(self.genres[:shown]) + (", …" if len(self.genres) > shown else "")
        return f"{self.n_posters:,} posters, {len(self.genres)} genres ({names})"


@dataclass(frozen=True)
class GenreLabels:
    """The genres of some posters, in a fixed order: their names and the multi-hot matrix."""

    ids: list[str]
    labels: list[tuple[str, ...]]
    vocabulary: GenreVocabulary
    Y: np.ndarray

    @functools.cached_property
    def info(self) -> LabelsInfo:
        return LabelsInfo.of(self.ids, self.labels, self.vocabulary)

    @property
    def key(self) -> str:
        return self.info.key


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
    dataset: DatasetInfo
    labels: LabelsInfo


def labels_for(dataset: Dataset, ids: Sequence[str]) -> list[tuple[str, ...]]:
    """The true genres of ``ids``; refuses ids the dataset does not have (another dataset's run)."""
    genres_of = {poster.id: poster.genres for poster in dataset.posters}
    missing = [id_ for id_ in ids if id_ not in genres_of]
    if missing:
        raise DatasetError(f"{len(missing)} of {len(ids)} posters are not in dataset {dataset.name} "
                           f"(e.g. {', '.join(missing[:3])})", "use the dataset the run was trained on")
    return [genres_of[id_] for id_ in ids]


def genre_labels(dataset: Dataset, ids: Sequence[str], vocabulary: GenreVocabulary | None = None) -> GenreLabels:
    """Labels of ``ids`` encoded in ``vocabulary``'s order (by default the sorted genres they use).

    A given vocabulary is a run's: genres of today's labels outside it are refused, naming them.
    """
    labels = labels_for(dataset, ids)
    if vocabulary is None:
        vocabulary = GenreVocabulary.from_labels(labels)
    elif unknown := sorted({genre for genres in labels for genre in genres} - set(vocabulary.genres)):
        raise DatasetError(f"today's labels of these posters use genres the run was not trained on: {unknown}",
                           "the run was trained on other labels; train it again on today's labels")
    return GenreLabels(list(ids), labels, vocabulary, vocabulary.encode(labels))


def labels_info(dataset: Dataset, ids: Sequence[str]) -> LabelsInfo:
    """What ``run_experiment`` on features of ``ids`` would train and score on, without encoding the labels."""
    labels = labels_for(dataset, ids)
    return LabelsInfo.of(ids, labels, GenreVocabulary.from_labels(labels))


def run_key(features: FeatureSet, config: TrainConfig, labels: LabelsInfo) -> str:
    """Identifies a run by everything that determines its result, so a repeat is read from disk: the
    features, the labels it is trained and scored on, and the configuration.

    Only fields that differ from ``TrainConfig()`` enter the key, so adding a field with a default
    keeps the keys of earlier runs valid.
    """
    defaults = TrainConfig().to_dict()
    changed = {name: value for name, value in config.to_dict().items() if defaults[name] != value}
    return stable_hash({"features": features.key, "labels": labels.key, "config": changed, "version": RUN_VERSION})


def run_experiment(dataset: Dataset, features: FeatureSet, config: TrainConfig, *,
                   on_epoch: EpochFn | None = None, should_stop: StopFn | None = None,
                   on_batch: BatchFn | None = None) -> ExperimentResult:
    started = time.perf_counter()
    truth = genre_labels(dataset, features.ids)
    vocabulary, Y = truth.vocabulary, truth.Y
    if len(Y) < 5:
        raise TrainingError(f"only {len(Y)} posters have features; training needs at least 5")
    check_config(config, n_genres=len(vocabulary))
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
                            classifier.stopped_by_user_, features, DatasetInfo.of(dataset), truth.info)


def _rows(X: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.asarray(X[np.sort(index)], dtype=np.float32) if len(index) else np.empty((0, X.shape[1]), np.float32)
