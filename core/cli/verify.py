"""``python -m core verify``: re-hash everything the product trusts without reading it all, like ``git fsck``.

Reads check what they use (a cached array's sha256 is computed from its bytes the first time a process
reads it), but two things are trusted by file version (size, mtime, ctime, inode) so opening 100,000
posters stays fast: each poster's remembered sha256, and, within one process, a file already checked.
This command re-hashes every feature and thumbnail shard and every cached array with a checksum (runs in
the cache included), the run folders given with ``--run`` and the remembered poster hashes of each
``--dataset``; it names each damaged file and exits 1 if there is any. It deletes nothing: a damaged
shard or cached array is removed or rebuilt when it is next read, a damaged run file is refused, and a
stale poster hash is forgotten so the next open hashes it again.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from core.errors import CacheError, RunError

DAMAGE_HINT = ("a damaged feature shard or cached array is removed and computed again when it is next read; "
               "a damaged run cannot be rebuilt: train it again; a poster whose remembered hash was stale is "
               "hashed again at the next open")


def add_command(subparsers: argparse._SubParsersAction) -> None:
    verify = subparsers.add_parser("verify", help="re-hash every cached shard and array, runs and posters; "
                                                  "name what is damaged (exit 1 if anything is)",
                                   description=__doc__.split("\n", 1)[1].strip())
    verify.add_argument("--dataset", type=Path, action="append", default=[], metavar="DIR",
                        help="also re-hash this dataset's posters against their remembered hashes (repeatable)")
    verify.add_argument("--run", type=Path, action="append", default=[], metavar="DIR",
                        help="also check a run folder outside the cache, e.g. one written by train --out "
                             "(repeatable)")
    verify.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from core.analysis.mosaic import thumbnails_root
    from core.cache import cache_root, verify_checksummed_files
    from core.data.datasets import stale_poster_hashes
    from core.features.store import verify_stores

    for folder in args.run:
        if not folder.is_dir():
            raise RunError(f"run folder {folder} does not exist", "give a folder written by train --out")
    root = cache_root()
    sections = [(f"feature shards in {root / 'features'}", verify_stores()),
                (f"thumbnail shards in {thumbnails_root()}", verify_stores(thumbnails_root())),
                (f"cached arrays and run files in {root}", verify_checksummed_files(root))]
    sections += [(f"run files in {folder}", verify_checksummed_files(folder)) for folder in args.run]
    sections += [(f"remembered poster hashes of {folder}", stale_poster_hashes(folder)) for folder in args.dataset]
    damaged = []
    for title, (checked, found) in sections:
        print(f"{title}: {checked:,} checked, {len(found):,} damaged")
        damaged += found
    for path, reason in damaged:
        print(f"damaged: {path}: {reason}")
    if damaged:
        total = sum(checked for _, (checked, _) in sections)
        raise CacheError(f"{len(damaged):,} of {total:,} checked files are damaged (named above)", DAMAGE_HINT)
    return 0
