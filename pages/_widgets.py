"""UI pieces that several pages draw: poster thumbnails, a poster picker, saved-run menus, metrics against
the prior, per-genre tables, pagination.

Imported by the pages (not run as a page, so Streamlit magic does not apply here).
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import streamlit as st
from PIL import Image

import core.model.runs
from core.analysis.metrics import Interval
from core.errors import ImageError, PosterGenreError
from core.features.backbones import BACKBONES
from core.features.pipeline import FeatureSet
from core.data.images import thumbnail
from core.model.experiment import LabelsInfo
from core.model.runs import Run, labels_note

if TYPE_CHECKING:
    import pandas as pd

THUMBNAIL_SIDE = 256
SELECTED_RUN = "selected_run"
PICKER_OPTIONS = 1000
"""A poster picker lists up to this many posters; a larger set is searched first (a selectbox of 100,000
options adds about 0.1 s to every rerun, and nobody scrolls through it)."""


# ---- poster thumbnails --------------------------------------------------------------------------

@st.cache_data(show_spinner=False, max_entries=4000)
def _thumbnail_jpeg(path: str, modified_ns: int, side: int) -> tuple[bytes | None, str | None]:
    try:
        image = thumbnail(path, side)
    except ImageError as err:
        return None, str(err)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=88)
    return buffer.getvalue(), None


def thumbnail_jpeg(path: str | Path, side: int = THUMBNAIL_SIDE) -> tuple[bytes | None, str | None]:
    """``(JPEG bytes, None)`` of a poster's thumbnail or ``(None, why not)``; cached per file version."""
    try:
        modified = Path(path).stat().st_mtime_ns
    except OSError as err:
        return None, f"cannot read {Path(path).name} ({err.strerror})"
    return _thumbnail_jpeg(str(path), modified, side)


def show_poster(path: str | Path, caption: str | None = None, *, side: int = THUMBNAIL_SIDE, target=st) -> None:
    data, error = thumbnail_jpeg(path, side)
    if data is None:
        target.caption(f"⚠️ {caption}: {error}" if caption else f"⚠️ {error}")
    else:
        target.image(data, caption=caption, width="stretch")


