"""Poster Genre Explorer: what do movie posters say about a film's genre?"""
from __future__ import annotations

import streamlit as st

from pages._shared import sidebar

st.set_page_config(page_title="Poster Genre Explorer", page_icon="🎬", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon="🎬", default=True),
    st.Page("pages/data.py", title="Data", icon="🗂️"),
    st.Page("pages/train.py", title="Train", icon="🧪"),
    st.Page("pages/clusters.py", title="Clusters", icon="🗺️"),
    st.Page("pages/predictions.py", title="Predictions", icon="🔍"),
]
navigation = st.navigation(pages)
sidebar()
navigation.run()
