""""See why" sections: the poster mosaic, self-describing clusters, visual descriptors and Grad-CAM.

Each page calls one function of this module; the computing happens in ``core`` (mosaic, clusters,
descriptors, gradcam) behind Streamlit caches kept here. Imported, not run as a page.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from core.analysis.clusters import ClusterCard, ClusterConfig, cluster_cards, find_clusters, selection_card
from core.analysis.maps import reduce_pca
from core.analysis.mosaic import (ASSIGN_MAX_POSTERS, THUMB_HEIGHT, THUMB_WIDTH, atlas_file, missing_thumbnails,
                                  mosaic_image, mosaic_layout, thumbnail_atlas)
from core.data.images import thumbnail
from core.errors import PosterGenreError
from core.features.backbones import BACKBONES
from core.features.byproducts import backfill
from core.features.descriptors import (DESCRIPTORS, NAMES, Descriptors, dataset_descriptors, descriptors_cached,
                                       map_neighbours, map_structure)
from core.model.gradcam import BACKBONE_VIEW_LAYERS, GradCam, localisation_caveat, overlay
from core.model.runs import Run
from pages._shared import fingerprint, progress_bar
from pages._widgets import thumbnails

CLUSTER_CARDS_SHOWN = 12
AUTO_POSTERS = 500
"""Up to this many posters, descriptors and thumbnails are computed without asking; more wait for a click
(extraction makes both, so only folders extracted before they existed ever see the click)."""
MAP_NEIGHBOURS = 10
PCA_COMPONENTS = 20
CLUSTER_COLOUR = "(cluster)"
UPLOAD = "(upload a poster)"
OVERLAY_SIDE = 480


# ---- cached calls into core ---------------------------------------------------------------------

@st.cache_resource(show_spinner=False)
def _found_on_disk() -> set[tuple[str, str]]:
    """``(what, contents)`` pairs this server found complete in the disk cache. They stay there, so a rerun
    does not check every poster again (about 0.05 s per check at 100,000 posters)."""
    return set()


def _on_disk(what: str, contents: str, check) -> bool:
    found = _found_on_disk()
    if (what, contents) not in found and check():
        found.add((what, contents))
    return (what, contents) in found


@st.cache_resource(show_spinner=False, max_entries=4)
def _atlas_file(contents: str, _paths: tuple[str, ...], _keys: tuple[str, ...]):
    """Hashing 100,000 keys takes about 0.05 s: once per set of posters, not on every rerun."""
    return atlas_file(_paths, keys=_keys)


@st.cache_resource(show_spinner="Decoding poster thumbnails (once: they are cached on disk)…", max_entries=4)
def _atlas(contents: str, _paths: tuple[str, ...], _keys: tuple[str, ...]) -> np.ndarray:
    return thumbnail_atlas(_paths, keys=_keys)


@st.cache_resource(show_spinner="Computing visual descriptors (once: they are cached on disk)…", max_entries=4)
def _descriptors(root: str, stamp: tuple, _dataset) -> Descriptors:
    """Shared by every session without a copy: nothing may change it."""
    return dataset_descriptors(_dataset)


@st.cache_resource(show_spinner=False, max_entries=4)
def _descriptor_rows(contents: str, root: str, stamp: tuple, _dataset, _ids) -> np.ndarray:
    rows = _descriptors(root, stamp, _dataset).for_ids(list(_ids))
    rows.flags.writeable = False
    return rows


@st.cache_data(show_spinner=False, max_entries=8)
def _pca_scores(source_key: str, _X) -> np.ndarray:
    return reduce_pca(_X, PCA_COMPONENTS)


@st.cache_data(show_spinner="Finding clusters…", max_entries=16)
def _clustering(source_key: str, config: ClusterConfig, _points):
    return find_clusters(_points, config)


@st.cache_resource(show_spinner="Building the end-to-end model (the backbone → the run's network)…", max_entries=2)
def _gradcam(folder: str, created: str, _run: Run) -> GradCam:
    return GradCam(_run)


def descriptors_for(dataset, ids, contents: str, *, compute: bool) -> np.ndarray | None:
    """Descriptor rows in the order of ``ids`` (read-only, shared), or None when they are not cached and
    ``compute`` is False. ``contents`` names ``ids``' posters (a features key)."""
    if not compute and not _descriptors_on_disk(dataset):
        return None
    return _descriptor_rows(contents, str(dataset.root), fingerprint(dataset.root), dataset, ids)


