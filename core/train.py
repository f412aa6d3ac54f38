"""The genre classifier: the tutorial's MLP on poster features, with every knob exposed.

``GenreClassifier`` reads like a scikit-learn estimator (``fit`` / ``predict_proba``); training
reports each epoch to a callback so a UI can draw live curves and ask it to stop.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np

from core.errors import TrainingError

OPTIMIZERS = ("rmsprop", "adam", "adamw", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    feature_view: str = "flatten"
    hidden: tuple[int, ...] = (1024, 256)
    dropout: float = 0.0
    standardize: bool = False
    learning_rate: float = 1e-4
    optimizer: str = "rmsprop"
    epochs: int = 60
    batch_size: int = 64
    seed: int = 0
    test_size: float = 0.2
    validation_split: float = 0.0
    early_stopping: bool = False
    patience: int = 8
    k: int = 3
    threshold: float = 0.5

    def to_dict(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        if "hidden" in known:
            known["hidden"] = tuple(int(size) for size in known["hidden"])
        return cls(**known)


PRESETS: dict[str, TrainConfig] = {
    "tutorial": TrainConfig(),
    "recommended": TrainConfig(
        feature_view="avg", hidden=(512,), dropout=0.5, standardize=True, learning_rate=1e-3,
        optimizer="adam", epochs=100, batch_size=64, validation_split=0.1, early_stopping=True, patience=8),
}
PRESET_NOTES = {
    "tutorial": "exactly the tutorial: 25,088-d flattened features, 1024→256, RMSprop 1e-4, 60 epochs",
    "recommended": "measured best on real posters: standardised 512-d average-pooled features, "
                   "one hidden layer with dropout, Adam, early stopping on a validation split",
}


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    loss: float
    val_loss: float | None
    seconds: float


EpochFn = Callable[[EpochLog], None]
StopFn = Callable[[], bool]


def check_config(config: TrainConfig) -> None:
    from core.features import FEATURE_VIEWS

    problems = []
    if config.feature_view not in FEATURE_VIEWS:
        problems.append(f"feature view must be one of {', '.join(FEATURE_VIEWS)}, got {config.feature_view!r}")
    if config.k < 1:
        problems.append(f"k must be ≥ 1, got {config.k}")
    if not 0 < config.threshold < 1:
        problems.append(f"threshold must be between 0 and 1, got {config.threshold}")
    if config.patience < 1:
        problems.append(f"patience must be ≥ 1, got {config.patience}")
    if not config.hidden or any(size < 1 for size in config.hidden):
        problems.append(f"hidden sizes must be positive, got {list(config.hidden)}")
    if not 0 <= config.dropout < 1:
        problems.append(f"dropout must be in [0, 1), got {config.dropout}")
    if config.optimizer not in OPTIMIZERS:
        problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}")
    if not config.learning_rate > 0:
        problems.append(f"learning rate must be positive, got {config.learning_rate}")
    if config.epochs < 1 or config.batch_size < 1:
        problems.append(f"epochs and batch size must be ≥ 1, got {config.epochs} and {config.batch_size}")
    if not 0 < config.test_size < 1:
        problems.append(f"test fraction must be between 0 and 1, got {config.test_size}")
    if not 0 <= config.validation_split < 1:
        problems.append(f"validation fraction must be in [0, 1), got {config.validation_split}")
    if config.early_stopping and config.validation_split <= 0:
        problems.append("early stopping needs a validation split > 0")
    if problems:
        raise TrainingError("invalid training configuration: " + "; ".join(problems))


def build_model(n_features: int, n_genres: int, config: TrainConfig, mean=None, variance=None):
    """The tutorial's MLP (Dense relu stack → sigmoid), optionally behind a fixed standardisation."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(n_features,), name="features")
    x = inputs
    if config.standardize:
        x = layers.Normalization(mean=mean, variance=variance, name="standardize")(x)
    for index, size in enumerate(config.hidden):
        x = layers.Dense(size, activation="relu", name=f"hidden_{index + 1}")(x)
        if config.dropout:
            x = layers.Dropout(config.dropout, name=f"dropout_{index + 1}")(x)
    outputs = layers.Dense(n_genres, activation="sigmoid", name="genres")(x)
    model = keras.Model(inputs, outputs, name="genre_mlp")
    model.compile(optimizer=_optimizer(config), loss="binary_crossentropy")
    return model


