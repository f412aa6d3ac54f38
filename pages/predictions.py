"""Predictions: poster by poster, what a saved run predicts, where it fails, and your own upload."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from core.data.datasets import Dataset
from core.analysis.neighbours import nearest_to_vector
from core.errors import ImageError, PosterGenreError
from core.features.pipeline import FeatureSet
from core.features.views import feature_view
from core.data.images import check_image_bytes
from core.analysis.metrics import per_genre_report
from core.model.predict import PosterPrediction, Predictor, ScoredPosters, score_test_posters
from core.model.runs import Run
from pages._explain import gradcam_section
from pages._shared import (active_dataset, current_labels, fingerprint, keep_out_of_gc_passes, require_features,
                           route_through_app)
from pages._widgets import (dataset_runs, first_page, fmt, metric_with_prior, page_number, per_genre_table,
                            poster_picker, random_run_warning, require_runs, run_selector, show_per_genre,
                            show_poster, view_matrix)

PAGE_SIZE = 24
PAGE_KEY = "page_number"
GRID_COLUMNS = 4
N_NEIGHBOURS = 8
ANY_GENRE = "(any genre)"
OUTCOMES = ("all posters", "all hits", "at least one miss", "no hit")
SORTS = {
    "most surprising (highest loss)": ("loss", False),
    "least surprising (lowest loss)": ("loss", True),
    "most confident (top-1 probability)": ("confidence", False),
    "least confident": ("confidence", True),
    "worst precision@k": ("precision", True),
    "best precision@k": ("precision", False),
    "test split order": ("order", True),
}
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp"]
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|$~])")


@dataclass(frozen=True)
class GridView:
    genre: str = ANY_GENRE
    outcome: str = OUTCOMES[0]
    confidence: tuple[float, float] = (0.0, 1.0)
    sort: str = next(iter(SORTS))


def escape(text: str) -> str:
    """Titles are shown as markdown: ``$`` would start LaTeX, ``*`` emphasis."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


@st.cache_resource(show_spinner=False, max_entries=8)
def scored_posters(run_token: tuple, root: str, dataset_fingerprint: tuple, _run: Run,
                   _dataset: Dataset) -> ScoredPosters:
    """Shared by every session without a copy (20,000 test posters at 100,000): nothing may change it."""
    scored = score_test_posters(_run, _dataset)
    scored.Y.flags.writeable = scored.scores.flags.writeable = False
    keep_out_of_gc_passes(len(_dataset))
    return scored


def outcome_mask(table: pd.DataFrame, outcome: str) -> pd.Series:
    return {
        "all posters": pd.Series(True, index=table.index),
        "all hits": table["hits"] == table["max_hits"],
        "at least one miss": table["hits"] < table["max_hits"],
        "no hit": table["hits"] == 0,
    }[outcome]


def select_posters(table: pd.DataFrame, view: GridView) -> pd.DataFrame:
    mask = outcome_mask(table, view.outcome)
    low, high = view.confidence
    mask &= table["confidence"].between(low, high)
    if view.genre != ANY_GENRE:
        mask &= np.array([view.genre in true or any(genre == view.genre for genre, _ in predicted)
                          for true, predicted in zip(table["true"], table["predicted"])], dtype=bool)
    column, ascending = SORTS[view.sort]
    return table[mask].sort_values(column, ascending=ascending, kind="stable")


def grid_controls(genres: tuple[str, ...]) -> GridView:
    genre_col, outcome_col, confidence_col, sort_col = st.columns([2, 2, 3, 3])
    genre = genre_col.selectbox("Genre (true or predicted)", [ANY_GENRE, *genres], key="filter_genre",
                                on_change=first_page, args=(PAGE_KEY,))
    outcome = outcome_col.selectbox(
        "Hits", OUTCOMES, key="filter_hits", on_change=first_page, args=(PAGE_KEY,),
        help="A hit is a true genre among the top-k predictions. 'All hits': as many hits as possible "
             "(k, or every true genre when a poster has fewer than k).")
    confidence = confidence_col.slider("Top-1 probability", 0.0, 1.0, (0.0, 1.0), step=0.01,
                                       key="filter_confidence", on_change=first_page, args=(PAGE_KEY,))
    sort = sort_col.selectbox("Sort by", list(SORTS), key="sort_by", on_change=first_page, args=(PAGE_KEY,))
    return GridView(genre=genre, outcome=outcome, confidence=tuple(confidence), sort=sort)


def _show_detail(poster_id: str) -> None:
    st.session_state["detail_poster"] = poster_id


def prediction_lines(predicted: tuple[tuple[str, float], ...], true: tuple[str, ...]) -> str:
    return "  \n".join(f"{'✅' if genre in true else '❌'} {escape(genre)} {probability:.2f}"
                       for genre, probability in predicted)


