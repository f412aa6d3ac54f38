"""Self-describing clusters (core.analysis.clusters).

Locks in: HDBSCAN finds two well-separated blobs, numbered by size, with its noise share; typical posters
are the ones nearest the group's centre; the enrichment p-value equals a hand-computed hypergeometric
tail and q-values are Benjamini-Hochberg across every group x genre; the sentences name an enriched
genre with its ratio and q, and say "no genre is enriched" when that is the truth; Cohen's d of the
descriptors; the selection card compares a selection with the rest; bad inputs are refused.
"""
from __future__ import annotations

from math import comb

import numpy as np
import pytest

from core.analysis.clusters import (NOISE, ClusterConfig, cluster_cards, descriptor_effects,
                                    enrichment, find_clusters, selection_card, typical_rows)
from core.errors import PosterGenreError


def blobs():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 0.5, (60, 2)), rng.normal(10, 0.5, (40, 2)), [[5.0, 30.0]]])
    Y = np.zeros((len(X), 3))
    Y[:60, 0] = 1          # genre A: the whole first blob
    Y[60:100, 1] = rng.random(40) < 0.5
    Y[:, 2] = rng.random(len(X)) < 0.3
    return X, Y, ("A", "B", "C")


def test_hdbscan_finds_the_blobs_largest_first_and_the_noise():
    X, _, _ = blobs()
    clustering = find_clusters(X, ClusterConfig(min_cluster_size=10))
    assert clustering.n_clusters == 2
    assert clustering.sizes().tolist() == [60, 40]
    assert clustering.labels[-1] == NOISE
    assert clustering.noise_share == pytest.approx(1 / 101)


def test_hypergeometric_p_value_matches_the_hand_computed_tail():
    # 10 posters, 4 with the genre; the group holds 3 posters, all 3 with it:
    # P(X >= 3) = C(4,3) C(6,0) / C(10,3) = 4 / 120
    Y = np.zeros((10, 1))
    Y[:4, 0] = 1
    group = np.zeros(10, dtype=bool)
    group[:3] = True
    row = enrichment(Y, ["Horror"], {"g": group}).iloc[0]
    assert row["p"] == pytest.approx(comb(4, 3) * comb(6, 0) / comb(10, 3))
    assert row["ratio"] == pytest.approx((3 / 3) / (4 / 10))
    assert row["share_rest"] == pytest.approx(1 / 7)


def test_q_values_are_benjamini_hochberg_across_groups_and_genres():
    X, Y, genres = blobs()
    first, second = np.zeros(len(Y), bool), np.zeros(len(Y), bool)
    first[:60], second[60:100] = True, True
    table = enrichment(Y, genres, {"one": first, "two": second})
    p = table["p"].to_numpy()
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    expected = np.minimum.accumulate(ranked[::-1])[::-1]
    np.testing.assert_allclose(table["q"].to_numpy()[order], np.minimum(expected, 1.0))


def test_sentences_name_the_enriched_genre_or_say_none_is():
    X, Y, genres = blobs()
    clustering = find_clusters(X, ClusterConfig(min_cluster_size=10))
    cards = cluster_cards(clustering, X, Y, genres)
    assert cards[0].sentences[0].startswith("A is 1.7× over-represented here (60 of 60; q < 0.001)")
    rng = np.random.default_rng(5)
    flat = (rng.random((200, 2)) < 0.3).astype(float)
    card = selection_card(np.arange(20), rng.normal(size=(200, 2)), flat, ("A", "B"))
    assert card.sentences == ["No genre is enriched here (every q ≥ 0.05)."]


def test_typical_posters_are_nearest_the_centre():
    X = np.array([[0.0, 0.0], [10.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    assert typical_rows(X, np.array([0, 1, 2, 3, 4]), n=2).tolist() == [4, 3]


def test_descriptor_effects_give_cohens_d_largest_first():
    values = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 6.0], [7.0, 6.0]])
    mask = np.array([True, True, False, False])
    table = descriptor_effects(values, ["brightness", "hue"], mask)
    # brightness: means 2 vs 6, pooled sd sqrt(2) -> d = -4 / sqrt(2); hue: constant within groups
    assert table["descriptor"].tolist() == ["hue", "brightness"]
    assert table.loc[1, "effect_size"] == pytest.approx(-4 / np.sqrt(2))
    assert table.loc[0, "effect_size"] == -np.inf


def test_selection_card_is_this_selection_vs_the_rest():
    X, Y, genres = blobs()
    card = selection_card(range(60), X, Y, genres, descriptors=X, descriptor_names=["x", "y"])
    assert card.size == 60 and card.name == "selection"
    top = card.enrichment.iloc[0]
    assert top["genre"] == "A" and top["share"] == 1.0 and top["share_rest"] == 0.0
    assert set(card.typical) <= set(range(60)) and len(card.typical) == 6
    assert card.descriptors["effect_size"].abs().min() > 5


def test_bad_inputs_are_refused():
    X, Y, genres = blobs()
    with pytest.raises(PosterGenreError, match="at least min_cluster_size"):
        find_clusters(X[:5], ClusterConfig(min_cluster_size=10))
    with pytest.raises(PosterGenreError, match="unknown clustering space"):
        find_clusters(X, ClusterConfig(space="tsne"))
    with pytest.raises(PosterGenreError, match="some but not all"):
        selection_card([], X, Y, genres)
    with pytest.raises(PosterGenreError, match="do not match 2 genres"):
        enrichment(Y, ["A", "B"], {})
