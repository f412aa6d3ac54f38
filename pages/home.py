"""Home: what is active, what is cached, and the path through the pages."""
from __future__ import annotations

import streamlit as st

from core.errors import PosterGenreError
from core.model.classifier import training_fraction
from core.model.config import PRESETS
from core.features.backbones import BACKBONES
from core.features.pipeline import FeatureConfig
from core.model.quickstart import QUICK_START_PRESET, first_touch_features, quick_start
from pages._shared import (active_dataset, active_weights, current_labels, dataset_caption, feature_config,
                           feature_status, features_if_cached, fingerprint, forget_features, progress_bar,
                           route_through_app, save_settings, weights_notice)
from pages._widgets import dataset_runs


def start_button_label(dataset) -> str:
    return "Explore the demo" if dataset.synthetic else f"Extract the features and train `{QUICK_START_PRESET}`"


def one_click_start(dataset, features_config: FeatureConfig) -> bool:
    """Extract what is missing and train the one-click preset, with one progress bar for each; the
    features chosen become the active ones when they differ from the Data page's choice."""
    config = PRESETS[QUICK_START_PRESET]
    extraction, training = st.empty(), st.empty()

    def on_epoch(entry) -> None:
        validation = "" if entry.val_loss is None else f", validation loss {entry.val_loss:.3f}"
        training.progress(training_fraction(config, entry.member, entry.epoch),
                          text=f"Training `{QUICK_START_PRESET}`: epoch {entry.epoch}/{config.epochs}{validation}")

    try:
        started = quick_start(dataset, features_config, config=config,
                              on_extract=progress_bar(extraction, f"Loading {BACKBONES[features_config.backbone].label} "
                                                                  "(the first time in this server also loads "
                                                                  "TensorFlow)…"),
                              on_epoch=on_epoch)
    except PosterGenreError as err:
        st.error(str(err))
        return False
    if features_config != feature_config():
        save_settings(backbone=features_config.backbone)
    forget_features()
    extraction.progress(1.0, text=f"Features ready: {len(started.features.ids):,} posters")
    training.progress(1.0, text=f"`{QUICK_START_PRESET}` " + ("trained and saved" if started.trained
                                                              else "was already trained"))
    return True


route_through_app()
st.title("Poster Genre Explorer")
st.caption("What do movie posters say about a film's genre? Pretrained image features (VGG16 as in the tutorial, "
           "or the faster EfficientNet-Lite2), a small MLP, honest metrics.")

dataset, report = active_dataset()
st.markdown(f"Dataset: {dataset_caption(dataset)}")
if dataset.synthetic:
    st.info("This is the built-in **synthetic** demo set: generated posters whose genres have their own "
            "colours and shapes. Load real posters on the Data page.")
if report.skipped:
    st.caption(f"{len(report.skipped)} items of this folder were skipped; see the Data page for the list.")

weights = active_weights()
if weights is not None:
    weights_notice(weights)
    cached, total, _ = feature_status(dataset, str(dataset.root), fingerprint(dataset.root), feature_config())
    st.metric("Posters with cached features", f"{cached:,} / {total:,}")
    if cached < total:
        st.page_link("pages/data.py", label="Extract the missing features on the Data page",
                     icon=":material/folder_open:")

runs = dataset_runs(dataset)
st.metric("Saved training runs on this dataset", len(runs))
features = features_if_cached(dataset) if weights is not None and cached == total and runs else None
today = [run for run in runs if features is not None and run.trained_on(current_labels(dataset, features))]
if features is not None and len(today) < len(runs):
    st.caption(f"{len(runs) - len(today)} of them were not trained on today's labels.csv, so they do not answer "
               "for it" + ("." if today else "; the one click below trains on today's labels."))
if weights is not None and (cached < total or not today):
    first_touch = first_touch_features(dataset, feature_config())
    st.markdown(f"One click extracts the features and trains the `{QUICK_START_PRESET}` model, so that every page has "
                "something to show" + (" (about 20 s on two CPU cores)." if dataset.synthetic else "."))
    if first_touch != feature_config():
        st.caption(f"The demo's features come from **{BACKBONES[first_touch.backbone].label}** with its ImageNet "
                   "weights, installed with the requirements (nothing to download, several times faster than "
                   "VGG16 on a CPU). The tutorial's VGG16 is one choice away on the Data page.")
    if st.button(start_button_label(dataset), key="quick_start", type="primary",
                 icon=":material/play_arrow:") and one_click_start(dataset, first_touch):
        st.session_state.quick_start_done = True
        st.rerun()
if st.session_state.pop("quick_start_done", False):
    st.success(f"Done: features extracted and the `{QUICK_START_PRESET}` model trained; the Train, Clusters and "
               "Predictions pages are populated.")

st.subheader("The path through the app")
st.markdown(
    "1. **Data** — choose a poster folder (or the demo), look at its genres, extract their features (VGG16 or "
    "EfficientNet-Lite2).\n"
    "2. **Train** — start from the tutorial's recipe or the recommended one, move the hyperparameters, "
    "watch the loss curves, compare runs against the frequency prior.\n"
    "3. **Clusters** — a UMAP map of the features: do posters of one genre sit together? With numbers.\n"
    "4. **Predictions** — poster by poster: what the model predicts, where it fails, and your own upload.")
for page, label, icon in [("pages/data.py", "Data", ":material/folder_open:"),
                          ("pages/train.py", "Train", ":material/science:"),
                          ("pages/clusters.py", "Clusters", ":material/scatter_plot:"),
                          ("pages/predictions.py", "Predictions", ":material/search:")]:
    st.page_link(page, label=label, icon=icon)