def draw_card(row) -> None:
    show_poster(row.path)
    st.markdown(f"**{escape(row.title)}**")
    st.markdown(prediction_lines(row.predicted, row.true))
    st.caption("True: " + (", ".join(row.true) or "none"))
    st.button("Details", key=f"show_{row.id}", on_click=_show_detail, args=(row.id,))


def draw_grid(shown: pd.DataFrame) -> None:
    rows = list(shown.itertuples(index=False))
    for start in range(0, len(rows), GRID_COLUMNS):
        for column, row in zip(st.columns(GRID_COLUMNS), rows[start:start + GRID_COLUMNS]):
            with column:
                draw_card(row)


def probability_figure(genres, probabilities, true: tuple[str, ...] = ()):
    """All genres as horizontal bars, most probable on top, true genres in a second colour."""
    import plotly.graph_objects as go

    order = np.argsort(probabilities, kind="stable")
    names = [genres[i] for i in order]
    colours = ["#2ca02c" if name in true else "#9aa5b1" for name in names]
    figure = go.Figure(go.Bar(x=[float(probabilities[i]) for i in order], y=names, orientation="h",
                              marker_color=colours,
                              text=[f"{probabilities[i]:.2f}" for i in order], textposition="auto"))
    figure.update_layout(height=max(220, 26 * len(names) + 60), margin=dict(l=10, r=10, t=30, b=10),
                         xaxis=dict(range=[0, 1], title="probability"),
                         title="green = true genre" if true else None)
    return figure


def detail_controls(shown: pd.DataFrame, table: pd.DataFrame) -> str:
    """The posters the filters show first, then the other test posters."""
    ids = list(dict.fromkeys([*shown["id"], *table["id"]]))
    label_of = {id_: f"{title} ({id_})" for id_, title in zip(table["id"], table["title"])}
    return poster_picker("Poster", ids, label_of, key="detail_poster")


def draw_detail(row, probabilities: np.ndarray, genres: tuple[str, ...], k: int) -> None:
    image_col, info_col = st.columns([1, 2])
    with image_col:
        show_poster(row.path, side=512)
    with info_col:
        st.markdown(f"### {escape(row.title)}")
        st.caption(f"id {row.id} · true genres: {', '.join(row.true) or 'none'}")
        precision_col, recall_col, loss_col = st.columns(3)
        precision_col.metric(f"Precision@{k}", f"{row.precision:.2f}", help=f"{row.hits} of the top {k} are true")
        recall_col.metric(f"Recall@{k}", f"{row.recall:.2f}",
                          help=f"{row.hits} of {row.n_true} true genres are in the top {k}")
        loss_col.metric("Loss", f"{row.loss:.3f}", help="binary cross-entropy averaged over all genres")
        st.plotly_chart(probability_figure(genres, probabilities, row.true), key="detail_chart")


def draw_headline(run: Run) -> None:
    evaluation, k = run.evaluation, run.config.k
    precision_cell, recall_cell, ap_cell, count_cell = st.columns(4)
    metric_with_prior(precision_cell, f"Precision@{k}", evaluation.precision_at_k, evaluation.prior_precision_at_k)
    metric_with_prior(recall_cell, f"Recall@{k}", evaluation.recall_at_k, evaluation.prior_recall_at_k)
    ap_cell.metric("Mean average precision", fmt(evaluation.mean_average_precision))
    count_cell.metric("Test posters", f"{evaluation.n_test:,}")
    if run.config.ensemble > 1:
        count_cell.caption(f"probabilities averaged over {run.config.ensemble} networks")


def draw_per_genre(run: Run, Y: np.ndarray, scores: np.ndarray) -> None:
    k = run.config.k
    st.caption(f"On the {len(Y)} test posters. Precision@{k}: of the posters with this genre in their "
               f"top {k}, how many have it; recall@{k}: of the posters with this genre, how many got it "
               "in their top k. Empty cells are undefined (no poster).")
    table = per_genre_table(run)
    if table is None:
        table = per_genre_report(Y, scores, run.vocabulary.genres, k=k)
    show_per_genre(table.sort_values("support", ascending=False, kind="stable"), k)


@st.cache_resource(show_spinner="Loading the run's model and VGG16…", max_entries=2)
def get_predictor(run_token: tuple, _run: Run) -> Predictor:
    return Predictor(_run)


@st.cache_data(show_spinner="Predicting…", max_entries=16)
def predict_upload(run_token: tuple, digest: str, name: str, _run: Run, _data: bytes) -> PosterPrediction:
    """Prediction for uploaded bytes, cached by content so reruns do not recompute VGG16."""
    return get_predictor(run_token, _run).predict_image(_data, name)


