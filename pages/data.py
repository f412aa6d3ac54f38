"""Data: choose the poster set, look at its genres and posters, extract VGG16 features, get real posters."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from core.data.datasets import Dataset, GenreVocabulary, LoadReport, Poster, Skipped
from core.data.demo import ensure_demo_dataset
from core.data.library import dataset_folder, datasets_dir, downloaded_datasets
from core.errors import AuthError, PosterGenreError, WeightsError
from core.features.backbones import BACKBONES
from core.features.extractor import PRECISIONS, resolve_precision
from core.features.pipeline import FeatureConfig, extract_features
from core.features.weights import Weights, weights_kind
from core.progress import ProgressFn
from core.sources.builder import AcquireResult
from core.sources.tmdb import LISTS, config_from_text, download_tmdb, load_credentials
from core.sources.tutorial import import_tutorial
from core.sources.url_table import UrlTableConfig, download_url_table
from pages._shared import (DEMO, dataset_caption, dataset_root, feature_config, feature_status, fingerprint,
                           forget_features, get_dataset, get_weights, load_settings, progress_bar, route_through_app,
                           save_settings, weights_notice)
from pages._explain import descriptor_boxplots
from pages._storage import feature_controls
from pages._widgets import first_page, page_number, show_poster
from pages._engine import RayEngine, engine_controls

PAGE_SIZE = 48
GRID_COLUMNS = 6
GRID_PAGE = "grid_page"
WEIGHT_KINDS = {"imagenet": "ImageNet (Keras download)", "file": "Local weights file",
                "none": "None: random weights (testing only)"}
POSTER_SIZES = ("w92", "w154", "w185", "w342", "w500", "w780", "original")
AUTO_LIST = "auto"


# --- dataset choice ----------------------------------------------------------------------------


def dataset_label(choice: str) -> str:
    if choice == DEMO:
        return "Synthetic demo (built in)"
    path = Path(choice)
    return f"{path.name} (downloaded)" if path.parent == datasets_dir() else choice


def activate_folder(text: str) -> None:
    """Callback: validate a folder and make it the active dataset, or leave a message for the page."""
    if not text.strip():
        st.session_state["_dataset_error"] = "Type the path of a folder holding posters/ and labels.csv first."
        return
    root = Path(text.strip()).expanduser().resolve()
    try:
        get_dataset(root)
    except PosterGenreError as err:
        st.session_state["_dataset_error"] = f"Cannot use {root}: {err}"
        return
    save_settings(dataset=str(root))
    st.session_state["dataset_choice"] = str(root)
    st.session_state["_dataset_ok"] = f"Active dataset: {root}"


def _on_use_folder() -> None:
    activate_folder(st.session_state.get("folder_path", ""))


def _on_dataset_choice() -> None:
    save_settings(dataset=st.session_state["dataset_choice"])


def dataset_controls() -> str:
    """The active dataset choice (``"demo"`` or a folder path), changed through the settings."""
    current = load_settings()["dataset"]
    options = [DEMO, *(str(entry.path) for entry in downloaded_datasets())]
    if current not in options:
        options.append(current)
    st.session_state["dataset_choice"] = current
    st.selectbox("Active dataset", options, format_func=dataset_label, key="dataset_choice",
                 on_change=_on_dataset_choice,
                 help=f"The demo, any dataset downloaded below (saved in {datasets_dir()}), or a folder you typed.")
    path_column, button_column = st.columns([4, 1], vertical_alignment="bottom")
    path_column.text_input("Or a poster folder (posters/ + labels.csv with id,title,genres)",
                           key="folder_path", placeholder="/path/to/my-posters")
    button_column.button("Use this folder", key="use_folder", on_click=_on_use_folder)
    if message := st.session_state.pop("_dataset_error", None):
        st.error(message)
    if message := st.session_state.pop("_dataset_ok", None):
        st.success(message)
    return load_settings()["dataset"]


def load_active(choice: str) -> tuple[Dataset, LoadReport]:
    try:
        if choice == DEMO:
            box = st.empty()
            ensure_demo_dataset(progress=progress_bar(box, text=None))
            box.empty()
        with st.spinner("Preparing the dataset…"):
            return get_dataset(dataset_root(choice))
    except PosterGenreError as err:
        st.error(f"The chosen dataset cannot be loaded: {err}")
        st.stop()


def skipped_frame(items: list[Skipped]) -> pd.DataFrame:
    return pd.DataFrame({"id": [item.id for item in items], "reason": [item.reason for item in items],
                         "file": [item.path or "" for item in items]})


def show_report(dataset: Dataset, report: LoadReport) -> None:
    st.markdown(f"Dataset: {dataset_caption(dataset)}  \n`{dataset.root}`")
    if dataset.synthetic:
        st.info("This is a **synthetic** dataset: generated posters whose genres have their own colours "
                "and shapes, for trying the app. Get real posters in **Get real posters** above.")
    rows, images, usable, skipped = st.columns(4)
    rows.metric("Label rows", f"{report.n_rows:,}")
    images.metric("Image files", f"{report.n_images:,}")
    usable.metric("Usable posters", f"{len(dataset):,}")
    skipped.metric("Skipped items", f"{len(report.skipped):,}")
    if report.skipped:
        with st.expander(f"Skipped items ({len(report.skipped):,}) and why", expanded=len(report.skipped) <= 10):
            st.dataframe(skipped_frame(report.skipped), hide_index=True, key="skipped_table")
    else:
        st.caption("Nothing skipped: every label row has its image and every image its row.")
    if report.genre_merges:
        st.info("Genres written several ways were merged:  \n" + "  \n".join(report.merge_lines()))
    if report.notes:
        st.info("  \n".join(report.notes))


# --- genres ------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False, max_entries=32)
def genre_figures(_dataset: Dataset, root: str, version: tuple, normalise: bool):
    """The genre frequency bar chart and co-occurrence heatmap (shared, never modified)."""
    counts = _dataset.genre_counts()
    genres = list(counts)
    frequency = pd.DataFrame({"genre": genres, "posters": list(counts.values())})
    frequency["share"] = frequency["posters"] / len(_dataset)
    bars = px.bar(frequency, x="genre", y="posters", text="posters", hover_data={"share": ":.1%"},
                  title="Posters per genre (a poster counts once per genre)")
    bars.update_layout(xaxis_title=None, yaxis_title="posters")
    onehot = GenreVocabulary(genres).encode(_dataset.labels)
    together = pd.DataFrame((onehot.T @ onehot).astype(int), index=genres, columns=genres)
    return bars, cooccurrence_figure(together, normalise)


def cooccurrence_figure(together: pd.DataFrame, normalise: bool):
    if normalise:
        shares = together.div(np.diag(together.to_numpy()), axis=0)
        return px.imshow(shares, text_auto=".0%", color_continuous_scale="Blues", zmin=0, zmax=1,
                         labels={"x": "also has", "y": "posters of", "color": "share"},
                         title="Share of each row genre's posters that also have the column genre")
    return px.imshow(together, text_auto=True, color_continuous_scale="Blues",
                     labels={"x": "genre", "y": "genre", "color": "posters"},
                     title="Posters having both genres (diagonal: all posters of the genre)")


def genre_charts(dataset: Dataset) -> None:
    bars_column, heat_column = st.columns(2)
    normalise = heat_column.toggle("Normalise rows", key="cooc_normalise",
                                   help="For the posters of each row genre, the share that also has the column genre.")
    bars, heat = genre_figures(dataset, str(dataset.root), fingerprint(dataset.root), normalise)
    bars_column.plotly_chart(bars, key="genre_frequency")
    heat_column.plotly_chart(heat, key="genre_cooccurrence")


# --- weights and features ------------------------------------------------------------------------


def _on_weights_kind() -> None:
    kind = st.session_state["weights_kind"]
    if kind != "file":
        save_settings(weights=kind)
    else:
        _on_weights_path()


def _on_weights_path() -> None:
    text = st.session_state.get("weights_path", "").strip()
    if not text:
        return
    try:
        weights = get_weights(str(Path(text).expanduser()))
    except PosterGenreError:
        return
    save_settings(weights=weights.spec)


def _on_precision() -> None:
    save_settings(precision=st.session_state["precision"])


def weights_controls() -> Weights | None:
    """Weights and precision choices (saved in the settings); the active weights, or None if unusable."""
    settings = load_settings()
    saved_kind = weights_kind(settings["weights"])
    st.session_state.setdefault("weights_kind", saved_kind)
    st.session_state.setdefault("weights_path", settings["weights"] if saved_kind == "file" else "")
    kind_column, precision_column = st.columns([3, 1])
    kind = kind_column.radio("Backbone weights", list(WEIGHT_KINDS), format_func=WEIGHT_KINDS.get,
                             key="weights_kind", horizontal=True, on_change=_on_weights_kind)
    st.session_state["precision"] = settings["precision"]
    precision = precision_column.selectbox("Precision", PRECISIONS, key="precision", on_change=_on_precision,
                                           help="auto uses bfloat16 where the CPU computes it natively, else float32 "
                                                "(EfficientNet-Lite2: always float32, faster there).")
    if precision == "auto":
        precision_column.caption(f"auto → {resolve_precision('auto', settings['backbone'])} on this machine")
    if kind == "file":
        weights_file_input()
    try:
        weights = get_weights(load_settings()["weights"])
    except PosterGenreError as err:
        st.error(f"Active weights: {err}")
        return None
    weights_notice(weights, feature_config())
    return weights


def weights_file_input() -> None:
    spec = BACKBONES[load_settings()["backbone"]]
    text = st.text_input(f"Weights file ({spec.label} include_top=False weights: {spec.weights_files})",
                         key="weights_path", on_change=_on_weights_path,
                         placeholder="/path/to/vgg16_imagenet_notop.weights.h5")
    if not text.strip():
        st.info(f"Type the path of a local {spec.label} weights file; until then the previous weights stay active.")
        return
    try:
        weights = get_weights(str(Path(text.strip()).expanduser()))
    except PosterGenreError as err:
        st.error(f"Weights file: {err}")
        return
    st.caption(f"✔️ {weights.label}")


def extraction_section(dataset: Dataset) -> None:
    config = feature_config()
    status = st.empty()
    show_cache_status(status, dataset, config)
    engine = engine_controls()
    if st.button("Extract features", key="extract", type="primary",
                 help="Computes only the posters whose features are not cached yet."):
        if run_extraction(dataset, config, engine):
            show_cache_status(status, dataset, config)
    last = st.session_state.get("extraction")
    if last and last["source"] == (str(dataset.root), config):
        show_extraction(last)
    else:
        show_failures(feature_status(dataset, str(dataset.root), fingerprint(dataset.root), config)[2])


def show_cache_status(box, dataset: Dataset, config: FeatureConfig) -> None:
    cached, total, _ = feature_status(dataset, str(dataset.root), fingerprint(dataset.root), config)
    with box.container():
        st.metric("Posters with cached features (these weights and precision)", f"{cached:,} / {total:,}")
        if cached < total:
            st.caption(f"{total - cached:,} posters have no features yet; extraction computes only those "
                       "(undecodable posters are retried each time).")


def run_extraction(dataset: Dataset, config: FeatureConfig, engine: RayEngine | None = None) -> bool:
    box = st.empty()
    try:
        features = extract_features(dataset, config, progress=progress_bar(box, "Loading VGG16…"), engine=engine)
    except WeightsError as err:
        box.empty()
        st.error(str(err))
        st.info("Offline? Choose **Local weights file** above and give the path of a VGG16 "
                "include_top=False weights file (e.g. vgg16_imagenet_notop.weights.h5).")
        return False
    except PosterGenreError as err:
        box.empty()
        st.error(str(err))
        return False
    box.progress(1.0, text=f"Done in {features.seconds:.1f} s")
    forget_features()
    st.session_state["extraction"] = {
        "source": (str(dataset.root), config), "computed": features.n_computed, "cached": features.n_cached,
        "failed": features.failed, "seconds": features.seconds}
    return True


def show_extraction(last: dict) -> None:
    computed, cached, failed = st.columns(3)
    computed.metric("Computed", f"{last['computed']:,}")
    cached.metric("Taken from cache", f"{last['cached']:,}")
    failed.metric("Failed", f"{len(last['failed']):,}")
    st.caption(f"Last extraction took {last['seconds']:.1f} s.")
    show_failures(last["failed"])


def show_failures(failed: list[Skipped]) -> None:
    if not failed:
        return
    st.warning(f"Undecodable posters: {len(failed):,}. They have no features, are left out of training "
               "and maps, and are retried at the next extraction.")
    st.dataframe(skipped_frame(failed), hide_index=True, key="failed_table")


# --- poster grid -------------------------------------------------------------------------------


def grid_controls(genres: list[str]) -> tuple[list[str], bool]:
    choice, mode = st.columns([4, 1], vertical_alignment="bottom")
    selected = choice.multiselect("Show posters with these genres (none: all posters)", genres,
                                  key="grid_genres", on_change=first_page, args=(GRID_PAGE,))
    match_all = mode.toggle("Must have all", key="grid_match_all", on_change=first_page, args=(GRID_PAGE,),
                            help="Off: a poster with any of the genres is shown. On: only posters with all of them.")
    return selected, match_all


def filter_posters(posters: list[Poster], selected: list[str], match_all: bool) -> list[Poster]:
    if not selected:
        return posters
    wanted = set(selected)
    test = wanted.issubset if match_all else wanted.intersection
    return [poster for poster in posters if test(poster.genres)]


def poster_grid(dataset: Dataset) -> None:
    selected, match_all = grid_controls(list(dataset.genre_counts()))
    shown = filter_posters(dataset.posters, selected, match_all)
    if not shown:
        st.info("No poster has this combination of genres.")
        return
    page = page_number(len(shown), PAGE_SIZE, GRID_PAGE)
    first = (page - 1) * PAGE_SIZE
    window = shown[first:first + PAGE_SIZE]
    st.caption(f"Showing posters {first + 1}–{first + len(window)} of {len(shown):,} matching "
               f"({len(dataset):,} in the dataset).")
    columns = st.columns(GRID_COLUMNS)
    for index, poster in enumerate(window):
        with columns[index % GRID_COLUMNS]:
            show_poster(poster.path, f"{poster.title} — {', '.join(poster.genres)}")


# --- getting real posters ------------------------------------------------------------------------


def acquire(key: str, call: Callable[[ProgressFn], AcquireResult]) -> None:
    box = st.empty()
    try:
        result = call(progress_bar(box))
    except PosterGenreError as err:
        box.empty()
        st.error(str(err))
        return
    st.session_state[f"acquired_{key}"] = result


def show_acquired(key: str) -> None:
    result: AcquireResult | None = st.session_state.get(f"acquired_{key}")
    if result is None:
        return
    (st.success if result.n_saved else st.error)(f"Saved {result.summary()}")
    for note in result.notes:
        st.caption(f"Note: {note}")
    if result.skipped:
        st.markdown(f"**Skipped or failed ({result.n_skipped:,})** — also saved in `{result.out / 'failures.csv'}`")
        st.dataframe(skipped_frame(result.skipped), hide_index=True, key=f"{key}_failures")
    if not result.n_saved:
        return
    if load_settings()["dataset"] == str(result.out.resolve()):
        st.caption("This is the active dataset.")
    else:
        st.button("Make it the active dataset", key=f"{key}_activate", on_click=activate_folder,
                  args=(str(result.out),))


def tmdb_form() -> None:
    try:
        credentials = load_credentials()
        kind = "a v4 read token" if credentials.read_token else "a v3 API key"
        st.caption(f"🔑 TMDB credentials found ({kind}, from the environment or .streamlit/secrets.toml); "
                   "they are never shown.")
        found = True
    except AuthError as err:
        st.warning(str(err))
        found = False
    with st.form("tmdb_form"):
        list_column, size_column, max_column = st.columns(3)
        list_name = list_column.selectbox("Movie list", [AUTO_LIST, *LISTS], key="tmdb_list",
                                          help="auto: popular, or discover when years or genres are given.")
        poster_size = size_column.selectbox("Poster size", POSTER_SIZES, index=POSTER_SIZES.index("w342"),
                                            key="tmdb_poster_size")
        max_movies = max_column.number_input("Max movies", min_value=1, max_value=10_000, value=500,
                                             key="tmdb_max_movies")
        years_column, genres_column = st.columns(2)
        years = years_column.text_input("Release years (discover)", key="tmdb_years", placeholder="1990-2017")
        genres = genres_column.text_input("Genres, any of (discover)", key="tmdb_genres",
                                          placeholder="Action, Horror")
        name = st.text_input("Dataset name", value="tmdb-posters", key="tmdb_name")
        submitted = st.form_submit_button("Download from TMDB", key="tmdb_submit", disabled=not found)
    if submitted:
        acquire("tmdb", lambda progress: download_tmdb(dataset_folder(name), config_from_text(
            int(max_movies), None if list_name == AUTO_LIST else list_name, years, genres,
            poster_size=poster_size), progress=progress))
    show_acquired("tmdb")


def url_table_form() -> None:
    with st.form("urls_form"):
        csv_path = st.text_input("CSV file with an id, a title, genres and a poster URL per row",
                                 key="urls_csv", placeholder="/path/to/MovieGenre.csv")
        st.caption("Column names are detected (e.g. imdbId, Title, Genre, Poster); fill these in only to override.")
        id_column, title_column, genres_column, url_column = st.columns(4)
        columns = {"id_column": id_column.text_input("id column", key="urls_id_column"),
                   "title_column": title_column.text_input("title column", key="urls_title_column"),
                   "genres_column": genres_column.text_input("genres column", key="urls_genres_column"),
                   "url_column": url_column.text_input("poster URL column", key="urls_url_column")}
        separator_column, rows_column, name_column = st.columns(3)
        separator = separator_column.text_input("Genre separator", value="|", key="urls_separator")
        max_rows = rows_column.number_input("Max rows (0: all)", min_value=0, value=0, key="urls_max_rows")
        name = name_column.text_input("Dataset name", value="url-posters", key="urls_name")
        submitted = st.form_submit_button("Download the posters", key="urls_submit")
    if submitted:
        config = UrlTableConfig(**{k: v.strip() or None for k, v in columns.items()},
                                genre_separator=separator or "|", max_rows=int(max_rows) or None)
        acquire("urls", lambda progress: download_url_table(
            _existing_file(csv_path, "CSV file"), dataset_folder(name), config, progress=progress))
    show_acquired("urls")


def tutorial_form() -> None:
    with st.form("tutorial_form"):
        movies_column, genres_column = st.columns(2)
        movies = movies_column.text_input("poster_movies.pckl", key="tutorial_movies")
        genres = genres_column.text_input("Genredict.pckl", key="tutorial_genres")
        posters = st.text_input("Folder of the tutorial's <title>.jpg posters", key="tutorial_posters")
        name = st.text_input("Dataset name", value="tutorial-posters", key="tutorial_name")
        st.caption("The pickles are read safely: anything but plain data is refused unread.")
        submitted = st.form_submit_button("Import", key="tutorial_submit")
    if submitted:
        acquire("tutorial", lambda progress: import_tutorial(
            _existing_file(movies, "poster_movies.pckl"), _existing_file(genres, "Genredict.pckl"),
            Path(posters.strip()).expanduser(), dataset_folder(name), progress=progress))
    show_acquired("tutorial")


def _existing_file(text: str, what: str) -> Path:
    path = Path(text.strip()).expanduser()
    if not text.strip() or not path.is_file():
        raise PosterGenreError(f"{what} {text.strip()!r} is not a file", "give the full path of an existing file")
    return path


def acquisition_section() -> None:
    with st.expander("Get real posters"):
        st.caption(f"Each download becomes a dataset folder in `{datasets_dir()}` and appears in the list "
                   "above. Started again with the same name, a download resumes, or adds new posters to the "
                   "ones already there.")
        tmdb_tab, urls_tab, tutorial_tab = st.tabs(["TMDB download", "Poster-URL table", "Tutorial files"])
        with tmdb_tab:
            tmdb_form()
        with urls_tab:
            url_table_form()
        with tutorial_tab:
            tutorial_form()


# --- the page ----------------------------------------------------------------------------------

route_through_app()
st.title("Data")
st.caption("Choose the posters, see what genres they carry, and turn them into VGG16 features.")

st.subheader("Dataset")
choice = dataset_controls()
acquisition_section()
dataset, report = load_active(choice)
show_report(dataset, report)

st.subheader("Genres")
genre_charts(dataset)
descriptor_boxplots(dataset)

st.subheader("Features")
if weights_controls() is not None:
    feature_controls()
    extraction_section(dataset)

st.subheader("Posters")
poster_grid(dataset)
