"""Issue 20, classes 2 and 4: what a cache read trusts, and what a failed write may do.

Class 2, "checked when read" is true:
- a feature shard or a run's ``test_scores.npy`` whose bytes change in place, keeping size and mtime,
  is refused when read by a fresh process (the sha256 is computed from the bytes read, never taken
  from a memo of (size, mtime)); ``evaluate`` says so in one ``error:`` line instead of a different P@3;
- in one process, a file checked once is not hashed again while its inode, size, mtime and ctime stay
  the same, and a rewrite that keeps size and mtime is seen (its ctime moved);
- a poster replaced with ``cp -p`` by other bytes of the same size and mtime gets its new content key
  (remembered facts and the remembered open are keyed by ctime and inode too);
- ``python -m core verify`` re-hashes every shard, cached array, run file (``--run``) and remembered
  poster hash (``--dataset``), prints one ``damaged:`` line per damaged file and exits 1 with one
  ``error:`` line; a stale poster hash is forgotten, so the next open hashes the poster again; an
  intact cache prints the counts and exits 0.

Class 4, resource faults degrade safely:
- with the disk full, reading valid shards in a fresh process returns their rows and removes nothing;
  adding a shard or replacing a cached array raises ``CacheUnwritableError`` (one line naming the file
  and "no space left", with a hint) and the entry it would have replaced is intact, no temporary file left;
- a shard the system refuses to read (permission denied) is reported and kept, not removed as damaged;
- a read-only cache and ``POSTER_GENRE_CACHE`` naming a file give one ``error:`` line and a ``hint:``
  from the CLI (no traceback) and one ``st.error`` on the pages; read-only is simulated by making the
  write raise EROFS/EACCES, since the tests run as root, which ignores ``chmod``.
"""
from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import core.cache
from core.cache import atomic_save_npy, checksum_path, file_sha256, load_npy
from core.data.datasets import load_dataset
from core.errors import CacheError, CacheUnreadableError, CacheUnwritableError
from core.features.store import FeatureStore
from tests.test_hostile_inputs import assert_refused, folder_hashes, run_cli, run_copy, run_folder  # noqa: F401

DIM = 6


# Helpers -------------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private cache folder, and this process's memos forgotten (as a new process starts)."""
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(tmp_path / "cache"))
    fresh_process(monkeypatch)
    return tmp_path / "cache"


def fresh_process(monkeypatch) -> None:
    """Forget everything this process remembers, as a new process would; what is saved on disk stays."""
    monkeypatch.setattr(core.cache, "_VERIFIED", set())
    monkeypatch.setattr(core.cache, "_FILE_FACTS", {})
    monkeypatch.setattr(core.cache, "_CHANGED_FOLDERS", set())


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Write ``data`` over ``path`` (same size) and put its mtime back, as bit rot seen through a copy or
    ``cp -p`` leaves it: same size, same mtime, same inode, other bytes."""
    stat = path.stat()
    assert len(data) == stat.st_size
    with open(path, "r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns, path.stat().st_ino) == (
        stat.st_size, stat.st_mtime_ns, stat.st_ino)


def flipped(path: Path) -> bytes:
    """``path``'s bytes with one byte flipped near the end (inside the array data)."""
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    return bytes(data)


def small_store(root: Path) -> tuple[FeatureStore, list[str], np.ndarray]:
    store = FeatureStore("trust", DIM, root=root, dtype="float32")
    rows = np.arange(4 * DIM, dtype=np.float32).reshape(4, DIM)
    keys = ["a", "b", "c", "d"]
    store.add(keys[:2], rows[:2])
    store.add(keys[2:], rows[2:])
    return store, keys, rows


def shard_files(store: FeatureStore) -> list[str]:
    return sorted(path.name for path in store.folder.glob("shard-*"))


def disk_full(monkeypatch) -> None:
    """Every write of the cache fails as on a full disk (data reaches the disk at ``fsync`` at the latest)."""
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(core.cache.os, "fsync", full)


def read_only(monkeypatch, code: int = errno.EROFS) -> None:
    """Every new file in the cache is refused, as on a read-only folder (root ignores chmod)."""
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(core.cache.tempfile, "mkstemp", refuse)


# Class 2: checked when read --------------------------------------------------------------------