@st.cache_data(show_spinner="Finding the nearest training posters…", max_entries=16)
def nearest_train_posters(features_key: str, view: str, run_token: tuple, digest: str, _features: FeatureSet,
                          _train_ids: list[str], _vector: np.ndarray) -> list[tuple[str, float]]:
    """Cosine over all rows of the view, then the best training posters (no copy of a 25,088-d matrix)."""
    X = view_matrix(_features, view)
    order, similarities = nearest_to_vector(X, feature_view(_vector[None], view)[0], n=X.shape[0])
    train = set(_train_ids)
    ids = _features.ids
    found = [(ids[i], float(s)) for i, s in zip(order, similarities) if ids[i] in train]
    return found[:N_NEIGHBOURS]


def draw_upload_prediction(prediction: PosterPrediction, genres: tuple[str, ...]) -> None:
    st.markdown("**Top genres:** " + " · ".join(f"{escape(g)} {p:.2f}" for g, p in prediction.top))
    probabilities = np.array([prediction.probabilities[genre] for genre in genres])
    st.plotly_chart(probability_figure(genres, probabilities), key="upload_chart")


def draw_neighbours(neighbours: list[tuple[str, float]], dataset: Dataset) -> None:
    st.markdown("**Nearest training posters** (cosine similarity of the run's features)")
    posters = {poster.id: poster for poster in dataset.posters}
    for start in range(0, len(neighbours), GRID_COLUMNS):
        for column, (id_, similarity) in zip(st.columns(GRID_COLUMNS), neighbours[start:start + GRID_COLUMNS]):
            poster = posters[id_]
            show_poster(poster.path, target=column)
            column.caption(f"{poster.title} · similarity {similarity:.2f}  \n{', '.join(poster.genres)}")


def draw_upload(run: Run, features: FeatureSet, dataset: Dataset) -> None:
    st.caption("Any poster image (jpg, png, webp): the run predicts its genres with the same VGG16 features "
               "it was trained on. Nothing is saved.")
    uploaded = st.file_uploader("Upload a poster", type=UPLOAD_TYPES, key="upload")
    if uploaded is None:
        return
    data = uploaded.getvalue()
    try:
        check_image_bytes(data, uploaded.name)
    except ImageError as err:
        st.error(str(err))
        return
    digest = hashlib.sha256(data).hexdigest()
    try:
        prediction = predict_upload(run.cache_token, digest, uploaded.name, run, data)
    except PosterGenreError as err:
        st.error(str(err))
        return
    if prediction.error:
        st.error(prediction.error)
        return
    image_col, prediction_col = st.columns([1, 2])
    image_col.image(data, caption=uploaded.name, width="stretch")
    with prediction_col:
        draw_upload_prediction(prediction, run.vocabulary.genres)
    view = run.config.feature_view
    neighbours = nearest_train_posters(features.key, view, run.cache_token, digest, features, run.split["train"],
                                       prediction.features)
    draw_neighbours(neighbours, dataset)


route_through_app()
st.title("Predictions")
st.caption("Poster by poster: what a trained run predicts, where it is wrong, and what it says about yours.")

dataset, _ = active_dataset()
runs = dataset_runs(dataset)
require_runs(runs, dataset)
features = require_features(dataset)
labels = current_labels(dataset, features)
run = run_selector(runs, current=labels)
if not run.trained_on(labels):
    st.caption("Below, its predictions are checked against today's genres; its headline figures come from the "
               "labels it was trained on.")
try:
    run.check_features(features)
    scored = scored_posters(run.cache_token, str(dataset.root), fingerprint(dataset.root), run, dataset)
except PosterGenreError as err:
    st.error(str(err))
    st.stop()
random_run_warning(run, "its predictions test the pipeline and say nothing about posters")
table, k = scored.table, run.config.k
draw_headline(run)

posters_tab, genres_tab, upload_tab = st.tabs(["Test posters", "Per genre", "Upload a poster"])
with posters_tab:
    view = grid_controls(run.vocabulary.genres)
    shown = select_posters(table, view)
    st.markdown("#### Poster detail")
    detail_id = detail_controls(shown, table)
    detail_index = int(np.flatnonzero(table["id"].to_numpy() == detail_id)[0])
    draw_detail(next(table.iloc[[detail_index]].itertuples(index=False)), scored.scores[detail_index],
                run.vocabulary.genres, k)
    st.divider()
    if shown.empty:
        st.info(f"None of the {len(table)} test posters matches these filters.")
    else:
        first = (page_number(len(shown), PAGE_SIZE, PAGE_KEY) - 1) * PAGE_SIZE
        st.caption(f"Showing {first + 1}–{min(len(shown), first + PAGE_SIZE)} of {len(shown)} test posters "
                   f"({len(table)} in the test split)")
        draw_grid(shown.iloc[first:first + PAGE_SIZE])
with genres_tab:
    draw_per_genre(run, scored.Y, scored.scores)
with upload_tab:
    draw_upload(run, features, dataset)
gradcam_section(run, dataset)
