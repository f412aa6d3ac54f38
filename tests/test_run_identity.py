"""Class 1 of the hostile inputs: a run answers only for the labels it was trained and scored on.

Locks in (each on a copy of the tiny dataset, whose folder is hashed before and after every command):
- the labels' key hashes the poster ids in feature order, each poster's folded genres and the
  vocabulary: one edited genre, another order of labels.csv or another vocabulary change it, and with it
  the run key; a config field at its default still stays out of the run key;
- ``run.json`` records the labels (key, posters, vocabulary), equal to what the experiment trained on;
- after one genre of labels.csv is edited: ``python -m core sweep`` trains every combination again
  (0 reused) where the repeat before the edit reused them all; ``python -m core train`` saves a run of
  the new labels; ``python -m core evaluate`` of the earlier run notes that it was trained on other labels
  (and of the new one, nothing); ``quick_start`` trains again into a new run folder; none of them changes
  the dataset;
- two folders with the same posters and different labels (8 genres against 2) never share a run: each
  trains its own, and ``labels_note`` names both label sets;
- a run saved before runs recorded their labels is never reused (``find_run`` is ``None`` even in the
  folder of its key), is still listed, and is marked "not recorded" with a note saying so.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from core.cli.main import main
from core.data.datasets import load_dataset
from core.features.pipeline import FeatureConfig, extract_features
from core.model.config import TrainConfig
from core.model.experiment import labels_info, run_experiment, run_key
from core.model.quickstart import quick_start
from core.model.runs import find_run, labels_note, labels_state, list_runs, load_run, runs_root, runs_table, save_run
from tests.test_hostile_inputs import folder_hashes

# Seeds no other test module uses: runs of identical features, labels and config are shared by design.
FAST = TrainConfig(feature_view="avg", hidden=(8,), epochs=2, batch_size=16, seed=101)
FAST_FLAGS = ["--preset", "tutorial", "--feature-view", "avg", "--hidden", "8", "--epochs", "2", "--batch-size", "16",
              "--weights", "none"]


def copy_dataset(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def edit_genre(root: Path, poster_id: str, genres: str) -> None:
    """Rewrite one poster's genres in labels.csv, as a person fixing a label would."""
    path = root / "labels.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    edited = [f"{line.rsplit(',', 1)[0]},{genres}" if line.startswith(poster_id + ",") else line for line in lines]
    assert edited != lines
    path.write_text("\n".join(edited) + "\n", encoding="utf-8")


def opened(root: Path):
    dataset, _ = load_dataset(root)
    return dataset, extract_features(dataset, FeatureConfig(weights="none"))


def test_the_labels_key_covers_ids_order_genres_and_vocabulary(tiny_dataset, tmp_path):
    root = copy_dataset(tiny_dataset, tmp_path / "posters")
    dataset, features = opened(root)
    before = labels_info(dataset, features.ids)
    assert before.n_posters == 40 and len(before.genres) == 8
    assert labels_info(dataset, features.ids[::-1]).key != before.key
    edit_genre(root, "demo-0001", "Comedy")
    edited, _ = load_dataset(root)
    after = labels_info(edited, features.ids)
    assert after.key != before.key and (after.n_posters, after.genres) == (before.n_posters, before.genres)
    assert run_key(features, FAST, before) != run_key(features, FAST, after)
    assert run_key(features, replace(FAST, ensemble=1), after) == run_key(features, FAST, after)
    edit_genre(root, "demo-0001", "Action|Noir")
    assert labels_info(load_dataset(root)[0], features.ids).genres == tuple(sorted((*before.genres, "Noir")))


def test_run_json_records_the_labels_it_was_trained_on(tiny_features, tmp_path):
    dataset, features = tiny_features
    result = run_experiment(dataset, features, FAST)
    run = load_run(save_run(result, tmp_path / "run"))
    assert run.labels_info == result.labels == labels_info(dataset, features.ids)
    assert run.info["labels"] == {"key": result.labels.key, "n_posters": 40, "genres": list(result.vocabulary.genres)}
    assert run.trained_on(result.labels) and labels_note(run, result.labels) is None
    assert run.labels_in(dataset) == result.labels


def sweep(root: Path, out: Path, capsys) -> str:
    code = main(["sweep", "--dataset", str(root), "--out", str(out), *FAST_FLAGS, "--seed", "102",
                 "--set", "dropout=0,0.5"])
    output = capsys.readouterr().out
    assert code == 0, output
    return re.search(r"2 runs \((\d) reused\)", output).group(1)


def test_cli_sweep_trains_again_after_one_genre_is_edited(tiny_dataset, tmp_path, capsys):
    root = copy_dataset(tiny_dataset, tmp_path / "posters")
    hashes = folder_hashes(root)
    first, repeat = sweep(root, tmp_path / "a", capsys), sweep(root, tmp_path / "b", capsys)
    assert (first, repeat) == ("0", "2")
    assert folder_hashes(root) == hashes
    edit_genre(root, "demo-0001", "Comedy")
    hashes = folder_hashes(root)
    assert sweep(root, tmp_path / "c", capsys) == "0"
    assert folder_hashes(root) == hashes
    old, new = (load_run(next((tmp_path / name).glob("dropout=0.5_*"))) for name in ("b", "c"))
    assert old.labels_info.key != new.labels_info.key and old.key != new.key
    dataset, features = opened(root)
    assert new.labels_info == labels_info(dataset, features.ids) != old.labels_info


