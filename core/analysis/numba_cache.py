"""Where numba keeps the code it compiles for UMAP and pynndescent: under the product's cache, so the
compilation is paid once per install rather than once per process."""
from __future__ import annotations

import os
from pathlib import Path

from core.cache import cache_root, make_dirs

NUMBA_CACHE_ENV = "NUMBA_CACHE_DIR"


def configure_numba_cache() -> Path:
    """Point numba's on-disk cache of compiled functions at ``<cache root>/numba`` unless the user
    already chose a folder; must run before ``umap`` or ``pynndescent`` (hence numba) is first imported."""
    folder = make_dirs(Path(os.environ.get(NUMBA_CACHE_ENV) or cache_root() / "numba"))
    os.environ.setdefault(NUMBA_CACHE_ENV, str(folder))
    return folder
