"""The kernel head (core.model.kernel) and the ``fast`` preset that uses it.

Locks in: the leave-one-out scores equal refitting without each row; Platt scaling recovers a known
slope and intercept and stays finite for a genre with no positive; the saved Keras model computes exactly
the fitted formula (kernel ridge scores, Platt folded into the last layer) and survives save and load;
Nyström takes over above ``MAX_CENTERS`` rows; the head learns a genre the features carry; the options of
the other head are inert (validation split, early stopping checks, summary, menu label, run table, page
widgets).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.special import expit

from core.model import kernel
from core.model.classifier import GenreClassifier, hidden_model, make_split, signed_sqrt
from core.model.config import KERNEL_ONLY, MLP_ONLY, PRESETS, TrainConfig, applies, check_config, settled
from core.model.kernel import _exact, platt, rbf

FAST = PRESETS["fast"]


def _clustered(n: int, d: int = 24, n_genres: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative features (like pooled CNN outputs) where genre g lifts features 6g..6g+5."""
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, n_genres)) < 0.3).astype(np.float32)
    Y[Y.sum(1) == 0, 0] = 1.0
    X = np.abs(rng.normal(0, 1, (n, d)))
    for genre in range(n_genres):
        X[:, 6 * genre:6 * genre + 6] += 3.0 * Y[:, [genre]]
    return X.astype(np.float32), Y


def test_leave_one_out_scores_equal_refitting_without_each_row():
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(30, 5)).astype(np.float32)
    targets = rng.normal(size=(30, 2)).astype(np.float32)
    _, loo = _exact(rbf(Z, Z, 1.0), targets, 0.5)
    for row in (0, 7, 29):
        keep = np.arange(30) != row
        K = rbf(Z[keep], Z[keep], 1.0).astype(np.float64) + 0.5 * np.eye(29)
        coefficients = np.linalg.solve(K, targets[keep])
        refit = rbf(Z[[row]], Z[keep], 1.0) @ coefficients
        np.testing.assert_allclose(loo[row], refit[0], rtol=1e-4, atol=1e-5)


def test_platt_recovers_a_known_slope_and_intercept_and_survives_a_genre_without_positives():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(20000, 2)).astype(np.float32)
    Y = (rng.random((20000, 2)) < expit(2.0 * scores - 1.0)).astype(np.float32)
    Y[:, 1] = 0.0
    a, b = platt(scores, Y)
    assert a[0] == pytest.approx(2.0, abs=0.1) and b[0] == pytest.approx(-1.0, abs=0.1)
    assert np.isfinite(a[1]) and np.isfinite(b[1])
    assert expit(a[1] * scores[:, 1] + b[1]).max() < 1e-3


def test_the_saved_model_computes_the_fitted_formula(tmp_path):
    import keras

    X, Y = _clustered(80)
    config = replace(FAST, kernel_gamma=0.5, ridge=2.0)
    classifier = GenreClassifier(config).fit(X, Y)
    Z = signed_sqrt(X)
    mean, variance = Z.mean(0), np.maximum(Z.var(0), 1e-6)
    Z = (Z - mean) / np.sqrt(variance)
    coefficients, loo = _exact(rbf(Z, Z, 0.5), Y - Y.mean(0), 2.0)
    a, b = platt(loo + Y.mean(0), Y)
    X_new = np.abs(np.random.default_rng(3).normal(size=(5, X.shape[1]))).astype(np.float32)
    Z_new = (signed_sqrt(X_new) - mean) / np.sqrt(variance)
    expected = expit(a * (rbf(Z_new, Z, 0.5) @ coefficients + Y.mean(0)) + b)
    np.testing.assert_allclose(classifier.predict_proba(X_new), expected, rtol=1e-3, atol=1e-5)

    classifier.model_.save(tmp_path / "model.keras")
    kernel.kernel_layer()
    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded(X_new)), expected, rtol=1e-3, atol=1e-5)
    assert np.asarray(hidden_model(loaded, config)(X_new)).shape == (5, 80)


