"""Visual descriptors of posters: simple colour and texture statistics, computed once and cached.

Eight numbers per poster, from its pixels scaled to ``DESCRIPTOR_SIDE`` square (so a statistic does
not depend on the file's resolution), except the aspect ratio, read from the original file:

- ``brightness``: mean luma (Rec. 601), 0 black … 1 white;
- ``contrast``: standard deviation of luma, 0 … 0.5;
- ``saturation``: mean HSV saturation, 0 … 1;
- ``colourfulness``: Hasler & Süsstrunk (2003) on 0-255 RGB: ``σ_rgyb + 0.3·μ_rgyb`` with ``rg = R-G``,
  ``yb = (R+G)/2 - B`` (0 for a grey image; their "highly colourful" starts near 80);
- ``grey_share``: share of near-grey pixels (chroma ``max - min`` below ``GREY_CHROMA`` of full scale);
- ``dominant_hue``: centre in degrees of the most populated ``HUE_BIN_DEGREES`` hue bin among coloured
  pixels, weighted by chroma; NaN for a poster without coloured pixels;
- ``edge_density``: share of pixels whose Sobel gradient magnitude of luma exceeds ``EDGE_THRESHOLD`` of a
  full black-to-white step;
- ``aspect_ratio``: width / height of the original file (a standard one-sheet is 27/40 = 0.675).

Rows are cached per poster content (sha256 of the file's bytes) in a ``FeatureStore``, so a dataset
that gains posters decodes only the new ones; feature extraction writes them from the image it decodes
(``core.features.byproducts``), and posters that cannot be decoded are remembered there, not retried.

pandas is imported by the two functions that build tables: this module is on every page's import path
(through the feature pipeline), and Home's first paint builds none.
"""
from __future__ import annotations

import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from core.cache import cache_root, stable_hash
from core.data.datasets import Dataset, Skipped
from core.data.images import ImageSource, open_rgb
from core.errors import ImageError, PosterGenreError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

DESCRIPTORS = {
    "brightness": "mean luma, 0 black … 1 white",
    "contrast": "standard deviation of luma",
    "saturation": "mean HSV saturation, 0 … 1",
    "colourfulness": "Hasler–Süsstrunk colourfulness (0 grey, ≥ 80 highly colourful)",
    "grey_share": "share of near-grey pixels",
    "dominant_hue": "most common hue of the coloured pixels, degrees (NaN: no colour)",
    "edge_density": "share of pixels on an edge (Sobel)",
    "aspect_ratio": "width / height of the original file",
}
NOT_DEFINED = -1.0
"""How the cache stores a descriptor an image does not have (the dominant hue of a grey poster, NaN in
memory): every descriptor is >= 0, and cached arrays must be finite."""
NAMES = tuple(DESCRIPTORS)
DESCRIPTOR_SIDE = 128
GREY_CHROMA = 0.1
HUE_BIN_DEGREES = 30
EDGE_THRESHOLD = 0.25
DESCRIPTOR_VERSION = 1
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class Descriptors:
    """One row of ``NAMES`` per decodable poster of a dataset, row ``i`` of ``ids[i]``."""

    values: np.ndarray
    ids: list[str]
    failed: list[Skipped] = field(default_factory=list)
    n_computed: int = 0

    def frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.values, columns=list(NAMES)).assign(id=self.ids)

    def for_ids(self, ids: Sequence[str]) -> np.ndarray:
        """Rows in the order of ``ids`` (e.g. a feature set's); a poster without descriptors gets NaN."""
        row_of = {id_: row for row, id_ in enumerate(self.ids)}
        out = np.full((len(ids), len(NAMES)), np.nan, dtype=np.float32)
        known = [(i, row_of[id_]) for i, id_ in enumerate(ids) if id_ in row_of]
        if known:
            positions, rows = zip(*known)
            out[list(positions)] = self.values[list(rows)]
        return out


def pixel_descriptors(pixels: np.ndarray) -> np.ndarray:
    """The first seven descriptors (all but the aspect ratio) of a ``(n, h, w, 3)`` uint8 RGB batch."""
    rgb = np.asarray(pixels, dtype=np.float32) / 255.0
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise PosterGenreError(f"pixels must be a (n, h, w, 3) RGB batch, got shape {rgb.shape}")
    luma = rgb @ _LUMA
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # Equal to rgb.max(axis=-1) / .min(axis=-1), about 20 times faster (a reduction over 3 values is slow).
    high, low = np.maximum(np.maximum(red, green), blue), np.minimum(np.minimum(red, green), blue)
    chroma = high - low
    saturation = np.divide(chroma, high, out=np.zeros_like(chroma), where=high > 0)
    return np.column_stack([
        luma.mean(axis=(1, 2)),
        luma.std(axis=(1, 2)),
        saturation.mean(axis=(1, 2)),
        _colourfulness(rgb * 255.0),
        (chroma < GREY_CHROMA).mean(axis=(1, 2)),
        _dominant_hue(rgb, high, chroma),
        _edge_density(luma),
    ]).astype(np.float32)


