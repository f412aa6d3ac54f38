"""Views of a cached feature row: the tutorial's flattened block5_pool, or poolings of the same pass.

A store keeps one of two row layouts (``STORAGES``): the full row of ``core.features.extractor`` (VGG16
on the tutorial's 224x224 squash only), or a backbone's pooled-only row (``Backbone.pooled_columns``:
mid-stage average, top average, top max), for very large sets, for the poster geometry and for every
other backbone; the pooled views are then column ranges of it, and the flattened view does not exist.
The layout of a row is known from its width (``row_backbone``).
"""
from __future__ import annotations

import logging

import numpy as np

from core.cache import atomic_save_npy, load_npy
from core.errors import CacheError, ConfigError
from core.features.backbones import BACKBONES, Backbone
from core.features.extractor import BLOCK4_DIM, FEATURE_DIM, FEATURE_SHAPE, ROW_DIM

FEATURE_VIEWS = {
    "flatten": "VGG16 block5_pool flattened (25,088-d, as the tutorial)",
    "avg": "global average pooling of the same 7x7x512 map (512-d)",
    "max": "global max pooling of the same 7x7x512 map (512-d)",
    "avg45": "global average pooling of block4_pool and block5_pool, side by side (1,024-d)",
}
log = logging.getLogger(__name__)
CHANNELS = FEATURE_SHAPE[-1]
VIEW_DIMS = {"flatten": FEATURE_DIM, "avg": CHANNELS, "max": CHANNELS, "avg45": BLOCK4_DIM + CHANNELS}
"""Widths of VGG16's views; another backbone's pooled views are ``Backbone.view_dims``."""

STORAGES = {
    "full": "full rows: the tutorial's 25,088-d block5_pool and every pooled view (about 51 KB a poster)",
    "pooled": "pooled views only (about 3 KB a poster), for very large sets: no 25,088-d flatten view",
}
POOLED_DIM = BACKBONES["vgg16"].pooled_dim
STORED_DIMS = {"full": ROW_DIM, "pooled": POOLED_DIM}
POOLED_COLUMNS = BACKBONES["vgg16"].pooled_columns
"""Where each view lies in a VGG16 pooled-only row: ``[block4 avg | block5 avg | block5 max]``."""
FLATTEN_UNAVAILABLE = ("the tutorial's 25,088-d view is not available for this dataset: it was extracted in "
                       "pooled-only mode")
FLATTEN_HINT = ("choose the avg, max or avg45 view, or extract the features again with VGG16, the tutorial "
                "geometry and full storage (Data page → Features, or --backbone vgg16 --geometry "
                "tutorial --storage full)")
_POOLED_LAYOUTS = {spec.pooled_dim: spec for spec in BACKBONES.values()}


def row_backbone(width: int) -> Backbone | None:
    """The backbone whose pooled-only rows are ``width`` wide; ``None`` for VGG16's full rows."""
    if width == ROW_DIM:
        return None
    try:
        return _POOLED_LAYOUTS[width]
    except KeyError:
        raise ValueError(f"feature rows of width {width} match no known layout") from None


def view_labels(backbone: str = "vgg16", stored: str = "full") -> dict[str, str]:
    """The views features of ``backbone`` kept as ``stored`` rows have, each with what it is: VGG16's
    ``FEATURE_VIEWS`` (``flatten`` only from full rows), another backbone's pooled views from its layout."""
    if backbone == "vgg16":
        return {name: label for name, label in FEATURE_VIEWS.items() if name != "flatten" or stored == "full"}
    spec = BACKBONES[backbone]
    dims = spec.view_dims
    return {"avg": f"global average pooling of {spec.label}'s last map ({dims['avg']:,}-d)",
            "max": f"global max pooling of {spec.label}'s last map ({dims['max']:,}-d)",
            "avg45": f"{spec.label}'s mid-level maps averaged beside its last map's average ({dims['avg45']:,}-d)"}


def view_dim(name: str, backbone: str = "vgg16") -> int:
    """How wide view ``name`` is for a backbone (``flatten``: VGG16 only)."""
    return VIEW_DIMS[name] if name == "flatten" else BACKBONES[backbone].view_dims[name]


def feature_view(rows, name: str, *, cache_key: str | None = None, storage: str | None = None,
                 unavailable: str = FLATTEN_UNAVAILABLE) -> np.ndarray:
    """The tutorial's flattened vector, or a pooling of the same forward pass's maps.

    For full rows, pooled views are derived from the cached rows (Keras flattens channels last, so the
    first 25,088 values of a row reshape to ``(7, 7, 512)``) and cached beside them when ``cache_key`` is
    given; a cached view that fails its checks is computed again and overwritten. For pooled-only rows
    (known by their width) they are read straight from their columns, and ``flatten`` raises
    ``ConfigError`` with ``unavailable`` as its message. ``storage`` "pooled" insists on pooled rows.
    """
    if name not in FEATURE_VIEWS:
        raise ValueError(f"unknown feature view {name!r}; choose from {', '.join(FEATURE_VIEWS)}")
    layout = row_backbone(rows.shape[1])
    if layout is not None or storage == "pooled":
        return _pooled_view(rows, name, layout or BACKBONES["vgg16"], unavailable)
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


def _pooled_view(rows, name: str, layout: Backbone, unavailable: str) -> np.ndarray:
    if name == "flatten":
        raise ConfigError(unavailable, FLATTEN_HINT)
    return np.asarray(rows[:, layout.pooled_columns[name]], dtype=np.float32)


def pool_features(rows, name: str, chunk: int = 1024) -> np.ndarray:
    """A pooled view of full feature rows, computed in float32 in chunks (works on a memmap or shards)."""
    out = np.empty((len(rows), VIEW_DIMS[name]), dtype=np.float32)
    for start in range(0, len(rows), chunk):
        block = np.asarray(rows[start:start + chunk], dtype=np.float32)
        top = block[:, :FEATURE_DIM].reshape(len(block), -1, CHANNELS)
        if name == "avg":
            out[start:start + chunk] = top.mean(axis=1)
        elif name == "max":
            out[start:start + chunk] = top.max(axis=1)
        else:
            out[start:start + chunk] = np.hstack([block[:, FEATURE_DIM:], top.mean(axis=1)])
    return out


def pooled_rows(rows: np.ndarray) -> np.ndarray:
    """Full rows → pooled-only rows (``POOLED_COLUMNS``), what a pooled-only store keeps of a batch."""
    return np.hstack([pool_features(rows, "avg45"), pool_features(rows, "max")])
