"""Hostile inputs of class 3 (issue 20): nothing the user put in an output folder is deleted or overwritten.

Each case hashes the user's files before and after (``folder_hashes``) and checks the exact outcome:

- ``train --out`` into an earlier run folder (with a manifest, or an older one without) replaces the
  run and keeps the user's ``my_analysis.md`` and ``plots/``; the files the old manifest listed and the
  new run lacks are removed, nothing else.
- ``sweep --out`` refuses a folder holding the user's own ``sweep.csv`` before any work; a sweep into
  an earlier sweep folder replaces its table and keeps the user's notes.
- ``demo --out`` over an earlier demo folder (with a manifest, or an older one) keeps ``NOTES.md`` and
  removes only the demo's stale posters; a ``posters`` link to the user's folder is refused.
- Two commands writing one folder at once: the second is refused plainly ("another command is
  writing"), only one says "run saved", and the saved run is whole.
- ``--out`` that is a symbolic link or sits under a file is refused before any work by train, sweep and
  demo, with one ``error:`` line and nothing changed; a refused or failed command leaves no folder.
- ``core.outputs``: a manifest of another kind or of a user is not ours; staging leftovers of a killed
  command do not make a new folder the user's.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import core.cli.main as cli
from core.errors import RunError
from core.outputs import MANIFEST_FILE, OutputKind, STAGING_PREFIX, claim
from tests.test_hostile_inputs import FAST_TRAIN, assert_refused, folder_hashes, run_cli

SWEEP_ARGS = [*FAST_TRAIN, "--set", "dropout=0,0.5"]


def user_files(root: Path) -> None:
    """What a user adds to an output folder: a note and a folder of plots."""
    (root / "my_analysis.md").write_text("# my analysis\nP@3 looks good\n")
    (root / "plots").mkdir()
    (root / "plots" / "loss.png").write_bytes(b"\x89PNG not really")


def users_part(root: Path) -> dict[str, str]:
    return {name: digest for name, digest in folder_hashes(root).items()
            if name.startswith(("my_analysis.md", "plots", "NOTES.md"))}


def manifest_files(root: Path) -> list[str]:
    return json.loads((root / MANIFEST_FILE).read_text())["files"]


def train(capsys, dataset: Path, out: Path, *extra) -> tuple[int, str, str]:
    return run_cli(capsys, ["train", "--dataset", dataset, "--out", out, *FAST_TRAIN, *extra])


# train --out ------------------------------------------------------------------------------------


@pytest.mark.parametrize("older", [False, True], ids=["with manifest", "saved before manifests"])
def test_train_into_an_earlier_run_folder_keeps_the_users_files(older, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(capsys, tiny_dataset, out)[0] == 0
    if older:
        (out / MANIFEST_FILE).unlink()
    user_files(out)
    mine, run_json = users_part(out), (out / "run.json").read_text()
    code, stdout, err = train(capsys, tiny_dataset, out, "--seed", "7")
    assert code == 0, err
    assert f"run saved to {out}" in stdout
    assert users_part(out) == mine and len(mine) == 3
    assert (out / "run.json").read_text() != run_json and json.loads(run_json)["config"]["seed"] != 7
    assert json.loads((out / "run.json").read_text())["config"]["seed"] == 7
    assert "my_analysis.md" not in manifest_files(out) and "run.json" in manifest_files(out)


def test_files_the_old_manifest_lists_are_removed_and_no_others(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(capsys, tiny_dataset, out)[0] == 0
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    (out / MANIFEST_FILE).write_text(json.dumps({**manifest, "files": [*manifest["files"], "old/extra.txt"]}))
    (out / "old").mkdir()
    (out / "old" / "extra.txt").write_text("an older version wrote this")
    user_files(out)
    mine = users_part(out)
    assert train(capsys, tiny_dataset, out)[0] == 0
    assert not (out / "old").exists()
    assert users_part(out) == mine


def test_train_refuses_a_file_of_the_users_where_a_run_file_goes(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(capsys, tiny_dataset, out)[0] == 0
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    (out / MANIFEST_FILE).write_text(json.dumps({**manifest, "files": ["run.json", MANIFEST_FILE]}))
    before = folder_hashes(out)
    code, stdout, err = train(capsys, tiny_dataset, out)
    assert_refused(code, err, f"{out / 'history.json'} exists and was not written by this product")
    assert "run saved" not in stdout
    assert folder_hashes(out) == before


# sweep --out ------------------------------------------------------------------------------------


def test_sweep_refuses_the_users_own_sweep_csv_before_any_work(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.csv").write_text("experiment,score\nmine,0.9\n")
    before = folder_hashes(tmp_path)
    code, stdout, err = run_cli(capsys, ["sweep", "--dataset", tiny_dataset, "--out", out, *SWEEP_ARGS])
    assert_refused(code, err, f"{out} is not empty and is not a sweep folder (it holds sweep.csv)")
    assert "dataset" not in stdout and "extracting" not in err
    assert folder_hashes(tmp_path) == before


@pytest.mark.parametrize("older", [False, True], ids=["with manifest", "written before manifests"])
def test_sweep_into_an_earlier_sweep_folder_keeps_the_users_files(older, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--dataset", tiny_dataset, "--out", out, *SWEEP_ARGS]
    assert run_cli(capsys, argv)[0] == 0
    if older:
        (out / MANIFEST_FILE).unlink()
    user_files(out)
    mine = users_part(out)
    code, stdout, err = run_cli(capsys, [*argv[:-1], "dropout=0.25"])
    assert code == 0, err
    assert users_part(out) == mine
    assert (out / "sweep.csv").read_text().count("dropout=0.25") == 1
    combinations = sorted(path.name for path in out.iterdir() if path.is_dir() and path.name != "plots")
    assert combinations == ["dropout=0.25_seed=0"]


# demo --out -------------------------------------------------------------------------------------


@pytest.mark.parametrize("older", [False, True], ids=["with manifest", "written before manifests"])
def test_demo_over_an_earlier_demo_keeps_notes(older, tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_cli(capsys, ["demo", "--out", out, "--n", "6"])[0] == 0
    if older:
        (out / MANIFEST_FILE).unlink()
    (out / "NOTES.md").write_text("my notes on the demo")
    (out / "posters" / "my-poster.jpg").write_bytes(b"the user's own poster")
    before = folder_hashes(out)
    code, stdout, err = run_cli(capsys, ["demo", "--out", out, "--n", "4"])
    assert code == 0, err
    after = folder_hashes(out)
    assert after["NOTES.md"] == before["NOTES.md"] and after["posters/my-poster.jpg"] == before["posters/my-poster.jpg"]
    assert sorted(name for name in after if name.startswith("posters/demo-")) == [
        f"posters/demo-000{i}.jpg" for i in range(1, 5)]
    assert (out / "labels.csv").read_text().count("\n") == 5


def test_demo_refuses_a_posters_link_to_the_users_folder(tmp_path, capsys):
    out, elsewhere = tmp_path / "demo", tmp_path / "my_photos"
    assert run_cli(capsys, ["demo", "--out", out, "--n", "3"])[0] == 0
    elsewhere.mkdir()
    (elsewhere / "demo-0001.jpg").write_bytes(b"a photo of mine")
    for poster in (out / "posters").iterdir():
        poster.unlink()
    (out / "posters").rmdir()
    (out / "posters").symlink_to(elsewhere)
    before = folder_hashes(tmp_path)
    code, _, err = run_cli(capsys, ["demo", "--out", out, "--n", "3"])
    assert_refused(code, err, f"{out / 'posters'} is a link or a file, not a folder of this product")
    assert folder_hashes(tmp_path) == before


# Two commands, one folder -----------------------------------------------------------------------


def test_a_second_command_on_a_locked_folder_is_refused_before_any_work(tiny_dataset, tmp_path, capsys):
    from core.model.runs import claim_run_folder

    out = tmp_path / "run"
    with claim_run_folder(out):
        code, stdout, err = train(capsys, tiny_dataset, out)
        assert_refused(code, err, f"another command is writing {out}; nothing was changed")
        assert stdout == ""
        assert folder_hashes(out) == {}


def test_two_trains_into_one_folder_at_once_one_run_saved_one_refused(tiny_dataset, tmp_path, capsys, monkeypatch):
    out, entered, release, codes = tmp_path / "run", threading.Event(), threading.Event(), []
    load = cli._load

    def slow_load(args):
        entered.set()
        assert release.wait(120)
        return load(args)

    monkeypatch.setattr(cli, "_load", slow_load)
    first = threading.Thread(target=lambda: codes.append(cli.main([str(a) for a in ["train", "--dataset", tiny_dataset,
                                                                                       "--out", out, *FAST_TRAIN]])))
    first.start()
    try:
        assert entered.wait(60)
        second = cli.main([str(a) for a in ["train", "--dataset", tiny_dataset, "--out", out, *FAST_TRAIN, "--seed", "9"]])
    finally:
        release.set()
        first.join(300)
    captured = capsys.readouterr()
    assert (codes, second) == ([0], 1)
    assert captured.out.count("run saved to") == 1
    assert f"error: another command is writing {out}; nothing was changed" in captured.err.splitlines()
    from core.model.runs import load_run

    assert load_run(out).config.seed != 9


# --out that is a link or under a file -----------------------------------------------------------


def _command(name: str, dataset: Path, out: Path) -> list:
    return {"train": ["train", "--dataset", dataset, "--out", out, *FAST_TRAIN],
            "sweep": ["sweep", "--dataset", dataset, "--out", out, *SWEEP_ARGS],
            "demo": ["demo", "--out", out, "--n", "3"]}[name]


@pytest.mark.parametrize("command", ["train", "sweep", "demo"])
@pytest.mark.parametrize("kind", ["a link to a folder", "a broken link", "under a file", "a file"])
def test_out_is_refused_before_any_work(command, kind, tiny_dataset, tmp_path, capsys):
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    out, message = {
        "a link to a folder": (tmp_path / "link", "is a symbolic link; refusing to write through it"),
        "a broken link": (tmp_path / "broken", "is a symbolic link; refusing to write through it"),
        "under a file": (tmp_path / "notes.txt" / "sub" / "out", f"{tmp_path / 'notes.txt'} is a file, not a folder"),
        "a file": (tmp_path / "notes.txt", "is a file, not a folder; refusing to replace it"),
    }[kind]
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "broken").symlink_to(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("my notes")
    before = folder_hashes(tmp_path)
    code, stdout, err = run_cli(capsys, _command(command, tiny_dataset, out))
    assert_refused(code, err, message)
    assert "dataset" not in stdout and "extracting" not in err and "generating" not in err
    assert folder_hashes(tmp_path) == before


def test_a_failed_command_leaves_no_folder_it_made(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    code, _, err = run_cli(capsys, ["train", "--dataset", tmp_path / "missing", "--out", out, *FAST_TRAIN])
    assert code == 1 and "Traceback" not in err
    assert not out.exists()


# core.outputs ----------------------------------------------------------------------------------

KIND = OutputKind("run", RunError, "give a new folder")


def test_a_manifest_of_another_kind_or_of_the_user_is_not_ours(tmp_path):
    for manifest in ({"made_by": "poster-genre-explorer", "kind": "sweep", "files": ["a.txt"]},
                     {"made_by": "me", "kind": "run", "files": ["a.txt"]}):
        (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
        (tmp_path / "a.txt").write_text("mine")
        with pytest.raises(RunError, match=r"is not empty and is not a run folder \(it holds a.txt, manifest.json\)"):
            with claim(tmp_path, KIND):
                pass
        assert (tmp_path / "a.txt").read_text() == "mine"


def test_staging_left_by_a_killed_command_does_not_make_the_folder_the_users(tmp_path):
    out = tmp_path / "out"
    (out / f"{STAGING_PREFIX}abc.tmp").mkdir(parents=True)
    (out / f"{STAGING_PREFIX}abc.tmp" / "run.json").write_text("{}")
    with claim(out, KIND) as output:
        output.replace_with(lambda staging: (staging / "run.json").write_text('{"new": 1}'))
    assert folder_hashes(out).keys() == {"run.json", MANIFEST_FILE}
    assert manifest_files(out) == [MANIFEST_FILE, "run.json"]
