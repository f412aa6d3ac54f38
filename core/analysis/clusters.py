"""Clusters that describe themselves: HDBSCAN on the map (or PCA scores), and what sets each cluster apart.

A cluster card holds its size, its most typical posters (nearest the cluster's centre in the clustered
space), genre enrichment and the visual descriptors that differ most from the rest.

Enrichment is a one-sided hypergeometric test per (group, genre): drawing the group's ``n`` posters from
all ``N``, of which ``K`` have the genre, how likely are ``k`` or more with it? That is Fisher's exact
test of the group against the rest. The p-values of every genre in every group tested together are
corrected with Benjamini–Hochberg, so "Horror is 2.1× over-represented here (q < 0.001)" is a statement
about the whole table, and "no genre is enriched" is said when no q reaches ``ALPHA``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from core.errors import PosterGenreError

NOISE = -1
ALPHA = 0.05
N_TYPICAL = 6
SPACES = ("map", "pca")


@dataclass(frozen=True)
class ClusterConfig:
    space: str = "map"
    min_cluster_size: int = 25
    min_samples: int | None = None


@dataclass
class Clustering:
    labels: np.ndarray
    config: ClusterConfig

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) and self.labels.max() >= 0 else 0

    @property
    def noise_share(self) -> float:
        return float(np.mean(self.labels == NOISE)) if len(self.labels) else 0.0

    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels[self.labels >= 0], minlength=self.n_clusters)


@dataclass
class ClusterCard:
    """What one group of posters (a cluster or a selection) is, against the rest of the dataset."""

    name: str
    rows: np.ndarray
    typical: np.ndarray
    enrichment: pd.DataFrame
    descriptors: pd.DataFrame | None = None
    sentences: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.rows)


def find_clusters(X: np.ndarray, config: ClusterConfig = ClusterConfig()) -> Clustering:
    """HDBSCAN labels (``NOISE`` for unclustered posters) of the rows of ``X`` (map coordinates or PCA scores).

    Clusters are renumbered by decreasing size, so cluster 0 is the largest.
    """
    from sklearn.cluster import HDBSCAN

    X = np.asarray(X, dtype=np.float64)
    if config.space not in SPACES:
        raise PosterGenreError(f"unknown clustering space {config.space!r}", f"choose one of {', '.join(SPACES)}")
    if config.min_cluster_size < 2:
        raise PosterGenreError(f"min_cluster_size must be at least 2, got {config.min_cluster_size}")
    if X.ndim != 2 or len(X) < config.min_cluster_size:
        raise PosterGenreError(f"clustering needs at least min_cluster_size={config.min_cluster_size} posters, "
                               f"got a matrix of shape {X.shape}", "lower the minimum cluster size")
    raw = HDBSCAN(min_cluster_size=config.min_cluster_size, min_samples=config.min_samples,
                  copy=True).fit_predict(X)
    return Clustering(_by_size(raw), config)


def typical_rows(X: np.ndarray, rows: np.ndarray, n: int = N_TYPICAL) -> np.ndarray:
    """The ``n`` rows of the group nearest its centre (the mean of its points), nearest first."""
    points = np.asarray(X[np.asarray(rows)], dtype=np.float64)
    distance = np.linalg.norm(points - points.mean(axis=0), axis=1)
    return np.asarray(rows)[np.argsort(distance, kind="stable")[:n]]


def enrichment(Y: np.ndarray, genres: Sequence[str], groups: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per (group, genre): counts, shares in the group and in the rest, the ratio of the group's
    share to the dataset's, the hypergeometric p-value of over-representation and its BH q-value across
    all rows."""
    from scipy.stats import false_discovery_control, hypergeom

    labels = _labels(Y, genres)
    total, with_genre = len(labels), labels.sum(axis=0)
    frames = []
    for name, mask in groups.items():
        mask = _mask(mask, total)
        size, inside = int(mask.sum()), labels[mask].sum(axis=0)
        rest = total - size
        frames.append(pd.DataFrame({
            "group": name, "genre": list(genres), "with_genre": inside, "size": size,
            "share": inside / max(size, 1),
            "share_rest": np.divide(with_genre - inside, rest, out=np.full(len(genres), np.nan), where=rest > 0),
            "share_all": with_genre / total,
            "ratio": np.divide(inside / max(size, 1), with_genre / total,
                               out=np.full(len(genres), np.nan), where=with_genre > 0),
            "p": hypergeom.sf(inside - 1, total, with_genre, size),
        }))
    table = pd.concat(frames, ignore_index=True)
    table["p"] = table["p"].clip(0.0, 1.0)
    table["q"] = false_discovery_control(table["p"].to_numpy(), method="bh") if len(table) else []
    return table


