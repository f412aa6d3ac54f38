"""What a saved run predicts: its test posters one by one, and new poster images."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from core.analysis.metrics import per_poster_report
from core.data.datasets import Dataset
from core.errors import ImageError, RunError, WeightsError
from core.features.pipeline import extract_one
from core.features.views import feature_view, view_dim
from core.features.weights import resolve_weights, same_weights
from core.model.experiment import genre_labels
from core.model.runs import Run, load_run


@dataclass
class ScoredPosters:
    """A run's test posters in split order: one table row each, their labels and the saved scores."""

    table: pd.DataFrame
    Y: np.ndarray
    scores: np.ndarray


def score_test_posters(run: Run, dataset: Dataset) -> ScoredPosters:
    """Per test poster: id, title, path, true genres, top-k predictions, hits, precision, recall, loss,
    top-1 probability ("confidence") and split position ("order")."""
    truth = genre_labels(dataset, run.split["test"], run.vocabulary)
    scores = run.test_scores()
    posters = {poster.id: poster for poster in dataset.posters}
    table = pd.concat([pd.DataFrame({
        "id": truth.ids,
        "title": [posters[id_].title for id_ in truth.ids],
        "path": [str(posters[id_].path) for id_ in truth.ids],
        "true": truth.labels,
    }), per_poster_report(truth.Y, scores, run.vocabulary.genres, k=run.config.k)], axis=1)
    table["order"] = np.arange(len(table))
    return ScoredPosters(table, truth.Y, scores)


@dataclass
class PosterPrediction:
    name: str
    top: list[tuple[str, float]] = field(default_factory=list)
    probabilities: dict[str, float] = field(default_factory=dict)
    features: np.ndarray | None = None
    error: str | None = None
    random_weights: bool = False
    """Made from RANDOM VGG16 features (weights=none): every display of it must say so."""


class Predictor:
    """A run's model plus the feature extractor it was trained on."""

    def __init__(self, run: Run, weights: str | None = None) -> None:
        trained_on = run.weights
        self.run = run
        spec = weights or trained_on.spec
        try:
            self.weights = resolve_weights(spec, run.feature_config.backbone)
        except WeightsError as err:
            raise RunError(f"the run's weights {spec!r} are not available here: {err.message}",
                           "pass --weights with the same weights file the run was trained on") from err
        if not same_weights(self.weights.identity, trained_on.identity):
            raise RunError(f"weights {self.weights.label} differ from the run's ({trained_on.label})",
                           f"predictions would be meaningless; use the run's weights: --weights {trained_on.spec}")
        self.feature_config = replace(run.feature_config, weights=self.weights.spec)
        self.model = run.model()
        self._check_shapes()

    def _check_shapes(self) -> None:
        """Refuse a model that does not fit its run (an edited vocabulary.json, another run's model.keras)
        instead of pairing genres with the wrong scores."""
        run, (inputs, outputs) = self.run, (self.model.input_shape[-1], self.model.output_shape[-1])
        if outputs != len(run.vocabulary):
            raise RunError(f"run {run.folder}: its model scores {outputs} genres but vocabulary.json names "
                           f"{len(run.vocabulary)}, so genres and scores cannot be paired",
                           "vocabulary.json was edited or comes from another run; delete the run folder and "
                           "train again")
        expected = view_dim(run.config.feature_view, run.feature_config.backbone)
        if inputs != expected:
            raise RunError(f"run {run.folder}: its model reads {inputs} features but the run's "
                           f"{run.config.feature_view} view has {expected} today: {run.features_label} features had "
                           "another layout when it was trained (EfficientNet-Lite2's avg45 grew from 1,840 to "
                           "3,776), or its model.keras comes from another run",
                           "train the run again on today's features; a copied model.keras: delete the run folder")

    def predict_features(self, rows: np.ndarray) -> np.ndarray:
        """Probabilities for feature rows (``core.features.extractor``), in the run's vocabulary order."""
        X = feature_view(np.atleast_2d(rows), self.run.config.feature_view)
        return np.asarray(self.model.predict(X.astype(np.float32), verbose=0))

    def predict_image(self, source, name: str, k: int | None = None) -> PosterPrediction:
        k = self.run.check_k(k)
        try:
            features = extract_one(source, self.feature_config, self.weights)
        except ImageError as err:
            return PosterPrediction(name=name, error=str(err))
        probabilities = self.predict_features(features)[0]
        genres = self.run.vocabulary.genres
        order = np.argsort(-probabilities, kind="stable")[:k]
        return PosterPrediction(
            name=name, top=[(genres[i], float(probabilities[i])) for i in order],
            probabilities={g: float(p) for g, p in zip(genres, probabilities)}, features=features,
            random_weights=self.weights.is_random)


def predict_images(run_dir: str | Path, images: Sequence[Path], *, k: int | None = None,
                   weights: str | None = None) -> list[PosterPrediction]:
    predictor = Predictor(load_run(run_dir), weights)
    predictor.run.check_k(k)
    return [predictor.predict_image(Path(path), Path(path).name, k) for path in images]
