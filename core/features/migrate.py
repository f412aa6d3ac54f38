"""Rows cached by an earlier pipeline version, carried into the current store instead of recomputed.

Pipeline version 2 kept float32 rows in the layout the float16 store keeps now (version 3), so an
upgrade costs a cast per row, not a VGG16 pass per poster (about an hour per 100,000 posters here).
A previous store is used only when everything else that keys the features is the same.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from core.cache import read_json
from core.errors import CacheError
from core.features.extractor import ROW_DIM
from core.features.store import FeatureStore

log = logging.getLogger(__name__)

PREVIOUS_PIPELINES = ("vgg16-block5pool-flatten+block4pool-avg-2",)
ADDED_SINCE = {"dtype", "storage"}
"""Keys of the current description that version 2 did not have; they do not change its rows."""
BATCH = 512


def previous_stores(store: FeatureStore) -> list[FeatureStore]:
    """Stores beside ``store`` written by a previous pipeline version for the same configuration."""
    description = read_json(store.folder / "config.json")
    wanted = {key: value for key, value in description.items() if key not in ADDED_SINCE | {"pipeline"}}
    found = []
    for folder in sorted(store.folder.parent.iterdir()):
        if folder == store.folder or not (folder / "config.json").is_file():
            continue
        try:
            old = read_json(folder / "config.json")
        except CacheError:
            continue
        if old.get("pipeline") in PREVIOUS_PIPELINES and {k: v for k, v in old.items() if k != "pipeline"} == wanted:
            found.append(FeatureStore(folder.name, ROW_DIM, root=folder.parent, dtype="float32"))
    return found


def carry_over(store: FeatureStore, keys: Sequence[str]) -> int:
    """Copy the rows of ``keys`` missing from ``store`` out of previous stores; returns how many.

    Takes ``store``'s lock only when a previous store holds some of them, so checking costs nothing
    while another process extracts. A damaged previous shard is skipped (its posters are extracted).
    """
    sources = [old for old in previous_stores(store) if any(key in old for key in store.missing(keys))]
    if not sources:
        return 0
    copied = 0
    with store.locked():
        for old in sources:
            todo = [key for key in store.missing(keys) if key in old]
            for start in range(0, len(todo), BATCH):
                batch = todo[start:start + BATCH]
                try:
                    rows = np.asarray(old.open(batch))
                except CacheError as err:
                    log.warning("not carrying over rows from %s: %s", old.folder, err)
                    break
                store.add(batch, rows)
                copied += len(batch)
    log.info("carried %d feature rows over from a previous cache version", copied)
    return copied