def _descriptors_on_disk(dataset) -> bool:
    return _on_disk("descriptors", f"{dataset.root}-{fingerprint(dataset.root)}", lambda: descriptors_cached(dataset))


def _descriptor_gate(dataset, key: str) -> bool:
    """Small datasets and cached descriptors go ahead; a first computation for a large one waits for a click."""
    done = f"{key}_done"
    if len(dataset) <= AUTO_POSTERS or st.session_state.get(done) or _descriptors_on_disk(dataset):
        return True
    st.info(f"Visual descriptors are not computed for these {len(dataset):,} posters yet (they were extracted "
            "before extraction made them): each poster is decoded once, for its descriptors and its mosaic "
            "thumbnail (about a minute per few thousand), then both are cached on disk.")
    st.session_state[done] = st.button("Compute visual descriptors", key=key)
    if st.session_state[done]:
        _backfill(dataset.paths, dataset.content_keys())
    return st.session_state[done]


def _backfill(paths, keys) -> None:
    """The one-time decode of posters extracted before thumbnails and descriptors were made with features."""
    box = st.empty()
    backfill(list(paths), list(keys), progress=progress_bar(box, "Decoding posters once for thumbnails and "
                                                                   "descriptors…"))
    box.empty()


def _mosaic_ready(contents: str, paths: tuple[str, ...], keys: tuple[str, ...]) -> bool:
    """Small sets and thumbnails made by extraction go ahead; a large set extracted before waits for a click."""
    if len(paths) <= AUTO_POSTERS or _atlas_file(contents, paths, keys).is_file() \
            or _on_disk("thumbnails", contents, lambda: not missing_thumbnails(keys)):
        return True
    if not st.button(f"Build the mosaic (decodes {len(paths):,} posters once, about 30 s per thousand, and "
                     "caches their thumbnails and visual descriptors)", key="build_mosaic"):
        return False
    _backfill(paths, keys)
    return True


# ---- Clusters page: mosaic ----------------------------------------------------------------------

