"""Behaviours locked in for ``core.cache``, the atomic on-disk cache.

- ``cache_root`` honours ``POSTER_GENRE_CACHE`` and creates the folder.
- ``atomic_write_bytes/text/json`` and ``atomic_save_npy`` replace the content and leave no temporary
  file, also when the final rename fails (the old content survives).
- ``load_npy`` returns what was saved, memory-mapped or not, and raises ``CacheError`` for a truncated
  file, a file cut inside its header, a wrong shape, a wrong dtype and a pickled object array.
- ``atomic_save_npy`` writes a ``.npy.sha256`` checksum; ``load_npy`` refuses flipped bytes, a missing
  checksum (unless ``require_checksum=False``), a wrong given ``sha256`` and NaN/infinite floats, with
  messages that promise no rebuild.
- ``file_lock`` lets one holder in at a time, also two threads of one process; a folder is locked without
  writing into it, and ``wait=False`` raises ``BlockingIOError`` while another holds the lock.
- ``read_json`` raises ``CacheError`` for a partial file and ``FileNotFoundError`` for a missing one.
- ``stable_hash`` is independent of dict order, changes with values, and accepts paths and tuples.
- ``file_sha256`` equals hashlib's digest; ``file_facts`` computes a file's fact once across
  processes (saved facts are read back) and again when the file changes or the saved facts are damaged.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

import core.cache
from core.cache import (atomic_save_npy, atomic_write_bytes, atomic_write_json, atomic_write_text, cache_root,
                        checksum_path, file_facts, file_lock, file_sha256, load_npy, memo_file_sha256,
                        read_json, stable_hash)
from core.errors import CacheError


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_cache_root_honours_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(tmp_path / "a" / "b"))
    assert cache_root() == tmp_path / "a" / "b"
    assert cache_root().is_dir()


def test_atomic_writes_replace_content_without_leftovers(tmp_path):
    path = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    atomic_write_text(tmp_path / "t.txt", "é\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "é\n"
    atomic_write_json(tmp_path / "j.json", {"b": 1, "a": [Path("x"), np.int64(3), (1, 2)]})
    assert read_json(tmp_path / "j.json") == {"a": ["x", 3, [1, 2]], "b": 1}
    atomic_save_npy(tmp_path / "a.npy", np.arange(6, dtype=np.float32))
    atomic_save_npy(tmp_path / "a.npy", np.ones(3, dtype=np.float32))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.ones(3))
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []


@pytest.mark.parametrize("write", [
    lambda path: atomic_write_bytes(path, b"new"),
    lambda path: atomic_save_npy(path, np.zeros(4)),
])
def test_failed_rename_leaves_old_content_and_no_temp_file(tmp_path, monkeypatch, write):
    path = tmp_path / "keep.bin"
    path.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(core.cache.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write(path)
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("mmap", [True, False])
def test_load_npy_round_trip(tmp_path, mmap):
    array = np.arange(60, dtype=np.float32).reshape(6, 10)
    atomic_save_npy(tmp_path / "x.npy", array)
    loaded = load_npy(tmp_path / "x.npy", shape=(6, 10), dtype="float32", mmap=mmap)
    np.testing.assert_array_equal(loaded, array)
    assert isinstance(loaded, np.memmap) == mmap


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("cut", [1, 17, 2000])
def test_load_npy_detects_truncation(tmp_path, mmap, cut):
    path = tmp_path / "x.npy"
    atomic_save_npy(path, np.ones((50, 20), dtype=np.float32))
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    with pytest.raises(CacheError, match="unreadable or truncated"):
        load_npy(path, shape=(50, 20), dtype="float32", mmap=mmap)


def test_load_npy_detects_cut_header(tmp_path):
    path = tmp_path / "x.npy"
    atomic_save_npy(path, np.ones((5, 2), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CacheError):
        load_npy(path)


def test_load_npy_checks_shape_and_dtype(tmp_path):
    path = tmp_path / "x.npy"
    atomic_save_npy(path, np.ones((5, 2), dtype=np.float32))
    with pytest.raises(CacheError, match=r"shape \(5, 2\), expected \(5, 3\)"):
        load_npy(path, shape=(5, 3))
    with pytest.raises(CacheError, match="dtype float32, expected float64"):
        load_npy(path, dtype="float64")


def test_load_npy_refuses_pickled_objects(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CacheError):
        load_npy(path, mmap=False)


def test_read_json_partial_and_missing(tmp_path):
    (tmp_path / "half.json").write_text('{"keys": [1, 2')
    with pytest.raises(CacheError, match="not valid JSON"):
        read_json(tmp_path / "half.json")
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "none.json")


def test_stable_hash_is_order_independent_and_value_sensitive():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    assert stable_hash({"a": [1, 2]}) != stable_hash({"a": [2, 1]})
    assert stable_hash({"p": Path("x"), "t": (1, 2)}) == stable_hash({"t": [1, 2], "p": "x"})
    assert len(stable_hash("x")) == 16 and len(stable_hash("x", length=40)) == 40


def test_file_sha256_matches_hashlib(tmp_path):
    data = os.urandom(3000)
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f", chunk_size=512) == hashlib.sha256(data).hexdigest()


def _flip_byte(path: Path, offset: int = -3) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_atomic_save_npy_writes_the_checksum_it_returns(tmp_path):
    path = tmp_path / "x.npy"
    digest = atomic_save_npy(path, np.arange(12, dtype=np.float32))
    assert checksum_path(path) == tmp_path / "x.npy.sha256"
    assert checksum_path(path).read_text().strip() == digest == file_sha256(path)


@pytest.mark.parametrize("mmap", [True, False])
def test_load_npy_refuses_flipped_bytes(tmp_path, mmap):
    path = tmp_path / "x.npy"
    atomic_save_npy(path, np.ones((4, 3), dtype=np.float32))
    load_npy(path, shape=(4, 3), mmap=mmap)
    _flip_byte(path)
    with pytest.raises(CacheError, match="fails its checksum") as caught:
        load_npy(path, shape=(4, 3), mmap=mmap)
    assert "rebuilt" not in str(caught.value)


def test_load_npy_needs_a_checksum_unless_told_otherwise(tmp_path):
    path = tmp_path / "old.npy"
    np.save(path, np.ones(3, dtype=np.float32))
    with pytest.raises(CacheError, match=r"has no checksum \(old\.npy\.sha256 is missing\)"):
        load_npy(path)
    np.testing.assert_array_equal(load_npy(path, require_checksum=False), np.ones(3))


def test_load_npy_checks_a_given_sha256(tmp_path):
    path = tmp_path / "x.npy"
    digest = atomic_save_npy(path, np.zeros(5, dtype=np.float32))
    checksum_path(path).unlink()
    np.testing.assert_array_equal(load_npy(path, sha256=digest), np.zeros(5))
    with pytest.raises(CacheError, match="fails its checksum"):
        load_npy(path, sha256="0" * 64)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_load_npy_refuses_non_finite_floats_but_not_integers(tmp_path, bad):
    array = np.zeros((3, 4), dtype=np.float32)
    array[2, 1] = bad
    atomic_save_npy(tmp_path / "f.npy", array)
    with pytest.raises(CacheError, match="NaN or infinite"):
        load_npy(tmp_path / "f.npy")
    atomic_save_npy(tmp_path / "i.npy", np.arange(6))
    np.testing.assert_array_equal(load_npy(tmp_path / "i.npy"), np.arange(6))


def test_file_lock_excludes_a_second_holder(tmp_path):
    import threading
    import time

    events: list[str] = []

    def hold(name: str) -> None:
        with file_lock(tmp_path / ".lock"):
            events.append(f"{name} in")
            time.sleep(0.2)
            events.append(f"{name} out")

    threads = [threading.Thread(target=hold, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert events == ["a in", "a out", "b in", "b out"]


def _fresh_process(monkeypatch) -> None:
    """Forget what this process remembers, as a new process would."""
    monkeypatch.setattr(core.cache, "_FILE_FACTS", {})
    monkeypatch.setattr(core.cache, "_CHANGED_FOLDERS", set())


def test_file_facts_are_remembered_across_processes_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(tmp_path / "cache"))
    _fresh_process(monkeypatch)
    poster = tmp_path / "posters" / "a.jpg"
    poster.parent.mkdir()
    poster.write_bytes(b"first")
    calls = []

    def count(path: Path) -> str:
        calls.append(path)
        return file_sha256(path)

    assert file_facts([poster], "sha256", count) == [hashlib.sha256(b"first").hexdigest()]
    _fresh_process(monkeypatch)
    assert file_facts([poster], "sha256", count) == [hashlib.sha256(b"first").hexdigest()]
    assert len(calls) == 1
    poster.write_bytes(b"second, longer")
    assert memo_file_sha256(poster) == hashlib.sha256(b"second, longer").hexdigest()


def test_damaged_file_facts_are_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(tmp_path / "cache"))
    _fresh_process(monkeypatch)
    poster = tmp_path / "a.jpg"
    poster.write_bytes(b"bytes")
    memo_file_sha256(poster)
    (facts,) = (tmp_path / "cache" / "files").iterdir()
    facts.write_text(facts.read_text()[:20])
    _fresh_process(monkeypatch)
    assert memo_file_sha256(poster) == hashlib.sha256(b"bytes").hexdigest()


def test_file_lock_on_a_folder_refuses_a_second_holder_without_waiting(tmp_path):
    with file_lock(tmp_path, wait=False):
        with pytest.raises(BlockingIOError):
            with file_lock(tmp_path, wait=False):
                pass
    with file_lock(tmp_path, wait=False):
        assert list(tmp_path.iterdir()) == []
