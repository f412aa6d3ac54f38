"""What a poster's decoded image gives besides its features: the mosaic's thumbnail and the visual descriptors.

Extraction makes both from the image it has already decoded (``open_rgb``'s full image, before the resize
for the network), so they equal what ``core.analysis.mosaic.poster_thumbnail`` and
``core.features.descriptors.image_descriptors`` compute from the file, and writes them into those modules'
content-keyed caches, both ``FeatureStore``s written one shard per batch (two atomic files, whatever the
batch size): the Data and Clusters pages then decode nothing. Folders extracted before get them once from
``backfill``, which decodes each poster that lacks either exactly once.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from core.analysis.mosaic import missing_thumbnails, save_thumbnails, thumbnail_of, thumbnail_store
from core.data.images import open_rgb
from core.errors import ImageError
from core.features.descriptors import (descriptor_store, descriptors_of, missing_descriptors, remember_undecodable,
                                       save_descriptors, undecodable)
from core.features.store import FeatureStore
from core.progress import ProgressFn, ProgressTracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caches:
    """The thumbnail and descriptor stores, each opened once by a writer of many batches (opening one reads
    every sidecar)."""

    thumbnails: FeatureStore
    descriptors: FeatureStore


def caches(*, thumb_root: Path | None = None, descriptor_root: Path | None = None) -> Caches:
    return Caches(thumbnail_store(thumb_root), descriptor_store(descriptor_root))


@dataclass
class Byproducts:
    """Thumbnails and descriptor rows of a batch of posters, row ``i`` of content key ``keys[i]``."""

    keys: list[str] = field(default_factory=list)
    thumbnails: list[np.ndarray] = field(default_factory=list)
    descriptors: list[np.ndarray] = field(default_factory=list)

    def add(self, key: str, image) -> None:
        """Make both from a decoded RGB ``PIL.Image`` (left unchanged)."""
        self.keys.append(key)
        self.thumbnails.append(thumbnail_of(image))
        self.descriptors.append(descriptors_of(image))

    def extend(self, other: Byproducts) -> None:
        self.keys += other.keys
        self.thumbnails += other.thumbnails
        self.descriptors += other.descriptors

    def save(self, into: Caches) -> None:
        """Write one shard into each cache (posters already cached in one are left out of its shard)."""
        if self.keys:
            save_thumbnails(self.keys, np.stack(self.thumbnails), store=into.thumbnails)
            save_descriptors(self.keys, np.stack(self.descriptors), store=into.descriptors)


def missing(keys: Sequence[str], *, thumb_root: Path | None = None, descriptor_root: Path | None = None) -> list[str]:
    """Content keys lacking a thumbnail or descriptors, each once, in order, those known not to decode
    aside; reads no image."""
    lacking = set(missing_descriptors(keys, root=descriptor_root))
    lacking |= set(missing_thumbnails(keys, root=thumb_root)) - undecodable(root=descriptor_root)
    return [key for key in dict.fromkeys(keys) if key in lacking]


def remember_failures(failures: dict[str, str], *, descriptor_root: Path | None = None) -> None:
    """Posters that could not be decoded, so neither the pages nor ``backfill`` try them again."""
    remember_undecodable(failures, root=descriptor_root)


def backfill(paths: Sequence[Path], keys: Sequence[str], *, progress: ProgressFn | None = None, workers: int = 2,
             batch_size: int = 64, thumb_root: Path | None = None,
             descriptor_root: Path | None = None) -> dict[str, str]:
    """Decode once each poster that lacks a thumbnail or descriptors and cache both; returns the reason for
    each content key that could not be decoded (those get a grey tile and no descriptors, as before)."""
    path_of = dict(zip(keys, paths))
    todo = missing(keys, thumb_root=thumb_root, descriptor_root=descriptor_root)
    failed: dict[str, str] = {}
    if not todo:
        return failed
    log.info("making thumbnails and visual descriptors of %d posters (one decode each)", len(todo))
    tracker = ProgressTracker(len(todo), "posters", progress)
    into = caches(thumb_root=thumb_root, descriptor_root=descriptor_root)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(todo), batch_size):
            batch = Byproducts()
            chunk = todo[start:start + batch_size]
            for key, made in zip(chunk, pool.map(lambda key: _make(key, path_of[key]), chunk)):
                if isinstance(made, str):
                    failed[key] = made
                else:
                    batch.extend(made)
            batch.save(into)
            tracker.update(tracker.done + len(chunk), failed=len(failed))
    remember_failures(failed, descriptor_root=descriptor_root)
    return failed


def _make(key: str, path: Path) -> Byproducts | str:
    """One poster's byproducts, or the reason it could not be decoded."""
    made = Byproducts()
    try:
        made.add(key, open_rgb(path))
    except ImageError as err:
        return str(err)
    return made