def mosaic_section(frame: pd.DataFrame, contents: str, coords: np.ndarray, rows: list[int]) -> None:
    """The current map (or the box/lasso selection on it) drawn with the posters themselves; ``contents``
    names the frame's posters (a features key)."""
    st.subheader("Poster mosaic")
    subset = np.asarray(rows if len(rows) > 1 else np.arange(len(frame)))
    st.caption(("The selected region" if len(rows) > 1 else "The whole map") + " snapped to a grid; each cell "
               "shows the poster nearest its centre. Scroll to zoom, drag to pan.")
    left, right = st.columns(2)
    columns = left.slider("Grid columns", 10, 80, 40, key="mosaic_columns")
    methods = ["snap"] + (["assign"] if len(subset) <= ASSIGN_MAX_POSTERS else [])
    method = right.radio("Layout", methods, horizontal=True, key="mosaic_layout", format_func={
        "snap": "map shape (empty cells stay empty)", "assign": "dense grid (every poster shown)"}.get)
    if method not in methods:
        method = "snap"
    paths, keys = tuple(frame["path"]), tuple(frame["key"])
    if not _mosaic_ready(contents, paths, keys):
        return
    atlas = _atlas(contents, paths, keys)
    started = time.perf_counter()
    try:
        layout = mosaic_layout(coords[subset], columns=columns, method=method)
    except PosterGenreError as err:
        st.error(str(err))
        return
    image = mosaic_image(layout, atlas, subset)
    seconds = time.perf_counter() - started
    fig = px.imshow(image)
    fig.update_layout(dragmode="pan", height=min(900, max(300, image.shape[0] * 900 // max(image.shape[1], 1))),
                      margin={"l": 0, "r": 0, "t": 0, "b": 0}, xaxis={"visible": False}, yaxis={"visible": False})
    fig.update_traces(hoverinfo="skip", hovertemplate=None)
    st.plotly_chart(fig, key="mosaic_chart", config={"scrollZoom": True})
    st.caption(f"{len(layout.shown()):,} of {len(subset):,} posters on a {layout.shape[0]}×{layout.shape[1]} grid "
               f"of {THUMB_WIDTH}×{THUMB_HEIGHT} px thumbnails, built in {seconds:.2f} s.")


# ---- Clusters page: clusters, descriptors, map structure ----------------------------------------

def cluster_controls() -> ClusterConfig:
    left, middle, right = st.columns(3)
    space = left.radio("Cluster on", ["map", "pca"], horizontal=True, key="cluster_space",
                       format_func={"map": "the 2-D map", "pca": f"PCA scores ({PCA_COMPONENTS}-d)"}.get)
    size = middle.slider("Minimum cluster size", 3, 200, 25, key="cluster_min_size",
                         help="HDBSCAN's min_cluster_size: smaller finds more, smaller clusters.")
    samples = right.slider("min_samples (0: same as the minimum size)", 0, 100, 0, key="cluster_min_samples",
                           help="Larger: more posters called noise.")
    return ClusterConfig(space=space, min_cluster_size=size, min_samples=samples or None)


def clusters_section(dataset, frame: pd.DataFrame, contents: str, Y: np.ndarray, genres: tuple[str, ...],
                     coords: np.ndarray, source_key: str, X: np.ndarray, rows: list[int]) -> None:
    """'Find clusters' with a card per cluster, the same card for a selection, and colour vs genre on the map."""
    st.subheader("Clusters that describe themselves")
    st.caption("HDBSCAN finds dense groups; each card compares a group with the whole dataset: genre shares "
               "(hypergeometric test, Benjamini–Hochberg q across all clusters × genres) and the visual "
               "descriptors that differ most (Cohen's d).")
    config = cluster_controls()
    ready = st.session_state.get("clusters_found") or st.button("Find clusters", key="find_clusters", type="primary")
    descriptors = descriptors_for(dataset, frame["id"], contents,
                                  compute=_descriptor_gate(dataset, "compute_descriptors"))
    if ready:
        st.session_state["clusters_found"] = True
        points = coords if config.space == "map" else _pca_scores(source_key, X)
        try:
            clustering = _clustering(source_key, config, points)
        except PosterGenreError as err:
            st.error(str(err))
            return
        first, second = st.columns(2)
        first.metric("Clusters", clustering.n_clusters)
        second.metric("Noise (in no cluster)", f"{clustering.noise_share:.0%}")
        colour_map(frame, coords, descriptors, clustering.labels)
        cards = cluster_cards(clustering, points, Y, genres, descriptors=descriptors, descriptor_names=NAMES)
        for card in cards[:CLUSTER_CARDS_SHOWN]:
            draw_card(card, frame)
        if len(cards) > CLUSTER_CARDS_SHOWN:
            st.caption(f"{len(cards) - CLUSTER_CARDS_SHOWN} smaller clusters not shown.")
    elif descriptors is not None:
        colour_map(frame, coords, descriptors, None)
    if len(rows) > 1:
        try:
            draw_card(selection_card(rows, coords, Y, genres, descriptors=descriptors, descriptor_names=NAMES), frame,
                      title=f"Selection: {len(rows)} posters vs the rest", typical=False)
        except PosterGenreError as err:
            st.info(str(err))
    if descriptors is not None:
        structure_section(coords, descriptors, Y, genres)


def colour_map(frame: pd.DataFrame, coords: np.ndarray, descriptors: np.ndarray | None,
               labels: np.ndarray | None) -> None:
    options = ([CLUSTER_COLOUR] if labels is not None else []) + (list(NAMES) if descriptors is not None else [])
    key = "explain_colour_clusters" if labels is not None else "explain_colour"
    choice = st.selectbox("Colour this map by", options, key=key, format_func=lambda name:
                          "cluster" if name == CLUSTER_COLOUR else f"{name}: {DESCRIPTORS[name]}")
    data = frame[["title", "genres"]].assign(x=coords[:, 0], y=coords[:, 1])
    if choice == CLUSTER_COLOUR:
        data["colour"] = np.where(labels < 0, "noise", pd.Series(labels).map("cluster {}".format))
        fig = px.scatter(data, x="x", y="y", color="colour", hover_name="title", color_discrete_map={"noise": "#d0d0d0"},
                         category_orders={"colour": sorted(set(data["colour"]), key=_cluster_order)})
    else:
        data[choice] = descriptors[:, NAMES.index(choice)]
        fig = px.scatter(data, x="x", y="y", color=choice, hover_name="title",
                         color_continuous_scale="HSV" if choice == "dominant_hue" else "Viridis")
    fig.update_traces(marker={"size": 5 if len(data) > 1000 else 8})
    fig.update_layout(height=520, margin={"l": 0, "r": 0, "t": 10, "b": 0}, legend_title_text="",
                      xaxis={"visible": False}, yaxis={"visible": False})
    st.plotly_chart(fig, key="explain_map")


def draw_card(card: ClusterCard, frame: pd.DataFrame, *, title: str | None = None, typical: bool = True) -> None:
    """A cluster card; ``typical=False`` leaves out the typical posters (a selection's are shown above it)."""
    with st.container(border=True):
        st.markdown(f"**{title or card.name.capitalize()}** · {card.size:,} posters")
        for sentence in card.sentences:
            st.markdown(f"- {sentence}")
        if typical:
            st.image(thumbnails(frame["path"].iloc[card.typical]), width=90,
                     caption=[frame["title"].iat[row] for row in card.typical])
        left, right = st.columns(2)
        shown = card.enrichment[["genre", "with_genre", "share", "share_all", "ratio", "q"]].head(5)
        left.dataframe(shown, hide_index=True, key=f"enrichment_{card.name}", column_config={
            "with_genre": "posters", "share": st.column_config.NumberColumn("share here", format="percent"),
            "share_all": st.column_config.NumberColumn("share overall", format="percent"),
            "ratio": st.column_config.NumberColumn("ratio", format="%.2f×"),
            "q": st.column_config.NumberColumn("q (BH)", format="%.2g")})
        if card.descriptors is not None:
            right.dataframe(card.descriptors.head(3), hide_index=True, key=f"descriptors_{card.name}", column_config={
                "mean": st.column_config.NumberColumn("here", format="%.3g"),
                "mean_rest": st.column_config.NumberColumn("rest", format="%.3g"),
                "effect_size": st.column_config.NumberColumn("Cohen's d", format="%+.2f")})


def structure_section(coords: np.ndarray, descriptors: np.ndarray, Y: np.ndarray, genres: tuple[str, ...]) -> None:
    st.markdown("**Is the map organised by colour or by genre?**")
    table = map_structure(map_neighbours(coords, MAP_NEIGHBOURS), descriptors, Y, genres)
    best = table.dropna(subset=["explained"]).groupby("kind")["explained"].max()
    first, second = st.columns(2)
    first.metric("Most map-shared descriptor (r)", f"{best.get('descriptor', np.nan):.2f}")
    second.metric("Most map-shared genre (r)", f"{best.get('genre', np.nan):.2f}")
    st.caption(f"Correlation between a poster's value and the mean of its {MAP_NEIGHBOURS} nearest map neighbours' "
               "(0: the map ignores it, 1: neighbours share it), the same number for a descriptor and for a "
               "0/1 genre column.")
    st.dataframe(table, hide_index=True, key="map_structure", column_config={
        "explained": st.column_config.NumberColumn("shared by map neighbours (r)", format="%.2f")})


def _cluster_order(name: str) -> tuple[int, int]:
    return (1, 0) if name == "noise" else (0, int(name.split()[-1]))


# ---- Data page ----------------------------------------------------------------------------------

def descriptor_boxplots(dataset) -> None:
    """Per-genre box plots of one visual descriptor."""
    st.subheader("Visual descriptors by genre")
    if not st.toggle("Show brightness, colour and edge statistics per genre", key="descriptors_on"):
        return
    if not _descriptor_gate(dataset, "compute_descriptors_data"):
        return
    result = _descriptors(str(dataset.root), fingerprint(dataset.root), dataset)
    name = st.selectbox("Descriptor", NAMES, key="descriptor_box", format_func=lambda n: f"{n}: {DESCRIPTORS[n]}")
    genres_of = {poster.id: poster.genres for poster in dataset.posters}
    frame = result.frame().assign(genre=lambda f: f["id"].map(genres_of)).explode("genre")
    order = list(frame["genre"].value_counts().index)
    fig = px.box(frame, x="genre", y=name, category_orders={"genre": order}, points=False)
    fig.update_layout(height=380, margin={"t": 10})
    st.plotly_chart(fig, key="descriptor_boxplot")
    if result.failed:
        st.caption(f"{len(result.failed)} posters could not be decoded and have no descriptors.")


# ---- Predictions page ---------------------------------------------------------------------------

def gradcam_section(run: Run, dataset) -> None:
    """Where the run's model looks on a test poster or an upload, for the genre the user picks."""
    st.subheader("Where the model looks (Grad-CAM)")
    if not st.toggle("Show a heatmap of where the model looks (about 2 s per poster and genre)", key="gradcam_on"):
        return
    if run.config.feature_view not in BACKBONE_VIEW_LAYERS.get(run.feature_config.backbone, {}):
        explained = " and ".join(BACKBONES[name].label for name in BACKBONE_VIEW_LAYERS)
        st.info(f"Grad-CAM explains runs on {explained} features; this run's are {run.features_label}.")
        return
    posters = {poster.id: poster for poster in dataset.posters}
    choices = [UPLOAD] + [id_ for id_ in run.split["test"] if id_ in posters]
    picked = st.selectbox("Poster", choices, key="gradcam_poster",
                          format_func=lambda id_: id_ if id_ == UPLOAD else f"{posters[id_].title} ({id_})",
                          index=1 if len(choices) > 1 else 0)
    if picked == UPLOAD:
        upload = st.file_uploader("Poster image", type=["jpg", "jpeg", "png", "webp"], key="gradcam_upload")
        if upload is None:
            return
        source, name = upload.getvalue(), upload.name
    else:
        source, name = posters[picked].path, posters[picked].path.name
    try:
        explainer = _gradcam(str(run.folder), run.info.get("created", ""), run)
        probabilities = explainer.probabilities(source, name=name)
        genres = sorted(probabilities, key=probabilities.get, reverse=True)
        left, right = st.columns(2)
        genre = left.selectbox("Genre", genres, key="gradcam_genre",
                               format_func=lambda g: f"{g} ({probabilities[g]:.0%})")
        opacity = right.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="gradcam_opacity")
        heatmap = explainer.heatmap(source, genre, name=name)
        pixels = np.asarray(thumbnail(source, OVERLAY_SIDE))
    except PosterGenreError as err:
        st.error(str(err))
        return
    height, width = pixels.shape[:2]
    st.image(overlay(pixels, heatmap.resized(width, height), opacity), width=360,
             caption=f"{genre}: probability {heatmap.probability:.0%} · gradients at {' + '.join(heatmap.layers)} · "
                     + ("from cache" if heatmap.from_cache else f"{heatmap.seconds:.2f} s"))
    if run.weights.is_random:
        st.warning(f"⚠️ RANDOM {BACKBONES[run.feature_config.backbone].label} weights: this heatmap shows the "
                   "mechanics, not what a real model looks at.")
    if not heatmap.values.any():
        st.info(f"No region of this poster raises the model's score for {genre}: the gradient-weighted map is "
                "negative everywhere, so Grad-CAM (which keeps only positive evidence) has nothing to show.")
    if caveat := localisation_caveat(run.config):
        st.info(caveat)
