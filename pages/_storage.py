"""The Data page's extraction choices: backbone, input geometry, and storage (full rows, or pooled views
only for very large sets; the poster geometry and every backbone but VGG16 keep pooled views only).

Imported by the pages (not run as a page, so Streamlit magic does not apply here).
"""
from __future__ import annotations

import streamlit as st

from core.features.backbones import BACKBONES, DEFAULT_BACKBONE, GEOMETRIES, has_flatten
from core.features.views import STORAGES
from core.model.gradcam import BACKBONE_VIEW_LAYERS
from pages._shared import feature_config, load_settings, save_settings

FEATURE_CHOICES = ("backbone", "geometry", "storage")


def _on_change(name: str) -> None:
    save_settings(**{name: st.session_state[name]})


def _radio(name: str, label: str, options: dict[str, str], *, format_func=str.capitalize, disabled: bool = False):
    st.session_state[name] = load_settings()[name]
    return st.radio(label, list(options), key=name, horizontal=True, on_change=_on_change, args=(name,),
                    format_func=format_func, disabled=disabled,
                    help="; ".join(f"{option}: {text}" for option, text in options.items()))


def backbone_controls() -> str:
    notes = {name: f"{spec.label} ({spec.note})" for name, spec in BACKBONES.items()}
    backbone = _radio("backbone", "Backbone", notes, format_func=lambda name: BACKBONES[name].label)
    spec = BACKBONES[backbone]
    if backbone != DEFAULT_BACKBONE:
        online = "ImageNet weights download online; " if spec.keras_application else ""
        explained = ("Grad-CAM explains its runs" if backbone in BACKBONE_VIEW_LAYERS else
                     "Grad-CAM does not explain its runs (VGG16 and EfficientNet-Lite2 only)")
        st.info(f"{spec.label}: {spec.note}. {online}A local weights file may be a notop {spec.weights_files}. "
                f"{explained}.")
    return backbone


def geometry_controls() -> str:
    geometry = _radio("geometry", "Input geometry", GEOMETRIES)
    st.caption(f"{feature_config().label}: {GEOMETRIES[geometry]}")
    return geometry


def storage_controls() -> str:
    """The saved storage choice (``FeatureConfig.storage``), as a radio whose change is saved; fixed to
    pooled where the backbone and geometry have no flatten view."""
    settings = load_settings()
    fixed = not has_flatten(settings["backbone"], settings["geometry"])
    storage = _radio("storage", "Feature storage", STORAGES, disabled=fixed)
    if fixed:
        st.caption(f"Pooled views only: {feature_config().flatten_unavailable()}.")
        return "pooled"
    st.caption(STORAGES[storage])
    if storage == "pooled":
        st.info("Pooled-only: features extracted this way have no 25,088-d flatten view (the tutorial's); "
                "the avg, max and avg45 views are there.")
    return storage


def feature_controls() -> None:
    """Backbone, geometry and storage, side by side."""
    backbone_column, geometry_column, storage_column = st.columns(3)
    with backbone_column:
        backbone_controls()
    with geometry_column:
        geometry_controls()
    with storage_column:
        storage_controls()
