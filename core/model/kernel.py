"""The kernel head: kernel ridge regression with a Gaussian (RBF) kernel on the prepared features, fitted
in closed form in about a second, instead of a network trained by gradient descent.

Measured on the 4,596 IMDb dev posters (``bench/quality.py``): within a few thousandths of the 8-network
``recommended`` preset's top-3 precision, at about 1/100 of its training time, because a dense linear
solve runs near the CPU's peak while the networks' many small epochs do not.

What is fitted, for training rows Z (after the optional square root and standardisation):
``s(x) = k(x, C) @ c + mean(Y)`` with ``k(x, z) = exp(-gamma · |x − z|² / d)``; C is every training row
(exact kernel ridge) or, above ``MAX_CENTERS`` rows, a seeded sample of them (Nyström). The scores are
made probabilities by Platt scaling per genre (``sigmoid(a·s + b)``), fitted on leave-one-out scores in
the exact case, so a poster's own label does not make its score look surer than it is. ``a`` and ``b``
fold into the final ``Dense`` layer, so the saved model is plain Keras: ``SignedSqrt`` → ``Normalization``
→ ``RBFKernel`` → ``Dense(sigmoid)``, and prediction, uploads and Grad-CAM work on it unchanged.
"""
from __future__ import annotations

import functools

import numpy as np
import scipy.linalg
import scipy.special

from core.model.config import TrainConfig

MAX_CENTERS = 4000
"""Above this many training rows the kernel is Nyström's on a sample of this many: the exact solve grows
with the cube of the rows, Nyström's with rows x centres² (80,000 training rows: about 2.6 TFLOP, half a
minute on a 2-core CPU, and 1.3 GB for the rows' similarities)."""
PLATT_ITERATIONS = 50
KERNEL_LAYER = "kernel_similarity"
"""The layer whose output is the kernel head's hidden representation (similarity to each centre)."""


def rbf(A: np.ndarray, B: np.ndarray, gamma: float) -> np.ndarray:
    """``exp(-gamma · |a − b|² / d)`` for every row pair, float32."""
    squared = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * (A @ B.T)
    return np.exp(-(gamma / A.shape[1]) * np.maximum(squared, 0.0)).astype(np.float32)


@functools.cache
def kernel_layer():
    """Register (once) and return the ``RBFKernel`` Keras layer."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="poster_genre")
    class RBFKernel(keras.layers.Layer):
        """Similarity of each input row to each stored centre: ``exp(-gamma · |x − c|² / d)``."""

        def __init__(self, n_centers: int, gamma: float, **kwargs):
            super().__init__(**kwargs)
            self.n_centers, self.gamma = int(n_centers), float(gamma)

        def build(self, input_shape):
            self.centers = self.add_weight(name="centers", shape=(self.n_centers, input_shape[-1]),
                                           initializer="zeros", trainable=False)

        def call(self, inputs):
            squared = (ops.sum(inputs * inputs, axis=1, keepdims=True)
                       + ops.expand_dims(ops.sum(self.centers * self.centers, axis=1), 0)
                       - 2.0 * ops.matmul(inputs, ops.transpose(self.centers)))
            return ops.exp(-(self.gamma / inputs.shape[-1]) * ops.maximum(squared, 0.0))

        def get_config(self):
            return {**super().get_config(), "n_centers": self.n_centers, "gamma": self.gamma}

    return RBFKernel


def fit_kernel_head(X: np.ndarray, Y: np.ndarray, config: TrainConfig, prepare, name: str = "genre_kernel"):
    """The fitted Keras model for raw feature rows ``X`` (float32) and labels ``Y`` (0/1).

    ``prepare(X)`` returns ``(Z, mean, variance)``: the rows as the model's first layers make them, and
    the standardisation's moments (``None`` when off), so the model and this fit see the same numbers.
    """
    Z, mean, variance = prepare(X)
    Z = np.ascontiguousarray(Z, dtype=np.float32)
    prior = Y.mean(axis=0)
    if len(Z) <= MAX_CENTERS:
        centers = Z
        coefficients, loo = _exact(rbf(Z, Z, config.kernel_gamma), Y - prior, config.ridge)
        scores = loo + prior
    else:
        rows = np.sort(np.random.default_rng(config.seed).choice(len(Z), MAX_CENTERS, replace=False))
        centers = Z[rows]
        K_nm = rbf(Z, centers, config.kernel_gamma)
        coefficients = _nystroem(K_nm, K_nm[rows], Y - prior, config.ridge)
        scores = K_nm @ coefficients + prior
    slope, intercept = platt(scores, Y)
    return _model(X.shape[1], centers, coefficients * slope, prior * slope + intercept, config, mean, variance, name)


def _exact(K: np.ndarray, targets: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Kernel ridge coefficients and each row's leave-one-out prediction (``y − c / diag(A⁻¹)``, with
    ``A = K + ridge·I``: the closed form of refitting without that row)."""
    A = K.astype(np.float64)
    A[np.diag_indices_from(A)] += ridge
    factor = scipy.linalg.cho_factor(A, lower=True, overwrite_a=True, check_finite=False)
    coefficients = scipy.linalg.cho_solve(factor, targets.astype(np.float64), check_finite=False)
    inverse, info = scipy.linalg.lapack.dpotri(factor[0], lower=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"dpotri failed ({info})")
    loo = targets - coefficients / np.diag(inverse)[:, None]
    return coefficients.astype(np.float32), loo.astype(np.float32)


