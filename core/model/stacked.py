"""An ensemble trained as one Keras model: each layer holds every member's weights, stacked.

Member ``m`` sees every training row but learns only from its own folds: the targets carry a
``(rows, members)`` mask next to the labels and the loss of a row counts for member ``m`` only where the
mask is 1. Each epoch, member ``m`` is evaluated on its held-out fold; with early stopping it keeps the
weights of its best epoch and drops out of the reports once its patience runs out (it keeps computing,
masked, until every member has stopped). The caller copies the weights into ordinary per-member
networks, so nothing here is ever saved.

Each member's network is the one ``core.model.classifier.build_model`` builds: optional per-member
standardisation, input dropout, Dense + ReLU (+ dropout) per hidden size, a sigmoid output; the
sigmoid is folded into the loss (binary cross-entropy from logits, as Keras computes it for a sigmoid
Dense layer). It is not XLA-compiled: XLA's CPU batched matmul made an epoch several times slower here.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np

from core.model.classifier import (BatchFn, BatchProgress, EpochFn, EpochLog, StopFn, _optimizer,
                                   _steps_per_execution, custom_layers, signed_sqrt)
from core.model.config import TrainConfig

Moments = list[tuple[np.ndarray, np.ndarray]]
MemberWeights = dict[str, list[np.ndarray]]
NORMALIZATION_EPSILON = 1e-7
"""Keras's ``backend.epsilon()``, the floor ``Normalization`` puts under the standard deviation."""


@dataclass
class StackedResult:
    member_weights: list[MemberWeights]
    history: list[EpochLog]
    stopped: bool


def fit_stacked(X: np.ndarray, Y: np.ndarray, rows: list[tuple[np.ndarray, np.ndarray]], config: TrainConfig,
                moments: Moments | None, *, on_epoch: EpochFn | None = None, should_stop: StopFn | None = None,
                on_batch: BatchFn | None = None) -> StackedResult:
    """Train ``len(rows)`` members at once; ``rows[m]`` = (fit rows, validation rows) of member ``m``."""
    import keras

    n_genres, n_members = Y.shape[1], len(rows)
    mask = np.zeros((len(X), n_members), np.float32)
    for member, (fit, _) in enumerate(rows):
        mask[fit, member] = 1.0
    network = _classes().StackedNetwork(n_members, n_genres, config, moments, name="stacked_members")
    inputs = keras.Input(shape=(X.shape[1],), name="features")
    x = custom_layers()(name="signed_sqrt")(inputs) if config.power_normalize else inputs
    model = keras.Model(inputs, network(x), name="stacked_ensemble")
    model.compile(optimizer=_optimizer(config), loss=_classes().MaskedLoss(n_genres, n_members),
                  metrics=[_classes().MemberLoss(member, n_genres, n_members) for member in range(n_members)],
                  steps_per_execution=_steps_per_execution(len(X), config.batch_size), jit_compile=False)
    folds = [(signed_sqrt(X[val]) if config.power_normalize else X[val], Y[val]) for _, val in rows]
    monitor = _classes().Monitor(network, folds, config, on_epoch, should_stop, on_batch)
    model.fit(X, np.concatenate([Y, mask], axis=1), epochs=config.epochs, batch_size=config.batch_size,
              shuffle=True, verbose=0, callbacks=[monitor])
    weights = monitor.final_weights()
    return StackedResult([network.member_weights(weights, member) for member in range(n_members)],
                         monitor.logs, monitor.stopped)


