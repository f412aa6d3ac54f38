"""The genre classifier: the tutorial's MLP on poster features, with every knob exposed.

``GenreClassifier`` reads like a scikit-learn estimator (``fit`` / ``predict_proba``); training
reports each epoch to a callback so a UI can draw live curves and ask it to stop.

An ensemble trains, by default, as one stacked Keras model: every layer holds all members' weights and
runs as one batched matmul, each member's loss is masked to its own training folds, and each member is
early-stopped on its own fold with its best weights kept. After training the members are copied into
ordinary per-member networks, so a saved ensemble is the same plain Keras model either way.
``member_mode="sequential"`` trains the members one after the other (the slower, original path).
A single network trains XLA-compiled (``jit_compile``): on CPU that ran the tutorial's 25,088-d epochs
about 2x faster here. ``head="kernel"`` replaces the networks by kernel ridge regression fitted in closed
form (``core.model.kernel``); the result is a Keras model all the same.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from core.errors import TrainingError
from core.model.config import KERNEL_GAMMAS, TrainConfig, applies, check_config

@dataclass(frozen=True)
class EpochLog:
    epoch: int
    loss: float
    val_loss: float | None
    seconds: float
    member: int = 1


@dataclass(frozen=True)
class BatchProgress:
    """Where training is inside an epoch, so a UI can move before the first epoch ends."""

    member: int
    epoch: int
    batch: int
    batches: int


JIT_COMPILE = True

EpochFn = Callable[[EpochLog], None]
BatchFn = Callable[[BatchProgress], None]
StopFn = Callable[[], bool]


@functools.cache
def custom_layers():
    """Register (once) and return the product's Keras layers; call before loading a saved model."""
    import keras

    @keras.saving.register_keras_serializable(package="poster_genre")
    class SignedSqrt(keras.layers.Layer):
        """sign(x)·sqrt(|x|): damps the few very large activations of pooled CNN features."""

        def call(self, inputs):
            return keras.ops.sign(inputs) * keras.ops.sqrt(keras.ops.abs(inputs))

    return SignedSqrt


def signed_sqrt(X: np.ndarray) -> np.ndarray:
    return np.sign(X) * np.sqrt(np.abs(X))


def prepared_input(n_features: int, config: TrainConfig, mean=None, variance=None):
    """``(inputs, x)``: the raw feature view's ``Input`` and, after the optional signed square root and
    fixed standardisation, what every head reads."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(n_features,), name="features")
    x = inputs
    if config.power_normalize:
        x = custom_layers()(name="signed_sqrt")(x)
    if config.standardize:
        x = layers.Normalization(mean=mean, variance=variance, name="standardize")(x)
    return inputs, x


def build_model(n_features: int, n_genres: int, config: TrainConfig, mean=None, variance=None,
                name: str = "genre_mlp", steps_per_execution: int = 1):
    """The tutorial's MLP (Dense relu stack → sigmoid), optionally behind a signed square root, a fixed
    standardisation and dropout on the input features, so a saved model takes the raw feature view."""
    import keras
    from keras import layers

    inputs, x = prepared_input(n_features, config, mean, variance)
    if config.input_dropout:
        x = layers.Dropout(config.input_dropout, name="input_dropout")(x)
    for index, size in enumerate(config.hidden):
        x = layers.Dense(size, activation="relu", name=f"hidden_{index + 1}")(x)
        if config.dropout:
            x = layers.Dropout(config.dropout, name=f"dropout_{index + 1}")(x)
    outputs = layers.Dense(n_genres, activation="sigmoid", name="genres")(x)
    model = keras.Model(inputs, outputs, name=name)
    model.compile(optimizer=_optimizer(config), loss="binary_crossentropy", steps_per_execution=steps_per_execution,
                  jit_compile=JIT_COMPILE)
    return model


def average_models(members: list, n_features: int):
    """One model whose output is the mean of the members' genre probabilities."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(n_features,), name="features")
    outputs = layers.Average(name="genres")([member(inputs) for member in members])
    return keras.Model(inputs, outputs, name="genre_mlp_ensemble")


def hidden_model(model, config: TrainConfig):
    """Inputs → last hidden layer activations (of the first member, for an ensemble; for the kernel head,
    the similarity to each of its centres)."""
    import keras

    if config.head == "kernel":
        from core.model.kernel import KERNEL_LAYER

        return keras.Model(model.inputs, model.get_layer(KERNEL_LAYER).output)
    name = f"hidden_{len(config.hidden)}"
    if config.ensemble > 1:
        model = model.get_layer("member_1")
    return keras.Model(model.inputs, model.get_layer(name).output)


def _optimizer(config: TrainConfig):
    import keras

    return {
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": keras.optimizers.SGD,
    }[config.optimizer](learning_rate=config.learning_rate)


