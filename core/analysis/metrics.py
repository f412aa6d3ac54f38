"""Top-k precision/recall (the tutorial's definition), the frequency-prior baseline, bootstrap
intervals, thresholded F1 and a per-genre table.

Every function takes ``y_true`` as a 0/1 multi-hot array ``(n_posters, n_genres)`` and ``y_score``
as scores of the same shape. Top-k ties are broken by the lower column index, so results never
depend on sort implementation details.

scikit-learn and pandas are imported inside the functions that use them: this module reaches every page
through ``core.model.experiment``, and their imports (about 1.4 s and 0.3 s) would otherwise delay Home's
first paint, which computes no metric.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000
_EPSILON = 1e-7
INTERVAL_METRICS = ("precision_at_k", "recall_at_k", "prior_precision_at_k", "prior_recall_at_k")


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class EvaluationSummary:
    """The headline figures of an evaluation: what a saved run keeps in ``metrics.json``."""

    k: int
    n_test: int
    precision_at_k: Interval
    recall_at_k: Interval
    prior_precision_at_k: Interval
    prior_recall_at_k: Interval
    micro_f1: float
    macro_f1: float
    threshold: float
    mean_average_precision: float

    def to_dict(self) -> dict[str, int | float | None]:
        """Flat, strict JSON: each interval as ``name``, ``name_low`` and ``name_high``."""
        out: dict[str, int | float | None] = {"k": int(self.k), "n_test": int(self.n_test)}
        for name in INTERVAL_METRICS:
            interval: Interval = getattr(self, name)
            out[name] = _plain(interval.value)
            out[f"{name}_low"] = _plain(interval.low)
            out[f"{name}_high"] = _plain(interval.high)
        for name in ("micro_f1", "macro_f1", "threshold", "mean_average_precision"):
            out[name] = _plain(getattr(self, name))
        return out

    @classmethod
    def from_dict(cls, record: dict) -> "EvaluationSummary":
        """Read back ``to_dict``'s output; a missing figure is NaN."""
        def number(name: str) -> float:
            value = record.get(name)
            return float("nan") if value is None else float(value)

        intervals = {name: Interval(number(name), number(f"{name}_low"), number(f"{name}_high"))
                     for name in INTERVAL_METRICS}
        return cls(k=int(record["k"]), n_test=int(record["n_test"]), **intervals, micro_f1=number("micro_f1"),
                   macro_f1=number("macro_f1"), threshold=number("threshold"),
                   mean_average_precision=number("mean_average_precision"))

    def overlaps_prior(self) -> bool:
        """Whether the precision interval reaches the prior's: the model is not clearly better."""
        return self.precision_at_k.low <= self.prior_precision_at_k.high


def _empty_table() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame()


@dataclass(frozen=True, eq=False)
class Evaluation(EvaluationSummary):
    """The summary plus the per-genre table."""

    per_genre: pd.DataFrame = field(default_factory=_empty_table)

    def per_genre_records(self) -> list[dict[str, Any]]:
        """One dict per genre with plain Python values; NaN becomes ``None`` (valid JSON)."""
        return [
            {column: _plain(value) for column, value in row.items()}
            for row in self.per_genre.to_dict("records")
        ]


