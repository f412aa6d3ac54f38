"""The Data page's choice of extraction engine: this process, or the Ray cluster when one is configured."""
from __future__ import annotations

import streamlit as st

from core.errors import PosterGenreError
from core.features.ray_engine import RayEngine, configured_address, engine_for
from pages._shared import load_settings

ENGINE_LABELS = {"local": "This process", "ray": "Ray cluster"}


def engine_controls() -> RayEngine | None:
    """The engine for ``extract_features(engine=...)``: ``None`` runs in this process.

    The choice appears only when a Ray address is configured (``RAY_ADDRESS``, or ``ray_address`` in
    the settings file); if Ray is not installed the page says how to install it and stays in-process.
    """
    address = load_settings().get("ray_address") or configured_address()
    if not address:
        return None
    choice = st.radio("Extraction engine", list(ENGINE_LABELS), format_func=ENGINE_LABELS.get,
                      key="extraction_engine", horizontal=True,
                      help=f"Ray sends the posters not cached yet to the cluster at {address}; "
                           "its workers must see the dataset folder and weights file at the same paths.")
    if choice == "local":
        return None
    try:
        return engine_for("ray", address=address)
    except PosterGenreError as err:
        st.error(f"{err} Extraction runs in this process until then.")
        return None