def test_a_shard_changed_in_place_is_refused_by_a_fresh_process(cache, monkeypatch, caplog):
    store, keys, rows = small_store(cache / "features")
    np.testing.assert_array_equal(np.asarray(store.open(keys)), rows)
    shard = store._shards[0].path
    rewrite_in_place(shard, flipped(shard))
    fresh_process(monkeypatch)
    again = FeatureStore("trust", DIM, root=cache / "features", dtype="float32")
    with pytest.raises(CacheError, match=rf"feature shard {shard.name} in .* was damaged and has been removed "
                                         r"\(cache file .* fails its checksum"):
        np.asarray(again.open(keys))
    assert not shard.exists() and not shard.with_suffix(".json").exists()
    assert again.missing(keys) == keys[:2]


def test_test_scores_changed_in_place_are_refused_by_a_fresh_process(cache, monkeypatch):
    path = cache / "run" / "test_scores.npy"
    atomic_save_npy(path, np.linspace(0, 1, 12, dtype=np.float32).reshape(4, 3))
    load_npy(path, shape=(4, 3), dtype="float32", mmap=False, require_checksum=False)
    rewrite_in_place(path, flipped(path))
    fresh_process(monkeypatch)
    with pytest.raises(CacheError, match="fails its checksum: its bytes changed after it was written"):
        load_npy(path, shape=(4, 3), dtype="float32", mmap=False, require_checksum=False)


def test_evaluate_refuses_scores_changed_in_place_instead_of_another_number(run_copy, monkeypatch, capsys):
    code, before, _ = run_cli(capsys, ["evaluate", "--run", run_copy])
    assert code == 0 and "top-3 precision" in before
    scores = run_copy / "test_scores.npy"
    data = bytearray(scores.read_bytes())
    values = np.load(scores)
    header = len(data) - values.nbytes
    data[header:] = np.ascontiguousarray(values[::-1]).tobytes()  # other scores, same size: another P@3
    rewrite_in_place(scores, bytes(data))
    fresh_process(monkeypatch)
    code, out, err = run_cli(capsys, ["evaluate", "--run", run_copy])
    assert_refused(code, err, f"run {run_copy} has no valid test_scores.npy (cache file {scores} fails its checksum")
    assert "top-3 precision" not in out


def count_hashes(monkeypatch) -> list:
    """A list that grows by one each time ``load_npy`` hashes a file's bytes."""
    hashed = []
    original = core.cache._sha256_read
    monkeypatch.setattr(core.cache, "_sha256_read", lambda *args: hashed.append(1) or original(*args))
    return hashed


def test_one_process_hashes_an_unchanged_file_once_and_sees_a_rewrite(cache, monkeypatch):
    monkeypatch.setattr(core.cache, "RACY_NS", 0)
    path = cache / "x.npy"
    atomic_save_npy(path, np.ones((4, 3), dtype=np.float32))
    time.sleep(0.05)  # past one tick of the file system clock, so a later write moves the ctime
    hashed = count_hashes(monkeypatch)
    load_npy(path)
    load_npy(path)
    assert len(hashed) == 1
    time.sleep(0.05)
    rewrite_in_place(path, flipped(path))
    with pytest.raises(CacheError, match="fails its checksum"):
        load_npy(path)
    assert len(hashed) == 2


def test_a_file_changed_within_two_seconds_of_its_check_is_hashed_at_every_read(cache, monkeypatch):
    assert core.cache.RACY_NS == 2_000_000_000
    monkeypatch.setattr(core.cache, "RACY_NS", 3600 * 10**9)  # however slow this machine is right now
    path = cache / "young.npy"
    atomic_save_npy(path, np.ones(3, dtype=np.float32))
    hashed = count_hashes(monkeypatch)
    load_npy(path)
    load_npy(path)
    assert len(hashed) == 2


def test_a_poster_replaced_with_cp_p_gets_its_new_content_key(tiny_dataset, cache, monkeypatch, tmp_path):
    root = Path(shutil.copytree(tiny_dataset, tmp_path / "ds"))
    dataset, _ = load_dataset(root)
    target = dataset.posters[0].path
    other = tmp_path / "other.jpg"
    other.write_bytes(flipped(target))
    os.utime(other, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns))
    shutil.copy2(other, target)  # cp -p: other bytes, same size and mtime, same inode
    assert target.stat().st_mtime_ns == other.stat().st_mtime_ns
    fresh_process(monkeypatch)
    reopened, _ = load_dataset(root)
    assert reopened.posters[0].key == file_sha256(other) != dataset.posters[0].key
    assert reopened.content_keys()[0] == file_sha256(other)
    assert [p.key for p in reopened.posters[1:]] == [p.key for p in dataset.posters[1:]]


