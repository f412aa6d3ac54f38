"""What every page shares: the active dataset and weights, cached loaders, the sidebar.

Streamlit caching lives here only; ``core`` keeps its own disk cache. The feature matrix is held
once per process by ``st.cache_resource`` (memory-mapped), never copied per session.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import streamlit as st

from core.cache import atomic_write_json, cache_root, check_writable
from core.data.datasets import Dataset, LoadReport, Skipped, load_dataset
from core.data.demo import ensure_demo_dataset
from core.errors import PosterGenreError
from core.features.pipeline import FeatureConfig, FeatureSet, cache_status, cached_features
from core.features.backbones import BACKBONES, DEFAULT_BACKBONE
from core.features.weights import Weights, default_weights_spec, resolve_weights
from core.model.experiment import LabelsInfo, labels_info
from core.progress import Progress, ProgressFn

DEMO = "demo"
SETTINGS_FILE = "ui_settings.json"
WARM_UP_ENV = "POSTER_GENRE_WARM_UP"
"""Set to 0 to skip the background warm-up (the tests do: each AppTest would pay it again)."""


GC_FREEZE_MIN_POSTERS = 20_000
"""From this many posters a dataset's objects are frozen out of the collector's passes (below, they cost
it little)."""

_ROUTED = False


WARM_UP_SETTLE_S = 1.0
"""The warm-up waits until no page has run for this long (a rerun follows its predecessor within it)."""
WARM_UP_COMPILE_TIMEOUT_S = 600
"""A child still compiling after this long (a very loaded machine) is stopped; the thread compiles the rest."""

_warm_up_thread: threading.Thread | None = None
_warm_up_child: subprocess.Popen | None = None
_runs_in_progress = 0
_runs_changed = threading.Condition()


@contextlib.contextmanager
def page_run():
    """Wrap every script run: counts the runs in progress, and starts the warm-up when the first has ended.

    Each warm-up step (a TensorFlow import, a numba compilation) holds the GIL for seconds, so it only
    starts while no page runs: started before the page, it made a cold Home take 2.4x as long to
    finish (issue 22). The steps in this process are not niced: a page that needs Keras while a
    nice-19 thread imports it waits on the import lock (33-39 s instead of 6 s measured on two busy
    cores), and numba's worker threads would inherit a low priority for the life of the server.
    """
    global _runs_in_progress
    with _runs_changed:
        _runs_in_progress += 1
        if _runs_in_progress == 1:
            _pause_child(True)
        _runs_changed.notify_all()
    try:
        yield
    finally:
        with _runs_changed:
            _runs_in_progress -= 1
            if _runs_in_progress == 0:
                _pause_child(False)
            _runs_changed.notify_all()
        warm_up_in_background()


def _pause_child(pause: bool) -> None:
    """Stop the compiling child while any page runs, continue it when none does (POSIX signals). Nice 19
    was not enough: beside a page's extraction on two cores it still ran on 0.3-0.9 of a core (CPU time
    sampled each second), in the gaps the page's threads left."""
    child = _warm_up_child
    signal_name = "SIGSTOP" if pause else "SIGCONT"
    if child is None or child.poll() is not None or not hasattr(signal, signal_name):
        return
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(getattr(signal, signal_name))


def wait_until_no_page_runs(settle: float = WARM_UP_SETTLE_S) -> None:
    """Return once no script run has been in progress for ``settle`` seconds."""
    with _runs_changed:
        while True:
            _runs_changed.wait_for(lambda: _runs_in_progress == 0)
            if not _runs_changed.wait(settle) and _runs_in_progress == 0:
                return


def warm_up_in_background() -> threading.Thread:
    """Import TensorFlow and compile UMAP's kernels in a daemon thread, once per server process.

    No page that merely shows cached results imports TensorFlow, so the first paint does not wait for
    it (~7 s here); by the time someone trains or maps, the imports and the numba compilation are done.
    """
    global _warm_up_thread
    with _runs_changed:
        if _warm_up_thread is None:
            _warm_up_thread = threading.Thread(target=_warm_up, name="poster-genre-warm-up", daemon=True)
            if os.environ.get(WARM_UP_ENV, "1") != "0":
                _warm_up_thread.start()
        return _warm_up_thread


