"""Home: what is active, what is cached, and the path through the pages."""
from __future__ import annotations

import streamlit as st

from pages._shared import (active_dataset, active_weights, dataset_caption, feature_config, feature_status,
                           fingerprint, route_through_app, weights_notice)
from pages._widgets import dataset_runs

route_through_app()
st.title("Poster Genre Explorer")
st.caption("What do movie posters say about a film's genre? VGG16 features, a small MLP, honest metrics.")

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

st.metric("Saved training runs on this dataset", len(dataset_runs(dataset)))

st.subheader("The path through the app")
st.markdown(
    "1. **Data** — choose a poster folder (or the demo), look at its genres, extract VGG16 features.\n"
    "2. **Train** — start from the tutorial's recipe or the recommended one, move the hyperparameters, "
    "watch the loss curves, compare runs against the frequency prior.\n"
    "3. **Clusters** — a UMAP map of the features: do posters of one genre sit together? With numbers.\n"
    "4. **Predictions** — poster by poster: what the model predicts, where it fails, and your own upload.")
for page, label, icon in [("pages/data.py", "Data", ":material/folder_open:"),
                          ("pages/train.py", "Train", ":material/science:"),
                          ("pages/clusters.py", "Clusters", ":material/scatter_plot:"),
                          ("pages/predictions.py", "Predictions", ":material/search:")]:
    st.page_link(page, label=label, icon=icon)