@st.cache_data(show_spinner=False)
def _placeholder(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side * 2 // 3, side), "lightgrey").save(buffer, format="JPEG")
    return buffer.getvalue()


def thumbnails(paths: Iterable[str | Path], side: int = THUMBNAIL_SIDE) -> list[bytes]:
    """Thumbnails for ``st.image(list, caption=[...])``; an unreadable poster shows as a grey card."""
    return [thumbnail_jpeg(path, side)[0] or _placeholder(side) for path in paths]


# ---- features -----------------------------------------------------------------------------------

@st.cache_resource(show_spinner="Pooling the features…", max_entries=4)
def _view_matrix(features_key: str, view: str, _features: FeatureSet) -> np.ndarray:
    return _features.view(view)


def view_matrix(features: FeatureSet, view: str) -> np.ndarray:
    """One feature view, held once per process (shared and read-only: never modify it); a view the
    features cannot give (flatten of pooled-only features, a damaged shard) is an error and stops the page."""
    try:
        return _view_matrix(features.key, view, features)
    except PosterGenreError as err:
        st.error(str(err))
        st.stop()


# ---- saved runs ---------------------------------------------------------------------------------

def _folder_signature(folder: Path) -> tuple:
    """Changes whenever a run folder appears, disappears or is replaced (staging folders ignored)."""
    entries = []
    with os.scandir(folder) as scan:
        for entry in scan:
            if entry.name.startswith("."):
                continue
            try:
                entries.append((entry.name, entry.stat().st_mtime_ns))
            except FileNotFoundError:
                continue
    return tuple(sorted(entries))


@st.cache_data(show_spinner=False, max_entries=16)
def _saved_runs(runs_folder: str, dataset_root: str | None, signature: tuple) -> list[Run]:
    folder = Path(runs_folder)
    if dataset_root is None:
        return core.model.runs.list_runs(folder)
    return core.model.runs.runs_for_dataset(Path(dataset_root), folder)


def dataset_runs(dataset) -> list[Run]:
    """Saved runs trained on ``dataset``, newest first; re-read only when the runs folder changes."""
    folder = core.model.runs.runs_root()
    return _saved_runs(str(folder), str(dataset.root), _folder_signature(folder))


def all_runs() -> list[Run]:
    """Every saved run, newest first."""
    folder = core.model.runs.runs_root()
    return _saved_runs(str(folder), None, _folder_signature(folder))


def require_runs(runs: list[Run], dataset) -> None:
    if not runs:
        st.info(f"No training run on {dataset.name} yet: train one on the Train page first.")
        st.page_link("pages/train.py", label="Go to Train", icon=":material/science:")
        st.stop()


def remember_run(folder: str | Path) -> None:
    """Make ``folder`` the run every page shows first."""
    st.session_state[SELECTED_RUN] = str(folder)


def run_selector(runs: list[Run], *, key: str = "run_select", label: str = "Run",
                 help: str | None = "Runs trained on the active dataset, newest first.",
                 current: LabelsInfo | None = None) -> Run:
    """A menu of ``runs`` that opens on the run last chosen on any page and remembers the choice.

    With today's labels (``current``), the menu opens by default on the newest run trained on them, marks
    the others, and a run trained on other labels is shown with a warning saying which.
    """
    by_folder = {str(run.folder): run for run in runs}
    if st.session_state.get(key) not in by_folder:
        remembered = st.session_state.get(SELECTED_RUN)
        st.session_state[key] = remembered if remembered in by_folder else _first_choice(runs, current)
    folder = st.selectbox(label, list(by_folder), key=key, help=help,
                          format_func=lambda option: menu_label(by_folder[option], current))
    remember_run(folder)
    run = by_folder[folder]
    st.caption(f"Features of this run: {run.features_label}")
    if current is not None and (note := labels_note(run, current)):
        st.warning(note)
    return run


def _first_choice(runs: list[Run], current: LabelsInfo | None) -> str:
    fitting = [run for run in runs if current is None or run.trained_on(current)]
    return str((fitting or runs)[0].folder)


def menu_label(run: Run, current: LabelsInfo | None = None) -> str:
    """``Run.label``, marked when the run was not trained on today's labels."""
    if current is None or run.trained_on(current):
        return run.label()
    return run.label() + (" · labels not recorded" if run.labels_info is None else " · OTHER LABELS")


def random_run_warning(run: Run, consequence: str = "its numbers say nothing about posters") -> None:
    if run.weights.is_random:
        backbone = BACKBONES[run.feature_config.backbone].label
        st.warning(f"⚠️ This run was trained on features from RANDOM {backbone} weights: {consequence}.")


# ---- metrics ------------------------------------------------------------------------------------

def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def metric_with_prior(target, label: str, model: Interval, prior: Interval) -> None:
    """A headline metric, its difference to the frequency prior, and both 95% bootstrap intervals."""
    delta = f"{model.value - prior.value:+.3f} vs prior"
    target.metric(label, fmt(model.value), delta=None if math.isnan(model.value - prior.value) else delta)
    target.caption(f"95% bootstrap interval {fmt(model.low)}–{fmt(model.high)}"
                   f"  \nfrequency prior {fmt(prior.value)} ({fmt(prior.low)}–{fmt(prior.high)})")


@st.cache_data(show_spinner=False, max_entries=64)
def _per_genre(token: tuple, _run: Run) -> pd.DataFrame | None:
    try:
        table = _run.per_genre()
    except (OSError, ValueError):
        return None
    return table if list(table.get("genre", [])) == list(_run.vocabulary.genres) else None


def per_genre_table(run: Run) -> pd.DataFrame | None:
    """The run's saved per-genre report, or None when ``per_genre.csv`` is missing or does not match."""
    return _per_genre(run.cache_token, run)


def show_per_genre(table: pd.DataFrame, k: int, key: str = "per_genre_table") -> None:
    st.dataframe(table, hide_index=True, key=key, column_config={
        "genre": "Genre",
        "support": st.column_config.NumberColumn("Support", help="test posters with this genre"),
        "average_precision": st.column_config.NumberColumn("Average precision", format="%.3f"),
        "precision_at_k": st.column_config.NumberColumn(f"Precision@{k}", format="%.3f"),
        "recall_at_k": st.column_config.NumberColumn(f"Recall@{k}", format="%.3f"),
        "predicted": st.column_config.NumberColumn(f"In top {k}", help="test posters predicting it"),
    })


# ---- picking one poster ------------------------------------------------------------------------

def poster_picker(label: str, ids: list[str], label_of: dict[str, str], *, key: str, target=st) -> str:
    """The id of one poster, picked by its "title (id)"; above ``PICKER_OPTIONS`` posters from the matches of
    a search box. ``st.session_state[key]`` may be set to any id before the call (a clicked map point)."""
    if st.session_state.get(key) not in label_of:
        st.session_state.pop(key, None)
    if len(ids) <= PICKER_OPTIONS:
        return target.selectbox(label, ids, key=key, format_func=label_of.__getitem__)
    query = target.text_input(f"Search the {len(ids):,} posters by title or id", key=f"{key}_search",
                              placeholder="part of a title or an id")
    needle = query.strip().lower()
    matches = [id_ for id_ in ids if needle in label_of[id_].lower()] if needle else ids
    options = matches[:PICKER_OPTIONS]
    current = st.session_state.get(key)
    if current is not None and current not in options:
        options = [current, *options]
    if needle and not matches:
        target.caption(f"No title or id contains “{query.strip()}”.")
    elif len(matches) > PICKER_OPTIONS:
        target.caption((f"{len(matches):,} posters match; the" if needle else "The")
                       + f" first {PICKER_OPTIONS:,} are listed: search to narrow them.")
    return target.selectbox(label, options or ids[:1], key=key, format_func=label_of.__getitem__)


# ---- pagination ---------------------------------------------------------------------------------

def first_page(key: str) -> None:
    st.session_state[key] = 1


def page_number(n_items: int, page_size: int, key: str) -> int:
    """A page number input (none for a single page), kept within the pages left after filtering."""
    n_pages = max(1, math.ceil(n_items / page_size))
    if st.session_state.get(key, 1) > n_pages:
        st.session_state[key] = n_pages
    if n_pages == 1:
        return 1
    return int(st.number_input(f"Page (of {n_pages})", min_value=1, max_value=n_pages, step=1, key=key))
