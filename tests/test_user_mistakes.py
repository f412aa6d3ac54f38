"""Issue 20, class 6: every user mistake is one line, never a traceback.

Each case gives its exact message, exit code 1 (130 for Ctrl-C), no traceback, and leaves the user's
folders byte for byte as they were:

- training options: ``--lr 1e30`` and ``--kernel-gamma 1e300`` are above their upper bounds (1 and 100);
  ``--image-size 100000`` is above 1024, with the reason; options the chosen head ignores are still
  checked (``--preset fast --epochs -5 --dropout 3``); ``--hidden 1,,2`` is refused, not read as 1,2;
  all before any work.
- a training that diverges anyway is a ``TrainingError`` whose hint fits the head (the learning rate
  for networks; γ and ridge for the kernel head).
- posters: a symlink loop or a FIFO named like a poster is skipped with its own reason and the rest of
  the dataset is used (the FIFO is never opened); a folder of only non-images names each file's reason.
- predict: a FIFO is "not a regular file", a symlink loop a "symlink loop"; a model.keras that is not
  a zip, a vocabulary.json with more genres than the model scores, and another run's model.keras
  (other feature width) are refused.
- sources: a TMDB genre list id ``"abc"`` is refused naming it; a movie with genre id ``"abc"`` is
  skipped with that reason; a tutorial Genredict.pckl id ``"²"`` is refused naming it.
- Ctrl-C during train exits 130 and says no run was saved while the extracted features stay cached.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from core.errors import TrainingError
from tests.fake_tmdb import GENRES, FakeTmdb, make_movies, use_fake_tmdb
from tests.test_hostile_inputs import JPEG, assert_refused, make_folder, run_cli

POSTER = "demo-0001.jpg"


def folder_hashes(root: Path) -> dict[str, str]:
    """``test_hostile_inputs.folder_hashes`` that also lists pipes without opening them (that would block)."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        mode = path.lstat().st_mode
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(mode):
            out[rel] = "link:" + os.readlink(path)
        elif stat.S_ISDIR(mode):
            out[rel] = "dir"
        elif stat.S_ISREG(mode):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = f"special:{stat.S_IFMT(mode)}"
    return out


@pytest.fixture(scope="module")
def kernel_run(tiny_features, tmp_path_factory) -> Path:
    """A kernel-head run on the avg view (fits in a second)."""
    from core.model.config import TrainConfig
    from core.model.experiment import run_experiment
    from core.model.runs import save_run

    dataset, features = tiny_features
    config = TrainConfig(feature_view="avg", head="kernel", k=3)
    return save_run(run_experiment(dataset, features, config), tmp_path_factory.mktemp("mistakes") / "run")


@pytest.fixture
def run_copy(kernel_run, tmp_path) -> Path:
    return Path(shutil.copytree(kernel_run, tmp_path / "run"))


# Training options: refused before any work -------------------------------------------------------

