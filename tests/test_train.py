"""Behaviours locked in for ``core.model.classifier``, the genre classifier.

- ``check_config`` refuses each bad field (hidden sizes, dropout, optimizer, learning rate, epochs,
  batch size, test and validation fractions, early stopping without validation, k, feature view)
  with a message naming the field and the offending value; presets are valid; a preset whose scaled
  training time is long on a large dataset gets a warning pointing to ``fast``.
- ``TrainConfig`` round-trips through ``to_dict`` / ``from_dict``; ``with_overrides`` ignores ``None``.
- ``make_split`` has the requested sizes, disjoint covering parts, is determined by the seed, and
  refuses a split that leaves fewer than 2 training posters.
- ``GenreClassifier``: predict before fit → ``TrainingError`` "call fit first"; fit/predict_proba give
  ``(n, n_genres)`` probabilities in [0, 1]; ``on_epoch`` is called once per epoch with finite
  losses; ``should_stop`` stops after the current epoch; early stopping on a validation set stops
  before the epoch budget; ``standardize`` adds a Normalization layer holding the training moments;
  ``hidden_activations`` is ``(n, last hidden size)``; mismatched inputs are refused; ``on_batch``
  reports progress inside every epoch (so a UI moves before the first epoch ends): every batch when an
  epoch has under 8, else every compiled call of about a quarter epoch; ``input_dropout`` puts a
  Dropout between the standardisation and the first hidden layer.
- The tutorial preset is Dense 1024 relu → 256 relu → n sigmoid, RMSprop lr 1e-4, batch 64,
  60 epochs, binary cross-entropy, flattened features.
- ``ensemble=K`` trains K members, each validated on its own fold (the folds partition the training
  rows), and predicts their mean; ``power_normalize`` puts a signed square root before the
  standardisation, whose moments are those of the rooted features.
- It learns: on separable synthetic features (genre-specific means), 30 epochs give top-1 precision
  above 0.9 on held-out rows.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core.errors import TrainingError
from core.analysis.metrics import top_k_precision_recall
from core.model.config import PRESETS, TrainConfig, check_config, long_training_note, with_overrides
from core.model.classifier import GenreClassifier, build_model, make_split

FAST = TrainConfig(feature_view="avg", hidden=(16,), learning_rate=1e-2, optimizer="adam", epochs=3,
                   batch_size=16)


def _separable(n: int = 400, n_genres: int = 6, dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, size=(n_genres, dim))
    Y = np.zeros((n, n_genres), dtype=np.float32)
    for row in range(n):
        Y[row, rng.choice(n_genres, size=rng.integers(1, 3), replace=False)] = 1
    X = Y @ means / Y.sum(axis=1, keepdims=True) + rng.normal(0, 0.5, size=(n, dim))
    return X.astype(np.float32), Y


@pytest.fixture(scope="module")
def data():
    return _separable(n=120)


BAD_FIELDS = [
    ("hidden", (), "hidden sizes must be positive, got []"),
    ("hidden", (32, 0), "hidden sizes must be positive, got [32, 0]"),
    ("dropout", 1.0, "dropout must be in [0, 1), got 1.0"),
    ("dropout", -0.1, "dropout must be in [0, 1), got -0.1"),
    ("input_dropout", 1.0, "input dropout must be in [0, 1), got 1.0"),
    ("optimizer", "nadam", "optimizer must be one of rmsprop, adam, adamw, sgd, got 'nadam'"),
    ("learning_rate", 0.0, "learning rate must be in (0, 1], got 0.0"),
    ("epochs", 0, "epochs must be ≥ 1, got 0"),
    ("batch_size", 0, "batch size must be ≥ 1, got 0"),
    ("learning_rate", float("inf"), "learning rate must be a finite number, got inf"),
    ("learning_rate", float("nan"), "learning rate must be a finite number, got nan"),
    ("threshold", float("nan"), "threshold must be a finite number, got nan"),
    ("hidden", (100_000,), "hidden sizes must be at most 8,192 units a layer, got [100000]"),
    ("hidden", (8,) * 9, "hidden sizes must list at most 8 layers, got 9"),
    ("seed", -1, "seed must be between 0 and 4294967295, got -1"),
    ("test_size", 0.0, "test fraction must be between 0 and 1, got 0.0"),
    ("test_size", 1.0, "test fraction must be between 0 and 1, got 1.0"),
    ("validation_split", 1.0, "validation fraction must be in [0, 1), got 1.0"),
    ("early_stopping", True, "early stopping needs a validation split > 0"),
    ("k", 0, ("k", "got 0")),
    ("feature_view", "median", ("feature view", "'median'")),
]


@pytest.mark.parametrize("field, value, message", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in BAD_FIELDS])
def test_check_config_refuses_each_bad_field(field, value, message):
    config = dataclasses.replace(TrainConfig(), **{field: value})
    with pytest.raises(TrainingError) as caught:
        check_config(config)
    for part in (message,) if isinstance(message, str) else message:
        assert part in str(caught.value)
    assert str(caught.value).startswith("invalid training configuration")


def test_check_config_refuses_networks_too_big_for_memory_with_a_hint():
    with pytest.raises(TrainingError, match="network parameters exceed the limit") as caught:
        check_config(TrainConfig(hidden=(8192, 8192)))
    assert "smaller hidden layers" in caught.value.hint
    check_config(TrainConfig(feature_view="avg", hidden=(8192, 8192)))


def test_check_config_bounds_k_by_the_genres_when_known():
    check_config(TrainConfig(k=8), n_genres=8)
    with pytest.raises(TrainingError, match="k=9 but the dataset has only 8 genres") as caught:
        check_config(TrainConfig(k=9), n_genres=8)
    assert caught.value.hint == "choose k between 1 and 8"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid(name):
    check_config(PRESETS[name])


def test_a_long_training_is_announced_with_its_scaled_time_and_the_fast_preset():
    note = long_training_note("recommended", 100_000)
    assert "about 58 minutes" in note and "80,000 training posters" in note and "fast preset" in note
    assert long_training_note("recommended", 4_596) is None
    assert long_training_note("fast", 1_000_000) is None, "the kernel head's time is not proportional to the posters"


def test_config_dict_round_trip_and_overrides():
    config = PRESETS["recommended"]
    assert TrainConfig.from_dict({**config.to_dict(), "unknown": 1}) == config
    assert config.to_dict()["hidden"] == list(config.hidden)
    changed = with_overrides(config, epochs=5, dropout=None, hidden=(8, 4))
    assert (changed.epochs, changed.dropout, changed.hidden) == (5, config.dropout, (8, 4))


def test_make_split_sizes_disjoint_covering():
    config = TrainConfig(test_size=0.25, validation_split=0.2, seed=3)
    split = make_split(40, config)
    assert (len(split.test), len(split.validation), len(split.train)) == (10, 6, 24)
    parts = [set(split.train), set(split.validation), set(split.test)]
    assert set().union(*parts) == set(range(40)) and sum(map(len, parts)) == 40
    assert all(np.all(np.diff(part) > 0) for part in (split.train, split.validation, split.test))


def test_make_split_is_determined_by_seed():
    first = make_split(50, TrainConfig(seed=1))
    again = make_split(50, TrainConfig(seed=1))
    other = make_split(50, TrainConfig(seed=2))
    np.testing.assert_array_equal(first.test, again.test)
    np.testing.assert_array_equal(first.train, again.train)
    assert not np.array_equal(first.test, other.test)
    assert len(first.validation) == 0


def test_make_split_refuses_too_few_training_posters():
    with pytest.raises(TrainingError, match="only 1 training posters"):
        make_split(3, TrainConfig(test_size=0.5))


def test_predict_before_fit_says_call_fit_first(data):
    with pytest.raises(TrainingError, match="call fit first"):
        GenreClassifier(FAST).predict_proba(data[0])
    with pytest.raises(TrainingError, match="not fitted"):
        GenreClassifier(FAST).hidden_activations(data[0])


def test_fit_predict_shapes_probabilities_and_epoch_reports(data):
    X, Y = data
    seen = []
    classifier = GenreClassifier(FAST)
    assert classifier.fit(X[:100], Y[:100], on_epoch=seen.append) is classifier
    scores = classifier.predict_proba(X[100:])
    assert scores.shape == (20, Y.shape[1])
    assert scores.min() >= 0 and scores.max() <= 1
    assert [entry.epoch for entry in seen] == [1, 2, 3]
    assert all(np.isfinite(entry.loss) and entry.val_loss is None and entry.seconds >= 0 for entry in seen)
    assert classifier.history_ == seen and classifier.epochs_run_ == 3
    assert classifier.n_features_in_ == X.shape[1] and classifier.stopped_by_user_ is False
    assert classifier.hidden_activations(X[:7]).shape == (7, 16)


def test_fit_refuses_misaligned_or_tiny_inputs(data):
    X, Y = data
    with pytest.raises(TrainingError, match="do not line up"):
        GenreClassifier(FAST).fit(X[:10], Y[:9])
    with pytest.raises(TrainingError, match="at least 2"):
        GenreClassifier(FAST).fit(X[:1], Y[:1])
    with pytest.raises(TrainingError, match="invalid training configuration"):
        GenreClassifier(dataclasses.replace(FAST, epochs=0)).fit(X, Y)


def test_should_stop_ends_training_after_the_current_epoch(data):
    X, Y = data
    seen = []
    classifier = GenreClassifier(dataclasses.replace(FAST, epochs=50)).fit(
        X, Y, on_epoch=seen.append, should_stop=lambda: len(seen) >= 2)
    assert len(seen) == 2 and classifier.epochs_run_ == 2
    assert classifier.stopped_by_user_ is True


def test_early_stopping_on_validation_stops_before_the_budget(data):
    X, Y = data
    config = dataclasses.replace(FAST, epochs=60, validation_split=0.2, early_stopping=True, patience=2)
    classifier = GenreClassifier(config).fit(X[:100], Y[:100], validation=(X[100:], 1 - Y[100:]))
    assert 3 <= classifier.epochs_run_ < 60
    assert all(entry.val_loss is not None for entry in classifier.history_)
    assert classifier.stopped_by_user_ is False


def test_standardize_adds_normalization_with_training_moments(data):
    import keras

    X, Y = data
    X = X * 10 + 5
    classifier = GenreClassifier(dataclasses.replace(FAST, standardize=True, epochs=1)).fit(X, Y)
    layer = classifier.model_.get_layer("standardize")
    assert isinstance(layer, keras.layers.Normalization)
    np.testing.assert_allclose(np.ravel(layer.mean), X.mean(axis=0), rtol=1e-4, atol=1e-4)
    plain = GenreClassifier(dataclasses.replace(FAST, epochs=1)).fit(X, Y)
    assert not any(isinstance(layer, keras.layers.Normalization) for layer in plain.model_.layers)


def test_dropout_layers_follow_each_hidden_layer():
    model = build_model(10, 3, dataclasses.replace(FAST, hidden=(8, 4), dropout=0.3))
    assert [layer.name for layer in model.layers[1:]] == ["hidden_1", "dropout_1", "hidden_2", "dropout_2", "genres"]
    assert model.get_layer("dropout_1").rate == pytest.approx(0.3)


def test_input_dropout_sits_between_the_standardisation_and_the_first_hidden_layer():
    config = dataclasses.replace(FAST, hidden=(8,), standardize=True, power_normalize=True, input_dropout=0.4)
    model = build_model(10, 3, config, mean=np.zeros(10), variance=np.ones(10))
    assert [layer.name for layer in model.layers[1:]] == [
        "signed_sqrt", "standardize", "input_dropout", "hidden_1", "genres"]
    assert model.get_layer("input_dropout").rate == pytest.approx(0.4)
    X = np.ones((2, 10), np.float32)
    np.testing.assert_allclose(model(X, training=False), model(X, training=False))


def test_tutorial_preset_architecture():
    import keras

    config = PRESETS["tutorial"]
    assert (config.feature_view, config.hidden, config.learning_rate, config.optimizer, config.epochs,
            config.batch_size, config.dropout, config.standardize, config.k) == (
        "flatten", (1024, 256), 1e-4, "rmsprop", 60, 64, 0.0, False, 3)
    model = build_model(25088, 7, config)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [(layer.units, layer.activation.__name__) for layer in dense] == [
        (1024, "relu"), (256, "relu"), (7, "sigmoid")]
    assert len(model.layers) == 4 and model.input_shape == (None, 25088)
    assert isinstance(model.optimizer, keras.optimizers.RMSprop)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-4)
    assert model.loss == "binary_crossentropy"


def test_learns_a_separable_problem():
    X, Y = _separable(n=400)
    config = TrainConfig(hidden=(64,), learning_rate=1e-3, optimizer="adam", epochs=30, batch_size=32, seed=1)
    classifier = GenreClassifier(config).fit(X[:300], Y[:300])
    precision, _ = top_k_precision_recall(Y[300:], classifier.predict_proba(X[300:]), k=1)
    assert precision > 0.9
    assert classifier.history_[-1].loss < classifier.history_[0].loss


def test_ensemble_trains_each_member_on_its_own_fold_and_averages(data):
    X, Y = data
    config = dataclasses.replace(FAST, ensemble=3, early_stopping=True, patience=1, epochs=4)
    logs = []
    model = GenreClassifier(config).fit(X, Y, on_epoch=logs.append)
    assert {entry.member for entry in logs} == {1, 2, 3}
    assert all(entry.val_loss is not None for entry in logs), "each member validates on its fold"
    members = [model.model_.get_layer(f"member_{m}") for m in (1, 2, 3)]
    expected = np.mean([np.asarray(member.predict(X[:5], verbose=0)) for member in members], axis=0)
    np.testing.assert_allclose(model.predict_proba(X[:5]), expected, rtol=1e-5, atol=1e-6)
    assert model.hidden_activations(X[:4]).shape == (4, 16)


def test_ensemble_folds_partition_the_training_rows():
    from core.model.classifier import _member_rows

    parts = list(_member_rows(10, dataclasses.replace(FAST, ensemble=3)))
    validation = np.concatenate([val for _, val in parts])
    assert sorted(validation.tolist()) == list(range(10))
    for fit, val in parts:
        assert not set(fit) & set(val) and len(fit) + len(val) == 10


def test_power_normalize_puts_a_signed_square_root_before_standardisation(data):
    X, Y = data
    model = GenreClassifier(dataclasses.replace(FAST, power_normalize=True, standardize=True, epochs=1)).fit(X, Y)
    names = [layer.name for layer in model.model_.layers]
    assert names.index("signed_sqrt") < names.index("standardize")
    probe = model.model_.get_layer("signed_sqrt")
    np.testing.assert_allclose(np.asarray(probe(np.array([[4.0, -9.0, 0.0]], np.float32))), [[2.0, -3.0, 0.0]])
    normalization = model.model_.get_layer("standardize")
    root = np.sign(X) * np.sqrt(np.abs(X))
    np.testing.assert_allclose(np.asarray(normalization.mean).ravel(), root.mean(axis=0), rtol=1e-4, atol=1e-5)


def test_ensemble_needs_no_validation_split_for_early_stopping():
    check_config(dataclasses.replace(FAST, ensemble=5, early_stopping=True, validation_split=0.0))
    with pytest.raises(TrainingError, match="ensemble size must be ≥ 1"):
        check_config(dataclasses.replace(FAST, ensemble=0))
    assert len(make_split(100, dataclasses.replace(FAST, ensemble=5, validation_split=0.2)).validation) == 0


def test_batches_run_a_quarter_epoch_per_compiled_call_and_still_report_progress(data):
    X, Y = data
    steps = []
    GenreClassifier(dataclasses.replace(FAST, epochs=1, batch_size=8)).fit(X, Y, on_batch=steps.append)
    assert [(s.batch, s.batches) for s in steps] == [(3, 15), (6, 15), (9, 15), (12, 15), (15, 15)]


def test_on_batch_reports_progress_inside_each_epoch(data):
    X, Y = data
    steps = []
    GenreClassifier(dataclasses.replace(FAST, epochs=2, batch_size=40)).fit(X, Y, on_batch=steps.append)
    assert [(s.epoch, s.batch, s.batches) for s in steps] == [(1, 1, 3), (1, 2, 3), (1, 3, 3),
                                                              (2, 1, 3), (2, 2, 3), (2, 3, 3)]


def test_stacked_members_keep_their_best_epoch_and_match_one_by_one_reports(data):
    from core.model.classifier import _member_rows
    from core.model.stacked import member_bce_numpy

    X, Y = data
    config = dataclasses.replace(FAST, ensemble=3, early_stopping=True, patience=2, epochs=12, learning_rate=3e-2)
    logs: list = []
    model = GenreClassifier(config).fit(X, Y, on_epoch=logs.append)
    for member, (_, val_rows) in enumerate(_member_rows(len(X), config), start=1):
        entries = [entry for entry in logs if entry.member == member]
        assert [entry.epoch for entry in entries] == list(range(1, len(entries) + 1))
        assert all(np.isfinite(entry.loss) for entry in entries)
        network = model.model_.get_layer(f"member_{member}")
        probabilities = np.clip(np.asarray(network.predict(X[val_rows], verbose=0)), 1e-7, 1 - 1e-7)
        logits = np.log(probabilities / (1 - probabilities))
        best = min(entry.val_loss for entry in entries)
        assert member_bce_numpy(logits, Y[val_rows]) == pytest.approx(best, rel=1e-3), "best weights kept"
    sequential = GenreClassifier(dataclasses.replace(config, member_mode="sequential")).fit(X, Y)
    assert {entry.member for entry in sequential.history_} == {1, 2, 3}
    assert sequential.predict_proba(X[:4]).shape == model.predict_proba(X[:4]).shape == (4, Y.shape[1])


def test_stacked_ensemble_reports_batches_and_honours_stop(data):
    X, Y = data
    config = dataclasses.replace(FAST, ensemble=2, epochs=5)
    batches: list = []
    model = GenreClassifier(config).fit(X, Y, on_batch=batches.append, should_stop=lambda: len(batches) >= 3)
    assert model.stopped_by_user_ and model.epochs_run_ == 1
    assert batches[0].epoch == 1 and batches[0].batches == -(-len(X) // config.batch_size)


def test_unknown_member_mode_is_refused(data):
    X, Y = data
    with pytest.raises(TrainingError, match="member mode must be one of stacked, sequential, got 'parallel'"):
        GenreClassifier(dataclasses.replace(FAST, ensemble=2, member_mode="parallel")).fit(X, Y)


def test_member_mode_default_leaves_run_keys_of_other_fields_alone():
    assert "member_mode" not in {name for name, value in TrainConfig().to_dict().items()
                                 if TrainConfig(member_mode="stacked").to_dict()[name] != value}
    assert TrainConfig.from_dict({"member_mode": "sequential"}).member_mode == "sequential"


def test_training_fraction_counts_members_in_turn_or_together():
    from core.model.classifier import training_fraction

    one_by_one = TrainConfig(epochs=10, ensemble=4, member_mode="sequential")
    stacked = dataclasses.replace(one_by_one, member_mode="stacked")
    assert training_fraction(one_by_one, 1, 5) == pytest.approx(0.125)
    assert training_fraction(one_by_one, 3, 10) == pytest.approx(0.75)
    assert training_fraction(stacked, 3, 5) == pytest.approx(0.5)
    assert training_fraction(TrainConfig(epochs=4), 1, 2.5) == pytest.approx(0.625)
    assert training_fraction(stacked, 4, 12) == 1.0