def image_descriptors(source: ImageSource, *, name: str | None = None) -> np.ndarray:
    """All ``NAMES`` of one image (a path, bytes or an upload); raises ``ImageError`` if it cannot be decoded."""
    return descriptors_of(open_rgb(source, name=name))


def descriptors_of(image) -> np.ndarray:
    """All ``NAMES`` of a decoded RGB ``PIL.Image`` (``open_rgb``'s), so extraction computes them from the
    image it has already decoded; NaN for an undefined dominant hue."""
    from PIL import Image

    width, height = image.size
    small = np.asarray(image.resize((DESCRIPTOR_SIDE, DESCRIPTOR_SIDE), Image.Resampling.BILINEAR))
    return np.append(pixel_descriptors(small[None])[0], np.float32(width / height))


def dataset_descriptors(dataset: Dataset, *, root: Path | None = None, workers: int = 2) -> Descriptors:
    """Descriptors of every decodable poster, computing only posters whose content is not cached."""
    store = _store(root)
    keys = dataset.content_keys()
    path_of = dict(zip(keys, dataset.paths))
    known_failures = store.known_failures()
    todo = [key for key in store.missing(keys) if key not in known_failures]
    failures: dict[str, str] = {}
    if todo:
        log.info("computing visual descriptors of %d posters", len(todo))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda key: _one(path_of[key]), todo))
        done = [(key, row) for key, (row, _) in zip(todo, results) if row is not None]
        failures = {key: error for key, (_, error) in zip(todo, results) if error is not None}
        if done:
            store.add([key for key, _ in done], np.nan_to_num(np.stack([row for _, row in done]), nan=NOT_DEFINED))
        store.remember_failures(failures)
    kept = [i for i, key in enumerate(keys) if key in store]
    values = store.gather([keys[i] for i in kept]) if kept else np.empty((0, len(NAMES)), np.float32)
    values[values == NOT_DEFINED] = np.nan
    failed = [Skipped(poster.id, failures.get(key, "could not be decoded"), str(poster.path))
              for poster, key in zip(dataset.posters, keys) if key not in store]
    return Descriptors(values=values, ids=[dataset.posters[i].id for i in kept], failed=failed,
                       n_computed=len(todo) - len(failures))


def missing_descriptors(keys: Sequence[str], *, root: Path | None = None) -> list[str]:
    """The content keys without cached descriptors, each once, those known not to decode aside; reads no image."""
    store = _store(root)
    known_failures = store.known_failures()
    return [key for key in store.missing(keys) if key not in known_failures]


def undecodable(*, root: Path | None = None) -> set[str]:
    """Content keys remembered as not decodable (by extraction, ``backfill`` or ``dataset_descriptors``)."""
    return _store(root).known_failures()


def remember_undecodable(failures: dict[str, str], *, root: Path | None = None) -> None:
    """Content keys that could not be decoded: not tried again (the same bytes never decode)."""
    _store(root).remember_failures(failures)


def save_descriptors(keys: Sequence[str], rows: np.ndarray, *, root: Path | None = None, store=None) -> None:
    """Cache descriptor rows computed elsewhere (``descriptors_of``); keys already cached are skipped.

    A writer of many batches passes one ``descriptor_store()`` as ``store`` (opening one reads every sidecar)."""
    store = store if store is not None else _store(root)
    store.add_new(keys, np.nan_to_num(np.asarray(rows, dtype=np.float32), nan=NOT_DEFINED))


def descriptors_cached(dataset: Dataset, *, root: Path | None = None) -> bool:
    """Whether every poster of ``dataset`` has cached descriptors (undecodable ones aside); computes nothing."""
    return not missing_descriptors(dataset.content_keys(), root=root)


def descriptor_store(root: Path | None = None):
    return _store(root)


def _store(root: Path | None):
    """The descriptor cache: a ``FeatureStore`` of ``len(NAMES)`` values per poster content, keyed by
    everything that changes a descriptor."""
    from core.features.store import FeatureStore

    description = {"descriptors": list(NAMES), "side": DESCRIPTOR_SIDE, "grey": GREY_CHROMA,
                   "hue_bin": HUE_BIN_DEGREES, "edge": EDGE_THRESHOLD, "version": DESCRIPTOR_VERSION}
    return FeatureStore(stable_hash(description), len(NAMES), description, root=root or cache_root() / "descriptors")


