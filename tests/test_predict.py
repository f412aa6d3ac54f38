"""Behaviours locked in for ``core.model.predict``, genre predictions with a saved run.

- ``Predictor.predict_features`` on feature rows gives ``(n, n_genres)`` probabilities in [0, 1],
  equal to the run's model on the run's feature view.
- ``predict_image`` on a poster file gives every genre's probability in vocabulary order, a top-k
  sorted by probability, and a feature row matching the cached row of that poster.
- ``predict_image`` on non-image bytes returns a prediction with the error text, it does not raise.
- ``predict_images`` handles a mixed list.
- A run whose weights file is gone or differs is refused with ``RunError``.
- ``score_test_posters`` has one row per test poster in split order with the dataset's titles and
  genres, the saved scores, and per-poster metrics equal to ``core.analysis.metrics``'; a dataset without
  the run's posters is refused.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.analysis.metrics import per_poster_report
from core.data.datasets import Dataset
from core.errors import DatasetError, RunError
from core.model.experiment import run_experiment
from core.features.extractor import ROW_DIM
from core.model.experiment import labels_for
from core.model.predict import Predictor, predict_images, score_test_posters
from core.model.runs import load_run, save_run
from core.model.config import TrainConfig

CONFIG = TrainConfig(feature_view="avg45", hidden=(16,), learning_rate=1e-2, optimizer="adam", epochs=2,
                     batch_size=8, k=3, seed=2)


@pytest.fixture(scope="module")
def run_dir(tiny_features, tmp_path_factory) -> Path:
    dataset, features = tiny_features
    return save_run(run_experiment(dataset, features, CONFIG), tmp_path_factory.mktemp("predict") / "run")


@pytest.fixture(scope="module")
def predictor(run_dir) -> Predictor:
    return Predictor(load_run(run_dir))


def test_predict_features_gives_probabilities_per_genre(predictor, tiny_features):
    _, features = tiny_features
    rows = np.asarray(features.rows[:5])
    probabilities = predictor.predict_features(rows)
    assert probabilities.shape == (5, len(predictor.run.vocabulary))
    assert probabilities.min() >= 0 and probabilities.max() <= 1
    expected = predictor.run.model().predict(features.view("avg45")[:5], verbose=0)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_features(rows[0]), probabilities[:1], rtol=1e-5, atol=1e-6)


def test_predict_image_ranks_genres_in_vocabulary_order(predictor, tiny_features):
    dataset, features = tiny_features
    prediction = predictor.predict_image(dataset.paths[0], "first", k=3)
    assert prediction.error is None and prediction.name == "first"
    assert list(prediction.probabilities) == list(predictor.run.vocabulary.genres)
    assert all(0 <= p <= 1 for p in prediction.probabilities.values())
    probabilities = [p for _, p in prediction.top]
    assert len(prediction.top) == 3 and probabilities == sorted(probabilities, reverse=True)
    assert max(prediction.probabilities.values()) == probabilities[0]
    assert prediction.features.shape == (ROW_DIM,)
    np.testing.assert_allclose(prediction.features, features.rows[0], rtol=1e-3, atol=1e-3)


def test_predict_image_defaults_to_the_run_k(predictor, tiny_features):
    dataset, _ = tiny_features
    assert len(predictor.predict_image(dataset.paths[1], "x").top) == CONFIG.k


def test_predict_image_on_non_image_bytes_returns_error_text(predictor):
    prediction = predictor.predict_image(b"<html>404</html>", "page.jpg")
    assert prediction.error and "not an image" in prediction.error
    assert prediction.top == [] and prediction.features is None


def test_predict_images_handles_a_mixed_list(run_dir, tiny_features, tmp_path):
    dataset, _ = tiny_features
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    results = predict_images(run_dir, [dataset.paths[2], bad], k=2)
    assert [r.name for r in results] == [dataset.paths[2].name, "bad.jpg"]
    assert len(results[0].top) == 2 and results[0].error is None
    assert "empty file" in results[1].error


def test_run_with_missing_or_different_weights_file_is_refused(run_dir, tmp_path):
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    info = json.loads((run / "run.json").read_text())
    info["features"].update(weights=str(tmp_path / "gone.h5"), weights_identity="file:sha256:abc")
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(RunError, match="not available here"):
        Predictor(load_run(run))
    (tmp_path / "other.h5").write_bytes(b"other")
    with pytest.raises(RunError, match="differ from the run's"):
        Predictor(load_run(run), weights=str(tmp_path / "other.h5"))


def test_score_test_posters_lists_each_test_poster_with_core_metrics(run_dir, tiny_features):
    dataset, _ = tiny_features
    run = load_run(run_dir)
    scored = score_test_posters(run, dataset)
    ids = run.split["test"]
    assert list(scored.table["id"]) == ids and list(scored.table["order"]) == list(range(len(ids)))
    assert list(scored.table["true"]) == labels_for(dataset, ids)
    titles = {poster.id: poster.title for poster in dataset.posters}
    assert list(scored.table["title"]) == [titles[id_] for id_ in ids]
    np.testing.assert_array_equal(scored.scores, run.test_scores())
    assert scored.Y.shape == scored.scores.shape == (len(ids), len(run.vocabulary))
    expected = per_poster_report(scored.Y, scored.scores, run.vocabulary.genres, k=run.config.k)
    for column in ("hits", "n_true", "precision", "recall", "loss", "confidence"):
        np.testing.assert_allclose(scored.table[column], expected[column], err_msg=column)
    assert (scored.table["precision"] == scored.table["hits"] / run.config.k).all()


def test_score_test_posters_refuses_another_dataset(run_dir, tiny_features):
    dataset, _ = tiny_features
    other = Dataset(dataset.root, dataset.posters[:5], "five")
    with pytest.raises(DatasetError, match="posters are not in dataset five"):
        score_test_posters(load_run(run_dir), other)
