"""core.safe_pickle: plain data loads, anything else is refused unrun.

Locks in: dicts/lists/tuples/str/int/float/bool/None load in every protocol, shared and
self-referencing containers included; Python 2 ``str`` pickles decode (UTF-8, else Latin-1); a
pickle whose ``__reduce__`` would run code raises UnsafePickleError naming the refused global and
the code never runs (marker file absent) in every protocol; numpy pickles are refused with a hint to
re-save as lists; sets and bytes are refused naming the type and where; extension-code and
persistent-id opcodes are refused; a non-pickle, an empty or a missing file gives a DatasetError.
"""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from core.errors import DatasetError, UnsafePickleError
from core.safe_pickle import load_plain_pickle, loads_plain

PLAIN = [{"id": 603, "title": "The Matrix", "genre_ids": [28, 878], "poster_path": None,
          "popularity": 83.5, "adult": False, "pair": (1, "a")}, {28: "Action"}]


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Plain:
    pass


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_loads_in_every_protocol(protocol):
    assert loads_plain(pickle.dumps(PLAIN, protocol=protocol)) == PLAIN


def test_shared_and_self_referencing_containers_load():
    shared = [1, 2]
    loop: list = [shared, shared]
    loop.append(loop)
    value = loads_plain(pickle.dumps(loop))
    assert value[0] is value[1] and value[2] is value


def test_python2_str_pickles_decode():
    assert loads_plain(b"(lp0\nS'Movie'\np1\na.") == ["Movie"]
    assert loads_plain(b"(lp0\nS'Am\\xe9lie'\np1\na.") == ["Am\xe9lie"]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_code_in_a_pickle_is_refused_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pckl"
    path.write_bytes(pickle.dumps([{"title": "x"}, _RunsCode(str(marker))], protocol=protocol))
    with pytest.raises(UnsafePickleError, match=r"refused global '(os|posix)\.system'"):
        load_plain_pickle(path)
    assert not marker.exists()


def test_the_code_pickle_would_run_without_the_guard(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_RunsCode(str(marker))))
    assert marker.exists()


def test_instances_of_classes_are_refused():
    with pytest.raises(UnsafePickleError, match="refused global .*_Plain"):
        loads_plain(pickle.dumps(_Plain()))


def test_numpy_pickles_are_refused_with_a_hint_to_resave_as_lists():
    with pytest.raises(UnsafePickleError, match="refused global 'numpy") as caught:
        loads_plain(pickle.dumps({"genre_ids": np.array([28, 12])}))
    assert "tolist" in caught.value.hint


@pytest.mark.parametrize("value, name", [({1, 2}, "set"), (frozenset({1}), "frozenset"),
                                         (b"raw", "bytes"), (bytearray(b"x"), "bytearray")])
def test_non_plain_builtin_types_are_refused_by_name(value, name):
    with pytest.raises(UnsafePickleError, match=f"refused type '{name}' at \\[0\\]\\['x'\\]"):
        loads_plain(pickle.dumps([{"x": value}], protocol=5))


def test_extension_codes_and_persistent_ids_are_refused():
    with pytest.raises(UnsafePickleError, match="EXT1"):
        loads_plain(b"\x80\x02\x82\x01.")
    with pytest.raises(UnsafePickleError, match="PERSID"):
        loads_plain(b"Pfoo\n.")


@pytest.mark.parametrize("data", [b"id,title\n603,The Matrix\n", b"\xff\xd8\xff\xe0JFIF", b""])
def test_non_pickle_files_give_a_clear_error(tmp_path, data):
    path = tmp_path / "poster_movies.pckl"
    path.write_bytes(data)
    with pytest.raises(DatasetError, match="not a pickle file"):
        load_plain_pickle(path)


def test_missing_file_gives_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="cannot read"):
        load_plain_pickle(tmp_path / "missing.pckl")