def test_the_head_learns_what_the_features_carry_and_gives_probabilities():
    X, Y = _clustered(300)
    classifier = GenreClassifier(FAST).fit(X[:240], Y[:240])
    scores = classifier.predict_proba(X[240:])
    assert scores.shape == (60, 4) and (scores > 0).all() and (scores < 1).all()
    top = scores.argmax(1)
    assert Y[240:][np.arange(60), top].mean() > 0.95
    assert classifier.epochs_run_ == 0 and classifier.history_ == []


def test_above_max_centers_the_kernel_is_nystroems_on_a_sample(monkeypatch):
    monkeypatch.setattr(kernel, "MAX_CENTERS", 50)
    X, Y = _clustered(200)
    classifier = GenreClassifier(FAST).fit(X[:160], Y[:160])
    centers = classifier.model_.get_layer(kernel.KERNEL_LAYER).get_weights()[0]
    assert centers.shape == (50, X.shape[1])
    top = classifier.predict_proba(X[160:]).argmax(1)
    assert Y[160:][np.arange(40), top].mean() > 0.9


def test_the_other_heads_options_are_inert():
    assert MLP_ONLY.isdisjoint(KERNEL_ONLY)
    assert all(applies(name, FAST) for name in KERNEL_ONLY) and not any(applies(name, FAST) for name in MLP_ONLY)
    assert not any(applies(name, PRESETS["recommended"]) for name in KERNEL_ONLY)
    # early stopping without a validation split is refused for networks only
    check_config(replace(FAST, early_stopping=True, validation_split=0.0))
    with pytest.raises(Exception, match="early stopping"):
        check_config(replace(FAST, head="mlp", ensemble=1, early_stopping=True, validation_split=0.0))
    # no validation rows are taken from the training split for the kernel head
    assert len(make_split(100, replace(FAST, validation_split=0.2)).validation) == 0
    assert len(make_split(100, replace(FAST, head="mlp", ensemble=1, validation_split=0.2)).validation) == 16
    # equal trainings get one run key: the other head's options are settled at their defaults
    assert settled(replace(FAST, hidden=(64,), ensemble=8, learning_rate=0.5)) == FAST == settled(FAST)
    assert settled(replace(PRESETS["recommended"], ridge=30.0)) == PRESETS["recommended"]


@pytest.mark.parametrize("bad", [{"kernel_gamma": 0.0}, {"ridge": -1.0}, {"head": "forest"}])
def test_invalid_kernel_options_are_refused_by_name(bad):
    with pytest.raises(Exception, match=next(iter({"kernel_gamma": "kernel γ", "ridge": "ridge",
                                                    "head": "head"}[key] for key in bad))):
        check_config(replace(TrainConfig(), **bad))


def test_a_sweep_of_an_option_the_head_ignores_is_refused_and_a_kernel_sweep_runs(tiny_features):
    from core.errors import TrainingError
    from core.model.sweep import SweepConfig, check_sweep, run_sweep, sweep_table
    from core.model.runs import load_run

    with pytest.raises(TrainingError, match="dropout has no effect with the kernel head"):
        check_sweep(SweepConfig(base=FAST, grid=(("dropout", (0.3, 0.5)),)))
    with pytest.raises(TrainingError, match="ridge has no effect with the mlp head"):
        check_sweep(SweepConfig(base=PRESETS["recommended"], grid=(("ridge", (1.0, 3.0)),)))
    dataset, features = tiny_features
    sweep = SweepConfig(base=replace(FAST, test_size=0.25), grid=(("ridge", (0.3, 3.0)), ("kernel_gamma", (0.5, 1.0))))
    result = run_sweep(dataset, features, sweep)
    runs = [load_run(folder) for folder in result.folders]
    table = sweep_table(runs, sweep.parameters)
    assert len(table) == 4 and sorted(zip(table["ridge"], table["kernel_gamma"])) == [
        (0.3, 0.5), (0.3, 1.0), (3.0, 0.5), (3.0, 1.0)]
    assert len({run.key for run in runs}) == 4 and all(run.config.head == "kernel" for run in runs)
    label = next(run.label() for run in runs if (run.config.ridge, run.config.kernel_gamma) == (0.3, 0.5))
    assert " · avg45 · kernel γ 0.5 ridge 0.3 · P@3 " in label
    assert not any(word in label for word in ("rmsprop", "→", "0.0001"))