def training_fraction(config: TrainConfig, member: int, epochs_done: float) -> float:
    """Share of a training done once ``member`` has run ``epochs_done`` epochs (fractions within an epoch
    count): members one after another, or all at once when an ensemble is stacked."""
    within = min(epochs_done / config.epochs, 1.0)
    if config.ensemble > 1 and config.member_mode != "stacked":
        return min((member - 1 + within) / config.ensemble, 1.0)
    return within


def diverged(config: TrainConfig, what: str = "its weights are NaN or infinite") -> TrainingError:
    """The error of a training that produced no usable model, with the fix that fits its head."""
    if config.head == "kernel":
        return TrainingError(f"the kernel head could not be fitted: {what} (kernel γ {config.kernel_gamma:g}, "
                             f"ridge {config.ridge:g})",
                             f"use a kernel γ between {KERNEL_GAMMAS[0]:g} and {KERNEL_GAMMAS[-1]:g} and a larger "
                             "ridge (the fast preset: γ 1, ridge 1)")
    return TrainingError(f"training diverged: {what} (learning rate {config.learning_rate:g}, "
                         f"{config.optimizer})",
                         "lower the learning rate (the presets use 1e-4 to 2e-3) or standardize the features")


class GenreClassifier:
    """Multi-label genre classifier on feature vectors."""

    def __init__(self, config: TrainConfig = TrainConfig()) -> None:
        self.config = config

    def fit(self, X: np.ndarray, Y: np.ndarray, *, validation: tuple[np.ndarray, np.ndarray] | None = None,
            on_epoch: EpochFn | None = None, should_stop: StopFn | None = None,
            on_batch: BatchFn | None = None) -> "GenreClassifier":
        """Train one network, or ``config.ensemble`` networks each validated on its own fold of ``X``."""
        import keras

        config = self.config
        check_config(config)
        X = np.asarray(X, dtype=np.float32)
        Y = np.asarray(Y, dtype=np.float32)
        if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
            raise TrainingError(f"features {X.shape} and labels {Y.shape} do not line up")
        needed = 2 if config.head == "kernel" else max(2, 2 * config.ensemble)
        if len(X) < needed:
            raise TrainingError(f"need at least {needed} training posters, got {len(X)}")
        keras.utils.set_random_seed(config.seed)
        self.history_, self.stopped_by_user_ = [], False
        self.n_features_in_ = X.shape[1]
        if config.head == "kernel":
            from core.model.kernel import fit_kernel_head

            try:
                self.model_, self.epochs_run_ = fit_kernel_head(X, Y, config, self._prepare), 0
            except np.linalg.LinAlgError as err:
                raise diverged(config, f"its linear solve failed ({err})") from err
            return self._check_finite()
        if config.ensemble > 1 and config.member_mode == "stacked":
            members = self._fit_stacked(X, Y, on_epoch, should_stop, on_batch)
        else:
            members = self._fit_sequential(X, Y, validation, on_epoch, should_stop, on_batch)
        self.model_ = members[0] if config.ensemble == 1 else average_models(members, X.shape[1])
        # Each ensemble member stops early on its own; epochs_run_ counts the first member's.
        self.epochs_run_ = sum(1 for entry in self.history_ if entry.member == 1)
        return self._check_finite()

    def _check_finite(self) -> "GenreClassifier":
        """Refuse a model whose weights are NaN or infinite (a diverged training), with the fix of its head."""
        if all(np.isfinite(weights).all() for weights in self.model_.get_weights()):
            return self
        raise diverged(self.config)

    def _prepare(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The rows as the model's first layers make them (signed square root, standardisation), and the
        standardisation's moments (``None`` when off)."""
        inputs = signed_sqrt(X) if self.config.power_normalize else X
        if not self.config.standardize:
            return inputs, None, None
        mean, variance = _moments(inputs)
        return (inputs - mean) / np.sqrt(variance), mean, variance

    def _fit_sequential(self, X, Y, validation, on_epoch, should_stop, on_batch) -> list:
        config, members = self.config, []
        for member, (fit_rows, val_rows) in enumerate(_member_rows(len(X), config), start=1):
            data = (X[fit_rows], Y[fit_rows])
            member_validation = (X[val_rows], Y[val_rows]) if val_rows is not None else validation
            name = "genre_mlp" if config.ensemble == 1 else f"member_{member}"
            reporter = _Reporter(on_epoch, should_stop, member, on_batch)
            members.append(self._fit_member(data, member_validation, name, reporter))
            if self.stopped_by_user_:
                break
        return members

    def _fit_stacked(self, X, Y, on_epoch, should_stop, on_batch) -> list:
        """All members in one model; returns them as ordinary per-member networks."""
        from core.model.stacked import fit_stacked

        rows = list(_member_rows(len(X), self.config))
        inputs = signed_sqrt(X) if self.config.power_normalize else X
        moments = [_moments(inputs[fit]) for fit, _ in rows] if self.config.standardize else None
        result = fit_stacked(X, Y, rows, self.config, moments, on_epoch=on_epoch, should_stop=should_stop,
                             on_batch=on_batch)
        self.history_.extend(result.history)
        self.stopped_by_user_ = result.stopped
        members = []
        for index, weights in enumerate(result.member_weights):
            mean, variance = moments[index] if moments else (None, None)
            member = build_model(X.shape[1], Y.shape[1], self.config, mean, variance, name=f"member_{index + 1}")
            for name, values in weights.items():
                member.get_layer(name).set_weights(values)
            members.append(member)
        return members

    def _fit_member(self, data, validation, name: str, reporter):
        import keras

        config = self.config
        X, Y = data
        inputs = signed_sqrt(X) if config.power_normalize else X
        mean, variance = _moments(inputs) if config.standardize else (None, None)
        model = build_model(X.shape[1], Y.shape[1], config, mean, variance, name=name,
                            steps_per_execution=_steps_per_execution(len(X), config.batch_size))
        callbacks = [reporter]
        if config.early_stopping and validation is not None:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=config.patience, restore_best_weights=True))
        model.fit(X, Y, epochs=config.epochs, batch_size=config.batch_size, shuffle=True, verbose=0,
                  validation_data=validation, callbacks=callbacks)
        self.history_.extend(reporter.logs)
        self.stopped_by_user_ = reporter.stopped
        return model

    def predict_proba(self, X: np.ndarray, batch_size: int = 256) -> np.ndarray:
        model = self._fitted()
        return np.asarray(model.predict(np.asarray(X, dtype=np.float32), batch_size=batch_size, verbose=0))

    def hidden_activations(self, X: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Activations of the last hidden layer: what the classifier 'sees' (for UMAP of a run)."""
        probe = hidden_model(self._fitted(), self.config)
        return np.asarray(probe.predict(np.asarray(X, dtype=np.float32), batch_size=batch_size, verbose=0))

    def _fitted(self):
        if not hasattr(self, "model_"):
            raise TrainingError("this GenreClassifier is not fitted yet", "call fit first")
        return self.model_


def _steps_per_execution(n: int, batch_size: int) -> int:
    """Batches per compiled call: about a quarter epoch, so small networks spend their time computing
    rather than returning to Python after every batch, and ``on_batch`` still reports 4 times an epoch."""
    return max(1, -(-n // batch_size) // 4)


def _member_rows(n: int, config: TrainConfig):
    """(fit rows, validation rows) per member: all rows for a single network, K folds for K members."""
    if config.ensemble == 1:
        yield np.arange(n), None
        return
    folds = np.array_split(np.random.default_rng(config.seed).permutation(n), config.ensemble)
    for index, fold in enumerate(folds):
        yield np.sort(np.concatenate([f for j, f in enumerate(folds) if j != index])), np.sort(fold)


def _moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(axis=0)
    variance = X.var(axis=0)
    return mean, np.maximum(variance, 1e-6)


class _Reporter:
    """A Keras callback that forwards epoch losses and honours a stop request."""

    def __new__(cls, on_epoch: EpochFn | None, should_stop: StopFn | None, member: int = 1,
                on_batch: BatchFn | None = None):
        import keras

        class Reporter(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.logs: list[EpochLog] = []
                self.stopped = False
                self._started = time.perf_counter()

            def on_epoch_begin(self, epoch, logs=None):
                self._started = time.perf_counter()
                self._epoch = epoch + 1

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                entry = EpochLog(epoch + 1, float(logs.get("loss", np.nan)),
                                 float(logs["val_loss"]) if "val_loss" in logs else None,
                                 time.perf_counter() - self._started, member)
                self.logs.append(entry)
                if on_epoch:
                    on_epoch(entry)
                if should_stop and should_stop():
                    self.stopped = True
                    self.model.stop_training = True

            def on_train_batch_end(self, batch, logs=None):
                if on_batch:
                    on_batch(BatchProgress(member, self._epoch, batch + 1, self.params.get("steps") or 0))
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
    n_val = 0
    if config.validation_split and config.ensemble == 1 and applies("validation_split", config):
        n_val = int(round(len(rest) * config.validation_split))
    validation, train = np.sort(rest[:n_val]), np.sort(rest[n_val:])
    if len(train) < 2:
        raise TrainingError(f"only {len(train)} training posters left after the split of {n}",
                            "use a smaller test/validation fraction or more posters")
    return Split(train=train, test=test, validation=validation)