def _nystroem(K_nm: np.ndarray, K_mm: np.ndarray, targets: np.ndarray, ridge: float) -> np.ndarray:
    """Coefficients on the centres minimising ``|K_nm c − y|² + ridge · cᵀ K_mm c``."""
    A = (K_nm.T @ K_nm).astype(np.float64) + ridge * K_mm
    A[np.diag_indices_from(A)] += 1e-6 * np.trace(A) / len(A)
    factor = scipy.linalg.cho_factor(A, lower=True, overwrite_a=True, check_finite=False)
    return scipy.linalg.cho_solve(factor, (K_nm.T @ targets).astype(np.float64), check_finite=False).astype(np.float32)


def platt(scores: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per genre, ``(a, b)`` of ``sigmoid(a·score + b)`` fitted by Newton's method on Platt's smoothed targets
    ((positives + 1) / (positives + 2) and 1 / (negatives + 2)), which keep a genre with no positive finite."""
    scores, Y = scores.astype(np.float64), Y.astype(np.float64)
    positives, negatives = Y.sum(0), len(Y) - Y.sum(0)
    targets = np.where(Y > 0, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    a = np.ones(Y.shape[1])
    b = np.log((positives + 1) / (negatives + 1))
    for _ in range(PLATT_ITERATIONS):
        p = scipy.special.expit(a * scores + b)
        residual, weight = p - targets, np.maximum(p * (1 - p), 1e-12)
        g_a, g_b = (residual * scores).sum(0), residual.sum(0)
        h_aa, h_ab, h_bb = (weight * scores * scores).sum(0) + 1e-9, (weight * scores).sum(0), weight.sum(0) + 1e-9
        determinant = h_aa * h_bb - h_ab * h_ab
        step_a = (h_bb * g_a - h_ab * g_b) / determinant
        step_b = (h_aa * g_b - h_ab * g_a) / determinant
        a, b = a - step_a, b - step_b
        if max(np.abs(step_a).max(), np.abs(step_b).max()) < 1e-10:
            break
    return a.astype(np.float32), b.astype(np.float32)


def _model(n_features: int, centers: np.ndarray, kernel: np.ndarray, bias: np.ndarray, config: TrainConfig,
           mean, variance, name: str):
    import keras
    from keras import layers

    from core.model.classifier import prepared_input

    inputs, x = prepared_input(n_features, config, mean, variance)
    similarity = kernel_layer()(len(centers), config.kernel_gamma, name=KERNEL_LAYER)
    x = similarity(x)
    genres = layers.Dense(kernel.shape[1], activation="sigmoid", name="genres")
    outputs = genres(x)
    similarity.set_weights([centers])
    genres.set_weights([kernel, bias])
    return keras.Model(inputs, outputs, name=name)