def _verify(capsys, *args) -> tuple[int, str, str]:
    return run_cli(capsys, ["verify", *args])


def test_verify_names_each_damaged_file_and_exits_1(tiny_dataset, cache, monkeypatch, tmp_path, capsys):
    store, keys, _ = small_store(cache / "features")
    view = cache / "views" / "x-avg.npy"
    atomic_save_npy(view, np.ones((2, 2), dtype=np.float32))
    run = tmp_path / "my-run"
    atomic_save_npy(run / "test_scores.npy", np.zeros((2, 2), dtype=np.float32))
    root = Path(shutil.copytree(tiny_dataset, tmp_path / "ds"))
    dataset, _ = load_dataset(root)
    args = ["--dataset", root, "--run", run]
    code, out, err = _verify(capsys, *args)
    assert code == 0 and err == ""
    assert out.splitlines() == [
        f"feature shards in {cache / 'features'}: 2 checked, 0 damaged",
        f"thumbnail shards in {cache / 'thumbnails'}: 0 checked, 0 damaged",
        f"cached arrays and run files in {cache}: 1 checked, 0 damaged",
        f"run files in {run}: 1 checked, 0 damaged",
        f"remembered poster hashes of {root}: {len(dataset)} checked, 0 damaged"]

    shard = store._shards[1].path
    rewrite_in_place(shard, flipped(shard))
    rewrite_in_place(view, flipped(view))
    rewrite_in_place(run / "test_scores.npy", flipped(run / "test_scores.npy"))
    # Bit rot in a poster changes no file fact: stand for it with a wrong remembered hash (and open).
    poster = dataset.posters[3]
    for memo in [*(cache / "files").glob("*.json"), *(cache / "opened").glob("*.json")]:
        memo.write_text(memo.read_text().replace(poster.key, "0" * 64))
    fresh_process(monkeypatch)
    assert load_dataset(root)[0].posters[3].key == "0" * 64  # what an open trusts, and verify re-checks
    before = folder_hashes(cache)
    code, out, err = _verify(capsys, *args)
    assert code == 1
    assert out.splitlines() == [
        f"feature shards in {cache / 'features'}: 2 checked, 1 damaged",
        f"thumbnail shards in {cache / 'thumbnails'}: 0 checked, 0 damaged",
        f"cached arrays and run files in {cache}: 1 checked, 1 damaged",
        f"run files in {run}: 1 checked, 1 damaged",
        f"remembered poster hashes of {root}: {len(dataset)} checked, 1 damaged",
        f"damaged: {shard}: fails its checksum: its bytes changed after it was written",
        f"damaged: {view}: fails its checksum: its bytes changed after it was written",
        f"damaged: {run / 'test_scores.npy'}: fails its checksum: its bytes changed after it was written",
        f"damaged: {poster.path}: its sha256 changed but its size, mtime, ctime and inode did not"]
    total = 2 + 1 + 1 + len(dataset)
    assert err.splitlines()[0] == f"error: 4 of {total} checked files are damaged (named above)"
    assert err.splitlines()[1].startswith("hint: a damaged feature shard or cached array is removed")
    assert len(err.splitlines()) == 2
    after = folder_hashes(cache)
    changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    assert all(name.startswith(("files/", "opened/")) for name in changed), changed  # only the stale memos
    fresh_process(monkeypatch)
    assert load_dataset(root)[0].posters[3].key == poster.key


def test_verify_refuses_a_missing_run_folder(cache, tmp_path, capsys):
    code, _, err = _verify(capsys, "--run", tmp_path / "nowhere")
    assert_refused(code, err, f"run folder {tmp_path / 'nowhere'} does not exist")


# Class 4: resource faults degrade safely -------------------------------------------------------


def test_a_full_disk_never_removes_a_valid_shard(cache, monkeypatch, tiny_dataset):
    store, keys, rows = small_store(cache / "features")
    before = folder_hashes(cache)
    disk_full(monkeypatch)
    fresh_process(monkeypatch)
    load_dataset(tiny_dataset)  # its remembered facts cannot be saved: a warning, not a failure
    again = FeatureStore("trust", DIM, root=cache / "features", dtype="float32")
    np.testing.assert_array_equal(np.asarray(again.open(keys)), rows)
    assert folder_hashes(cache / "features") == {name.removeprefix("features/"): digest
                                                for name, digest in before.items() if name.startswith("features/")}
    with pytest.raises(CacheUnwritableError, match=r"cannot write .*/shard-\w+\.npy: no space left on its disk "
                                                   r"\(No space left on device\)") as caught:
        again.add(["e"], np.ones((1, DIM), dtype=np.float32))
    assert caught.value.hint == ("free space on that disk, or set POSTER_GENRE_CACHE to another folder on a disk "
                                 "with room")
    assert shard_files(again) == shard_files(store)
    assert not list(cache.rglob("*.tmp"))
    np.testing.assert_array_equal(np.asarray(again.open(keys)), rows)


