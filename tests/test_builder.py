"""core.sources.builder: downloads never destroy data, checked by hashing every file before and after.

Locks in:
- a non-empty folder without this product's ``made_by`` (e.g. a user's poster set) is refused before
  any fetch, with message and hint, and not one byte changes; a file as --out is refused too;
- a folder made by another source is refused the same way;
- a new folder records ``made_by`` and the source in dataset.json and lists the files written in
  manifest.json;
- a second run into its own folder merges: earlier labels/metadata rows and posters stay byte-equal,
  new ids are added (the CLI's one-row-CSV case included);
- an undecodable poster the user put in the folder survives a failed and a successful fetch of its
  id, and the item is reported with the reason; an undecodable poster the builder wrote is replaced;
- an interrupted first run leaves a folder the next run accepts as its own; a state file is in the
  manifest before it is written, so a killed run never leaves one the next run refuses to replace.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from core.cli.acquire import add_commands
from core.data.datasets import load_dataset
from core.errors import DatasetError, DownloadError
from core.sources.builder import MADE_BY, MANIFEST_FILE, DatasetFolder, PosterItem, build_dataset


def _jpeg(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 18), (shade, 40, 200 - shade)).save(buffer, "JPEG")
    return buffer.getvalue()


POSTERS = {f"m{i}": _jpeg(10 * i) for i in range(6)}


def _fetch(item: PosterItem) -> bytes:
    if item.source not in POSTERS:
        raise DownloadError(f"HTTP 404 for {item.source}")
    return POSTERS[item.source]


def _items(*ids: str, source: dict[str, str] | None = None) -> list[PosterItem]:
    source = source or {}
    return [PosterItem(id=i, title=f"Title {i}", genres=("Drama", "Comedy"), source=source.get(i, i),
                       metadata={"note": f"about {i}"}) for i in ids]


def _build(out: Path, items: list[PosterItem], source: str = "urls", progress=None):
    return build_dataset(items, DatasetFolder.open(out, source), _fetch, info={"parameters": {"run": 1}},
                         workers=2, batch_size=2, progress=progress)


def _hashes(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def _labels(root: Path) -> dict[str, dict]:
    with open(root / "labels.csv", encoding="utf-8") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def _user_folder(tmp_path: Path) -> Path:
    root = tmp_path / "mine"
    (root / "posters").mkdir(parents=True)
    (root / "posters" / "m1.jpg").write_bytes(POSTERS["m1"])
    (root / "labels.csv").write_text("id,title,genres\nm1,My own,Drama\nold,Old,Comedy\n")
    return root


def test_foreign_folder_is_refused_before_any_fetch_and_left_unchanged(tmp_path):
    root = _user_folder(tmp_path)
    before = _hashes(root)
    fetched: list[str] = []
    with pytest.raises(DatasetError, match="not empty .* holds no dataset made by") as caught:
        build_dataset(_items("m2"), DatasetFolder.open(root, "urls"),
                      lambda item: fetched.append(item.id) or b"", info={})
    assert "new or empty folder" in caught.value.hint
    assert fetched == [] and _hashes(root) == before


def test_folder_of_another_source_and_a_file_are_refused(tmp_path):
    _build(tmp_path / "tmdb-set", _items("m1"), source="tmdb")
    before = _hashes(tmp_path / "tmdb-set")
    with pytest.raises(DatasetError, match="made by the 'tmdb' source, not 'urls'"):
        DatasetFolder.open(tmp_path / "tmdb-set", "urls")
    assert _hashes(tmp_path / "tmdb-set") == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="is a file"):
        DatasetFolder.open(tmp_path / "file", "urls")


def test_new_folder_records_its_maker_and_every_file_written(tmp_path):
    out = tmp_path / "new"
    result = _build(out, _items("m1", "m2"))
    info = json.loads((out / "dataset.json").read_text())
    assert (info["made_by"], info["source"], info["n_posters"]) == (MADE_BY, "urls", 2)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {"dataset.json", "labels.csv", "metadata.csv", MANIFEST_FILE,
                                      "posters/m1.jpg", "posters/m2.jpg"}
    assert result.n_saved == result.n_total == 2


def test_second_run_merges_and_keeps_every_earlier_file(tmp_path):
    out = tmp_path / "set"
    _build(out, _items("m1", "m2", "m3"))
    before = _hashes(out)
    result = _build(out, _items("m4"))
    after = _hashes(out)
    assert all(after[name] == digest for name, digest in before.items() if name.startswith("posters/"))
    assert set(_labels(out)) == {"m1", "m2", "m3", "m4"}
    assert _labels(out)["m2"] == {"id": "m2", "title": "Title m2", "genres": "Drama|Comedy"}
    with open(out / "metadata.csv", encoding="utf-8") as handle:
        assert {row["id"]: row["note"] for row in csv.DictReader(handle)}["m1"] == "about m1"
    assert (result.n_saved, result.n_downloaded, result.n_total) == (1, 1, 4)
    assert "3 kept from earlier runs" in result.summary()
    dataset, report = load_dataset(out)
    assert report.skipped == [] and len(dataset) == 4


def test_user_undecodable_poster_survives_failed_and_successful_downloads(tmp_path):
    out = tmp_path / "set"
    _build(out, _items("m1"))
    broken = POSTERS["m2"][:40]
    (out / "posters" / "m2.jpg").write_bytes(broken)
    user_file = hashlib.sha256(broken).hexdigest()
    failed = _build(out, _items("m1", "m2", source={"m2": "gone"}))
    assert hashlib.sha256((out / "posters" / "m2.jpg").read_bytes()).hexdigest() == user_file
    reasons = {s.id: s.reason for s in failed.skipped}
    assert "posters/m2.jpg is not a usable image" in reasons["m2"] and "left as is" in reasons["m2"]
    fetchable = _build(out, _items("m2"))
    assert hashlib.sha256((out / "posters" / "m2.jpg").read_bytes()).hexdigest() == user_file
    assert fetchable.n_downloaded == 0 and "m2" not in _labels(out)


def test_undecodable_poster_the_builder_wrote_is_fetched_again(tmp_path):
    out = tmp_path / "set"
    _build(out, _items("m1", "m2"))
    (out / "posters" / "m2.jpg").write_bytes(b"\xff\xd8\xff broken")
    result = _build(out, _items("m1", "m2"))
    assert (result.n_reused, result.n_downloaded) == (1, 1)
    assert (out / "posters" / "m2.jpg").read_bytes() == POSTERS["m2"]


def test_interrupted_first_run_leaves_a_folder_the_next_run_owns(tmp_path):
    out = tmp_path / "set"

    def stop_after_two(progress) -> None:
        if progress.done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _build(out, _items("m1", "m2", "m3", "m4", "m5"), progress=stop_after_two)
    assert json.loads((out / "dataset.json").read_text())["made_by"] == MADE_BY
    result = _build(out, _items("m1", "m2", "m3", "m4", "m5"))
    assert result.n_total == 5 and result.n_reused >= 2


def test_a_state_file_is_owned_as_soon_as_it_is_written(tmp_path):
    folder = DatasetFolder.open(tmp_path / "set", "tmdb")
    folder.path_for("progress.json").write_text("{}")
    reopened = DatasetFolder.open(tmp_path / "set", "tmdb")
    assert reopened.owns("progress.json") and reopened.path_for("progress.json").is_file()
    (tmp_path / "set" / "extra.txt").write_text("user's")
    with pytest.raises(DatasetError, match="extra.txt exists and was not written by this source"):
        reopened.path_for("extra.txt")
    assert not reopened.remove("extra.txt") and (tmp_path / "set" / "extra.txt").read_text() == "user's"


def _write_table(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["imdbId", "Title", "Genre", "Poster"])
        writer.writerows(rows)
    return path


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_download_urls_with_a_one_row_csv_keeps_the_old_rows(tmp_path, monkeypatch, capsys):
    from tests.fake_tmdb import FakeTmdb

    server = FakeTmdb().start()
    try:
        first = _write_table(tmp_path / "a.csv", [[f"{100 + i}", f"Movie {i}", "Drama",
                                                    server.poster_url(100 + i)] for i in range(3)])
        second = _write_table(tmp_path / "b.csv", [["200", "New one", "Comedy", server.poster_url(110)]])
        out = tmp_path / "out"
        assert _cli(["download-urls", "--csv", str(first), "--out", str(out)]) == 0
        posters = {k: v for k, v in _hashes(out).items() if k.startswith("posters/")}
        assert _cli(["download-urls", "--csv", str(second), "--out", str(out)]) == 0
    finally:
        server.stop()
    assert set(_labels(out)) == {"100", "101", "102", "200"}
    assert all(_hashes(out)[name] == digest for name, digest in posters.items())
    assert "3 kept from earlier runs" in capsys.readouterr().out


def test_cli_refuses_a_foreign_out_folder_with_a_hint(tmp_path, capsys):
    from core.cli.main import main

    root = _user_folder(tmp_path)
    before = _hashes(root)
    table = _write_table(tmp_path / "a.csv", [["100", "Movie", "Drama", "http://127.0.0.1:9/p100.jpg"]])
    assert main(["download-urls", "--csv", str(table), "--out", str(root)]) == 1
    err = capsys.readouterr().err
    assert "error: output folder" in err and "hint: give a new or empty folder" in err
    assert _hashes(root) == before
