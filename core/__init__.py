"""Everything of Poster Genre Explorer that is not UI (never imports streamlit).

One module per stage: ``datasets`` (folders, labels, genre vocabulary), ``images`` (decoding any
poster file), ``weights`` / ``extractor`` / ``features`` / ``feature_store`` (cached VGG16 features),
``train`` / ``experiment`` / ``runs`` / ``predict`` (the MLP, its runs on disk, predictions),
``metrics`` (top-k precision/recall, the frequency prior, bootstrap intervals), ``embeddings`` (UMAP,
neighbours), ``demo`` (the synthetic set), ``tmdb`` / ``url_download`` / ``tutorial_import`` /
``safe_pickle`` / ``http`` (getting real posters), ``cache`` and ``errors``; ``python -m core`` is the
command line. Submodules are imported where used, so ``python -m core --help`` stays instant.
"""
