"""The Predictions page (AppTest on the tiny dataset, random weights, one quick saved run).

Behaviours locked in:
- the page runs without exception and, with no run on the active dataset, says so and links to Train;
- a run trained on other labels than today's labels.csv is marked in the menu and warned about (which labels
  it was trained on), and without a choice the menu opens on a run trained on today's labels even when a run
  of other labels is newer; the dataset folder is not changed;
- a run trained on other features is refused with the RunError message, not a traceback;
- the grid shows every test poster of the run's split once, with its true genres;
- the hit/miss filter keeps exactly the posters that core.analysis.metrics.top_k_hits says it should;
- the genre filter keeps posters whose true or predicted genres contain the genre; the confidence range
  filters on the top-1 probability, and an empty selection says so;
- sorting by loss puts the poster with the highest binary cross-entropy (core's per-poster loss) first;
- the per-genre table has one row per genre of the run's vocabulary;
- the detail view charts the probability of every genre and follows the card's Details button;
- an uploaded poster is charted over the whole vocabulary with its nearest training posters (cosine on
  the run's feature view); a text file named .jpg gets the ImageError message, not a traceback.
"""
from __future__ import annotations

import dataclasses
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.model.experiment import labels_for, run_experiment
from core.analysis.metrics import binary_cross_entropy_per_poster, top_k_hits
from core.model.runs import load_run, runs_root, save_run
from core.model.config import TrainConfig

PAGE = "pages/predictions.py"


@pytest.fixture(scope="module")
def saved_run(tiny_features):
    dataset, features = tiny_features
    result = run_experiment(dataset, features, TrainConfig(feature_view="avg", hidden=(16,), epochs=2))
    folder = save_run(result)
    return load_run(folder)


@pytest.fixture(scope="module")
def truth(tiny_features, saved_run):
    """(test ids, multi-hot labels in the run's genre order, test scores) as core computes them."""
    dataset, _ = tiny_features
    ids = saved_run.split["test"]
    return ids, saved_run.vocabulary.encode(labels_for(dataset, ids)), saved_run.test_scores()


def open_page(dataset_root, run_folder=None) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=120)
    at.session_state["settings"] = {"dataset": str(dataset_root), "weights": "none", "precision": "auto"}
    if run_folder is not None:
        at.session_state["selected_run"] = str(run_folder)
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def card_ids(at: AppTest) -> list[str]:
    return [button.key.removeprefix("show_") for button in at.button if (button.key or "").startswith("show_")]


def test_grid_shows_every_test_poster_with_its_true_genres(tiny_dataset, tiny_features, saved_run):
    at = open_page(tiny_dataset, saved_run.folder)
    shown = card_ids(at)
    assert sorted(shown) == sorted(saved_run.split["test"])
    dataset, _ = tiny_features
    true_captions = [caption.value for caption in at.caption if caption.value.startswith("True: ")]
    expected = [", ".join(genres) for genres in labels_for(dataset, shown)]
    assert true_captions == [f"True: {genres}" for genres in expected]
    assert any("RANDOM" in warning.value for warning in at.warning)


def test_newest_run_is_chosen_without_a_selection(tiny_dataset, saved_run):
    at = open_page(tiny_dataset)
    assert at.selectbox(key="run_select").value is not None
    assert card_ids(at)


def test_no_run_on_the_dataset_says_so_and_stops(tmp_path):
    from core.data.demo import DemoConfig, make_demo_dataset

    root = make_demo_dataset(tmp_path / "fresh", DemoConfig(n_posters=6, seed=1))
    at = open_page(root)
    assert any("No training run" in info.value for info in at.info)
    assert not card_ids(at)


