"""Clusters: do similar posters sit together? A UMAP map, nearest neighbours, and the numbers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core.analysis.maps import (METRICS, SAMPLE_SIZE, SAMPLE_THRESHOLD, Embedding, UmapConfig, cached_umap,
                                compute_umap, genre_membership, primary_genre)
from core.analysis.neighbours import (APPROXIMATE_THRESHOLD, approximate, cached_knn_indices, indexed_neighbors,
                                      knn_genre_agreement, knn_indices, nearest_neighbors)
from core.errors import PosterGenreError
from core.model.experiment import genre_labels
from core.features.backbones import BACKBONES
from core.model.runs import Run
from pages._explain import clusters_section, mosaic_section
from pages._shared import active_dataset, fingerprint, keep_out_of_gc_passes, require_features, route_through_app
from pages._widgets import (all_runs, dataset_runs, poster_picker, require_runs, run_selector, thumbnails,
                            view_matrix)

K_MAX = 50
SELECTION_CAP = 40
PRIMARY = "(primary genre)"
NEIGHBOUR_SEARCH_RATE = 2e10  # n² · d per second of the exact all-pairs search on 2 cores (4,596 x 25,088: 27 s)
AUTO_NEIGHBOUR_SECONDS = 3.0
APPROXIMATE_SEARCH_RATE = 2e8  # n · d per second of the NN-descent index on 2 cores (100,000 x 1,024: ~8 min)
APPROXIMATE_MAX_BYTES = 2 * 2**30  # the index holds a float32 copy of the matrix
WEBGL_MIN_POINTS = 1000  # above it WebGL, as plotly express chose by itself; box and lasso selection work in both
PALETTE = px.colors.qualitative.Dark24 + px.colors.qualitative.Light24


@dataclass
class Posters:
    """One row per feature row: what the page shows about each poster."""

    frame: pd.DataFrame
    Y: np.ndarray
    genres: tuple[str, ...]
    ids: list[str]
    row_of: dict[str, int]
    label_of: dict[str, str]
    """The poster picker's "title (id)" of each id."""
    hover: np.ndarray
    """The map's hover text of each row: the title in bold, then the genres."""


@dataclass
class MapSource:
    label: str
    key: str
    X: np.ndarray


def poster_table(dataset, features) -> Posters:
    stamp = fingerprint(dataset.root)
    return Posters(*_poster_table(features.key, str(dataset.root), stamp, dataset, features))


@st.cache_resource(show_spinner=False, max_entries=8)
def _poster_table(features_key: str, root: str, stamp: tuple, _dataset, _features):
    """Shared by every session and rerun without a copy (100,000 rows): nothing may change it."""
    truth = genre_labels(_dataset, _features.ids)
    labels, genres, Y = truth.labels, truth.vocabulary.genres, truth.Y
    path_of = {poster.id: str(poster.path) for poster in _dataset.posters}
    title_of = {poster.id: poster.title for poster in _dataset.posters}
    frame = pd.DataFrame({
        "row": np.arange(len(labels)),
        "id": _features.ids,
        "title": [title_of[id_] for id_ in _features.ids],
        "genres": [", ".join(g) for g in labels],
        "path": [path_of[id_] for id_ in _features.ids],
        "key": _features.keys,
        "primary": primary_genre(Y, genres),
    })
    ids = list(_features.ids)
    table = (frame, Y, genres, ids, {id_: row for row, id_ in enumerate(ids)},
             {id_: f"{title} ({id_})" for id_, title in zip(ids, frame["title"])},
             ("<b>" + frame["title"] + "</b><br>" + frame["genres"]).to_numpy())
    keep_out_of_gc_passes(len(ids))
    return table


@st.cache_resource(show_spinner="Computing the run's hidden-layer activations…", max_entries=4)
def hidden_activations(run_token: tuple, features_key: str, _run: Run, _features) -> np.ndarray:
    """The last hidden layer of the run's MLP (its first network, for an ensemble) for every poster."""
    return _run.hidden_activations(view_matrix(_features, _run.config.feature_view))


@st.cache_data(show_spinner=False, max_entries=16)
def umap_map(matrix_key: str, config: UmapConfig, _X) -> Embedding:
    return compute_umap(_X, config, features_key=matrix_key)


def map_on_disk(source: MapSource, config: UmapConfig) -> bool:
    """Whether core's disk cache already holds this map (then it is shown without a click)."""
    return cached_umap(source.X, config, features_key=source.key) is not None


@st.cache_resource(show_spinner="Finding every poster's nearest neighbours (once per feature source)…",
                   max_entries=4)
def neighbour_index(matrix_key: str, _X) -> np.ndarray:
    return knn_indices(_X, k=K_MAX, features_key=matrix_key)


