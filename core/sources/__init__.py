"""Getting real posters into dataset folders: HTTP with retries (``http``), TMDB (``tmdb``), poster-URL tables (``url_table``), the tutorial's pickles (``tutorial``, via ``safe_pickle``)."""
