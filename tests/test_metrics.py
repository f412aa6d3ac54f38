"""Behaviours locked in for ``core.analysis.metrics``:

- top-k picks the highest scores first and breaks ties by the lower column index;
- hits, precision@k (hits / k) and recall@k (hits / |true|) match hand-computed values for k = 1, 2, 3;
- perfect scores give precision@k = mean(min(k, |true|) / k) on random label sets;
- k outside 1..n_genres, mismatched shapes, non-0/1 labels, NaN scores and posters with no true
  genre raise ValueError with a message naming the offending value;
- the frequency prior predicts the genres most frequent in y_train (ties by lower index);
- the bootstrap interval contains the mean, narrows with more posters, is reproducible by seed and
  widens with the confidence level;
- micro/macro F1 at a threshold match a hand case, with zero_division=0;
- the per-genre table matches hand values, including its NaN cases;
- evaluate().to_dict() and per_genre_records() are strict JSON with the documented keys, and
  EvaluationSummary.from_dict reads to_dict back into the same typed intervals;
- the per-poster report (top-k pairs, hits, precision, recall, binary cross-entropy, top-1 score)
  matches a 3-poster example computed by hand, ties included, and follows the same rule for posters
  without a true genre as the top-k functions (rejected).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core.analysis.metrics import (
    Evaluation,
    EvaluationSummary,
    Interval,
    binary_cross_entropy_per_poster,
    per_poster_report,
    bootstrap_interval,
    evaluate,
    f1_at_threshold,
    per_genre_report,
    prior_scores,
    top_k_hits,
    top_k_indices,
    top_k_precision_recall,
    top_k_precision_recall_per_poster,
)

GENRES = ["Action", "Comedy", "Drama", "Horror"]

# 3 posters x 4 genres.
Y_TRUE = np.array(
    [
        [1, 0, 1, 0],  # 2 true genres: 0, 2
        [0, 1, 0, 0],  # 1 true genre:  1
        [1, 1, 1, 0],  # 3 true genres: 0, 1, 2
    ]
)
Y_SCORE = np.array(
    [
        [0.9, 0.8, 0.1, 0.3],  # ranking 0, 1, 3, 2
        [0.2, 0.7, 0.6, 0.1],  # ranking 1, 2, 0, 3
        [0.3, 0.1, 0.4, 0.9],  # ranking 3, 2, 0, 1
    ]
)

# Genre frequencies: 3/4, 2/4, 0, 2/4 -> prior top-2 is {0, 1} (1 beats 3 on the tie).
Y_TRAIN = np.array(
    [
        [1, 0, 0, 1],
        [1, 1, 0, 0],
        [0, 1, 0, 1],
        [1, 0, 0, 0],
    ]
)


def test_top_k_indices_orders_by_score_descending():
    assert top_k_indices(Y_SCORE, k=3).tolist() == [[0, 1, 3], [1, 2, 0], [3, 2, 0]]


def test_top_k_indices_breaks_ties_by_lower_column_index():
    scores = np.array([[0.5, 0.5, 0.5, 0.5], [0.1, 0.7, 0.7, 0.2], [0.3, 0.9, 0.3, 0.3]])
    assert top_k_indices(scores, k=2).tolist() == [[0, 1], [1, 2], [1, 0]]
    assert top_k_indices(scores, k=4).tolist() == [[0, 1, 2, 3], [1, 2, 3, 0], [1, 0, 2, 3]]


def test_tie_at_the_cut_is_resolved_deterministically_in_hits():
    # Genres 1 and 2 tie at 0.7; k=1 takes genre 1, which is not the true genre 2.
    assert top_k_hits(np.array([[0, 0, 1, 0]]), np.array([[0.1, 0.7, 0.7, 0.2]]), k=1).tolist() == [0]
    assert top_k_hits(np.array([[0, 1, 0, 0]]), np.array([[0.1, 0.7, 0.7, 0.2]]), k=1).tolist() == [1]


@pytest.mark.parametrize(
    ("k", "hits", "precision", "recall"),
    [
        # k=1: picks 0, 1, 3 -> hits 1, 1, 0; recall 1/2, 1/1, 0/3.
        (1, [1, 1, 0], [1, 1, 0], [1 / 2, 1, 0]),
        # k=2: picks {0,1}, {1,2}, {3,2} -> hits 1, 1, 1; recall 1/2, 1/1, 1/3.
        (2, [1, 1, 1], [1 / 2, 1 / 2, 1 / 2], [1 / 2, 1, 1 / 3]),
        # k=3: picks {0,1,3}, {1,2,0}, {3,2,0} -> hits 1, 1, 2; recall 1/2, 1/1, 2/3.
        (3, [1, 1, 2], [1 / 3, 1 / 3, 2 / 3], [1 / 2, 1, 2 / 3]),
    ],
)
def test_hits_precision_recall_per_poster_match_hand_values(k, hits, precision, recall):
    assert top_k_hits(Y_TRUE, Y_SCORE, k=k).tolist() == hits
    got_precision, got_recall = top_k_precision_recall_per_poster(Y_TRUE, Y_SCORE, k=k)
    np.testing.assert_allclose(got_precision, precision)
    np.testing.assert_allclose(got_recall, recall)


@pytest.mark.parametrize(
    ("k", "precision", "recall"),
    [
        (1, 2 / 3, 1 / 2),  # (1+1+0)/3, (1/2+1+0)/3
        (2, 1 / 2, 11 / 18),  # (1/2)*3/3, (1/2+1+1/3)/3 = (9+18+6)/54
        (3, 4 / 9, 13 / 18),  # (1/3+1/3+2/3)/3, (1/2+1+2/3)/3 = (3+6+4)/18
    ],
)
def test_mean_precision_recall_match_hand_values(k, precision, recall):
    got_precision, got_recall = top_k_precision_recall(Y_TRUE, Y_SCORE, k=k)
    assert isinstance(got_precision, float) and isinstance(got_recall, float)
    assert got_precision == pytest.approx(precision)
    assert got_recall == pytest.approx(recall)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_perfect_scores_give_precision_min_k_true_over_k(seed, k):
    rng = np.random.default_rng(seed)
    y_true = (rng.random((60, 6)) < 0.35).astype(int)
    y_true[np.arange(60), rng.integers(0, 6, 60)] = 1  # every poster has at least one genre
    y_score = 0.5 * y_true + rng.uniform(0.0, 0.49, y_true.shape)  # every true genre outranks every false
    n_true = y_true.sum(axis=1)
    precision, recall = top_k_precision_recall(y_true, y_score, k=k)
    assert precision == pytest.approx(np.mean(np.minimum(k, n_true) / k))
    assert recall == pytest.approx(np.mean(np.minimum(k, n_true) / n_true))


@pytest.mark.parametrize("k", [0, 5, -1, 2.0, True])
def test_k_outside_one_to_n_genres_is_rejected(k):
    with pytest.raises(ValueError, match=rf"k={k!r}.*1 to 4"):
        top_k_precision_recall(Y_TRUE, Y_SCORE, k=k)


def test_k_validation_applies_to_every_top_k_function():
    for call in (
        lambda: top_k_indices(Y_SCORE, k=5),
        lambda: top_k_hits(Y_TRUE, Y_SCORE, k=0),
        lambda: per_genre_report(Y_TRUE, Y_SCORE, GENRES, k=5),
        lambda: evaluate(Y_TRUE, Y_SCORE, Y_TRAIN, GENRES, k=0),
    ):
        with pytest.raises(ValueError, match="k="):
            call()


def test_mismatched_shapes_name_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 3\)"):
        top_k_precision_recall(Y_TRUE, Y_SCORE[:, :3], k=1)
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(3, 4\)"):
        f1_at_threshold(Y_TRUE[:2], Y_SCORE)


def test_poster_without_true_genre_is_rejected_with_its_row():
    y_true = Y_TRUE.copy()
    y_true[1] = 0
    with pytest.raises(ValueError, match=r"no true genre \(rows \[1\]\)"):
        top_k_precision_recall(y_true, Y_SCORE, k=2)
    with pytest.raises(ValueError, match="no true genre"):
        evaluate(y_true, Y_SCORE, Y_TRAIN, GENRES, k=2)


def test_labels_other_than_zero_one_are_rejected():
    with pytest.raises(ValueError, match=r"other than 0 and 1 \(e\.g\. \[2\]\)"):
        top_k_hits(Y_TRUE * 2, Y_SCORE, k=1)


def test_nan_scores_are_rejected():
    scores = Y_SCORE.copy()
    scores[0, 0] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        top_k_indices(scores, k=1)


def test_prior_scores_repeat_training_genre_frequency():
    expected = [0.75, 0.5, 0.0, 0.5]
    assert prior_scores(Y_TRAIN, 2).tolist() == [expected, expected]
    assert prior_scores(Y_TRAIN, 0).shape == (0, 4)


def test_prior_predicts_most_frequent_genres_with_hand_values():
    # Prior top-2 = {0, 1} for every poster. Hits: 1 (genre 0), 1 (genre 1), 2 (genres 0, 1).
    # precision = (1/2 + 1/2 + 2/2) / 3 = 2/3; recall = (1/2 + 1/1 + 2/3) / 3 = 13/18.
    prior = prior_scores(Y_TRAIN, len(Y_TRUE))
    assert top_k_indices(prior, k=2).tolist() == [[0, 1]] * 3
    precision, recall = top_k_precision_recall(Y_TRUE, prior, k=2)
    assert precision == pytest.approx(2 / 3)
    assert recall == pytest.approx(13 / 18)


def test_prior_rejects_negative_n():
    with pytest.raises(ValueError, match="n=-1"):
        prior_scores(Y_TRAIN, -1)


def test_bootstrap_interval_contains_the_mean():
    values = np.random.default_rng(1).random(200)
    low, high = bootstrap_interval(values, seed=0)
    assert low < values.mean() < high


def test_bootstrap_interval_of_constant_values_is_a_point():
    assert bootstrap_interval(np.full(10, 0.25)) == (0.25, 0.25)


def test_bootstrap_interval_narrows_with_more_posters():
    rng = np.random.default_rng(2)
    small = rng.integers(0, 2, 50).astype(float)
    large = rng.integers(0, 2, 5000).astype(float)
    small_low, small_high = bootstrap_interval(small)
    large_low, large_high = bootstrap_interval(large)
    # Width shrinks like 1/sqrt(n): 100x the posters -> about a tenth of the width.
    assert (large_high - large_low) < (small_high - small_low) / 5


def test_bootstrap_interval_is_deterministic_by_seed():
    values = np.random.default_rng(3).random(100)
    assert bootstrap_interval(values, seed=7) == bootstrap_interval(values, seed=7)
    assert bootstrap_interval(values, seed=7) != bootstrap_interval(values, seed=8)


def test_bootstrap_interval_widens_with_confidence():
    values = np.random.default_rng(4).random(100)
    low_90, high_90 = bootstrap_interval(values, confidence=0.90)
    low_99, high_99 = bootstrap_interval(values, confidence=0.99)
    assert low_99 < low_90 and high_90 < high_99


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"values": np.array([])}, "non-empty 1-D"),
        ({"values": np.ones((2, 2))}, "non-empty 1-D"),
        ({"values": np.array([0.5, np.nan])}, "NaN"),
        ({"values": np.ones(3), "n_boot": 0}, "n_boot=0"),
        ({"values": np.ones(3), "confidence": 1.0}, "confidence=1.0"),
    ],
)
def test_bootstrap_interval_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_interval(**kwargs)


def test_f1_at_threshold_matches_hand_case():
    # Predictions (score >= 0.5): [1,1,0,0], [0,1,1,0], [0,0,0,1].
    # Per genre (tp, fp, fn): g0 (1,0,1) -> 2/3; g1 (1,1,1) -> 1/2; g2 (0,1,2) -> 0; g3 (0,1,0) -> 0.
    # macro = (2/3 + 1/2) / 4 = 7/24; micro: tp=2, fp=3, fn=4 -> 2*2 / (2*2 + 3 + 4) = 4/11.
    micro, macro = f1_at_threshold(Y_TRUE, Y_SCORE, threshold=0.5)
    assert micro == pytest.approx(4 / 11)
    assert macro == pytest.approx(7 / 24)


def test_f1_counts_genre_never_true_nor_predicted_as_zero():
    # Genre 1 has tp = fp = fn = 0 -> zero_division=0 gives 0, so macro = (1 + 0) / 2.
    micro, macro = f1_at_threshold(np.array([[1, 0], [1, 0]]), np.array([[0.9, 0.1], [0.8, 0.2]]))
    assert (micro, macro) == (1.0, 0.5)


def test_f1_threshold_is_inclusive():
    micro, _ = f1_at_threshold(np.array([[1, 0]]), np.array([[0.5, 0.4]]), threshold=0.5)
    assert micro == 1.0


def test_f1_rejects_scores_outside_unit_interval():
    with pytest.raises(ValueError, match=r"outside \[0, 1\].*logits"):
        f1_at_threshold(Y_TRUE, Y_SCORE * 3)


def test_per_genre_report_matches_hand_values_at_k2():
    # Top-2: {0,1}, {1,2}, {3,2}. predicted: g0 1, g1 2, g2 2, g3 1; support: 2, 2, 2, 0.
    # correct in top-2: g0 1 (p0), g1 1 (p1), g2 1 (p2), g3 0.
    # AP g0: positives ranked 1st and 2nd -> 1. AP g1 and g2: a negative first, then both positives
    # -> 1/2 * 1/2 + 1/2 * 2/3 = 7/12. AP g3: no positives -> NaN.
    report = per_genre_report(Y_TRUE, Y_SCORE, GENRES, k=2)
    assert list(report.columns) == [
        "genre", "support", "average_precision", "precision_at_k", "recall_at_k", "predicted"
    ]
    assert report["genre"].tolist() == GENRES
    assert report["support"].tolist() == [2, 2, 2, 0]
    assert report["predicted"].tolist() == [1, 2, 2, 1]
    np.testing.assert_allclose(report["average_precision"], [1, 7 / 12, 7 / 12, np.nan])
    np.testing.assert_allclose(report["precision_at_k"], [1, 1 / 2, 1 / 2, 0])
    np.testing.assert_allclose(report["recall_at_k"], [1 / 2, 1 / 2, 1 / 2, np.nan])


def test_per_genre_report_precision_is_nan_for_genre_never_predicted():
    # Top-1: 0, 1, 3. Genre 2 is never predicted -> precision NaN, recall 0/2.
    # Genre 3 is predicted once, wrongly, and never true -> precision 0, recall NaN.
    report = per_genre_report(Y_TRUE, Y_SCORE, GENRES, k=1)
    assert report["predicted"].tolist() == [1, 1, 0, 1]
    np.testing.assert_allclose(report["precision_at_k"], [1, 1, np.nan, 0])
    np.testing.assert_allclose(report["recall_at_k"], [1 / 2, 1 / 2, 0, np.nan])


def test_per_genre_report_rejects_wrong_number_of_genre_names():
    with pytest.raises(ValueError, match="3 genre names for 4 genre columns"):
        per_genre_report(Y_TRUE, Y_SCORE, GENRES[:3], k=2)


def test_evaluate_combines_model_prior_f1_and_per_genre():
    result = evaluate(Y_TRUE, Y_SCORE, Y_TRAIN, GENRES, k=2, n_boot=200)
    assert isinstance(result, Evaluation)
    assert (result.k, result.n_test, result.threshold) == (2, 3, 0.5)
    assert result.precision_at_k.value == pytest.approx(1 / 2)
    assert result.recall_at_k.value == pytest.approx(11 / 18)
    assert result.prior_precision_at_k.value == pytest.approx(2 / 3)
    assert result.prior_recall_at_k.value == pytest.approx(13 / 18)
    assert (result.micro_f1, result.macro_f1) == pytest.approx((4 / 11, 7 / 24))
    # Model precision is 1/2 on every poster, so its interval collapses to a point.
    assert result.precision_at_k == Interval(0.5, 0.5, 0.5)
    prior = result.prior_precision_at_k
    assert prior.low <= prior.value <= prior.high and prior.low < prior.high
    pd.testing.assert_frame_equal(result.per_genre, per_genre_report(Y_TRUE, Y_SCORE, GENRES, k=2))


def test_evaluate_rejects_training_labels_with_other_genre_columns():
    with pytest.raises(ValueError, match=r"y_train has shape \(4, 3\)"):
        evaluate(Y_TRUE, Y_SCORE, Y_TRAIN[:, :3], GENRES, k=2)


def test_evaluate_to_dict_is_strict_json_with_documented_keys():
    result = evaluate(Y_TRUE, Y_SCORE, Y_TRAIN, GENRES, k=2, n_boot=200)
    as_dict = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    metric_keys = ["precision_at_k", "recall_at_k", "prior_precision_at_k", "prior_recall_at_k"]
    expected_keys = {"k", "n_test", "micro_f1", "macro_f1", "threshold", "mean_average_precision"}
    expected_keys |= {f"{name}{suffix}" for name in metric_keys for suffix in ("", "_low", "_high")}
    assert set(as_dict) == expected_keys
    assert as_dict["k"] == 2 and as_dict["n_test"] == 3
    # nanmean of AP (1, 7/12, 7/12, NaN) = (1 + 7/6) / 3 = 13/18.
    assert as_dict["mean_average_precision"] == pytest.approx(13 / 18)
    assert as_dict["prior_recall_at_k"] == pytest.approx(13 / 18)


def test_per_genre_records_are_strict_json_with_nan_as_null():
    records = evaluate(Y_TRUE, Y_SCORE, Y_TRAIN, GENRES, k=2, n_boot=50).per_genre_records()
    restored = json.loads(json.dumps(records, allow_nan=False))
    assert [row["genre"] for row in restored] == GENRES
    assert restored[3]["average_precision"] is None and restored[3]["recall_at_k"] is None
    assert restored[0]["support"] == 2 and isinstance(restored[0]["support"], int)


def test_summary_reads_to_dict_back_into_typed_intervals():
    result = evaluate(Y_TRUE, Y_SCORE, Y_TRAIN, GENRES, k=2, n_boot=200)
    summary = EvaluationSummary.from_dict(json.loads(json.dumps(result.to_dict())))
    assert summary.precision_at_k == result.precision_at_k
    assert summary.prior_recall_at_k == result.prior_recall_at_k
    assert summary.mean_average_precision == pytest.approx(13 / 18)
    assert summary.to_dict() == result.to_dict()
    assert summary.overlaps_prior() is (result.precision_at_k.low <= result.prior_precision_at_k.high)


# Poster 1 hits at k=1; poster 2 ties 0.5/0.5, so the first genre is chosen and misses; poster 3 has two
# true genres and gets one.
SMALL_TRUE = np.array([[1, 0], [0, 1], [1, 1]])
SMALL_SCORE = np.array([[0.8, 0.4], [0.5, 0.5], [0.9, 0.2]])


def test_binary_cross_entropy_per_poster_matches_hand_values():
    expected = [-(np.log(0.8) + np.log(0.6)) / 2, np.log(2), -(np.log(0.9) + np.log(0.2)) / 2]
    np.testing.assert_allclose(binary_cross_entropy_per_poster(SMALL_TRUE, SMALL_SCORE),
                               [0.366985, 0.693147, 0.857399], atol=1e-6)
    np.testing.assert_allclose(binary_cross_entropy_per_poster(SMALL_TRUE, SMALL_SCORE), expected)


def test_binary_cross_entropy_clips_certain_mistakes():
    loss = binary_cross_entropy_per_poster(np.array([[1, 0]]), np.array([[0.0, 1.0]]))
    assert loss[0] == pytest.approx(-np.log(1e-7), rel=1e-6)


def test_per_poster_report_matches_hand_values():
    report = per_poster_report(SMALL_TRUE, SMALL_SCORE, ["A", "B"], k=1)
    assert list(report["predicted"]) == [(("A", 0.8),), (("A", 0.5),), (("A", 0.9),)]
    assert list(report["hits"]) == [1, 0, 1] and list(report["n_true"]) == [1, 1, 2]
    assert list(report["max_hits"]) == [1, 1, 1]
    np.testing.assert_allclose(report["precision"], [1, 0, 1])
    np.testing.assert_allclose(report["recall"], [1, 0, 0.5])
    np.testing.assert_allclose(report["loss"], [0.366985, 0.693147, 0.857399], atol=1e-6)
    np.testing.assert_allclose(report["confidence"], [0.8, 0.5, 0.9])
    two = per_poster_report(SMALL_TRUE, SMALL_SCORE, ["A", "B"], k=2)
    np.testing.assert_allclose(two["precision"], [0.5, 0.5, 1])
    np.testing.assert_allclose(two["recall"], [1, 1, 1])
    assert list(two["max_hits"]) == [1, 1, 2]


def test_per_poster_report_rejects_posters_without_a_true_genre_like_the_top_k_metrics():
    with pytest.raises(ValueError, match=r"1 poster\(s\) have no true genre \(rows \[1\]\)"):
        per_poster_report(np.array([[1, 0], [0, 0]]), SMALL_SCORE[:2], ["A", "B"], k=1)
