"""Sweeps: many runs from one click or one command.

Locks in:
- ``--set`` values parse through the training options (CLI flags such as ``lr`` name options; hidden sizes
  take ';' between values), and a bad name, a swept seed or an out-of-range value is refused by name;
- a sweep is the product of the swept values, seeds innermost, every configuration checked;
- ``run_sweep`` saves one run per combination, reuses every one of them the second time, and Stop
  keeps the runs finished before it; after one genre of labels.csv is edited it trains every combination
  again (core and the Train page's "Run sweep", which leaves the dataset unchanged);
- ``python -m core sweep`` writes one run folder per combination and a sweep.csv (every option and metric),
  answers a repeat from disk, and refuses a foreign non-empty --out before any work, changing nothing;
- the Train page's "Run sweep" trains the combinations and draws the chart and its table; it offers only the
  options that apply to the chosen head (the kernel head's ridge and γ, no MLP option) and drops a stale choice.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.cli.main import main
from core.errors import TrainingError
from core.model.config import TrainConfig
from core.model.runs import load_run
from core.model.sweep import (SweepConfig, check_sweep, combination_name, parse_assignment, parse_values,
                              run_sweep, sweep_table)

APP = Path(__file__).resolve().parents[1] / "app.py"
FAST = TrainConfig(feature_view="avg", hidden=(8,), epochs=2, batch_size=16)
FAST_FLAGS = ["--preset", "tutorial", "--feature-view", "avg", "--hidden", "8", "--epochs", "2", "--batch-size", "16"]


def test_assignments_parse_through_the_training_options():
    assert parse_assignment("lr=1e-3,2e-3") == ("learning_rate", (0.001, 0.002))
    assert parse_assignment("dropout=0.3, 0.5") == ("dropout", (0.3, 0.5))
    assert parse_assignment("hidden=512;1024,256") == ("hidden", ((512,), (1024, 256)))
    assert parse_assignment("power-normalize=true,false") == ("power_normalize", (True, False))
    assert parse_values("seed", "0,1,2") == (0, 1, 2)


@pytest.mark.parametrize("text, message", [
    ("colour=1,2", "'colour' is not a training option"),
    ("dropout", "is not OPTION=VALUES"),
    ("dropout=", "no values given"),
    ("epochs=ten", "'ten' is not a whole number"),
])
def test_bad_assignments_are_refused_by_name(text, message):
    with pytest.raises(TrainingError, match=message):
        parse_assignment(text)


def test_a_sweep_is_the_product_of_its_values_with_seeds_innermost():
    sweep = SweepConfig(FAST, (("dropout", (0.0, 0.5)), ("learning_rate", (1e-3, 2e-3, 5e-3))), seeds=(0, 1))
    configs = check_sweep(sweep)
    assert len(configs) == 12
    assert [(c.dropout, c.learning_rate, c.seed) for c in configs[:3]] == [(0.0, 1e-3, 0), (0.0, 1e-3, 1),
                                                                          (0.0, 2e-3, 0)]
    assert {c.hidden for c in configs} == {(8,)}
    assert combination_name(configs[3], sweep.parameters) == "dropout=0_learning_rate=0.002_seed=1"


@pytest.mark.parametrize("grid, message", [
    ((), "at least one option"),
    ((("seed", (0, 1)),), "seeds list"),
    ((("dropout", (0.5, 1.5)),), r"sweep value dropout=1\.5: .*dropout must be in \[0, 1\)"),
    ((("dropout", (0.1,)), ("dropout", (0.2,))), "named twice"),
])
def test_invalid_sweeps_are_refused_before_training(grid, message):
    with pytest.raises(TrainingError, match=message):
        check_sweep(SweepConfig(FAST, grid))


def test_run_sweep_saves_each_combination_then_reuses_them(tiny_features):
    dataset, features = tiny_features
    sweep = SweepConfig(FAST, (("dropout", (0.0, 0.5)),), seeds=(0, 1))
    seen = []
    first = run_sweep(dataset, features, sweep, on_progress=seen.append)
    assert len(first.folders) == 4 and first.reused == [False] * 4 and not first.stopped_by_user
    assert [p.done for p in seen] == [0, 1, 2, 3, 4] and seen[-1].total == 4
    runs = [load_run(folder) for folder in first.folders]
    assert [(run.config.dropout, run.config.seed) for run in runs] == [(0.0, 0), (0.0, 1), (0.5, 0), (0.5, 1)]
    second = run_sweep(dataset, features, sweep)
    assert second.reused == [True] * 4 and second.folders == first.folders
    table = sweep_table(runs, sweep.parameters)
    assert {"dropout", "seed", "precision_at_k", "prior_precision_at_k", "learning_rate"} <= set(table.columns)


def test_run_sweep_trains_again_after_one_genre_is_edited(tiny_dataset, tmp_path):
    from core.data.datasets import load_dataset
    from core.features.pipeline import FeatureConfig, extract_features
    from tests.test_run_identity import copy_dataset, edit_genre

    root = copy_dataset(tiny_dataset, tmp_path / "posters")
    sweep = SweepConfig(FAST, (("dropout", (0.0, 0.5)),), seeds=(111,))
    dataset, _ = load_dataset(root)
    features = extract_features(dataset, FeatureConfig(weights="none"))
    first, repeat = run_sweep(dataset, features, sweep), run_sweep(dataset, features, sweep)
    assert (first.reused, repeat.reused, repeat.folders) == ([False, False], [True, True], first.folders)
    edit_genre(root, "demo-0001", "Comedy")
    edited, _ = load_dataset(root)
    after = run_sweep(edited, features, sweep)
    assert after.reused == [False, False] and not set(after.folders) & set(first.folders)
    assert all(load_run(folder).vocabulary.genres == load_run(first.folders[0]).vocabulary.genres
               for folder in after.folders)


def test_stop_keeps_the_runs_finished_before_it(tiny_features):
    dataset, features = tiny_features
    sweep = SweepConfig(FAST, (("patience", (2, 3, 4)),), seeds=(7,))
    finished = []
    result = run_sweep(dataset, features, sweep, on_run=finished.append, should_stop=lambda: len(finished) >= 1)
    assert result.stopped_by_user and len(result.folders) == 1 == len(finished)
    assert load_run(finished[0]).config.patience == 2


def folder_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_sweep_writes_a_run_folder_per_combination_and_sweep_csv(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "s1"
    args = ["sweep", "--dataset", str(tiny_dataset), "--weights", "none", "--out", str(out), *FAST_FLAGS,
            "--set", "dropout=0,0.5", "--set", "lr=1e-3,2e-3", "--seeds", "3"]
    assert main(args) == 0
    table = pd.read_csv(out / "sweep.csv")
    assert len(table) == 4
    assert sorted(zip(table["dropout"], table["learning_rate"])) == [(0.0, 0.001), (0.0, 0.002), (0.5, 0.001),
                                                                     (0.5, 0.002)]
    assert set(table["seed"]) == {3} and table["precision_at_k"].between(0, 1).all()
    for name in table["folder"]:
        assert load_run(out / name).config.seed == 3
    assert "4 runs (0 reused)" in capsys.readouterr().out
    assert main(args) == 0
    assert "4 runs (4 reused)" in capsys.readouterr().out


def test_cli_sweep_refuses_a_foreign_folder_before_any_work(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    before = folder_hashes(out)
    code = main(["sweep", "--dataset", str(tiny_dataset), "--weights", "none", "--out", str(out), *FAST_FLAGS,
                 "--set", "dropout=0,0.5"])
    assert code == 1
    err = capsys.readouterr().err
    assert "is not empty and is not a sweep folder (it holds notes.txt)" in err and "extracting" not in err
    assert folder_hashes(out) == before


def train_page_with_a_dropout_sweep(dataset_root, seeds: str) -> AppTest:
    """The Train page on a tiny tutorial-preset network with a sweep of dropout 0.0 and 0.5 filled in."""
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.session_state["settings"] = {"dataset": str(dataset_root), "weights": "none", "precision": "auto"}
    at.run()
    at.switch_page("pages/train.py").run()
    at.radio(key="preset").set_value("tutorial").run()
    at.radio(key="feature_view").set_value("avg")
    at.text_input(key="hidden").input("8")
    at.number_input(key="epochs").set_value(2)
    at.run()
    at.multiselect(key="sweep_params").set_value(["dropout"]).run()
    at.text_input(key="sweep_values_dropout").input("0.0,0.5")
    at.text_input(key="sweep_seeds").input(seeds)
    return at.run()


def test_the_page_offers_only_options_that_apply_to_the_chosen_head(tiny_features):
    from core.model.config import OPTIONS_BY_NAME

    def offered() -> set[str]:
        labels = set(at.multiselect(key="sweep_params").options)
        return {name for name, option in OPTIONS_BY_NAME.items() if option.label in labels}

    dataset, _ = tiny_features
    at = train_page_with_a_dropout_sweep(dataset.root, "0")
    assert {"dropout", "learning_rate"} <= offered() and "ridge" not in offered()
    at.radio(key="preset").set_value("fast").run()
    assert not at.exception
    assert {"ridge", "kernel_gamma"} <= offered()
    assert not {"dropout", "learning_rate", "epochs", "hidden"} & offered()
    assert at.multiselect(key="sweep_params").value == []


def test_train_page_runs_a_sweep_and_draws_its_chart(tiny_features):
    dataset, _ = tiny_features
    at = train_page_with_a_dropout_sweep(dataset.root, "0,1")
    at.button(key="run_sweep").click().run()
    assert not at.exception and not at.error
    last = at.session_state["sweep_last"]
    assert last["parameters"] == ["dropout"] and len(last["folders"]) == 4
    assert any("frequency prior" in chart.proto.spec for chart in at.get("plotly_chart"))
    tables = [frame.value for frame in at.dataframe if {"run", "dropout", "seed"} <= set(frame.value.columns)]
    assert len(tables) == 1 and sorted(zip(tables[0]["dropout"], tables[0]["seed"])) == [
        (0.0, 0), (0.0, 1), (0.5, 0), (0.5, 1)]


def test_train_page_sweep_trains_again_after_one_genre_is_edited(tiny_dataset, tiny_features, tmp_path):
    from tests.test_hostile_inputs import folder_hashes as dataset_hashes
    from tests.test_run_identity import copy_dataset, edit_genre

    root = copy_dataset(tiny_dataset, tmp_path / "posters")
    at = train_page_with_a_dropout_sweep(root, "112")

    def sweep_folders() -> set[str]:
        at.button(key="run_sweep").click().run()
        assert not at.exception and not at.error
        return set(at.session_state["sweep_last"]["folders"])

    first = sweep_folders()
    assert len(first) == 2 and sweep_folders() == first
    assert "(2 reused)" in " ".join(str(bar.proto.text) for bar in at.get("progress"))
    edit_genre(root, "demo-0001", "Comedy")
    hashes = dataset_hashes(root)
    after = sweep_folders()
    assert len(after) == 2 and not after & first
    assert "(0 reused)" in " ".join(str(bar.proto.text) for bar in at.get("progress"))
    assert dataset_hashes(root) == hashes