def neighbour_index_ready(source: MapSource) -> bool:
    """Fast searches run at once; a long one (flattened features: ~30 s) waits for a click."""
    n, d = source.X.shape
    if approximate(n):
        st.caption(f"Neighbours are approximate above {APPROXIMATE_THRESHOLD:,} posters: an NN-descent index "
                   "(pynndescent) instead of the exact search, whose cost grows as the square of the posters "
                   "(its recall against exact neighbours is measured by bench/scale.py).")
        if n * d * 4 > APPROXIMATE_MAX_BYTES and cached_knn_indices(source.key, k=K_MAX, n=n) is None:
            st.info(f"The approximate index of {n:,} posters in {d:,} dimensions would hold "
                    f"{n * d * 4 / 2**30:.0f} GB in memory: pick a pooled feature view for neighbour statistics.")
            return False
    seconds = n * d / APPROXIMATE_SEARCH_RATE if approximate(n) else n * n * d / NEIGHBOUR_SEARCH_RATE
    if seconds <= AUTO_NEIGHBOUR_SECONDS or cached_knn_indices(source.key, k=K_MAX, n=n) is not None:
        return True
    st.info(f"Finding the {K_MAX} nearest neighbours of all {n:,} posters in {d:,} dimensions takes about "
            f"{seconds:.0f} s (once: the result is cached on disk; the pooled views take seconds).")
    return st.button("Compute neighbour statistics", key="compute_agreement")


@st.cache_data(show_spinner=False, max_entries=64)
def agreement_table(matrix_key: str, labels_key: str, k: int, _X, _Y, genres: tuple[str, ...]) -> pd.DataFrame:
    return knn_genre_agreement(_X, _Y, genres, k=k, neighbours=neighbour_index(matrix_key, _X))


@st.cache_data(show_spinner=False, max_entries=512)
def similar_posters(matrix_key: str, row: int, n: int, _X) -> tuple[np.ndarray, np.ndarray]:
    """From the neighbour index once it is on disk (``K_MAX`` per poster), else one search against every row."""
    index = cached_knn_indices(matrix_key, k=K_MAX, n=len(_X)) if n <= K_MAX else None
    if index is None:
        return nearest_neighbors(_X, row, n=n)
    return indexed_neighbors(_X, index, row, n=n)


def map_runs(dataset, features) -> list[Run]:
    """The dataset's runs, then runs on these very features saved from another folder (a moved or
    copied dataset: the features key hashes the poster contents, not the path)."""
    runs = dataset_runs(dataset)
    known = {run.folder for run in runs}
    return runs + [run for run in all_runs()
                   if run.folder not in known and run.features_info.get("key") == features.key]


def source_controls(dataset, features) -> MapSource:
    backbone = BACKBONES[features.config.backbone].label
    kind = st.radio("Map of", ["features", "run"], horizontal=True, key="map_source",
                    format_func={"features": f"{backbone} features", "run": "a trained run's last hidden layer"}.get)
    if kind == "features":
        views = features.views()
        if st.session_state.get("map_view") not in views:
            st.session_state.pop("map_view", None)
        view = st.selectbox("Feature view", list(views), format_func=views.get, key="map_view")
        return MapSource(f"{backbone} features, {views[view]}", features.view_key(view), view_matrix(features, view))
    runs = map_runs(dataset, features)
    require_runs(runs, dataset)
    run = run_selector(runs, key="map_run", help="Runs on this dataset's features, newest first.")
    try:
        run.check_features(features)
        X = hidden_activations(run.cache_token, features.key, run, features)
    except PosterGenreError as err:
        st.error(str(err))
        st.stop()
    if run.config.head == "kernel":
        st.caption("A kernel-head run has no hidden layer: the map is drawn from each poster's similarity to the "
                   "head's centres (its training posters), the features the head's one linear layer reads. "
                   "The similarities were not trained on genres; the map shows the feature space the head sees.")
        what = f"kernel similarities ({X.shape[1]}-d)"
    else:
        st.caption("The MLP was trained on these genres, so its training posters cluster by genre by construction; "
                   "the map shows what the model learned, not what the posters share on their own."
                   + (f" An ensemble's map shows the first of its {run.config.ensemble} networks."
                      if run.config.ensemble > 1 else ""))
        what = f"hidden layer {len(run.config.hidden)} ({X.shape[1]}-d)"
    # ``Run.created`` keeps a retrained run (same key, new weights) from reusing the old map on disk.
    return MapSource(f"{what} of run {run.key[:8]}", f"{features.key}-run-{run.key}-{run.created}", X)


def umap_controls() -> UmapConfig:
    left, middle, right, last = st.columns(4)
    n_neighbors = left.slider("n_neighbors", 2, 100, 15, key="umap_neighbors",
                              help="Small: local detail. Large: global structure.")
    min_dist = middle.slider("min_dist", 0.0, 0.99, 0.1, 0.01, key="umap_min_dist",
                             help="How tightly UMAP may pack points together.")
    metric = right.selectbox("Metric", METRICS, key="umap_metric")
    pca = last.slider("PCA dimensions before UMAP", 2, 200, 50, key="umap_pca")
    return UmapConfig(n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, pca_components=pca)


