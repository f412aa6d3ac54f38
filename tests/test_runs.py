"""Behaviours locked in for ``core.model.runs`` (and ``core.model.experiment``), saved training runs.

- ``save_run`` / ``load_run`` round-trip the config, the vocabulary order, a disjoint and covering
  split of the feature ids, the history and ``metrics.json`` with its required keys (k,
  precision/recall at k, prior precision/recall at k, micro/macro F1, n_train, n_test, genres,
  weights); the run key is the experiment's.
- A run folder holds no pickle: no .pkl/.pickle files, ``model.keras`` holds no pickled member,
  ``test_scores.npy`` loads without pickle and the model loads with ``safe_mode``.
- The loaded model reproduces ``test_scores.npy`` from the features of the test posters.
- ``check_features`` accepts the run's own features and refuses features from other weights or of
  another dataset.
- ``load_run`` raises ``RunError`` for a missing folder, each missing required file, damaged
  metadata, a vocabulary that disagrees with metrics.json, and bad ``test_scores.npy``.
- ``find_run`` returns the run saved for the same features, labels and config, ``None`` for another config
  or when the run in the folder of the key records other labels; ``list_runs`` skips folders that are not runs.
- ``LabelsInfo`` reads back what ``to_dict`` wrote and is ``None`` for a run without (or with a damaged)
  labels record; ``runs_table`` given today's labels has a ``labels`` column (today's / other / not recorded).
- ``save_run`` replaces the files of an earlier run (removing those its manifest lists and the new run
  lacks), keeps the user's files, leaves no staging folder, and refuses to overwrite a folder that is
  not a run (tests/test_output_folders.py covers output folders in depth); ``delete_run`` deletes a run's own files (the folder too once empty), keeps the user's and refuses a non-run folder.
- ``run_key`` ignores fields left at their defaults; ``runs_for_dataset`` filters by dataset folder;
  ``Run.label`` names the view and random weights; ``Run.hidden_activations`` has the last hidden width.
- Typed runs: ``Run.dataset_info`` is the ``DatasetInfo`` of the dataset the experiment ran on;
  ``Run.evaluation`` reads the intervals back from metrics.json equal to the experiment's; the weights
  identity is stored once (run.json), and a run saved before (weights keys in metrics.json only) still
  reads them; ``Run.cache_token`` changes when the run folder is replaced.
- ``runs_table`` has one column per training option (``TRAIN_OPTIONS``) plus the metrics; ``Run.summary``
  names the options.
- ``comparable_columns`` offers a kernel run's options only (no network option, no epochs run) and opens
  on the ridge; beside a network run it offers both heads' options and opens on the learning rate.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.errors import RunError
from core.model.config import TRAIN_OPTIONS, TrainConfig
from core.model.experiment import DatasetInfo, labels_info, run_experiment, run_key
from core.model.runs import (METRIC_COLUMNS, RUN_FILES, RUN_WRITTEN, delete_run, find_run, list_runs, load_run,
                             runs_root, runs_table, save_run)
from core.features.weights import resolve_weights

CONFIG = TrainConfig(feature_view="avg", hidden=(16,), learning_rate=1e-2, optimizer="adam", epochs=2,
                     batch_size=8, k=2, seed=4)
REQUIRED_METRICS = ("k", "precision_at_k", "recall_at_k", "prior_precision_at_k", "prior_recall_at_k",
                    "micro_f1", "macro_f1", "n_train", "n_test", "genres")


@pytest.fixture(scope="module")
def result(tiny_features):
    dataset, features = tiny_features
    return run_experiment(dataset, features, CONFIG)


@pytest.fixture(scope="module")
def saved(result, tmp_path_factory) -> Path:
    return save_run(result, tmp_path_factory.mktemp("runs") / "run")


@pytest.fixture
def copy(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "run"))


def test_round_trip_config_vocabulary_split_history(saved, result, tiny_features):
    dataset, features = tiny_features
    run = load_run(saved)
    assert run.config == CONFIG
    assert run.vocabulary == result.vocabulary and len(run.vocabulary) == 8
    train, validation, test = (run.split[name] for name in ("train", "validation", "test"))
    assert not set(train) & set(test) and not set(validation) & (set(train) | set(test))
    assert sorted(train + validation + test) == sorted(features.ids)
    assert len(test) == 8 and len(train) == 32
    assert [entry.epoch for entry in run.history] == [1, 2]
    assert run.key == run_key(features, CONFIG, labels_info(dataset, features.ids))
    assert run.features_info["weights_identity"] == features.weights.identity
    assert run.weights.identity == features.weights.identity and run.weights.is_random
    assert run.dataset_info == DatasetInfo.of(dataset) and run.info["dataset"]["n_posters"] == 40


def test_metrics_json_has_the_required_keys(saved, result):
    metrics = json.loads((saved / "metrics.json").read_text())
    assert set(REQUIRED_METRICS) <= set(metrics)
    assert metrics["k"] == 2 and metrics["n_test"] == 8 and metrics["n_train"] == 32
    assert metrics["genres"] == list(result.vocabulary.genres)
    assert not {"weights", "weights_identity", "random_weights"} & set(metrics)
    for name in REQUIRED_METRICS[1:7]:
        assert 0 <= metrics[name] <= 1
    assert metrics["precision_at_k"] == pytest.approx(result.evaluation.precision_at_k.value)


def test_run_folder_holds_no_pickle(saved):
    names = [path.name for path in saved.rglob("*")]
    assert not [name for name in names if name.endswith((".pkl", ".pickle"))]
    with zipfile.ZipFile(saved / "model.keras") as archive:
        assert not [name for name in archive.namelist() if name.endswith((".pkl", ".pickle"))]
    np.load(saved / "test_scores.npy", allow_pickle=False)
    assert load_run(saved).model() is not None


def test_loaded_model_reproduces_test_scores(saved, tiny_features):
    _, features = tiny_features
    run = load_run(saved)
    rows = [features.ids.index(id_) for id_ in run.split["test"]]
    X = features.view(run.config.feature_view)[rows]
    scores = np.asarray(run.model().predict(X, verbose=0))
    np.testing.assert_allclose(scores, run.test_scores(), rtol=1e-5, atol=1e-6)


def test_check_features_accepts_own_and_refuses_other_weights(saved, tiny_features, tmp_path):
    _, features = tiny_features
    run = load_run(saved)
    run.check_features(features)
    (tmp_path / "w.h5").write_bytes(b"other weights")
    other = dataclasses.replace(features, weights=resolve_weights(str(tmp_path / "w.h5")))
    with pytest.raises(RunError, match="trained on features from RANDOM weights"):
        run.check_features(other)


def test_check_features_refuses_another_dataset(saved, tiny_features):
    _, features = tiny_features
    other = dataclasses.replace(features, ids=[f"other-{id_}" for id_ in features.ids])
    with pytest.raises(RunError, match="another dataset: 8 of its test posters"):
        load_run(saved).check_features(other)


def test_missing_folder_raises(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        load_run(tmp_path / "nothing")


@pytest.mark.parametrize("name", RUN_FILES)
def test_incomplete_run_folder_raises(copy, name):
    (copy / name).unlink()
    with pytest.raises(RunError, match=f"incomplete: missing {name}"):
        load_run(copy)


def test_vocabulary_metrics_disagreement_raises(copy):
    genres = json.loads((copy / "vocabulary.json").read_text())["genres"]
    (copy / "vocabulary.json").write_text(json.dumps({"genres": genres[::-1]}))
    with pytest.raises(RunError, match="disagree on the genre order"):
        load_run(copy)


@pytest.mark.parametrize("name, content", [
    ("run.json", '{"config": '),
    ("run.json", '{"version": 1}'),
    ("vocabulary.json", '{"names": []}'),
    ("vocabulary.json", '{"genres": ["Drama", "Drama"]}'),
])
def test_damaged_metadata_raises_run_error(copy, name, content):
    (copy / name).write_text(content)
    with pytest.raises(RunError):
        load_run(copy)


def test_bad_test_scores_raise_run_error(copy):
    np.save(copy / "test_scores.npy", np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(RunError, match="test_scores"):
        load_run(copy).test_scores()


def test_find_run_and_list_runs(result, tiny_features, tmp_path, monkeypatch):
    dataset, features = tiny_features
    labels = labels_info(dataset, features.ids)
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(tmp_path / "cache"))
    folder = save_run(result)
    assert folder == runs_root() / run_key(features, CONFIG, labels)
    found = find_run(features, CONFIG, labels)
    assert found is not None and found.folder == folder
    assert find_run(features, dataclasses.replace(CONFIG, epochs=3), labels) is None
    (runs_root() / "junk").mkdir()
    assert [run.folder for run in list_runs()] == [folder]


def test_save_run_replaces_its_own_files_and_keeps_the_users(result, copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "files": [*manifest["files"], "stale.txt"]}))
    (copy / "stale.txt").write_text("from an older run")
    (copy / "notes.md").write_text("the user's")
    assert save_run(result, copy) == copy
    assert not (copy / "stale.txt").exists()
    assert (copy / "notes.md").read_text() == "the user's"
    load_run(copy)
    assert json.loads((copy / "manifest.json").read_text())["files"] == sorted([*RUN_WRITTEN, "manifest.json"])
    assert not [p.name for p in [*copy.parent.iterdir(), *copy.iterdir()] if p.name.endswith(".tmp")]


def test_save_run_refuses_to_overwrite_a_folder_that_is_not_a_run(result, tmp_path):
    precious = tmp_path / "documents"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    with pytest.raises(RunError):
        save_run(result, precious)
    assert (precious / "thesis.txt").read_text() == "years of work"


def test_delete_run_deletes_a_run_and_refuses_other_folders(copy, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("keep")
    with pytest.raises(RunError, match="not a run folder"):
        delete_run(other)
    assert (other / "a.txt").exists()
    delete_run(copy)
    assert not copy.exists()


def test_delete_run_keeps_the_users_files_in_a_run_folder(copy):
    (copy / "my_analysis.md").write_text("mine")
    delete_run(copy)
    assert sorted(path.name for path in copy.iterdir()) == ["my_analysis.md"]
    assert (copy / "my_analysis.md").read_text() == "mine"


def test_run_key_ignores_fields_left_at_their_defaults(tiny_features):
    """Adding a TrainConfig field with a default must not orphan the runs saved before it existed."""
    from core.model.experiment import run_key
    from core.model.config import TrainConfig

    dataset, features = tiny_features
    labels = labels_info(dataset, features.ids)
    assert run_key(features, TrainConfig(), labels) == run_key(features, TrainConfig(ensemble=1), labels)
    assert run_key(features, TrainConfig(), labels) != run_key(features, TrainConfig(ensemble=2), labels)


def test_runs_for_dataset_label_and_hidden_activations(result, tiny_features, tmp_path):
    from core.model.runs import runs_for_dataset

    dataset, features = tiny_features
    folder = save_run(result, tmp_path / "runs" / "r1", dataset_info={"root": str(dataset.root.resolve())})
    assert [run.folder for run in runs_for_dataset(dataset.root, tmp_path / "runs")] == [folder]
    assert runs_for_dataset(tmp_path, tmp_path / "runs") == []
    run = load_run(folder)
    assert run.config.feature_view in run.label() and "RANDOM" in run.label()
    X = features.view(run.config.feature_view)
    assert run.hidden_activations(X).shape == (len(X), run.config.hidden[-1])


def test_evaluation_reads_back_typed_intervals(saved, result):
    evaluation = load_run(saved).evaluation
    expected = result.evaluation
    for name in ("precision_at_k", "recall_at_k", "prior_precision_at_k", "prior_recall_at_k"):
        assert getattr(evaluation, name) == pytest.approx(getattr(expected, name))
    assert (evaluation.k, evaluation.n_test, evaluation.threshold) == (2, 8, 0.5)
    assert evaluation.mean_average_precision == pytest.approx(expected.mean_average_precision)
    assert evaluation.overlaps_prior() == (expected.precision_at_k.low <= expected.prior_precision_at_k.high)


def test_run_saved_before_reads_its_weights_from_metrics_json(copy):
    """Runs written before the weights were stored once kept them in metrics.json too."""
    info = json.loads((copy / "run.json").read_text())
    for name in ("weights_identity", "weights_label", "random_weights"):
        info["features"].pop(name)
    info["features"]["weights"] = "/models/vgg16.h5"
    (copy / "run.json").write_text(json.dumps(info))
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics.update(weights="vgg16.h5 (sha256 abc)", weights_identity="file:sha256:abc", random_weights=False)
    (copy / "metrics.json").write_text(json.dumps(metrics))
    weights = load_run(copy).weights
    assert (weights.kind, weights.identity, weights.label, str(weights.path)) == (
        "file", "file:sha256:abc", "vgg16.h5 (sha256 abc)", "/models/vgg16.h5")
    assert "RANDOM" not in load_run(copy).label()


def test_cache_token_changes_when_the_run_folder_is_replaced(result, copy):
    before = load_run(copy).cache_token
    assert load_run(copy).cache_token == before and hash(before) is not None
    save_run(result, copy)
    assert load_run(copy).cache_token != before


def test_runs_table_has_a_column_per_training_option(saved):
    run = load_run(saved)
    table = runs_table([run])
    for option in TRAIN_OPTIONS:
        assert option.column in table.columns, option.name
    assert set(METRIC_COLUMNS) <= set(table.columns)
    row = table.iloc[0]
    assert (row["view"], row["hidden"], row["learning rate"], row["batch"], row["k"]) == ("avg", "16", 0.01, 8, 2)
    assert row["epochs"] == "2/2" and row["precision@k"] == pytest.approx(run.evaluation.precision_at_k.value)
    assert row["precision@k − prior"] == pytest.approx(row["precision@k"] - row["prior"])
    assert "RANDOM" in row["weights"]
    summary = run.summary()
    assert "view avg" in summary and "hidden 16" in summary and "optimizer adam" in summary
    assert "32 train / 0 validation / 8 test posters" in summary and "2/2 epochs" in summary


def test_find_run_refuses_a_run_whose_recorded_labels_differ(result, tiny_features, tmp_path, monkeypatch):
    dataset, features = tiny_features
    labels = labels_info(dataset, features.ids)
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(tmp_path / "cache"))
    folder = save_run(result)
    info = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**info, "labels": {**info["labels"], "key": "0" * 16}}))
    assert folder == runs_root() / run_key(features, CONFIG, labels)
    assert find_run(features, CONFIG, labels) is None
    assert list(runs_table(list_runs(), labels)["labels"]) == ["other"]


def test_labels_info_round_trips_and_tolerates_old_or_damaged_records(result):
    from core.model.experiment import LabelsInfo

    assert LabelsInfo.from_dict(result.labels.to_dict()) == result.labels
    assert result.labels.describe(shown=2) == "40 posters, 8 genres (Action, Animation, …)"
    for record in (None, [], {"n_posters": 40}, {"key": 5}):
        assert LabelsInfo.from_dict(record) is None
    assert LabelsInfo.from_dict({"key": "k", "genres": "Drama"}) == LabelsInfo("k", 0, ())
    assert "labels" not in runs_table([]).columns


def test_comparable_columns_offer_only_the_options_that_apply():
    from core.model.config import MLP_ONLY, OPTIONS_BY_NAME, PRESETS
    from core.model.runs import comparable_columns, first_comparable

    kernel = comparable_columns([PRESETS["fast"]])
    assert {OPTIONS_BY_NAME[name].column for name in MLP_ONLY} & set(kernel) == set()
    assert "epochs run" not in kernel and kernel[first_comparable(kernel)] == "ridge"
    assert kernel[-2:] == ["features", "train seconds"]
    both = comparable_columns([PRESETS["fast"], PRESETS["tutorial"]])
    assert {"learning rate", "ridge", "kernel γ", "epochs run"} <= set(both)
    assert both[first_comparable(both)] == "learning rate"
    assert "ridge" not in comparable_columns([PRESETS["tutorial"]])