def test_run_trained_on_other_features_shows_the_run_error(tiny_dataset, saved_run):
    folder = runs_root() / "other-weights-run"
    shutil.copytree(saved_run.folder, folder)
    try:
        info = json.loads((folder / "run.json").read_text())
        info["features"]["weights_identity"] = "file:sha256:0000"
        info["features"]["weights_label"] = "another weights file"
        (folder / "run.json").write_text(json.dumps(info))
        at = open_page(tiny_dataset, folder)
        assert any("another weights file" in error.value for error in at.error)
        assert not card_ids(at)
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize("outcome", ["all hits", "at least one miss", "no hit"])
def test_hit_filter_keeps_the_posters_top_k_hits_selects(tiny_dataset, saved_run, truth, outcome):
    ids, Y, scores = truth
    k = saved_run.config.k
    hits = top_k_hits(Y, scores, k=k)
    best = np.minimum(Y.sum(axis=1), k)
    keep = {"all hits": hits == best, "at least one miss": hits < best, "no hit": hits == 0}[outcome]
    at = open_page(tiny_dataset, saved_run.folder)
    at.selectbox(key="filter_hits").select(outcome).run()
    assert not at.exception
    assert sorted(card_ids(at)) == sorted(np.asarray(ids)[keep].tolist())


def test_genre_filter_keeps_posters_with_the_genre_true_or_predicted(tiny_dataset, saved_run, truth):
    ids, Y, scores = truth
    genres = saved_run.vocabulary.genres
    top = np.argsort(-scores, axis=1, kind="stable")[:, :saved_run.config.k]
    column = int(np.argmax(Y.sum(axis=0)))
    expected = [id_ for i, id_ in enumerate(ids) if Y[i, column] or column in top[i]]
    at = open_page(tiny_dataset, saved_run.folder)
    at.selectbox(key="filter_genre").select(genres[column]).run()
    assert sorted(card_ids(at)) == sorted(expected)


def test_confidence_range_filters_on_the_top1_probability(tiny_dataset, saved_run, truth):
    ids, _, scores = truth
    confidence = scores.max(axis=1)
    high = float(np.round(np.median(confidence), 2))
    at = open_page(tiny_dataset, saved_run.folder)
    at.slider(key="filter_confidence").set_range(0.0, high).run()
    assert sorted(card_ids(at)) == sorted(np.asarray(ids)[confidence <= high].tolist())
    empty_from = float(confidence.max()) + 0.005
    at.slider(key="filter_confidence").set_range(empty_from, 1.0).run()
    assert not card_ids(at) and any("None of the" in info.value for info in at.info)


def test_sorting_by_loss_puts_the_most_surprising_poster_first(tiny_dataset, saved_run, truth):
    ids, Y, scores = truth
    loss = binary_cross_entropy_per_poster(Y, scores)
    at = open_page(tiny_dataset, saved_run.folder)
    at.selectbox(key="sort_by").select("most surprising (highest loss)").run()
    assert card_ids(at)[0] == ids[int(np.argmax(loss))]
    at.selectbox(key="sort_by").select("least surprising (lowest loss)").run()
    assert card_ids(at)[0] == ids[int(np.argmin(loss))]


def test_per_genre_table_has_one_row_per_genre(tiny_dataset, saved_run):
    at = open_page(tiny_dataset, saved_run.folder)
    tables = [frame.value for frame in at.dataframe if "average_precision" in frame.value.columns]
    assert len(tables) == 1
    assert sorted(tables[0]["genre"]) == sorted(saved_run.vocabulary.genres)