def _optimizer(config: TrainConfig):
    import keras

    return {
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": keras.optimizers.SGD,
    }[config.optimizer](learning_rate=config.learning_rate)


class GenreClassifier:
    """Multi-label genre classifier on feature vectors."""

    def __init__(self, config: TrainConfig = TrainConfig()) -> None:
        self.config = config

    def fit(self, X: np.ndarray, Y: np.ndarray, *, validation: tuple[np.ndarray, np.ndarray] | None = None,
            on_epoch: EpochFn | None = None, should_stop: StopFn | None = None) -> "GenreClassifier":
        import keras

        check_config(self.config)
        X = np.asarray(X, dtype=np.float32)
        Y = np.asarray(Y, dtype=np.float32)
        if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
            raise TrainingError(f"features {X.shape} and labels {Y.shape} do not line up")
        if len(X) < 2:
            raise TrainingError(f"need at least 2 training posters, got {len(X)}")
        keras.utils.set_random_seed(self.config.seed)
        mean, variance = _moments(X) if self.config.standardize else (None, None)
        self.model_ = build_model(X.shape[1], Y.shape[1], self.config, mean, variance)
        callbacks = [_Reporter(on_epoch, should_stop)]
        if self.config.early_stopping and validation is not None:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=self.config.patience, restore_best_weights=True))
        history = self.model_.fit(
            X, Y, epochs=self.config.epochs, batch_size=self.config.batch_size, shuffle=True, verbose=0,
            validation_data=validation, callbacks=callbacks)
        self.history_ = callbacks[0].logs
        self.stopped_by_user_ = callbacks[0].stopped
        self.epochs_run_ = len(history.history.get("loss", []))
        self.n_features_in_ = X.shape[1]
        return self

    def predict_proba(self, X: np.ndarray, batch_size: int = 256) -> np.ndarray:
        model = self._fitted()
        return np.asarray(model.predict(np.asarray(X, dtype=np.float32), batch_size=batch_size, verbose=0))

    def hidden_representation(self, X: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Activations of the last hidden layer: what the classifier 'sees' (for UMAP of a run)."""
        import keras

        model = self._fitted()
        last = model.get_layer(f"hidden_{len(self.config.hidden)}")
        probe = keras.Model(model.inputs, last.output)
        return np.asarray(probe.predict(np.asarray(X, dtype=np.float32), batch_size=batch_size, verbose=0))

    def _fitted(self):
        if not hasattr(self, "model_"):
            raise TrainingError("this GenreClassifier is not fitted yet", "call fit first")
        return self.model_


def _moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(axis=0)
    variance = X.var(axis=0)
    return mean, np.maximum(variance, 1e-6)


class _Reporter:
    """A Keras callback that forwards epoch losses and honours a stop request."""

    def __new__(cls, on_epoch: EpochFn | None, should_stop: StopFn | None):
        import keras

        class Reporter(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.logs: list[EpochLog] = []
                self.stopped = False
                self._started = time.perf_counter()

            def on_epoch_begin(self, epoch, logs=None):
                self._started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                entry = EpochLog(epoch + 1, float(logs.get("loss", np.nan)),
                                 float(logs["val_loss"]) if "val_loss" in logs else None,
                                 time.perf_counter() - self._started)
                self.logs.append(entry)
                if on_epoch:
                    on_epoch(entry)
                if should_stop and should_stop():
                    self.stopped = True
                    self.model.stop_training = True

            def on_train_batch_end(self, batch, logs=None):
                if should_stop and should_stop():
                    self.stopped = True
                    self.model.stop_training = True

        return Reporter()


@dataclass
class Split:
    train: np.ndarray
    test: np.ndarray
    validation: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=int))


def make_split(n: int, config: TrainConfig) -> Split:
    """A random split of row indices, as the tutorial did (not stratified), seeded."""
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(n)
    n_test = max(1, int(round(n * config.test_size)))
    test, rest = np.sort(order[:n_test]), order[n_test:]
    n_val = int(round(len(rest) * config.validation_split)) if config.validation_split else 0
    validation, train = np.sort(rest[:n_val]), np.sort(rest[n_val:])
    if len(train) < 2:
        raise TrainingError(f"only {len(train)} training posters left after the split of {n}",
                            "use a smaller test/validation fraction or more posters")
    return Split(train=train, test=test, validation=validation)


def with_overrides(config: TrainConfig, **overrides) -> TrainConfig:
    return replace(config, **{key: value for key, value in overrides.items() if value is not None})