def test_a_full_disk_keeps_the_cached_array_it_would_have_replaced(cache, monkeypatch):
    path = cache / "views" / "x.npy"
    atomic_save_npy(path, np.ones(3, dtype=np.float32))
    before = folder_hashes(cache)
    disk_full(monkeypatch)
    with pytest.raises(CacheUnwritableError, match="no space left on its disk"):
        atomic_save_npy(path, np.zeros(3, dtype=np.float32))
    assert folder_hashes(cache) == before
    fresh_process(monkeypatch)
    np.testing.assert_array_equal(load_npy(path), np.ones(3))


def test_a_checksum_that_cannot_be_written_leaves_no_mismatched_pair(cache, monkeypatch):
    path = cache / "views" / "x.npy"
    atomic_save_npy(path, np.ones(3, dtype=np.float32))
    original = core.cache.atomic_write_text

    def full_for_checksums(target, text):
        if str(target).endswith(".sha256"):
            raise CacheUnwritableError(f"cannot write {target}: no space left on its disk")
        original(target, text)

    monkeypatch.setattr(core.cache, "atomic_write_text", full_for_checksums)
    with pytest.raises(CacheUnwritableError):
        atomic_save_npy(path, np.zeros(3, dtype=np.float32))
    assert not path.exists() and not checksum_path(path).exists()  # a miss, never a "damaged" entry


def test_a_shard_the_system_refuses_to_read_is_kept(cache, monkeypatch):
    store, keys, _ = small_store(cache / "features")
    fresh_process(monkeypatch)
    names = shard_files(store)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(core.cache.np, "load", denied)
    with pytest.raises(CacheUnreadableError, match=r"cache file .*shard-\w+\.npy cannot be read: Permission denied"):
        np.asarray(store.open(keys))
    assert shard_files(store) == names


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_cache_is_one_line(code, cache, monkeypatch, tiny_dataset, capsys):
    cache.mkdir(parents=True)
    read_only(monkeypatch, code)
    before = folder_hashes(tiny_dataset)
    status, out, err = run_cli(capsys, ["extract", "--dataset", tiny_dataset, "--weights", "none"])
    assert_refused(status, err, f"cannot write {cache / 'features'}")
    assert f"error: cannot write {cache / 'features'}" in err and f": {os.strerror(code)}\n" in err
    assert err.splitlines()[-1].startswith("hint: make ") and err.splitlines()[-1].endswith(
        "writable, or set POSTER_GENRE_CACHE to another folder")
    assert folder_hashes(tiny_dataset) == before


@pytest.mark.parametrize("command", [["verify"], ["extract", "--weights", "none"]])
def test_a_cache_variable_naming_a_file_is_one_line(command, tmp_path, monkeypatch, tiny_dataset, capsys):
    not_a_folder = tmp_path / "cache.txt"
    not_a_folder.write_text("mine")
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(not_a_folder))
    argv = command + (["--dataset", tiny_dataset] if command[0] == "extract" else [])
    code, _, err = run_cli(capsys, argv)
    assert_refused(code, err, f"the cache folder {not_a_folder} cannot be used: {not_a_folder} is a file, "
                              "not a folder")
    assert err.splitlines()[-1] == ("hint: set POSTER_GENRE_CACHE to a folder (or unset it to use the default "
                                    "cache folder)")
    assert not_a_folder.read_text() == "mine"


@pytest.mark.parametrize("fault", ["a file", "read-only"])
def test_pages_show_an_unusable_cache_as_one_error(fault, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    cache = tmp_path / "cache.txt"
    if fault == "a file":
        cache.write_text("mine")
        expected = (f"the cache folder {cache} cannot be used: {cache} is a file, not a folder (set "
                    "POSTER_GENRE_CACHE to a folder (or unset it to use the default cache folder))")
    else:
        cache.mkdir()
        read_only(monkeypatch)
        expected = (f"cannot write {cache / '.write-check'}: Read-only file system (make {cache} writable, or set "
                    "POSTER_GENRE_CACHE to another folder)")
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(cache))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == [f"The cache cannot be used: {expected}"]
