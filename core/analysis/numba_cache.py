"""Where numba keeps the code it compiles for UMAP and pynndescent: under the product's cache, so the
compilation is paid once per install rather than once per process."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from types import ModuleType

from core.cache import cache_root, make_dirs

NUMBA_CACHE_ENV = "NUMBA_CACHE_DIR"
UMAP_KERNEL_MODULES = ("umap.umap_", "umap.layouts", "umap.distances", "umap.sparse", "umap.utils")
"""umap-learn's modules whose numba kernels the maps run; umap declares them without ``cache=True``."""
log = logging.getLogger(__name__)


def configure_numba_cache() -> Path:
    """Point numba's on-disk cache of compiled functions at ``<cache root>/numba`` unless the user
    already chose a folder; must run before ``umap`` or ``pynndescent`` (hence numba) is first imported."""
    folder = make_dirs(Path(os.environ.get(NUMBA_CACHE_ENV) or cache_root() / "numba"))
    os.environ.setdefault(NUMBA_CACHE_ENV, str(folder))
    return folder


def import_umap() -> ModuleType:
    """``umap``, imported so that a fresh process pays neither TensorFlow nor umap's compilation again.

    ``import umap`` imports TensorFlow for ``ParametricUMAP`` (7 s or more in a process that has not
    loaded it; the product never uses it): marking ``umap.parametric_umap`` absent before the first
    import makes umap fall back to its stub. umap compiles its own kernels (layout, fuzzy graph,
    distances) on every process start, 5-20 s; switching on numba's disk cache for them, as
    pynndescent does for its own, compiles them once per install.
    """
    configure_numba_cache()
    if "umap" not in sys.modules:
        sys.modules.setdefault("umap.parametric_umap", None)
    import umap

    for name in UMAP_KERNEL_MODULES:
        cache_kernels(sys.modules.get(name) or __import__(name, fromlist=["_"]))
    return umap


def cache_kernels(module: ModuleType) -> int:
    """Switch on numba's disk cache for the module's jitted functions not yet compiled; returns how many.

    It uses numba internals (``Dispatcher.enable_caching``, what ``cache=True`` calls); should a numba
    release move them, the kernels are compiled in each process as before instead of failing the map.
    """
    try:
        from numba.core.caching import NullCache
        from numba.core.dispatcher import Dispatcher
    except ImportError as err:
        log.debug("numba's cache internals moved (%s): umap's kernels are compiled in each process", err)
        return 0
    switched = 0
    for value in vars(module).values():
        if (isinstance(value, Dispatcher) and isinstance(getattr(value, "_cache", None), NullCache)
                and not value.overloads and hasattr(value, "enable_caching")):
            try:
                value.enable_caching()
            except RuntimeError as err:  # no writable place for this function's cache: compile as before
                log.debug("numba cache unavailable for %s: %s", value.py_func.__qualname__, err)
                continue
            switched += 1
    return switched
