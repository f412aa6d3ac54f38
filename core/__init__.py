"""Everything of Poster Genre Explorer that is not UI (never imports streamlit).

Subpackages by job: ``data`` (dataset folders, image decoding, the synthetic demo), ``sources``
(TMDB, poster-URL tables, the tutorial's pickles), ``features`` (VGG16 weights, extraction, the
feature store, feature views), ``model`` (training options, the classifier, experiments, saved runs,
predictions), ``analysis`` (metrics, UMAP maps, neighbours) and ``cli`` (``python -m core``). Shared
by all: ``cache`` (the cache folder, atomic writes, hashes), ``progress`` and ``errors``. Submodules
are imported where used, so ``python -m core --help`` stays instant.
"""
