"""Views of a cached feature row: the tutorial's flattened block5_pool, or poolings of the same pass."""
from __future__ import annotations

import logging

import numpy as np

from core.cache import atomic_save_npy, load_npy
from core.errors import CacheError
from core.features.extractor import BLOCK4_DIM, FEATURE_DIM, FEATURE_SHAPE

FEATURE_VIEWS = {
    "flatten": "VGG16 block5_pool flattened (25,088-d, as the tutorial)",
    "avg": "global average pooling of the same 7x7x512 map (512-d)",
    "max": "global max pooling of the same 7x7x512 map (512-d)",
    "avg45": "global average pooling of block4_pool and block5_pool, side by side (1,024-d)",
}
log = logging.getLogger(__name__)
CHANNELS = FEATURE_SHAPE[-1]
VIEW_DIMS = {"flatten": FEATURE_DIM, "avg": CHANNELS, "max": CHANNELS, "avg45": BLOCK4_DIM + CHANNELS}


def feature_view(rows: np.ndarray, name: str, *, cache_key: str | None = None) -> np.ndarray:
    """The tutorial's flattened vector, or a pooling of the same forward pass's maps.

    Pooled views are derived from the cached rows (Keras flattens channels last, so the first
    25,088 values of a row reshape to ``(7, 7, 512)``) and cached beside them when ``cache_key`` is given;
    a cached view that fails its checks is computed again and overwritten.
    """
    if name not in FEATURE_VIEWS:
        raise ValueError(f"unknown feature view {name!r}; choose from {', '.join(FEATURE_VIEWS)}")
    if name == "flatten":
        return rows[:, :FEATURE_DIM]
    from core.cache import cache_root

    path = cache_root() / "views" / f"{cache_key}-{name}.npy" if cache_key else None
    if path is not None and path.exists():
        try:
            return load_npy(path, shape=(len(rows), VIEW_DIMS[name]), dtype="float32", mmap=False)
        except CacheError as err:
            log.warning("%s; recomputing the %r view", err, name)
    pooled = pool_features(rows, name)
    if path is not None:
        atomic_save_npy(path, pooled)
    return pooled


def pool_features(rows: np.ndarray, name: str, chunk: int = 1024) -> np.ndarray:
    """A pooled view of feature rows, computed in chunks (works on a memmap)."""
    out = np.empty((len(rows), VIEW_DIMS[name]), dtype=np.float32)
    for start in range(0, len(rows), chunk):
        block = np.asarray(rows[start:start + chunk])
        top = block[:, :FEATURE_DIM].reshape(len(block), -1, CHANNELS)
        if name == "avg":
            out[start:start + chunk] = top.mean(axis=1)
        elif name == "max":
            out[start:start + chunk] = top.max(axis=1)
        else:
            out[start:start + chunk] = np.hstack([block[:, FEATURE_DIM:], top.mean(axis=1)])
    return out