def member_bce_numpy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy from logits, the formula of ``tf.nn.sigmoid_cross_entropy_with_logits``."""
    logits = logits.astype(np.float64)
    values = np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))
    return float(values.mean())


@functools.cache
def _classes():
    """The Keras classes, defined on first use so importing this module does not import Keras."""
    import keras
    from keras import layers, ops

    def member_bce(y_true, y_pred, n_genres: int, n_members: int):
        labels, mask = y_true[:, :n_genres], y_true[:, n_genres:]
        logits = ops.reshape(y_pred, (-1, n_members, n_genres))
        targets = ops.broadcast_to(ops.expand_dims(labels, 1), ops.shape(logits))
        return ops.mean(ops.binary_crossentropy(targets, logits, from_logits=True), axis=-1), mask

    class StackedNetwork(keras.layers.Layer):
        """``n_members`` MLPs side by side: input ``(batch, d)`` → logits ``(batch, members × genres)``."""

        def __init__(self, n_members: int, n_genres: int, config: TrainConfig, moments: Moments | None, **kwargs):
            super().__init__(**kwargs)
            self.n_members, self.n_genres = n_members, n_genres
            self.hidden = tuple(config.hidden)
            self.moments = moments
            self.input_dropout = layers.Dropout(config.input_dropout) if config.input_dropout else None
            self.dropouts = [layers.Dropout(config.dropout) for _ in self.hidden] if config.dropout else []

        @property
        def layer_names(self) -> list[str]:
            return [f"hidden_{index + 1}" for index in range(len(self.hidden))] + ["genres"]

        def build(self, input_shape):
            n_features = input_shape[-1]
            if self.moments is not None:
                mean = np.stack([m for m, _ in self.moments]).astype(np.float32)
                scale = 1.0 / np.maximum(np.sqrt(np.stack([v for _, v in self.moments])), NORMALIZATION_EPSILON)
                self.mean = self.add_weight(name="mean", shape=mean.shape, trainable=False,
                                            initializer=keras.initializers.Constant(mean))
                self.scale = self.add_weight(name="scale", shape=scale.shape, trainable=False,
                                             initializer=keras.initializers.Constant(scale.astype(np.float32)))
            sizes = [n_features, *self.hidden, self.n_genres]
            self.kernels, self.biases = [], []
            for name, fan_in, fan_out in zip(self.layer_names, sizes[:-1], sizes[1:]):
                limit = float(np.sqrt(6.0 / (fan_in + fan_out)))  # Dense's Glorot uniform, per member
                self.kernels.append(self.add_weight(
                    name=f"{name}_kernel", shape=(self.n_members, fan_in, fan_out),
                    initializer=keras.initializers.RandomUniform(-limit, limit)))
                self.biases.append(self.add_weight(name=f"{name}_bias", shape=(self.n_members, fan_out),
                                                   initializer="zeros"))

        def call(self, x, training=None):
            z = ops.expand_dims(x, 1)
            if self.moments is not None:
                z = (z - self.mean) * self.scale
            else:
                z = ops.repeat(z, self.n_members, axis=1)
            if self.input_dropout is not None:
                z = self.input_dropout(z, training=training)
            for index, (kernel, bias) in enumerate(zip(self.kernels, self.biases)):
                z = ops.einsum("bmi,mio->bmo", z, kernel) + bias
                if index < len(self.hidden):
                    z = ops.relu(z)
                    if self.dropouts:
                        z = self.dropouts[index](z, training=training)
            return ops.reshape(z, (-1, self.n_members * self.n_genres))

        def snapshot(self) -> list[np.ndarray]:
            return [np.asarray(variable.numpy()) for variable in (*self.kernels, *self.biases)]

        def member_logits(self, weights: list[np.ndarray], x: np.ndarray, member: int) -> np.ndarray:
            """Member ``member``'s logits at inference (no dropout), in numpy from a ``snapshot``."""
            kernels, biases = weights[:len(self.kernels)], weights[len(self.kernels):]
            z = x
            if self.moments is not None:
                mean, variance = self.moments[member]
                z = (z - mean) / np.maximum(np.sqrt(variance), NORMALIZATION_EPSILON)
            for index, (kernel, bias) in enumerate(zip(kernels, biases)):
                z = z @ kernel[member] + bias[member]
                if index < len(self.hidden):
                    z = np.maximum(z, 0)
            return z

        def member_weights(self, weights: list[np.ndarray], member: int) -> MemberWeights:
            """``{Dense layer name: [kernel, bias]}`` of one member, as ``build_model`` names its layers."""
            kernels, biases = weights[:len(self.kernels)], weights[len(self.kernels):]
            return {name: [kernel[member].copy(), bias[member].copy()]
                    for name, kernel, bias in zip(self.layer_names, kernels, biases)}

        def set_member_weights(self, weights: list[np.ndarray], member: int, values: list[np.ndarray]) -> None:
            for array, value in zip(weights, values):
                array[member] = value

    class MaskedLoss(keras.losses.Loss):
        """Per row, the sum over members of the binary cross-entropy, counted where the row is the member's."""

        def __init__(self, n_genres: int, n_members: int):
            super().__init__(name="masked_member_bce")
            self.n_genres, self.n_members = n_genres, n_members

        def call(self, y_true, y_pred):
            bce, mask = member_bce(y_true, y_pred, self.n_genres, self.n_members)
            return ops.sum(bce * mask, axis=1)

    class MemberLoss(keras.metrics.Metric):
        """One member's training loss over the epoch: mean cross-entropy of the rows it learns from."""

        def __init__(self, member: int, n_genres: int, n_members: int):
            super().__init__(name=f"member_{member + 1}_loss")
            self.member, self.n_genres, self.n_members = member, n_genres, n_members
            self.total = self.add_variable(shape=(), initializer="zeros", name="total")
            self.count = self.add_variable(shape=(), initializer="zeros", name="count")

        def update_state(self, y_true, y_pred, sample_weight=None):
            bce, mask = member_bce(y_true, y_pred, self.n_genres, self.n_members)
            self.total.assign_add(ops.sum(bce[:, self.member] * mask[:, self.member]))
            self.count.assign_add(ops.sum(mask[:, self.member]))

        def result(self):
            return ops.divide_no_nan(self.total, self.count)

        def reset_state(self):
            self.total.assign(0.0)
            self.count.assign(0.0)

    class Monitor(keras.callbacks.Callback):
        """Per-member reports, per-member early stopping with best weights, progress and stop requests."""

        def __init__(self, network, folds, config: TrainConfig, on_epoch, should_stop, on_batch):
            super().__init__()
            self.network, self.folds, self.config = network, folds, config
            self.on_epoch, self.should_stop, self.on_batch = on_epoch, should_stop, on_batch
            self.active = list(range(len(folds)))
            self.best = [np.inf] * len(folds)
            self.wait = [0] * len(folds)
            self.best_weights: list[list[np.ndarray] | None] = [None] * len(folds)
            self.logs: list[EpochLog] = []
            self.stopped = False
            self._started, self._epoch = time.perf_counter(), 1

        def on_epoch_begin(self, epoch, logs=None):
            self._started, self._epoch = time.perf_counter(), epoch + 1

        def on_train_batch_end(self, batch, logs=None):
            if self.on_batch and self.active:
                self.on_batch(BatchProgress(self.active[0] + 1, self._epoch, batch + 1,
                                            self.params.get("steps") or 0))
            self._check_stop_request()

        def on_epoch_end(self, epoch, logs=None):
            logs, seconds = logs or {}, time.perf_counter() - self._started
            weights = self.network.snapshot()
            for member in list(self.active):
                x, labels = self.folds[member]
                val_loss = member_bce_numpy(self.network.member_logits(weights, x, member), labels)
                entry = EpochLog(epoch + 1, float(logs.get(f"member_{member + 1}_loss", np.nan)), val_loss,
                                 seconds, member + 1)
                self.logs.append(entry)
                if self.on_epoch:
                    self.on_epoch(entry)
                if self.config.early_stopping:
                    self._track(member, val_loss, weights)
            if self.config.early_stopping and not self.active:
                self.model.stop_training = True
            self._check_stop_request()

        def _track(self, member: int, val_loss: float, weights: list[np.ndarray]) -> None:
            if val_loss < self.best[member]:
                self.best[member], self.wait[member] = val_loss, 0
                self.best_weights[member] = [array[member].copy() for array in weights]
                return
            self.wait[member] += 1
            if self.wait[member] >= self.config.patience:
                self.active.remove(member)

        def _check_stop_request(self) -> None:
            if self.should_stop and self.should_stop():
                self.stopped = True
                self.model.stop_training = True

        def final_weights(self) -> list[np.ndarray]:
            """The weights now, with each early-stopped member's best epoch put back."""
            weights = self.network.snapshot()
            for member, best in enumerate(self.best_weights):
                if best is not None:
                    self.network.set_member_weights(weights, member, best)
            return weights

    return type("StackedClasses", (), {"StackedNetwork": StackedNetwork, "MaskedLoss": MaskedLoss,
                                       "MemberLoss": MemberLoss, "Monitor": Monitor})