OPTION_CASES = {
    "learning rate 1e30": (["--hidden", "8", "--lr", "1e30"],
                           "invalid training configuration: learning rate must be in (0, 1], got 1e+30"),
    "kernel gamma 1e300": (["--preset", "fast", "--kernel-gamma", "1e300"],
                           "invalid training configuration: kernel γ must be in (0, 100], got 1e+300"),
    "image size 100000": (["--preset", "fast", "--image-size", "100000"],
                          "invalid feature options: image size must be a whole number between 32 and 1024 "
                          "(VGG16 learnt at 224; larger inputs do not fit in memory), got 100000"),
    "options the kernel head ignores": (["--preset", "fast", "--epochs", "-5", "--dropout", "3"],
                                        "invalid training configuration: dropout must be in [0, 1), got 3.0; "
                                        "epochs must be ≥ 1, got -5"),
    "empty hidden size": (["--hidden", "1,,2"], "--hidden '1,,2' is not a list of positive integers"),
    "trailing comma in hidden": (["--hidden", "8,"], "--hidden '8,' is not a list of positive integers"),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_train_option_mistakes_are_refused_before_any_work(case, tiny_dataset, tmp_path, capsys):
    flags, message = OPTION_CASES[case]
    before = folder_hashes(tiny_dataset)
    code, out, err = run_cli(capsys, ["train", "--dataset", tiny_dataset, "--out", tmp_path / "new", *flags])
    assert_refused(code, err, message)
    assert err.splitlines()[0] == f"error: {message}"
    assert out == "" and not (tmp_path / "new").exists()
    assert folder_hashes(tiny_dataset) == before


def test_sweep_refuses_options_the_head_ignores_like_train(tiny_dataset, tmp_path, capsys):
    code, out, err = run_cli(capsys, ["sweep", "--dataset", tiny_dataset, "--out", tmp_path / "sweep",
                                      "--preset", "fast", "--epochs", "-5", "--set", "ridge=1,3"])
    assert_refused(code, err, "invalid training configuration: epochs must be ≥ 1, got -5")


def test_hidden_sizes_parse_only_complete_lists():
    from core.model.config import OPTIONS_BY_NAME

    hidden = OPTIONS_BY_NAME["hidden"]
    assert hidden.parse("1024, 256") == (1024, 256) and hidden.parse("") == ()
    with pytest.raises(TrainingError, match=r"hidden sizes '1,,2' is not a list of positive integers"):
        hidden.parse("1,,2")


@pytest.mark.parametrize("head, message, hint", [
    ("mlp", r"training diverged: its weights are NaN or infinite \(learning rate 1, sgd\)",
     "lower the learning rate (the presets use 1e-4 to 2e-3) or standardize the features"),
    ("kernel", r"the kernel head could not be fitted: its linear solve failed \(.*\) \(kernel γ 1, ridge 1e-300\)",
     "use a kernel γ between 0.125 and 4 and a larger ridge (the fast preset: γ 1, ridge 1)"),
])
def test_a_diverged_fit_is_a_training_error_whose_hint_fits_the_head(head, message, hint):
    from core.model.classifier import GenreClassifier
    from core.model.config import TrainConfig

    rng = np.random.default_rng(0)
    Y = (rng.random((40, 3)) > 0.5).astype(np.float32)
    if head == "mlp":   # features of 1e30 at a step of 1: the first update overflows
        X = (rng.random((40, 16)) * 1e30).astype(np.float32)
        config = TrainConfig(hidden=(8,), learning_rate=1.0, optimizer="sgd", epochs=2, batch_size=8)
    else:               # identical posters and no ridge: the kernel matrix is singular
        X = np.ones((40, 16), np.float32)
        config = TrainConfig(head="kernel", ridge=1e-300)
    with pytest.raises(TrainingError, match=message) as caught:
        GenreClassifier(config).fit(X, Y)
    assert caught.value.hint == hint


# Posters that are not plain files ------------------------------------------------------------------

def _odd_entry(entry: Path, kind: str) -> None:
    if kind == "symlink loop":
        entry.symlink_to(entry.name)
    else:
        os.mkfifo(entry)


ENTRY_REASONS = {
    "symlink loop": "symlink loop (following its links never reaches a file)",
    "fifo": "not a regular file (a named pipe, socket or device)",
}


@pytest.mark.parametrize("kind", list(ENTRY_REASONS))
@pytest.mark.parametrize("check_images", [True, False])
def test_a_poster_entry_that_is_no_file_is_skipped_and_the_rest_used(kind, check_images, tmp_path):
    from core.data.datasets import load_dataset

    root = make_folder(tmp_path / "ds", "id,title,genres\nok,OK,Drama\nv,Variant,Comedy\n", {"ok.jpg": JPEG})
    _odd_entry(root / "posters" / "v.jpg", kind)
    before = folder_hashes(root)
    dataset, report = load_dataset(root, check_images=check_images)
    assert dataset.ids == ["ok"]
    assert report.lines() == [f"v: unreadable image: {ENTRY_REASONS[kind]}"]
    assert folder_hashes(root) == before


def test_extract_skips_a_symlink_loop_with_its_reason(tmp_path, capsys):
    root = make_folder(tmp_path / "ds", "id,title,genres\nok,OK,Drama\nv,Variant,Comedy\n", {"ok.jpg": JPEG})
    _odd_entry(root / "posters" / "v.jpg", "symlink loop")
    code, out, err = run_cli(capsys, ["extract", "--dataset", root, "--weights", "none"])
    assert code == 0 and "Traceback" not in err
    assert f"skipped v: unreadable image: {ENTRY_REASONS['symlink loop']}" in err.splitlines()
    assert "features: 1 posters" in out


def test_a_folder_of_only_non_images_names_each_files_reason(tmp_path, capsys):
    root = make_folder(tmp_path / "ds", "id,title,genres\na,A,Drama\nb,B,Comedy\nc,C,Drama\n",
                       {"a.jpg": b"not an image", "b.jpg": b"", "c.png": b"hello"})
    before = folder_hashes(root)
    code, out, err = run_cli(capsys, ["extract", "--dataset", root, "--weights", "none"])
    assert_refused(code, err, f"no usable posters in {root}: 3 label rows, 3 images; skipped "
                              "a, c: unreadable image: not an image (unrecognised format); "
                              "b: unreadable image: empty file (0 bytes)")
    assert folder_hashes(root) == before


# predict -------------------------------------------------------------------------------------------

def _edit_json(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _add_genre(run: Path) -> None:
    """vocabulary.json (and metrics.json, so the two still agree) given one more genre than the model."""
    for name in ("vocabulary.json", "metrics.json"):
        _edit_json(run / name, lambda data: {**data, "genres": [*data["genres"], "Zombie"]})


def _other_runs_model(run: Path, tiny_features) -> None:
    from core.model.classifier import GenreClassifier
    from core.model.config import TrainConfig

    dataset, features = tiny_features
    X = np.asarray(features.view("avg45"))
    Y = (np.random.default_rng(0).random((len(X), 8)) > 0.5).astype(np.float32)
    GenreClassifier(TrainConfig(feature_view="avg45", head="kernel")).fit(X, Y).model_.save(run / "model.keras")


PREDICT_CASES = {
    "model.keras of random bytes": (
        lambda run, feats: (run / "model.keras").write_bytes(os.urandom(300)),
        "cannot load the model of run {run}: model.keras is not a Keras archive (not a zip file)"),
    "vocabulary edited to 9 genres": (
        lambda run, feats: _add_genre(run),
        "run {run}: its model scores 8 genres but vocabulary.json names 9, so genres and scores cannot be paired"),
    "another run's model.keras": (
        _other_runs_model, "run {run}: its model reads 1024 features but the run's avg view has 512 today: VGG16"),
}


@pytest.mark.parametrize("case", list(PREDICT_CASES))
def test_predict_refuses_a_model_that_does_not_fit_its_run(case, run_copy, tiny_features, tiny_dataset, capsys):
    damage, message = PREDICT_CASES[case]
    damage(run_copy, tiny_features)
    code, out, err = run_cli(capsys, ["predict", "--run", run_copy, tiny_dataset / "posters" / POSTER])
    assert_refused(code, err, message.format(run=run_copy))
    assert out == ""


def test_predict_names_a_fifo_and_a_symlink_loop_for_what_they_are(kernel_run, tiny_dataset, tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    code, out, err = run_cli(capsys, ["predict", "--run", kernel_run, tmp_path / "pipe.jpg", tmp_path / "loop.jpg",
                                      tiny_dataset / "posters" / POSTER])
    assert code == 0, err
    assert err.splitlines()[:2] == [f"skipped pipe.jpg: pipe.jpg: {ENTRY_REASONS['fifo']}",
                                    f"skipped loop.jpg: loop.jpg: {ENTRY_REASONS['symlink loop']}"]
    assert out.startswith(f"{POSTER}: ")


# Sources ------------------------------------------------------------------------------------------

@pytest.fixture
def tmdb_env(tmp_path, monkeypatch):
    """Runs a fake TMDB server with the movies and genres the test gives it."""
    servers = []

    def serve(movies, genres) -> None:
        server = FakeTmdb(movies=movies, genres=genres).start()
        servers.append(server)
        use_fake_tmdb(monkeypatch, server, tmp_path)
    yield serve
    for server in servers:
        server.stop()


def test_tmdb_genre_list_with_an_id_that_is_no_number_is_refused(tmdb_env, tmp_path, capsys):
    tmdb_env(make_movies(5), {**GENRES, "abc": "Weird"})
    code, out, err = run_cli(capsys, ["download-tmdb", "--out", tmp_path / "tmdb", "--max-movies", "5"])
    assert_refused(code, err, "TMDB's genre list gives genre 'Weird' the id 'abc', which is not a whole number")


def test_tmdb_movie_with_a_genre_id_that_is_no_number_is_skipped_with_it(tmdb_env, tmp_path, capsys):
    movies = make_movies(5)
    movies[1]["genre_ids"] = ["abc", 28]
    tmdb_env(movies, dict(GENRES))
    code, out, err = run_cli(capsys, ["download-tmdb", "--out", tmp_path / "tmdb", "--max-movies", "5",
                                      "--rate", "1000"])
    assert code == 0, err
    assert "101: 'Movie 1': genre id 'abc' is not a whole number" in out
    assert "Unknown genre" not in (tmp_path / "tmdb" / "labels.csv").read_text()


def test_tutorial_genre_dict_with_an_id_that_is_no_number_is_refused(tmp_path, capsys):
    (tmp_path / "posters").mkdir()
    (tmp_path / "movies.pckl").write_bytes(pickle.dumps([{"id": 1, "title": "A", "genre_ids": [18]}]))
    (tmp_path / "genres.pckl").write_bytes(pickle.dumps({"²": "Drama", 28: "Action"}))
    before = folder_hashes(tmp_path)
    code, out, err = run_cli(capsys, ["import-tutorial", "--movies", tmp_path / "movies.pckl", "--genres",
                                      tmp_path / "genres.pckl", "--posters", tmp_path / "posters",
                                      "--out", tmp_path / "out"])
    assert_refused(code, err, f"{tmp_path / 'genres.pckl'}: genre 'Drama' has the id '²', which is not a whole number")
    assert folder_hashes(tmp_path) == before


def test_tutorial_movie_with_a_genre_id_that_is_no_number_is_skipped_with_it(tmp_path):
    from core.sources.tutorial import _usable

    usable, skipped = _usable([{"id": 1, "title": "A", "genre_ids": ["²"]}, {"id": 2, "title": "B", "genre_ids": [18]}])
    assert [movie["id"] for movie in usable] == [2]
    assert [(item.id, item.reason) for item in skipped] == [("1", "'A': genre id '²' is not a whole number")]


# Ctrl-C --------------------------------------------------------------------------------------------

def test_ctrl_c_during_train_says_no_run_was_saved_and_extraction_is_kept(tiny_dataset, tmp_path, capsys,
                                                                         monkeypatch):
    import core.model.experiment

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(core.model.experiment, "run_experiment", interrupted)
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, ["train", "--dataset", tiny_dataset, "--out", out, "--preset", "fast"])
    assert code == 130 and "Traceback" not in err
    assert err.splitlines()[-1] == (f"interrupted: no new run was saved to {out}; the features extracted so far "
                                    "are cached, so the same command starts again from them")
    assert not out.exists()
    code, stdout, err = run_cli(capsys, ["extract", "--dataset", tiny_dataset])
    assert code == 0 and "computed 0, cached 40" in stdout
