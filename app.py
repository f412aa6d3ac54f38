"""Poster Genre Explorer: what do movie posters say about a film's genre?"""
from __future__ import annotations

import streamlit as st

from pages._shared import cache_usable_or_stop, page_run, sidebar

st.set_page_config(page_title="Poster Genre Explorer", page_icon=":material/movie:", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/movie:", default=True),
    st.Page("pages/data.py", title="Data", icon=":material/folder_open:"),
    st.Page("pages/train.py", title="Train", icon=":material/science:"),
    st.Page("pages/clusters.py", title="Clusters", icon=":material/scatter_plot:"),
    st.Page("pages/predictions.py", title="Predictions", icon=":material/search:"),
]
navigation = st.navigation(pages)
with page_run():  # the background warm-up starts once this first run has ended, st.stop() and reruns included
    cache_usable_or_stop()
    sidebar()
    navigation.run()