def descriptor_effects(values: np.ndarray, names: Sequence[str], mask: np.ndarray) -> pd.DataFrame:
    """Per descriptor: mean in the group, mean in the rest, and Cohen's d (difference over the pooled
    standard deviation), largest |d| first. NaN values (a poster without a dominant hue) are left out."""
    values = np.asarray(values, dtype=np.float64)
    mask = _mask(mask, len(values))
    rows = []
    for column, name in enumerate(names):
        inside, outside = values[mask, column], values[~mask, column]
        inside, outside = inside[np.isfinite(inside)], outside[np.isfinite(outside)]
        rows.append({"descriptor": name, "mean": _mean(inside), "mean_rest": _mean(outside),
                     "effect_size": _cohens_d(inside, outside)})
    frame = pd.DataFrame(rows)
    return frame.iloc[np.argsort(-frame["effect_size"].abs().fillna(-1).to_numpy(), kind="stable")].reset_index(drop=True)


def describe_enrichment(table: pd.DataFrame, *, alpha: float = ALPHA, limit: int = 3) -> list[str]:
    """Plain sentences for the enriched genres of one group, or the statement that none is."""
    enriched = table[(table["q"] < alpha) & (table["ratio"] > 1)].sort_values(["q", "ratio"], ascending=[True, False])
    if enriched.empty:
        return [f"No genre is enriched here (every q ≥ {alpha:g})."]
    return [f"{row['genre']} is {row['ratio']:.1f}× over-represented here ({row['with_genre']} of {row['size']}; "
            f"{_q_text(row['q'])})" for row in enriched.head(limit).to_dict("records")]


def cluster_cards(clustering: Clustering, X: np.ndarray, Y: np.ndarray, genres: Sequence[str], *,
                  descriptors: np.ndarray | None = None, descriptor_names: Sequence[str] = (),
                  n_typical: int = N_TYPICAL, alpha: float = ALPHA) -> list[ClusterCard]:
    """A card per cluster, largest first; enrichment q-values are corrected across all clusters × genres."""
    groups = {f"cluster {c}": clustering.labels == c for c in range(clustering.n_clusters)}
    table = enrichment(Y, genres, groups) if groups else None
    return [_card(name, mask, X, table[table["group"] == name].reset_index(drop=True), descriptors,
                  descriptor_names, n_typical, alpha) for name, mask in groups.items()]


def selection_card(rows: Sequence[int], X: np.ndarray, Y: np.ndarray, genres: Sequence[str], *,
                   descriptors: np.ndarray | None = None, descriptor_names: Sequence[str] = (),
                   n_typical: int = N_TYPICAL, alpha: float = ALPHA) -> ClusterCard:
    """The same card for any set of posters (e.g. a lasso on the map): this selection vs the rest."""
    mask = np.zeros(len(Y), dtype=bool)
    mask[np.asarray(rows, dtype=np.int64)] = True
    if not mask.any() or mask.all():
        raise PosterGenreError(f"a selection card needs some but not all posters, got {int(mask.sum())} of {len(Y)}",
                               "select a region of the map")
    table = enrichment(Y, genres, {"selection": mask})
    return _card("selection", mask, X, table, descriptors, descriptor_names, n_typical, alpha)


def _card(name: str, mask: np.ndarray, X: np.ndarray, table: pd.DataFrame, descriptors, descriptor_names,
          n_typical: int, alpha: float) -> ClusterCard:
    rows = np.flatnonzero(mask)
    effects = (descriptor_effects(descriptors, descriptor_names, mask) if descriptors is not None else None)
    return ClusterCard(name=name, rows=rows, typical=typical_rows(X, rows, n_typical),
                       enrichment=table.sort_values("q", kind="stable").reset_index(drop=True),
                       descriptors=effects, sentences=describe_enrichment(table, alpha=alpha))


def _by_size(raw: np.ndarray) -> np.ndarray:
    labels = np.full(len(raw), NOISE, dtype=np.int64)
    found = np.unique(raw[raw >= 0], return_counts=True)
    for new, old in enumerate(found[0][np.argsort(-found[1], kind="stable")]):
        labels[raw == old] = new
    return labels


def _labels(Y: np.ndarray, genres: Sequence[str]) -> np.ndarray:
    labels = np.asarray(Y)
    if labels.ndim != 2 or labels.shape[1] != len(genres) or len(labels) == 0:
        raise PosterGenreError(f"labels of shape {labels.shape} do not match {len(genres)} genres",
                               "pass the multi-hot label matrix built with the same genre list")
    return (labels > 0.5).astype(np.int64)


def _mask(mask: np.ndarray, total: int) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (total,):
        raise PosterGenreError(f"a group mask of shape {mask.shape} does not cover {total} posters")
    return mask


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else float("nan")


def _cohens_d(inside: np.ndarray, outside: np.ndarray) -> float:
    if len(inside) < 2 or len(outside) < 2:
        return float("nan")
    pooled = ((len(inside) - 1) * inside.var(ddof=1) + (len(outside) - 1) * outside.var(ddof=1)) \
        / (len(inside) + len(outside) - 2)
    if pooled <= 0:
        return 0.0 if inside.mean() == outside.mean() else float(np.sign(inside.mean() - outside.mean()) * np.inf)
    return float((inside.mean() - outside.mean()) / np.sqrt(pooled))


def _q_text(q: float) -> str:
    return "q < 0.001" if q < 0.001 else f"q = {q:.3f}"