def top_k_indices(y_score: np.ndarray, *, k: int = 3) -> np.ndarray:
    """``(n, k)`` column indices, highest score first, ties by lower column index."""
    scores = _check_scores(y_score)
    _check_k(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def top_k_hits(y_true: np.ndarray, y_score: np.ndarray, *, k: int = 3) -> np.ndarray:
    """``(n,)`` number of true genres among the ``k`` highest-scored."""
    labels, _ = _check_pair(y_true, y_score)
    chosen = top_k_indices(y_score, k=k)
    return np.take_along_axis(labels, chosen, axis=1).sum(axis=1)


def top_k_precision_recall_per_poster(
    y_true: np.ndarray, y_score: np.ndarray, *, k: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Per poster: precision = hits / k, recall = hits / number of true genres."""
    labels, _ = _check_pair(y_true, y_score)
    _check_no_empty_rows(labels)
    hits = top_k_hits(labels, y_score, k=k).astype(float)
    return hits / k, hits / labels.sum(axis=1)


def top_k_precision_recall(
    y_true: np.ndarray, y_score: np.ndarray, *, k: int = 3
) -> tuple[float, float]:
    precision, recall = top_k_precision_recall_per_poster(y_true, y_score, k=k)
    return float(precision.mean()), float(recall.mean())


def binary_cross_entropy_per_poster(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """``(n,)`` the training loss of each poster: binary cross-entropy averaged over the genres, with
    the scores clipped to [1e-7, 1 − 1e-7] as Keras clips them."""
    labels, scores = _check_pair(y_true, y_score)
    clipped = np.clip(scores, _EPSILON, 1 - _EPSILON)
    return -(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)).mean(axis=1)


def per_poster_report(
    y_true: np.ndarray, y_score: np.ndarray, genres: Sequence[str], *, k: int = 3
) -> pd.DataFrame:
    """One row per poster: its top-k ``(genre, score)`` pairs, hits, the most hits it could have
    (``min(k, true genres)``), number of true genres, precision, recall, loss and top-1 score
    ("confidence")."""
    import pandas as pd

    labels, scores = _check_pair(y_true, y_score)
    _check_genres(genres, labels.shape[1])
    top = top_k_indices(scores, k=k)
    precision, recall = top_k_precision_recall_per_poster(labels, scores, k=k)
    n_true = labels.sum(axis=1).astype(np.int64)
    return pd.DataFrame({
        "predicted": [tuple((genres[j], float(scores[i, j])) for j in row) for i, row in enumerate(top)],
        "hits": top_k_hits(labels, scores, k=k).astype(np.int64),
        "max_hits": np.minimum(n_true, k),
        "n_true": n_true,
        "precision": precision,
        "recall": recall,
        "loss": binary_cross_entropy_per_poster(labels, scores),
        "confidence": scores.max(axis=1),
    })


def prior_scores(y_train: np.ndarray, n: int) -> np.ndarray:
    """``(n, n_genres)``: every row is the genre frequency in ``y_train`` (the frequency prior)."""
    labels = _check_labels(y_train, name="y_train")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(
            f"n={n!r} is not a usable number of posters for the prior; pass a non-negative integer "
            "(usually len(y_test))."
        )
    frequency = labels.mean(axis=0)
    return np.tile(frequency, (int(n), 1))


def bootstrap_interval(
    values: np.ndarray, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling posters with replacement."""
    data = _check_values(values)
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 1:
        raise ValueError(f"n_boot={n_boot!r} must be a positive integer; use e.g. 1000.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must lie strictly between 0 and 1; use e.g. 0.95.")
    means = _bootstrap_means(data, int(n_boot), np.random.default_rng(seed))
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def f1_at_threshold(
    y_true: np.ndarray, y_score: np.ndarray, *, threshold: float = 0.5
) -> tuple[float, float]:
    """``(micro, macro)`` F1 of the predictions ``y_score >= threshold``."""
    labels, scores = _check_pair(y_true, y_score)
    if scores.size and (scores.min() < 0.0 or scores.max() > 1.0):
        raise ValueError(
            f"y_score spans [{scores.min():g}, {scores.max():g}], outside [0, 1], so threshold="
            f"{threshold} is meaningless; pass sigmoid probabilities, not logits."
        )
    from sklearn.metrics import f1_score

    predicted = (scores >= threshold).astype(np.int8)
    micro = f1_score(labels, predicted, average="micro", zero_division=0)
    macro = f1_score(labels, predicted, average="macro", zero_division=0)
    return float(micro), float(macro)


def per_genre_report(
    y_true: np.ndarray, y_score: np.ndarray, genres: Sequence[str], *, k: int = 3
) -> pd.DataFrame:
    """One row per genre: support, average precision and top-k precision/recall (NaN when undefined)."""
    import pandas as pd

    labels, scores = _check_pair(y_true, y_score)
    _check_genres(genres, labels.shape[1])
    in_top_k = np.zeros(labels.shape, dtype=bool)
    np.put_along_axis(in_top_k, top_k_indices(scores, k=k), True, axis=1)
    support = labels.sum(axis=0)
    predicted = in_top_k.sum(axis=0)
    correct = (in_top_k & (labels == 1)).sum(axis=0)
    return pd.DataFrame(
        {
            "genre": list(genres),
            "support": support.astype(np.int64),
            "average_precision": _average_precision_per_genre(labels, scores),
            "precision_at_k": _ratio_or_nan(correct, predicted),
            "recall_at_k": _ratio_or_nan(correct, support),
            "predicted": predicted.astype(np.int64),
        }
    )


def evaluate(
    y_true: np.ndarray,
    y_score: np.ndarray,
    y_train: np.ndarray,
    genres: Sequence[str],
    *,
    k: int = 3,
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
) -> Evaluation:
    """Model metrics beside the frequency prior; both intervals use the same resamples (paired)."""
    labels, scores = _check_pair(y_true, y_score)
    train = _check_labels(y_train, name="y_train")
    if train.shape[1] != labels.shape[1]:
        raise ValueError(
            f"y_train has shape {train.shape} but y_true has shape {labels.shape}; both must use the "
            "same genre columns in the same order."
        )
    prior = prior_scores(train, labels.shape[0])
    model_p, model_r = top_k_precision_recall_per_poster(labels, scores, k=k)
    prior_p, prior_r = top_k_precision_recall_per_poster(labels, prior, k=k)
    boot = {"n_boot": n_boot, "seed": seed}
    micro, macro = f1_at_threshold(labels, scores, threshold=threshold)
    per_genre = per_genre_report(labels, scores, genres, k=k)
    return Evaluation(
        k=int(k),
        n_test=int(labels.shape[0]),
        precision_at_k=_interval(model_p, **boot),
        recall_at_k=_interval(model_r, **boot),
        prior_precision_at_k=_interval(prior_p, **boot),
        prior_recall_at_k=_interval(prior_r, **boot),
        micro_f1=micro,
        macro_f1=macro,
        threshold=float(threshold),
        mean_average_precision=_nanmean(per_genre["average_precision"]),
        per_genre=per_genre,
    )


def _interval(values: np.ndarray, *, n_boot: int, seed: int) -> Interval:
    low, high = bootstrap_interval(values, n_boot=n_boot, seed=seed)
    return Interval(value=float(values.mean()), low=low, high=high)


def _bootstrap_means(data: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Resample in chunks so memory stays bounded for large test sets."""
    n = data.shape[0]
    rows_per_chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    means = np.empty(n_boot)
    for start in range(0, n_boot, rows_per_chunk):
        stop = min(start + rows_per_chunk, n_boot)
        picks = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = data[picks].mean(axis=1)
    return means


def _average_precision_per_genre(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    from sklearn.metrics import average_precision_score

    return np.array(
        [
            average_precision_score(labels[:, j], scores[:, j]) if labels[:, j].any() else np.nan
            for j in range(labels.shape[1])
        ],
        dtype=float,
    )


def _ratio_or_nan(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _nanmean(values: pd.Series) -> float:
    finite = values.dropna()
    return float(finite.mean()) if len(finite) else float("nan")


def _plain(value: Any) -> Any:
    """numpy scalars to Python; NaN to None so the result is strict JSON."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return None if np.isnan(value) else float(value)
    return value


def _check_labels(y_true: np.ndarray, *, name: str = "y_true") -> np.ndarray:
    labels = np.asarray(y_true)
    if labels.ndim != 2 or labels.shape[0] == 0 or labels.shape[1] == 0:
        raise ValueError(
            f"{name} has shape {labels.shape}; expected a non-empty 2-D multi-hot array "
            "(n_posters, n_genres)."
        )
    if not np.isin(labels, (0, 1)).all():
        bad = np.unique(labels[~np.isin(labels, (0, 1))])[:5]
        raise ValueError(
            f"{name} holds values other than 0 and 1 (e.g. {bad.tolist()}); pass the multi-hot "
            "genre matrix, not scores or genre indices."
        )
    return labels.astype(np.int64)


def _check_scores(y_score: np.ndarray) -> np.ndarray:
    scores = np.asarray(y_score, dtype=float)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(
            f"y_score has shape {scores.shape}; expected a 2-D array (n_posters, n_genres)."
        )
    if not np.isfinite(scores).all():
        raise ValueError(
            f"y_score holds {int((~np.isfinite(scores)).sum())} NaN or infinite values; the model "
            "probably diverged, retrain it with a lower learning rate."
        )
    return scores


def _check_pair(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true_shape, score_shape = np.shape(y_true), np.shape(y_score)
    if true_shape != score_shape:
        raise ValueError(
            f"y_true has shape {true_shape} but y_score has shape {score_shape}; they must match "
            "(same posters in the same order, same genre columns)."
        )
    return _check_labels(y_true), _check_scores(y_score)


def _check_k(k: int, n_genres: int) -> None:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= n_genres:
        raise ValueError(f"k={k!r} is out of range; choose an integer from 1 to {n_genres} (n_genres).")


def _check_no_empty_rows(labels: np.ndarray) -> None:
    empty = np.flatnonzero(labels.sum(axis=1) == 0)
    if empty.size:
        raise ValueError(
            f"{empty.size} poster(s) have no true genre (rows {empty[:10].tolist()}), so recall is "
            "undefined; drop posters without genres before evaluating."
        )


def _check_values(values: np.ndarray) -> np.ndarray:
    data = np.asarray(values, dtype=float)
    if data.ndim != 1 or data.size == 0:
        raise ValueError(
            f"values has shape {data.shape}; expected a non-empty 1-D array of per-poster numbers."
        )
    if not np.isfinite(data).all():
        raise ValueError("values holds NaN or infinite entries; per-poster metrics must be finite.")
    return data


def _check_genres(genres: Sequence[str], n_genres: int) -> None:
    if len(genres) != n_genres:
        raise ValueError(
            f"got {len(genres)} genre names for {n_genres} genre columns; pass the names in the "
            "column order of y_true."
        )