def _warm_up() -> None:
    """Each step waits for a moment when no page runs; the bulk of the numba compilation (UMAP's import)
    runs in a child process at the lowest priority, stopped while any page runs, and fills the disk cache
    this process then reads."""
    global _warm_up_child
    wait_until_no_page_runs()
    from core.analysis.maps import warm_up, warm_up_at_low_priority

    with _runs_changed:
        compiling = _warm_up_child = warm_up_at_low_priority()
        if _runs_in_progress:
            _pause_child(True)
    import keras  # noqa: F401

    keep_out_of_gc_passes()
    try:
        compiling.wait(WARM_UP_COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        compiling.kill()
    wait_until_no_page_runs()
    warm_up()


def keep_out_of_gc_passes(n_posters: int | None = None) -> None:
    """Freeze every object alive now out of the garbage collector's passes (``gc.freeze``).

    After every script run Streamlit calls ``gc.collect(2)`` and ``keras.backend.clear_session()`` (a
    second full pass). Each walks every tracked object: TensorFlow's hundreds of thousands, a large
    dataset's posters and tables (0.4 s with 100,000 posters loaded here), and the next rerun waits.
    Called once the long-lived things are built (the imports; a dataset of ``n_posters`` and its tables,
    from ``GC_FREEZE_MIN_POSTERS``), after a collection so no garbage is frozen with them. Reference
    counting still frees a frozen object; only a cycle (a Keras model alive now) would outlive its use.
    """
    if n_posters is not None and n_posters < GC_FREEZE_MIN_POSTERS:
        return
    gc.collect()
    gc.freeze()


def route_through_app() -> None:
    """Make a deep link on a freshly started server run through ``app.py``.

    Streamlit treats a ``pages/`` folder as a legacy multipage app until the first ``st.navigation``
    call, so the very first request for ``/train`` would run ``pages/train.py`` alone (no router,
    no sidebar, every file listed as a page). Leaving that mode and rerunning sends the request
    through ``app.py``. Every page calls this first. It acts once per process: Streamlit's AppTest
    re-enters the legacy mode on every run, and a rerun there would swallow widget events.
    """
    from streamlit.runtime.pages_manager import PagesManager

    global _ROUTED
    if PagesManager.uses_pages_directory and not _ROUTED:
        _ROUTED = True
        PagesManager.uses_pages_directory = False
        st.rerun()


def cache_usable_or_stop() -> None:
    """A cache folder that is a file, read-only or on a full disk says so once, before any page runs."""
    try:
        check_writable(cache_root())
    except PosterGenreError as err:
        st.error(f"The cache cannot be used: {err}")
        st.stop()


def settings_path() -> Path:
    return cache_root() / SETTINGS_FILE


def load_settings() -> dict:
    """Dataset and weights choices, persisted across pages, sessions and server restarts."""
    if "settings" not in st.session_state:
        try:
            saved = json.loads(settings_path().read_text())
        except (OSError, ValueError):
            saved = {}
        st.session_state.settings = {"dataset": DEMO, "weights": default_weights_spec(), "precision": "auto",
                                     **(saved if isinstance(saved, dict) else {})}
    for name in ("storage", "geometry", "backbone"):
        st.session_state.settings.setdefault(name, getattr(FeatureConfig, name))
    return st.session_state.settings


def save_settings(**changes) -> None:
    settings = load_settings()
    settings.update(changes)
    atomic_write_json(settings_path(), settings)


def dataset_root(choice: str) -> Path:
    return ensure_demo_dataset() if choice == DEMO else Path(choice).expanduser()


def fingerprint(root: Path) -> tuple:
    """Changes whenever labels.csv or the posters folder changes, invalidating cached loads."""
    parts = []
    for path in (root / "labels.csv", root / "posters"):
        try:
            stat = path.stat()
            parts.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            parts.append(None)
    return tuple(parts)


@st.cache_resource(show_spinner="Loading dataset…", max_entries=8)
def _load_dataset(root: str, dataset_fingerprint: tuple) -> tuple[Dataset, LoadReport]:
    """Keyed by the fingerprint too (no leading underscore, so Streamlit hashes it): an edited labels.csv
    is read again on the next rerun, and runs are matched against today's labels."""
    loaded = load_dataset(root)
    keep_out_of_gc_passes(len(loaded[0]))
    return loaded


def get_dataset(root: Path) -> tuple[Dataset, LoadReport]:
    return _load_dataset(str(root), fingerprint(root))


def active_dataset() -> tuple[Dataset, LoadReport]:
    """The chosen dataset, or a message and ``st.stop()`` when it cannot be loaded."""
    choice = load_settings()["dataset"]
    try:
        return get_dataset(dataset_root(choice))
    except PosterGenreError as err:
        st.error(f"The chosen dataset cannot be loaded: {err}")
        st.page_link("pages/data.py", label="Choose another dataset on the Data page",
                     icon=":material/folder_open:")
        st.stop()


def feature_config() -> FeatureConfig:
    settings = load_settings()
    return FeatureConfig(weights=settings["weights"], precision=settings["precision"], storage=settings["storage"],
                         geometry=settings["geometry"], backbone=settings["backbone"])


def get_weights(spec: str, backbone: str | None = None) -> Weights:
    """The weights ``spec`` names for ``backbone`` (default: the saved backbone's, whose ImageNet source it is)."""
    return _resolved_weights(spec, backbone or load_settings()["backbone"])


@st.cache_resource(show_spinner=False)
def _resolved_weights(spec: str, backbone: str) -> Weights:
    return resolve_weights(spec, backbone)


def active_weights() -> Weights | None:
    try:
        return get_weights(load_settings()["weights"])
    except PosterGenreError as err:
        st.error(f"Weights: {err}")
        return None


class _NotCached(Exception):
    pass


@st.cache_resource(show_spinner="Opening cached features…", max_entries=4)
def _cached_features(root: str, dataset_fingerprint: tuple, config: FeatureConfig) -> FeatureSet:
    dataset, _ = _load_dataset(root, dataset_fingerprint)
    features = cached_features(dataset, config)
    if features is None:
        raise _NotCached
    keep_out_of_gc_passes(len(features.ids))
    return features


def features_if_cached(dataset: Dataset) -> FeatureSet | None:
    """The active dataset's features if extraction is done; computes nothing."""
    try:
        return _cached_features(str(dataset.root), fingerprint(dataset.root), feature_config())
    except _NotCached:
        return None
    except PosterGenreError as err:
        st.error(str(err))
        return None


@st.cache_data(show_spinner=False, max_entries=8)
def _labels_of(root: str, dataset_fingerprint: tuple, features_key: str, _dataset: Dataset,
               _ids: list[str]) -> LabelsInfo:
    return labels_info(_dataset, _ids)


def current_labels(dataset: Dataset, features: FeatureSet) -> LabelsInfo:
    """Today's labels of the active features: a saved run answers for them only when it was trained on them
    (re-hashed only when labels.csv or the posters change)."""
    return _labels_of(str(dataset.root), fingerprint(dataset.root), features.key, dataset, features.ids)


def forget_features() -> None:
    """Drop the cached feature sets and statuses; call after new features reached the disk cache."""
    _cached_features.clear()
    feature_status.clear()


def require_features(dataset: Dataset) -> FeatureSet:
    features = features_if_cached(dataset)
    if features is None:
        st.info("No features for this dataset and these weights yet: extract them on the Data page first.")
        st.page_link("pages/data.py", label="Go to Data → Extract features", icon=":material/folder_open:")
        st.stop()
    weights_notice(features.weights, features.config)
    if features.config.stored == "pooled":
        st.caption(f"Pooled-only features: {features.config.flatten_unavailable()}.")
    return features


def progress_bar(box, text: str | None = "Starting…") -> ProgressFn:
    """A ``ProgressFn`` drawing each ``Progress`` as a bar in ``box`` (an ``st.empty()``, cleared by the caller).

    With ``text`` the bar shows at once; without, only when the first progress arrives (work that
    may turn out to be done already then shows nothing).
    """
    if text is not None:
        box.progress(0.0, text=text)

    def update(progress: Progress) -> None:
        box.progress(progress.fraction, text=progress.line())

    return update


def weights_notice(weights: Weights, config: FeatureConfig | None = None) -> None:
    """Which backbone, geometry and weights the features come from; a warning for random weights."""
    config = config or feature_config()
    backbone = BACKBONES[config.backbone].label
    if weights.is_random:
        st.warning(f"⚠️ These features come from RANDOM {backbone} weights (weights=none), not ImageNet: "
                   f"they are for testing the pipeline only and say nothing about posters ({config.label}).")
    else:
        st.caption(f"Features: {config.label}, with {weights.label}")
    if config.backbone != DEFAULT_BACKBONE:
        st.caption(f"{backbone}: {BACKBONES[config.backbone].note}.")


def dataset_caption(dataset: Dataset) -> str:
    kind = "synthetic demo (generated, not real posters)" if dataset.synthetic else "poster folder"
    return f"**{dataset.name}** — {kind}, {len(dataset):,} posters, {len(dataset.genre_counts())} genres"


def sidebar() -> None:
    """Active dataset and weights on every page."""
    settings = load_settings()
    with st.sidebar:
        st.markdown("**Active dataset**")
        st.caption("Synthetic demo" if settings["dataset"] == DEMO else settings["dataset"])
        st.markdown("**Weights**")
        try:
            weights = get_weights(settings["weights"])
        except PosterGenreError as err:
            st.error(str(err))
            return
        if weights.is_random:
            st.warning("RANDOM weights — not ImageNet", icon=":material/warning:")
        else:
            st.caption(weights.label)


STATUS_TTL_S = 30


@st.cache_data(show_spinner="Checking the feature cache…", ttl=STATUS_TTL_S, max_entries=16)
def feature_status(_dataset: Dataset, root: str, version: tuple,
                   config: FeatureConfig) -> tuple[int, int, list[Skipped]]:
    """``(cached, total, undecodable posters)``; the failures are known only once the rest is cached.

    Cached briefly and cleared after an extraction on the Data page; an extraction by the CLI or another session
    shows up once the TTL has passed.
    """
    cached, total = cache_status(_dataset, config)
    features = cached_features(_dataset, config) if 0 < cached < total else None
    return cached, total, features.failed if features is not None else []