def test_detail_view_charts_every_genre_and_follows_the_details_button(tiny_dataset, saved_run, truth):
    ids, _, scores = truth
    at = open_page(tiny_dataset, saved_run.folder)
    target = card_ids(at)[-1]
    at.button(key=f"show_{target}").click().run()
    assert at.selectbox(key="detail_poster").value == target
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    row = ids.index(target)
    by_genre = dict(zip(chart["y"], chart["x"]))
    assert sorted(by_genre) == sorted(saved_run.vocabulary.genres)
    for column, genre in enumerate(saved_run.vocabulary.genres):
        assert by_genre[genre] == pytest.approx(float(scores[row, column]), abs=1e-6)


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_uploaded_poster_gets_every_genre_probability_and_its_nearest_training_posters(
        tiny_dataset, tiny_features, saved_run):
    from core.analysis.neighbours import nearest_to_vector
    from core.features.views import feature_view
    from core.model.predict import Predictor

    dataset, features = tiny_features
    expected = Predictor(saved_run).predict_image(png_bytes(), "poster.png")
    train_rows = [features.ids.index(id_) for id_ in saved_run.split["train"]]
    X_train = features.view("avg")[train_rows]
    order, _ = nearest_to_vector(X_train, feature_view(expected.features[None], "avg")[0], n=8)
    titles = {poster.id: poster.title for poster in dataset.posters}
    nearest_titles = [titles[saved_run.split["train"][i]] for i in order]

    at = open_page(tiny_dataset, saved_run.folder)
    at.file_uploader(key="upload").upload("poster.png", png_bytes(), "image/png").run()
    assert not at.exception and not at.error
    chart = json.loads(at.get("plotly_chart")[-1].proto.spec)["data"][0]
    by_genre = dict(zip(chart["y"], chart["x"]))
    assert by_genre == pytest.approx(expected.probabilities, abs=1e-5)
    neighbour_captions = [caption.value for caption in at.caption if " · similarity " in caption.value]
    assert [caption.split(" · similarity ")[0] for caption in neighbour_captions] == nearest_titles


def test_a_text_file_named_jpg_is_refused_with_the_image_error(tiny_dataset, saved_run):
    at = open_page(tiny_dataset, saved_run.folder)
    at.file_uploader(key="upload").upload("notes.jpg", b"not an image", "image/jpeg").run()
    assert not at.exception
    assert any("notes.jpg" in error.value and "not an image" in error.value for error in at.error)


def test_predictor_refuses_bytes_that_are_not_an_image(saved_run):
    from core.model.predict import Predictor

    refused = Predictor(saved_run).predict_image(b"not an image", "notes.jpg")
    assert refused.top == [] and "not an image" in refused.error


def test_a_run_trained_on_other_labels_is_marked_warned_and_not_chosen_first(tiny_dataset, tiny_features, tmp_path):
    from core.data.datasets import load_dataset
    from tests.test_hostile_inputs import folder_hashes
    from tests.test_run_identity import copy_dataset, edit_genre

    root = copy_dataset(tiny_dataset, tmp_path / "posters")
    _, features = tiny_features
    config = TrainConfig(feature_view="avg", hidden=(16,), epochs=2, seed=108)
    old = save_run(run_experiment(load_dataset(root)[0], features, config))
    at = open_page(root, old)
    assert not [warning for warning in at.warning if "other labels" in warning.value]
    assert "OTHER LABELS" not in at.selectbox(key="run_select").format_func(str(old))

    edit_genre(root, "demo-0001", "Comedy")
    hashes = folder_hashes(root)
    at = open_page(root, old)
    assert at.selectbox(key="run_select").value == str(old)
    assert at.selectbox(key="run_select").format_func(str(old)).endswith(" · OTHER LABELS")
    assert any(warning.value.startswith("This run was trained on other labels than today's: the same 40 posters "
                                     "and 8 genres, but some posters' genres were different then")
               for warning in at.warning)
    assert any("checked against today's genres" in caption.value for caption in at.caption)
    assert sorted(card_ids(at)) == sorted(load_run(old).split["test"])

    info = json.loads((old / "run.json").read_text())
    (old / "run.json").write_text(json.dumps({**info, "created": "2099-01-01T00:00:00+00:00"}))
    fresh = save_run(run_experiment(load_dataset(root)[0], features, dataclasses.replace(config, seed=109)))
    at = open_page(root)
    first = at.selectbox(key="run_select").options[0]
    assert first.startswith("2099-01-01") and first.endswith(" · OTHER LABELS"), "the newest run is listed first"
    assert at.selectbox(key="run_select").value == str(fresh), "but today's labels' run is chosen"
    assert not [warning for warning in at.warning if "other labels" in warning.value]
    assert folder_hashes(root) == hashes