def color_controls(genres: tuple[str, ...]) -> str:
    return st.selectbox("Colour by", [PRIMARY, *genres], key="color_genre",
                        format_func=lambda choice: "primary genre (each poster's rarest)" if choice == PRIMARY
                        else f"{choice}: in / out")


def compute_map(source: MapSource, config: UmapConfig) -> Embedding | None:
    if not map_on_disk(source, config):
        n, d = source.X.shape
        sample = (f" UMAP is fitted on a random sample of {SAMPLE_SIZE:,} posters and the others are placed on "
                  "it, as a full fit at this size would take far too long." if n > SAMPLE_THRESHOLD else "")
        st.info(f"This map is not computed yet: UMAP of {n:,} × {d:,} features (after PCA to "
                f"{config.pca_components}) takes from seconds to a few minutes; it is cached on disk afterwards."
                + sample)
        if not st.button("Compute map", key="compute_map", type="primary"):
            return None
    try:
        with st.spinner("Computing the UMAP map…"):
            embedding = umap_map(source.key, config, source.X)
    except PosterGenreError as err:
        st.error(str(err))
        return None
    st.caption(f"Map loaded from the disk cache in {embedding.seconds:.2f} s" if embedding.from_cache
               else f"Map computed in {embedding.seconds:.1f} s (now cached on disk)")
    if embedding.fitted_on:
        st.caption(f"Fitted on a sample of {embedding.fitted_on:,} of the {len(embedding.coords):,} posters "
                   "(PCA and UMAP); the others were placed on it with UMAP's transform.")
    return embedding


@st.cache_resource(show_spinner=False, max_entries=8)
def shared_map_figure(labels_key: str, source_key: str, config: UmapConfig, color: str, _posters: Posters,
                      _coords: np.ndarray):
    """The map's figure, built once per map and colouring: ``st.plotly_chart`` copies it and changes nothing."""
    return map_figure(_posters, _coords, color)


def map_figure(posters: Posters, coords: np.ndarray, color: str):
    """One trace per colour, built with graph objects: a point's hover text is one string (title and genres)
    and its customdata its row number, so serialising 100,000 points takes a fraction of a second (plotly
    express would send three per-point columns through its slow per-element path)."""
    frame = posters.frame
    if color == PRIMARY:
        groups = frame["primary"].to_numpy()
        order = list(frame["primary"].value_counts().index)
        colours = dict(zip(order, PALETTE * 2))
    else:
        outside = f"not {color}"
        groups = np.where(genre_membership(posters.Y, posters.genres, color), color, outside)
        order, colours = [outside, color], {outside: "#c8c8c8", color: "#d62728"}
    hover = posters.hover
    rows = frame["row"].to_numpy()
    trace = go.Scattergl if len(frame) > WEBGL_MIN_POINTS else go.Scatter
    marker = {"size": 6 if len(frame) > 1000 else 9, "opacity": 0.8}
    fig = go.Figure([trace(x=coords[inside, 0], y=coords[inside, 1], mode="markers", name=str(name),
                           customdata=rows[inside, None], hovertext=hover[inside], hoverinfo="text",
                           marker={**marker, "color": colours[name]})
                     for name in order for inside in [groups == name] if inside.any()])
    fig.update_layout(height=620, legend_title_text="", margin={"l": 0, "r": 0, "t": 10, "b": 0},
                      xaxis={"visible": False}, yaxis={"visible": False})
    return fig


def selected_rows(event) -> list[int]:
    points = event.selection.points if event else []
    return sorted({int(point["customdata"][0]) for point in points if point.get("customdata")})


def follow_click(rows: list[int], frame: pd.DataFrame) -> None:
    """A single clicked point becomes the picked poster, once per click (the selectbox stays usable)."""
    if len(rows) == 1 and st.session_state.get("clusters_last_click") != rows[0]:
        st.session_state["clusters_last_click"] = rows[0]
        st.session_state["pick_poster"] = frame["id"].iat[rows[0]]


def genre_shares(posters: Posters, rows: list[int]) -> pd.DataFrame:
    overall = posters.Y.mean(axis=0)
    selected = posters.Y[rows].mean(axis=0)
    return pd.concat([
        pd.DataFrame({"genre": posters.genres, "share": selected, "posters": f"selected ({len(rows)})"}),
        pd.DataFrame({"genre": posters.genres, "share": overall, "posters": f"all ({len(posters.Y)})"}),
    ])


def poster_grid(frame: pd.DataFrame, rows, captions: list[str], width: int = 120) -> None:
    st.image(thumbnails(frame["path"].iat[row] for row in rows), caption=captions, width=width)


