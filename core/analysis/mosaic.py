"""The map drawn with the posters themselves: a 2-D map snapped to a grid, one poster per cell.

Two layouts:

- ``snap`` (any size, milliseconds): each poster falls in the grid cell under its map position, and each
  cell shows the poster nearest its centre; empty cells stay empty, so the mosaic keeps the map's shape.
- ``assign`` (up to ``ASSIGN_MAX_POSTERS``): a linear assignment of posters to a dense grid that
  minimises the total squared displacement, so every cell is filled and no poster is hidden.

Either way a poster appears in at most one cell. The image is assembled from a thumbnail atlas: every
poster is decoded once into a small ``THUMB_WIDTH`` x ``THUMB_HEIGHT`` thumbnail cached on disk under the
sha256 of its file (feature extraction makes it from the image it decodes: ``core.features.byproducts``), and the atlas of a whole dataset is cached as one array, so a mosaic of thousands of
posters is array indexing.

Thumbnails live in a ``FeatureStore`` of uint8 rows (``thumbnail_store``): one checksummed shard per batch
of posters, not a file per poster, so a batch costs two atomic writes. A shard is checked when read; a
damaged one is removed and its posters count as missing, so they are decoded again, never shown wrong.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from core.cache import atomic_save_npy, cache_root, file_facts, file_sha256, load_npy, memo_file_sha256, stable_hash
from core.errors import CacheError, ImageError, PosterGenreError
from core.features.store import FeatureStore

log = logging.getLogger(__name__)

THUMB_WIDTH = 32
THUMB_HEIGHT = 48
LAYOUTS = ("snap", "assign")
ASSIGN_MAX_POSTERS = 500
BACKGROUND = 245
MISSING_GREY = 200
THUMBNAIL_VERSION = 2
"""2: per-batch shards (1 was a .npy file per poster, left unread in its own folder)."""
THUMB_SHAPE = (THUMB_HEIGHT, THUMB_WIDTH, 3)
ATLAS_BATCH = 256
"""Posters decoded for an atlas are cached this many to a shard, so an interrupted atlas keeps most of its work."""


@dataclass(frozen=True)
class MosaicLayout:
    """``cells[r, c]`` is the row index (into the map's posters) shown in grid cell ``(r, c)``, or -1.

    Row 0 is the top of the map (largest y). ``extent`` is ``(x_min, x_max, y_min, y_max)`` of the map
    region the grid covers.
    """

    cells: np.ndarray
    extent: tuple[float, float, float, float]
    method: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.cells.shape

    def shown(self) -> np.ndarray:
        """The posters on the mosaic, in cell order (top-left to bottom-right)."""
        flat = self.cells.ravel()
        return flat[flat >= 0]


def grid_shape(coords: np.ndarray, columns: int, cell_aspect: float = THUMB_WIDTH / THUMB_HEIGHT) -> tuple[int, int]:
    """``(rows, columns)`` so that cells of ``cell_aspect`` (width / height) cover the map without stretching it."""
    x_span, y_span = _spans(coords)
    rows = int(round(columns * (y_span / x_span) * cell_aspect))
    return max(1, rows), int(columns)


def snap_layout(coords: np.ndarray, columns: int = 40, rows: int | None = None) -> MosaicLayout:
    """Snap each point to its grid cell; each cell keeps the point nearest its centre."""
    coords = _check_coords(coords)
    rows = rows or grid_shape(coords, columns)[0]
    extent = _extent(coords)
    u, v = _unit(coords, extent)
    column = np.minimum((u * columns).astype(np.int64), columns - 1)
    row = np.minimum(((1.0 - v) * rows).astype(np.int64), rows - 1)
    x_span, y_span = extent[1] - extent[0], extent[3] - extent[2]
    distance = ((u * columns - column - 0.5) * x_span / columns) ** 2 + \
        (((1.0 - v) * rows - row - 0.5) * y_span / rows) ** 2
    cell = row * columns + column
    order = np.lexsort((distance, cell))
    first = np.ones(len(order), dtype=bool)
    first[1:] = cell[order][1:] != cell[order][:-1]
    cells = np.full(rows * columns, -1, dtype=np.int64)
    cells[cell[order][first]] = order[first]
    return MosaicLayout(cells.reshape(rows, columns), extent, "snap")


def assign_layout(coords: np.ndarray, columns: int | None = None, rows: int | None = None) -> MosaicLayout:
    """A dense grid: posters assigned to cells minimising the total squared distance (Hungarian method).

    The default grid has about as many cells as posters (all shown); a smaller grid shows the posters
    that fit best.
    """
    from scipy.optimize import linear_sum_assignment

    coords = _check_coords(coords)
    if len(coords) > ASSIGN_MAX_POSTERS:
        raise PosterGenreError(f"the assignment layout takes at most {ASSIGN_MAX_POSTERS:,} posters, got {len(coords):,}",
                               "select a region of the map first, or use the snap layout")
    if columns is None:
        columns = max(1, int(np.ceil(np.sqrt(len(coords) * THUMB_HEIGHT / THUMB_WIDTH))))
    rows = rows or max(1, int(np.ceil(len(coords) / columns)))
    extent = _extent(coords)
    u, v = _unit(coords, extent)
    centre_u = (np.arange(columns) + 0.5) / columns
    centre_v = 1.0 - (np.arange(rows) + 0.5) / rows
    cell_u, cell_v = np.meshgrid(centre_u, centre_v)
    cost = (u[:, None] - cell_u.ravel()[None]) ** 2 + (v[:, None] - cell_v.ravel()[None]) ** 2
    posters, cell = linear_sum_assignment(cost)
    cells = np.full(rows * columns, -1, dtype=np.int64)
    cells[cell] = posters
    return MosaicLayout(cells.reshape(rows, columns), extent, "assign")


def mosaic_layout(coords: np.ndarray, *, columns: int = 40, method: str = "snap") -> MosaicLayout:
    if method not in LAYOUTS:
        raise PosterGenreError(f"unknown mosaic layout {method!r}", f"choose one of {', '.join(LAYOUTS)}")
    if method == "snap":
        return snap_layout(coords, columns)
    return assign_layout(coords)


def mosaic_image(layout: MosaicLayout, atlas: np.ndarray, rows: Sequence[int] | None = None) -> np.ndarray:
    """The mosaic as one ``(rows·h, columns·w, 3)`` uint8 image.

    ``atlas[i]`` is the thumbnail of poster ``i``; when the layout was made for a subset of posters,
    ``rows[j]`` is the atlas index of the layout's poster ``j``.
    """
    atlas = np.asarray(atlas)
    grid_rows, grid_columns = layout.shape
    height, width = atlas.shape[1:3]
    index = layout.cells if rows is None else np.where(layout.cells >= 0, np.asarray(rows)[layout.cells], -1)
    tiles = np.full((grid_rows, grid_columns, height, width, 3), BACKGROUND, dtype=np.uint8)
    filled = index >= 0
    tiles[filled] = atlas[index[filled]]
    return tiles.transpose(0, 2, 1, 3, 4).reshape(grid_rows * height, grid_columns * width, 3)


def cell_at(layout: MosaicLayout, x_pixel: float, y_pixel: float, size: tuple[int, int] = (THUMB_WIDTH, THUMB_HEIGHT)) -> int:
    """The poster (index into the layout's posters) under an image pixel, or -1 for an empty cell."""
    column, row = int(x_pixel // size[0]), int(y_pixel // size[1])
    grid_rows, grid_columns = layout.shape
    if not (0 <= row < grid_rows and 0 <= column < grid_columns):
        return -1
    return int(layout.cells[row, column])


def poster_thumbnail(path: Path, *, root: Path | None = None) -> np.ndarray:
    """A ``THUMB_SHAPE`` uint8 thumbnail, decoded once per file content and cached."""
    key = memo_file_sha256(path)
    store = thumbnail_store(root)
    cached = cached_thumbnails([key], store=store)
    if key in cached:
        return cached[key]
    from core.data.images import open_rgb

    thumb = thumbnail_of(open_rgb(path))
    save_thumbnails([key], thumb[None], store=store)
    return thumb


def thumbnail_store(root: Path | None = None) -> FeatureStore:
    """The thumbnail cache (under ``root``, default ``thumbnails_root()``): one flattened uint8 tile
    per poster content. A writer of many batches opens it once (opening reads every sidecar)."""
    description = {"width": THUMB_WIDTH, "height": THUMB_HEIGHT, "background": BACKGROUND,
                   "version": THUMBNAIL_VERSION}
    folder = _thumb_folder(root)
    return FeatureStore(folder.name, int(np.prod(THUMB_SHAPE)), description, root=folder.parent, dtype="uint8")


def save_thumbnails(keys: Sequence[str], thumbs: np.ndarray, *, root: Path | None = None,
                    store: FeatureStore | None = None) -> None:
    """Cache ``(n, *THUMB_SHAPE)`` thumbnails made elsewhere from the decoded posters (extraction makes them as
    it goes) as one shard; keys already cached are skipped."""
    store = store if store is not None else thumbnail_store(root)
    thumbs = np.asarray(thumbs, dtype=np.uint8)
    store.add_new(keys, thumbs.reshape(len(thumbs), -1))


def cached_thumbnails(keys: Sequence[str], *, root: Path | None = None,
                      store: FeatureStore | None = None) -> dict[str, np.ndarray]:
    """The cached thumbnail of each of ``keys`` that has one, read from a checked shard; the posters of a
    damaged shard are left out (it is removed), so callers make them again."""
    store = store if store is not None else thumbnail_store(root)
    found, rows = store.intact_rows(keys, dtype=np.uint8)
    return dict(zip(found, rows.reshape(len(found), *THUMB_SHAPE)))


def missing_thumbnails(keys: Sequence[str], *, root: Path | None = None) -> list[str]:
    """The content keys without a cached thumbnail, each once; reads no image (nor any shard)."""
    return thumbnail_store(root).missing(keys)


def thumbnail_atlas(paths: Sequence[Path], *, keys: Sequence[str] | None = None, root: Path | None = None,
                    workers: int = 2) -> np.ndarray:
    """``(n, *THUMB_SHAPE)`` thumbnails of ``paths``; one array per set of file contents.

    An unreadable poster becomes a grey tile. The atlas is cached under the hash of the files' sha256s,
    and each thumbnail under its own, so a dataset that changes decodes only its new posters. ``keys``
    are those sha256s when the caller has them (a dataset's ``content_keys``), which saves a ``stat`` per file.
    """
    keys = list(keys) if keys is not None else file_facts(paths, "sha256", file_sha256)
    atlas_path = atlas_file(paths, keys=keys, root=root)
    shape = (len(paths), *THUMB_SHAPE)
    try:
        return np.asarray(load_npy(atlas_path, shape=shape, dtype="uint8", mmap=False))
    except (FileNotFoundError, CacheError):
        pass
    log.info("assembling a thumbnail atlas of %d posters into %s", len(paths), atlas_path)
    store = thumbnail_store(root)
    tiles = cached_thumbnails(keys, store=store)
    todo = list({key: path for path, key in zip(paths, keys) if key not in tiles}.items())
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(todo), ATLAS_BATCH):
            chunk = todo[start:start + ATLAS_BATCH]
            made = dict(zip((key for key, _ in chunk), pool.map(lambda item: _decoded_tile(item[1]), chunk)))
            made = {key: tile for key, tile in made.items() if tile is not None}
            if made:
                save_thumbnails(list(made), np.stack(list(made.values())), store=store)
            tiles.update(made)
    grey = np.full(THUMB_SHAPE, MISSING_GREY, dtype=np.uint8)
    atlas = np.stack([tiles.get(key, grey) for key in keys]) if keys else np.empty(shape, dtype=np.uint8)
    atomic_save_npy(atlas_path, atlas)
    return atlas


def atlas_file(paths: Sequence[Path], *, keys: Sequence[str] | None = None, root: Path | None = None) -> Path:
    """Where the atlas of exactly these files is cached: when it is a file, ``thumbnail_atlas`` reads it in
    milliseconds. Keyed by the files' sha256s, given as ``keys`` when the caller has them."""
    keys = list(keys) if keys is not None else file_facts(paths, "sha256", file_sha256)
    return _thumb_folder(root) / "atlases" / f"{stable_hash(keys)}.npy"


def thumbnails_root() -> Path:
    """The cache folder of every version's thumbnail store."""
    return cache_root() / "thumbnails"


def _thumb_folder(root: Path | None) -> Path:
    """The thumbnail store's folder (its atlases inside it), named by the version and size of a tile."""
    return (root or thumbnails_root()) / f"v{THUMBNAIL_VERSION}-{THUMB_WIDTH}x{THUMB_HEIGHT}"


def _decoded_tile(path: Path) -> np.ndarray | None:
    """The thumbnail decoded from the file, or None (a grey tile, not cached) when it cannot be decoded."""
    from core.data.images import open_rgb

    try:
        return thumbnail_of(open_rgb(path))
    except (ImageError, OSError) as err:
        log.warning("grey tile for %s: %s", path, err)
        return None


def thumbnail_of(image) -> np.ndarray:
    """The tile of a decoded RGB ``PIL.Image`` (``open_rgb``'s): the poster fitted inside it, aspect kept,
    letterboxed on the background colour. ``image`` is left as it was."""
    from PIL import Image

    image = image.copy()
    image.thumbnail((THUMB_WIDTH, THUMB_HEIGHT), Image.Resampling.LANCZOS)
    tile = Image.new("RGB", (THUMB_WIDTH, THUMB_HEIGHT), (BACKGROUND,) * 3)
    tile.paste(image, ((THUMB_WIDTH - image.width) // 2, (THUMB_HEIGHT - image.height) // 2))
    return np.asarray(tile, dtype=np.uint8)


def _check_coords(coords: np.ndarray) -> np.ndarray:
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) == 0:
        raise PosterGenreError(f"a mosaic needs (n, 2) map coordinates with n ≥ 1, got shape {coords.shape}",
                               "pass the map's coordinates (of a non-empty selection)")
    if not np.isfinite(coords).all():
        raise PosterGenreError("the map coordinates hold NaN or infinite values", "recompute the map")
    return coords


def _extent(coords: np.ndarray) -> tuple[float, float, float, float]:
    (x_min, y_min), (x_max, y_max) = coords.min(axis=0), coords.max(axis=0)
    return float(x_min), float(x_max), float(y_min), float(y_max)


def _spans(coords: np.ndarray) -> tuple[float, float]:
    x_min, x_max, y_min, y_max = _extent(_check_coords(coords))
    x_span, y_span = x_max - x_min, y_max - y_min
    if x_span <= 0 and y_span <= 0:
        return 1.0, 1.0
    return (x_span or y_span), (y_span or x_span)


def _unit(coords: np.ndarray, extent: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates scaled into [0, 1] over the extent (a degenerate axis maps to its middle)."""
    x_min, x_max, y_min, y_max = extent
    u = (coords[:, 0] - x_min) / (x_max - x_min) if x_max > x_min else np.full(len(coords), 0.5)
    v = (coords[:, 1] - y_min) / (y_max - y_min) if y_max > y_min else np.full(len(coords), 0.5)
    return u, v
