"""The Data page's feature-storage choice: full rows, or pooled views only for very large sets.

Imported by the pages (not run as a page, so Streamlit magic does not apply here).
"""
from __future__ import annotations

import streamlit as st

from core.features.views import STORAGES
from pages._shared import load_settings, save_settings

def _on_storage() -> None:
    save_settings(storage=st.session_state["storage"])


def storage_controls() -> str:
    """The saved storage choice (``FeatureConfig.storage``), as a radio whose change is saved."""
    st.session_state["storage"] = load_settings()["storage"]
    storage = st.radio("Feature storage", list(STORAGES), key="storage", horizontal=True, on_change=_on_storage,
                       format_func=str.capitalize, help="; ".join(f"{name}: {text}" for name, text in STORAGES.items()))
    st.caption(STORAGES[storage])
    if storage == "pooled":
        st.info("Pooled-only: features extracted this way have no 25,088-d flatten view (the tutorial's); "
                "the avg, max and avg45 views are there.")
    return storage