def neighbour_predictability(values: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Per column, the correlation between a poster's value and the mean over its neighbours
    (``neighbours``: ``(n, k)`` indices), a form of spatial autocorrelation.

    1 means neighbours on the map share the poster's value, about 0 means the map ignores the column
    (the chance level for any ``k``). It applies alike to descriptors and to 0/1 genre columns, so "is
    the map organised by colour or by genre" compares numbers in one unit. NaN values (no dominant hue)
    are left out of their column.
    """
    values = np.asarray(values, dtype=np.float64)
    neighbours = np.asarray(neighbours)
    if values.ndim != 2 or neighbours.ndim != 2 or len(values) != len(neighbours) or neighbours.shape[1] < 1:
        raise PosterGenreError(f"values {values.shape} and neighbours {neighbours.shape} do not line up",
                               "pass one row of values and one row of (at least one) neighbour index per poster")
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        predicted = np.nanmean(values[neighbours], axis=1)
    out = np.full(values.shape[1], np.nan)
    for column in range(values.shape[1]):
        ok = np.isfinite(values[:, column]) & np.isfinite(predicted[:, column])
        own, around = values[ok, column], predicted[ok, column]
        if ok.sum() > 2 and own.std() > 0 and around.std() > 0:
            out[column] = float(np.corrcoef(own, around)[0, 1])
    return out


def map_structure(neighbours: np.ndarray, values: np.ndarray, Y: np.ndarray,
                  genres: Sequence[str]) -> pd.DataFrame:
    """How much each descriptor and each genre is shared by map neighbours (``neighbour_predictability``),
    one row per column with ``kind`` "descriptor" or "genre", best first."""
    import pandas as pd

    Y = np.asarray(Y, dtype=np.float64)
    if Y.shape != (len(values), len(genres)):
        raise PosterGenreError(f"labels of shape {Y.shape} do not match {len(values)} posters × {len(genres)} genres")
    scores = neighbour_predictability(np.hstack([values, Y]), neighbours)
    frame = pd.DataFrame({"name": [*NAMES, *genres], "kind": ["descriptor"] * len(NAMES) + ["genre"] * len(genres),
                          "explained": scores})
    return frame.sort_values("explained", ascending=False, na_position="last").reset_index(drop=True)


def map_neighbours(coords: np.ndarray, k: int = 10) -> np.ndarray:
    """``(n, k)`` indices of each point's ``k`` nearest points on the 2-D map (itself excluded)."""
    from sklearn.neighbors import NearestNeighbors

    coords = np.asarray(coords, dtype=np.float64)
    k = min(int(k), len(coords) - 1)
    if k < 1:
        raise PosterGenreError(f"map neighbours need at least 2 posters and k ≥ 1, got {len(coords)} and {k}")
    _, indices = NearestNeighbors(n_neighbors=k + 1).fit(coords).kneighbors(coords)
    return _drop_self(indices)


def _drop_self(indices: np.ndarray) -> np.ndarray:
    """Remove each row's own index (usually first, but not with duplicate points), keeping k columns."""
    own = indices == np.arange(len(indices))[:, None]
    own[~own.any(axis=1), -1] = True
    return indices[~own].reshape(len(indices), -1)


def _one(path: Path) -> tuple[np.ndarray | None, str | None]:
    try:
        return image_descriptors(path), None
    except ImageError as err:
        return None, str(err)


def _colourfulness(rgb255: np.ndarray) -> np.ndarray:
    rg = rgb255[..., 0] - rgb255[..., 1]
    yb = 0.5 * (rgb255[..., 0] + rgb255[..., 1]) - rgb255[..., 2]
    spread = np.sqrt(rg.std(axis=(1, 2)) ** 2 + yb.std(axis=(1, 2)) ** 2)
    centre = np.sqrt(rg.mean(axis=(1, 2)) ** 2 + yb.mean(axis=(1, 2)) ** 2)
    return spread + 0.3 * centre


def _hue_degrees(rgb: np.ndarray, high: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(high == red, ((green - blue) / safe) % 6,
                   np.where(high == green, (blue - red) / safe + 2, (red - green) / safe + 4))
    return (hue * 60.0) % 360.0


def _dominant_hue(rgb: np.ndarray, high: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    n_bins = 360 // HUE_BIN_DEGREES
    bins = np.minimum((_hue_degrees(rgb, high, chroma) // HUE_BIN_DEGREES).astype(np.int64), n_bins - 1)
    weight = np.where(chroma >= GREY_CHROMA, chroma, 0.0).reshape(len(rgb), -1)
    flat = (bins.reshape(len(rgb), -1) + n_bins * np.arange(len(rgb))[:, None]).ravel()
    histogram = np.bincount(flat, weights=weight.ravel(), minlength=n_bins * len(rgb)).reshape(len(rgb), n_bins)
    hue = (histogram.argmax(axis=1) + 0.5) * HUE_BIN_DEGREES
    return np.where(histogram.sum(axis=1) > 0, hue, np.nan)


def _edge_density(luma: np.ndarray) -> np.ndarray:
    padded = np.pad(luma, ((0, 0), (1, 1), (1, 1)), mode="edge")
    dx = (padded[:, :-2, 2:] + 2 * padded[:, 1:-1, 2:] + padded[:, 2:, 2:]
          - padded[:, :-2, :-2] - 2 * padded[:, 1:-1, :-2] - padded[:, 2:, :-2])
    dy = (padded[:, 2:, :-2] + 2 * padded[:, 2:, 1:-1] + padded[:, 2:, 2:]
          - padded[:, :-2, :-2] - 2 * padded[:, :-2, 1:-1] - padded[:, :-2, 2:])
    return (np.hypot(dx, dy) > EDGE_THRESHOLD * 4).mean(axis=(1, 2))
