"""Behaviours locked in for ``python -m core`` (``core.cli.main.main``).

- ``demo`` writes a loadable dataset and reports progress.
- ``extract`` prints a progress line and "computed N"; a second run computes nothing.
- ``train --preset tutorial --epochs 2 --feature-view avg`` writes metrics.json with the required keys,
  prints the metrics and the RANDOM weights warning.
- ``train`` prints skipped posters by id with the reason (non-image file, truncated JPEG).
- Flags override the preset and end up in run.json's config.
- ``evaluate --k 2`` prints top-2 precision; ``predict`` prints top-k genres per image and "skipped"
  with the reason for a non-image.
- Errors exit 1 with exactly one ``error:`` line (and at most a ``hint:`` line) and no traceback:
  missing dataset folder, CSV without genres, unknown weights file, labels without images, bad
  ``--hidden``, invalid training flags, k larger than the genres, missing run, bad demo size.
- ``--help`` of the program and of each subcommand exits 0.
- ``train`` has a flag for every ``TrainConfig`` field (generated from ``TRAIN_OPTIONS``: ``--ensemble``,
  ``--power-normalize/--no-power-normalize``, ``--standardize/--no-standardize`` included, ``--lr`` kept);
  non-finite numbers (``--lr inf``/``nan``) and networks too big for memory are clean errors with a hint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
from pathlib import Path

import pytest

from core.cli.main import build_parser, main, train_config_from_args
from core.data.datasets import load_dataset
from core.model.config import PRESETS, TrainConfig

REQUIRED_METRICS = ("k", "precision_at_k", "recall_at_k", "prior_precision_at_k", "prior_recall_at_k",
                    "micro_f1", "macro_f1", "n_train", "n_test", "genres")
FAST_TRAIN = ["--hidden", "8", "--epochs", "1", "--batch-size", "8"]


def _run(argv: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tutorial_run(tiny_features, tiny_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "tutorial-run"
    code, out, err = _run(["train", "--dataset", tiny_dataset, "--out", folder, "--preset", "tutorial",
                           "--epochs", "2", "--feature-view", "avg"])
    return folder, code, out, err


def test_demo_writes_a_dataset(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--n", "6", "--seed", "1"]) == 0
    out, err = capsys.readouterr()
    dataset, report = load_dataset(tmp_path / "demo")
    assert len(dataset) == 6 and dataset.synthetic and not report.skipped
    assert "SYNTHETIC demo dataset of 6 posters" in out
    assert "generating [6/6]" in err


def test_extract_prints_progress_and_computed_count(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(tmp_path / "cache"))
    main(["demo", "--out", str(tmp_path / "d"), "--n", "5", "--seed", "2"])
    capsys.readouterr()
    assert main(["extract", "--dataset", str(tmp_path / "d"), "--batch-size-extract", "4"]) == 0
    out, err = capsys.readouterr()
    assert "extracting [5/5]" in err
    assert "computed 5, cached 0, failed 0" in out and "5 posters x 25088" in out
    assert "RANDOM weights" in err
    assert main(["extract", "--dataset", str(tmp_path / "d")]) == 0
    assert "computed 0, cached 5" in capsys.readouterr().out


def test_train_tutorial_preset_writes_metrics_and_warns_about_random_weights(tutorial_run):
    folder, code, out, err = tutorial_run
    assert code == 0, err
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(REQUIRED_METRICS) <= set(metrics) and metrics["k"] == 3
    assert "WARNING: RANDOM weights" in err
    assert "top-3 precision" in out and "prior" in out and f"run saved to {folder}" in out
    config = json.loads((folder / "run.json").read_text())["config"]
    assert (config["hidden"], config["feature_view"], config["epochs"], config["optimizer"]) == (
        [1024, 256], "avg", 2, "rmsprop")


def test_train_prints_skipped_posters_by_name_with_reason(tiny_features, tiny_dataset, tmp_path):
    root = Path(shutil.copytree(tiny_dataset, tmp_path / "broken"))
    posters = root / "posters"
    (posters / "junk.jpg").write_bytes(b"<html>Too Many Requests</html>")
    (posters / "cut.jpg").write_bytes((posters / "demo-0001.jpg").read_bytes()[:700])
    with open(root / "labels.csv", "a", encoding="utf-8") as handle:
        handle.write("junk,Junk,Drama\ncut,Cut,Comedy\n")
    code, out, err = _run(["train", "--dataset", root, "--out", tmp_path / "run", *FAST_TRAIN])
    assert code == 0, err
    assert "skipped junk: unreadable image: not an image" in err
    assert "skipped cut: cut.jpg: truncated or corrupt image" in err
    assert "(1 skipped)" in out and "failed 1" in out


def test_flags_override_the_preset(tiny_features, tiny_dataset, tmp_path):
    code, _, err = _run(["train", "--dataset", tiny_dataset, "--out", tmp_path / "run",
                         "--hidden", "32,16", "--dropout", "0.2", "--input-dropout", "0.3", "--lr", "0.001",
                         "--optimizer", "adam", "--epochs", "1", "--batch-size", "8", "--test-size", "0.25", "--k", "2", "--seed", "5"])
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    names = ("hidden", "dropout", "input_dropout", "learning_rate", "optimizer", "epochs", "batch_size", "test_size",
             "k", "seed")
    assert {name: config[name] for name in names} == {
        "hidden": [32, 16], "dropout": 0.2, "input_dropout": 0.3, "learning_rate": 0.001, "optimizer": "adam",
        "epochs": 1, "batch_size": 8, "test_size": 0.25, "k": 2, "seed": 5}
    assert config["feature_view"] == "avg45" and config["standardize"] is True
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["k"] == 2 and metrics["n_test"] == 10


def test_fast_preset_trains_the_kernel_head_with_its_flags(tiny_features, tiny_dataset, tmp_path):
    code, out, err = _run(["train", "--dataset", tiny_dataset, "--out", tmp_path / "run", "--preset", "fast",
                           "--ridge", "3", "--kernel-gamma", "0.5", "--test-size", "0.25"])
    assert code == 0, err
    assert "closed-form fit (no epochs)" in out
    config = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert (config["head"], config["ridge"], config["kernel_gamma"], config["feature_view"]) == ("kernel", 3.0, 0.5,
                                                                                               "avg45")


def test_evaluate_prints_precision_at_k(tutorial_run):
    folder = tutorial_run[0]
    code, out, err = _run(["evaluate", "--run", folder, "--k", "2", "--per-genre"])
    assert code == 0, err
    assert "top-2 precision" in out and "top-2 recall" in out
    genres = json.loads((folder / "vocabulary.json").read_text())["genres"]
    assert all(genre in out for genre in genres)


def test_predict_prints_top_k_and_skips_non_images(tutorial_run, tiny_dataset, tmp_path):
    folder = tutorial_run[0]
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a poster")
    image = tiny_dataset / "posters" / "demo-0001.jpg"
    code, out, err = _run(["predict", "--run", folder, image, bad, "--k", "2"])
    assert code == 0, err
    (line,) = out.strip().splitlines()
    name, ranked = line.split(": ")
    genres = json.loads((folder / "vocabulary.json").read_text())["genres"]
    pairs = [part.rsplit(" ", 1) for part in ranked.split(", ")]
    assert name == "demo-0001.jpg" and len(pairs) == 2 and all(g in genres for g, _ in pairs)
    assert float(pairs[0][1]) >= float(pairs[1][1])
    assert "skipped notes.jpg: notes.jpg: not an image" in err


def _assert_one_clean_error(code: int, err: str, expected: str) -> None:
    lines = err.strip().splitlines()
    assert code == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("error: ") and expected in lines[0], err
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), err


def _labels_only(tmp_path: Path) -> Path:
    root = tmp_path / "labels-only"
    (root / "posters").mkdir(parents=True)
    (root / "labels.csv").write_text("id,title,genres\na,A,Drama\n")
    return root


def _no_genres_column(tmp_path: Path) -> Path:
    root = tmp_path / "no-genres"
    (root / "posters").mkdir(parents=True)
    (root / "labels.csv").write_text("id,title,tags\na,A,Drama\n")
    return root


@pytest.mark.parametrize("case", ["missing folder", "bad csv", "unknown weights", "no images",
                                  "bad hidden", "zero hidden", "bad dropout", "demo n 0", "lr inf", "lr nan",
                                  "bad epochs", "huge hidden"])
def test_errors_exit_1_with_one_error_line(case, tiny_dataset, tmp_path):
    argv, expected = {
        "missing folder": (["extract", "--dataset", tmp_path / "nope"], "does not exist"),
        "bad csv": (["extract", "--dataset", _no_genres_column(tmp_path)], "genres"),
        "unknown weights": (["extract", "--dataset", tiny_dataset, "--weights", tmp_path / "vgg.h5"],
                            "vgg.h5 does not exist"),
        "no images": (["extract", "--dataset", _labels_only(tmp_path)], "no usable posters"),
        "bad hidden": (["train", "--dataset", tiny_dataset, "--out", tmp_path / "r", "--hidden", "12,abc"],
                       "--hidden '12,abc'"),
        "zero hidden": (["train", "--dataset", tiny_dataset, "--out", tmp_path / "r", "--hidden", "0,4"],
                        "hidden sizes must be positive"),
        "bad dropout": (["train", "--dataset", tiny_dataset, "--out", tmp_path / "r", "--dropout", "1.5"],
                        "dropout"),
        "demo n 0": (["demo", "--out", tmp_path / "d", "--n", "0"], "at least 1"),
        "lr inf": (["train", "--dataset", tiny_dataset, "--out", tmp_path / "r", "--lr", "inf"],
                   "learning rate must be a finite number, got inf"),
        "lr nan": (["train", "--dataset", tiny_dataset, "--out", tmp_path / "r", "--lr", "nan"],
                   "learning rate must be a finite number, got nan"),
        "bad epochs": (["train", "--dataset", tiny_dataset, "--out", tmp_path / "r", "--epochs", "ten"],
                       "--epochs 'ten' is not a whole number"),
        "huge hidden": (["train", "--dataset", tiny_dataset, "--out", tmp_path / "r", "--preset", "tutorial",
                         "--hidden", "8000,8000"], "network parameters exceed the limit"),
    }[case]
    code, _, err = _run(argv)
    _assert_one_clean_error(code, err, expected)


def test_missing_run_is_a_clean_error(tmp_path, tiny_dataset):
    code, _, err = _run(["predict", "--run", tmp_path / "none", tiny_dataset / "posters" / "demo-0001.jpg"])
    _assert_one_clean_error(code, err, "does not exist")


def test_train_with_k_zero_is_a_clean_error(tiny_features, tiny_dataset, tmp_path):
    code, _, err = _run(["train", "--dataset", tiny_dataset, "--out", tmp_path / "r", "--k", "0", *FAST_TRAIN])
    _assert_one_clean_error(code, err, "k")
    assert not (tmp_path / "r").exists()


def test_evaluate_with_k_above_the_genre_count_is_a_clean_error(tutorial_run):
    code, _, err = _run(["evaluate", "--run", tutorial_run[0], "--k", "99"])
    _assert_one_clean_error(code, err, "99")


@pytest.mark.parametrize("command", [[], ["demo"], ["extract"], ["train"], ["evaluate"], ["predict"]])
def test_help_exits_0(command, capsys):
    with pytest.raises(SystemExit) as caught:
        main([*command, "--help"])
    assert caught.value.code == 0
    assert "usage: python -m core" in capsys.readouterr().out


def _train_args(*flags: str):
    return build_parser().parse_args(["train", "--dataset", "d", "--out", "o", *flags])


def test_train_has_a_flag_for_every_config_field():
    train = next(action for action in build_parser()._subparsers._group_actions[0].choices.values()
                 if action.prog.endswith(" train"))
    dests = {action.dest for action in train._actions}
    assert {field.name for field in dataclasses.fields(TrainConfig)} <= dests
    flags = {flag for action in train._actions for flag in action.option_strings}
    assert {"--lr", "--hidden", "--batch-size", "--ensemble", "--power-normalize", "--no-power-normalize",
            "--standardize", "--no-standardize", "--early-stopping", "--feature-view"} <= flags


def test_new_flags_reach_the_config():
    config = train_config_from_args(_train_args(
        "--preset", "tutorial", "--ensemble", "3", "--power-normalize", "--standardize", "--hidden", "64, 32",
        "--learning-rate", "0.002", "--validation-split", "0.2"))
    assert (config.ensemble, config.power_normalize, config.standardize, config.hidden) == (3, True, True, (64, 32))
    assert config.learning_rate == 0.002
    assert config.validation_split == 0.0, "an ensemble validates on its own folds"
    off = train_config_from_args(_train_args("--no-power-normalize", "--no-standardize"))
    assert off == dataclasses.replace(PRESETS["recommended"], power_normalize=False, standardize=False)