def test_cli_train_after_one_genre_is_edited_saves_a_run_of_the_new_labels(tiny_dataset, tmp_path, capsys):
    root = copy_dataset(tiny_dataset, tmp_path / "posters")
    args = ["train", "--dataset", str(root), *FAST_FLAGS, "--seed", "103"]
    assert main([*args, "--out", str(tmp_path / "before")]) == 0
    edit_genre(root, "demo-0001", "Comedy")
    hashes = folder_hashes(root)
    assert main([*args, "--out", str(tmp_path / "after")]) == 0
    assert "run saved to" in capsys.readouterr().out and folder_hashes(root) == hashes
    before, after = load_run(tmp_path / "before"), load_run(tmp_path / "after")
    dataset, features = opened(root)
    today = labels_info(dataset, features.ids)
    assert after.trained_on(today) and not before.trained_on(today)
    assert "the same 40 posters and 8 genres, but some posters' genres were different then" in labels_note(
        before, today)
    assert main(["evaluate", "--run", str(tmp_path / "before")]) == 0
    assert ("note: This run was trained on other labels than today's: the same 40 posters and 8 genres, but some "
            "posters' genres were different then. The figures below score its predictions against today's genres "
            "of its test posters.") in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path / "after")]) == 0
    assert "note:" not in capsys.readouterr().err and folder_hashes(root) == hashes
    test_poster = load_run(tmp_path / "after").split["test"][0]
    edit_genre(root, test_poster, "Noir")
    assert main(["evaluate", "--run", str(tmp_path / "after")]) == 1
    err = capsys.readouterr().err
    assert "note: This run was trained on other labels than today's: 40 posters, 8 genres (Action," in err
    assert ("error: today's labels of these posters use genres the run was not trained on: ['Noir']\n"
            "hint: the run was trained on other labels; train it again on today's labels") in err


def test_quick_start_trains_again_after_one_genre_is_edited(tiny_dataset, tmp_path):
    root = copy_dataset(tiny_dataset, tmp_path / "posters")
    runs, config = tmp_path / "runs", replace(FAST, seed=104)
    dataset, _ = load_dataset(root)
    first = quick_start(dataset, FeatureConfig(weights="none"), config=config, runs_folder=runs)
    again = quick_start(dataset, FeatureConfig(weights="none"), config=config, runs_folder=runs)
    assert (first.trained, again.trained, again.run_folder) == (True, False, first.run_folder)
    edit_genre(root, "demo-0001", "Comedy")
    hashes = folder_hashes(root)
    edited, _ = load_dataset(root)
    after = quick_start(edited, FeatureConfig(weights="none"), config=config, runs_folder=runs)
    assert after.trained and after.run_folder != first.run_folder and folder_hashes(root) == hashes
    assert sorted(path.name for path in runs.iterdir()) == sorted([first.run_folder.name, after.run_folder.name])
    assert load_run(after.run_folder).trained_on(labels_info(edited, after.features.ids))


def test_two_folders_with_the_same_posters_and_other_labels_never_share_a_run(tiny_dataset, tmp_path):
    many = copy_dataset(tiny_dataset, tmp_path / "many")
    two = copy_dataset(tiny_dataset, tmp_path / "two")
    rows = (two / "labels.csv").read_text(encoding="utf-8").splitlines()
    (two / "labels.csv").write_text("\n".join([rows[0], *(f"{row.rsplit(',', 1)[0]},{('Drama', 'Comedy')[i % 2]}"
                                                           for i, row in enumerate(rows[1:]))]) + "\n")
    config = replace(FAST, seed=105, k=1)
    (many_set, many_features), (two_set, two_features) = opened(many), opened(two)
    assert many_features.key == two_features.key, "the same posters give the same features"
    many_labels, two_labels = labels_info(many_set, many_features.ids), labels_info(two_set, two_features.ids)
    folder = save_run(run_experiment(many_set, many_features, config))
    assert find_run(many_features, config, many_labels).folder == folder
    assert find_run(two_features, config, two_labels) is None
    other = load_run(save_run(run_experiment(two_set, two_features, config)))
    assert other.folder != folder and other.vocabulary.genres == ("Comedy", "Drama")
    assert load_run(folder).vocabulary.genres == many_labels.genres and len(many_labels.genres) == 8
    note = labels_note(load_run(folder), two_labels)
    assert "40 posters, 8 genres (Action, Animation, Comedy" in note and "today's labels: 40 posters, 2 genres" in note


def test_a_run_without_recorded_labels_is_listed_but_never_reused(tiny_features, tmp_path, monkeypatch):
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(tmp_path / "cache"))
    dataset, features = tiny_features
    config = replace(FAST, seed=106)
    folder = save_run(run_experiment(dataset, features, config))
    info = json.loads((folder / "run.json").read_text())
    del info["labels"]
    (folder / "run.json").write_text(json.dumps(info))
    labels = labels_info(dataset, features.ids)
    assert folder == runs_root() / run_key(features, config, labels)
    assert find_run(features, config, labels) is None
    [run] = list_runs()
    assert run.folder == folder and run.labels_info is None and not run.trained_on(labels)
    assert labels_state(run, labels) == "not recorded"
    assert list(runs_table([run], labels)["labels"]) == ["not recorded"]
    assert "saved before runs recorded their labels" in labels_note(run, labels)