def draw_selection(posters: Posters, rows: list[int]) -> None:
    frame = posters.frame
    st.subheader(f"Selection: {len(rows)} posters")
    shown = rows[:SELECTION_CAP]
    if len(rows) > SELECTION_CAP:
        st.caption(f"Showing the first {SELECTION_CAP} of {len(rows)}.")
    poster_grid(frame, shown, [f"{frame['title'].iat[r]} — {frame['genres'].iat[r]}" for r in shown])
    shares = genre_shares(posters, rows)
    fig = px.bar(shares, x="genre", y="share", color="posters", barmode="group",
                 category_orders={"genre": list(posters.frame["genres"].str.split(", ").explode()
                                                .value_counts().index)})
    fig.update_layout(height=320, yaxis_tickformat=".0%", legend_title_text="", margin={"t": 10})
    st.plotly_chart(fig, key="selection_genres")


def draw_neighbours(posters: Posters, source: MapSource) -> None:
    frame = posters.frame
    st.subheader("Nearest neighbours of one poster")
    st.caption(f"Cosine similarity in the space of the map ({source.label}). Click a single point on the map "
               "or pick a title.")
    left, right = st.columns([3, 1])
    picked = poster_picker("Poster", posters.ids, posters.label_of, key="pick_poster", target=left)
    n = right.slider("Neighbours shown", 4, 24, 8, key="n_similar")
    row = posters.row_of[picked]
    order, similarity = similar_posters(source.key, row, n, source.X)
    poster_grid(frame, [row], [f"{frame['title'].iat[row]} — {frame['genres'].iat[row]}"], width=180)
    poster_grid(frame, order, [f"{frame['title'].iat[r]} · {s:.2f} · {frame['genres'].iat[r]}"
                               for r, s in zip(order, similarity)])


def agreement_controls(n_posters: int) -> int:
    top = min(K_MAX, n_posters - 1)
    return st.slider("k (neighbours per poster)", 1, top, min(10, top), key="agreement_k")


def draw_agreement(table: pd.DataFrame, k: int) -> None:
    overall = table.iloc[0]
    first, second, third = st.columns(3)
    first.metric(f"Neighbours sharing a genre (k={k})", f"{overall['observed']:.0%}")
    second.metric("By chance (labels shuffled)", f"{overall['chance']:.0%}")
    third.metric("Lift", f"{overall['lift']:.2f}×")
    st.dataframe(table, hide_index=True, column_config={
        "observed": st.column_config.NumberColumn("observed", format="percent"),
        "chance": st.column_config.NumberColumn("chance", format="percent"),
        "lift": st.column_config.NumberColumn("lift", format="%.2f×"),
    })
    per_genre = table.iloc[1:].melt(id_vars="genre", value_vars=["observed", "chance"], var_name="measure",
                                     value_name="share of neighbours with the genre")
    fig = px.bar(per_genre, x="genre", y="share of neighbours with the genre", color="measure", barmode="group")
    fig.update_layout(height=340, yaxis_tickformat=".0%", margin={"t": 10})
    st.plotly_chart(fig, key="agreement_chart")


route_through_app()
st.title("Clusters")
st.caption("Do similar posters sit together? A UMAP map of the features, nearest neighbours, and numbers.")

dataset, _ = active_dataset()
features = require_features(dataset)
posters = poster_table(dataset, features)
source = source_controls(dataset, features)
labels_key = f"{features.key}-{fingerprint(dataset.root)}"

st.subheader("UMAP map")
config = umap_controls()
embedding = compute_map(source, config)
if embedding is not None:
    color = color_controls(posters.genres)
    figure = shared_map_figure(labels_key, source.key, config, color, posters, embedding.coords)
    event = st.plotly_chart(figure, key="umap_chart",
                            on_select="rerun", selection_mode=("points", "box", "lasso"))
    rows = selected_rows(event)
    follow_click(rows, posters.frame)
    if len(rows) > 1:
        draw_selection(posters, rows)
    else:
        st.caption("Drag a box or lasso on the map to see those posters and their genres.")

draw_neighbours(posters, source)

st.subheader("Do neighbours share genres?")
st.caption("For each genre: among posters with it, the share of their k nearest neighbours that have it too, "
           "against the same figure with the labels shuffled across posters (chance). Overall: share of "
           "neighbours sharing at least one genre.")
if neighbour_index_ready(source):
    k = agreement_controls(len(posters.Y))
    draw_agreement(agreement_table(source.key, labels_key, k, source.X, posters.Y, posters.genres), k)

if embedding is not None:
    mosaic_section(posters.frame, features.key, embedding.coords, rows)
    clusters_section(dataset, posters.frame, features.key, posters.Y, posters.genres, embedding.coords, source.key,
                     source.X, rows)
