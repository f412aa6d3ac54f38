"""Output folders the product writes into: ours to replace, the user's to keep.

Like pip's ``RECORD``, every folder a command writes lists the files it wrote in ``manifest.json``.
A command claims its folder before any work (``claim``): a symbolic link, a path under a file, a file,
or a non-empty folder with no manifest of the same kind is refused, and the folder stays locked until
the command ends, so a second command writing the same folder is refused, not silently raced.
Writing (``OutputFolder.replace_with``) installs each new file atomically, removes the files the old
manifest listed that the new output lacks, and never deletes or overwrites a file the manifest does
not list. Folders written before manifests existed are recognised by each kind's ``legacy`` rule,
which names the files there that the product wrote; everything else in them is kept.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from core.cache import atomic_write_json, file_lock, read_json
from core.errors import CacheError, PosterGenreError

MADE_BY = "poster-genre-explorer"
"""The ``made_by`` of every manifest (and ``dataset.json`` of downloads) this product writes."""
MANIFEST_FILE = "manifest.json"
STAGING_PREFIX = f".{MADE_BY}-staging-"


def read_manifest(root: Path, **fields: str) -> set[str] | None:
    """The files ``root/manifest.json`` lists, when this product wrote it with these ``fields`` (e.g.
    ``kind="run"``); ``None`` when there is no such manifest (then nothing there counts as ours)."""
    try:
        manifest = read_json(Path(root) / MANIFEST_FILE)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, CacheError):
        return None
    if not isinstance(manifest, dict) or manifest.get("made_by") != MADE_BY:
        return None
    if any(manifest.get(name) != value for name, value in fields.items()):
        return None
    files = manifest.get("files")
    return {name for name in files if isinstance(name, str)} if isinstance(files, list) else None


def write_manifest(root: Path, files: Iterable[str], **fields: str) -> None:
    atomic_write_json(Path(root) / MANIFEST_FILE,
                      {"made_by": MADE_BY, **fields, "files": sorted({*files, MANIFEST_FILE})})


@dataclass(frozen=True)
class OutputKind:
    """What a command writes: its manifest ``kind``, the error it raises and how to fix a refused folder.

    ``marker`` is removed first and installed last, so while files are being replaced a reader that
    checks for it finds an incomplete folder, not a mix of old and new files. ``legacy(folder)`` names the files of an older output folder of
    this kind that has no manifest, or returns ``None`` when the folder is not one.
    """

    name: str
    error: type[PosterGenreError]
    hint: str
    marker: str | None = None
    legacy: Callable[[Path], set[str] | None] = lambda folder: None


@dataclass
class OutputFolder:
    """A claimed output folder: ``previous`` are the files of ours it held when claimed."""

    root: Path
    kind: OutputKind
    previous: frozenset[str]
    written: set[str] = field(default_factory=set)

    def refuse(self, message: str, hint: str | None = None) -> PosterGenreError:
        return self.kind.error(message, hint or self.kind.hint)

    def replace_with(self, write: Callable[[Path], None]) -> None:
        """Replace our files in the folder by those ``write(staging)`` puts in an empty staging folder."""
        staging = None
        try:
            staging = Path(tempfile.mkdtemp(dir=self.root, prefix=STAGING_PREFIX, suffix=".tmp"))
            write(staging)
            files = sorted(path.relative_to(staging).as_posix() for path in staging.rglob("*")
                           if path.is_file() or path.is_symlink())
            self._check_conflicts(files)
            write_manifest(self.root, {*self.previous, *files}, kind=self.kind.name)
            marker = self.kind.marker
            if marker in files and marker in self.previous:
                (self.root / marker).unlink(missing_ok=True)
            for name in sorted(files, key=lambda name: name == marker):
                self._install(staging / name, name)
            self._remove_stale(set(files))
            write_manifest(self.root, self.written, kind=self.kind.name)
        except OSError as err:
            raise self.refuse(f"cannot write into {self.root}: {err}",
                              "check that the disk has room and the folder is writable") from err
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)

    def _check_conflicts(self, files: list[str]) -> None:
        """Refuse to replace an entry the product did not write, or to write through a link."""
        checked: set[Path] = set()
        for name in files:
            target = self.root / name
            if name not in self.previous and os.path.lexists(target):
                raise self.refuse(f"{target} exists and was not written by this product; nothing was replaced",
                                  "move that file away and run again, or give a new or empty folder")
            for parent in target.relative_to(self.root).parents:
                folder = self.root / parent
                if folder in checked or parent == Path("."):
                    continue
                checked.add(folder)
                if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                    raise self.refuse(f"{folder} is a link or a file, not a folder of this product; "
                                      "nothing was replaced", "move it away and run again")

    def _install(self, source: Path, name: str) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        self.written.add(name)

    def _remove_stale(self, files: set[str]) -> None:
        """Delete what the product wrote before and did not write now, then its emptied folders."""
        for name in sorted(self.previous - files - {MANIFEST_FILE}):
            target = self.root / name
            if target.is_symlink() or target.is_file():
                target.unlink()
            for parent in target.relative_to(self.root).parents:
                if parent == Path("."):
                    break
                with contextlib.suppress(OSError):
                    (self.root / parent).rmdir()


@contextlib.contextmanager
def claim(folder: str | Path, kind: OutputKind, *, wait: bool = False) -> Iterator[OutputFolder]:
    """Hold ``folder`` for one command: checked before any work and locked until the block ends.

    A second claim on the same folder is refused at once, or, with ``wait``, waits its turn (the
    runs cache, where two sessions may save the same run). A folder this claim created and left
    empty is removed again.
    """
    root = Path(os.path.abspath(Path(folder).expanduser()))
    _check_path(root, kind)
    created = not root.exists()
    with contextlib.ExitStack() as stack:
        try:
            root.mkdir(parents=True, exist_ok=True)
            stack.enter_context(file_lock(root, wait=wait))
            previous = frozenset(_our_files(root, kind))
        except BlockingIOError as err:
            raise kind.error(f"another command is writing {root}; nothing was changed",
                             "wait for it to finish, or give another folder") from err
        except OSError as err:
            raise kind.error(f"cannot write into the output folder {root}: {err.strerror or err}",
                             "give a folder you can write to") from err
        try:
            yield OutputFolder(root, kind, previous)
        finally:
            if created:
                with contextlib.suppress(OSError):
                    root.rmdir()


@contextlib.contextmanager
def claimed(folder: str | Path | OutputFolder, kind: OutputKind, *, wait: bool = False) -> Iterator[OutputFolder]:
    """``folder`` itself when a caller already claimed it (a command holding it throughout), else ``claim``."""
    if isinstance(folder, OutputFolder):
        yield folder
    else:
        with claim(folder, kind, wait=wait) as output:
            yield output


def check_output(folder: str | Path, kind: OutputKind) -> None:
    """Raise what ``claim`` would raise for ``folder``, and change nothing."""
    with claim(folder, kind):
        pass


def _check_path(root: Path, kind: OutputKind) -> None:
    if root.is_symlink():
        raise kind.error(f"output folder {root} is a symbolic link; refusing to write through it",
                         "give the real folder's path, or a new folder")
    for parent in root.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise kind.error(f"output folder {root} cannot be made: {parent} is a file, not a folder",
                                 "give a path whose parent folders are folders")
            break
    if root.exists() and not root.is_dir():
        raise kind.error(f"{root} is a file, not a folder; refusing to replace it", kind.hint)


def _our_files(root: Path, kind: OutputKind) -> set[str]:
    """The files of ours in ``root`` (which is locked), or refuse it as the user's."""
    for leftover in root.glob(f"{STAGING_PREFIX}*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    listed = read_manifest(root, kind=kind.name)
    if listed is not None:
        return listed
    names = sorted(entry.name for entry in root.iterdir())
    if not names:
        return set()
    legacy = kind.legacy(root)
    if legacy is not None:
        return legacy
    shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
    raise kind.error(f"{root} is not empty and is not a {kind.name} folder (it holds {shown}); "
                     "refusing to write into it", kind.hint)
